#!/usr/bin/env bash
# GPU check of ar-kernels' Triton backend, on a CUDA machine (never in CI; sized for < 8 min):
#   bash tools/gpu_check.sh            # results in $OUT, or ./gpu-out
# It runs tools/gpu_check.py: the Triton/backend tests on CUDA, parity of triton, sdpa,
# flex and xformers against math, the Triton forward vs FlexAttention/SDPA/xformers on
# block-causal masks at 4k tokens, and the decode kernel's achieved HBM bandwidth; it
# writes $OUT/gpu_check.json (+ tests.txt, gpu.txt).
#
# Python: the workspace's .venv when there is one; else python3 with the sources of
# ar-core and ar-kernels on PYTHONPATH (a bare GPU machine with torch, triton, pluggy and
# pytest). Packages that machine lacks (pydantic for ar-core; xformers, optional) travel
# as wheels in .whl/ and are installed to /tmp/ar-site first; prepare them where pip can
# download with `bash tools/gpu_check.sh --fetch-wheels` (Python 3.12, manylinux x86-64).
# Extra arguments go to gpu_check.py (e.g. --smoke: tiny sizes, to check the script).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
  # the versions uv.lock pins (pydantic and pydantic-core must match exactly)
  pins=$(python3 -c 'import tomllib; lock = tomllib.load(open("uv.lock", "rb")); want = {"pydantic", "pydantic-core", "annotated-types", "typing-inspection"}; print(" ".join(p["name"] + "==" + p["version"] for p in lock["package"] if p["name"] in want))') || exit 1
  mkdir -p .whl
  # shellcheck disable=SC2086
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $pins
fi

OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/ar-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/ar-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD/packages/ar-core/src:$PWD/packages/ar-kernels/src${PYTHONPATH:+:$PYTHONPATH}
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true; } | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'triton', triton.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

timeout 470 "$PY" tools/gpu_check.py --out "$OUT" "$@"
