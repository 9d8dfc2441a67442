#!/usr/bin/env bash
# GPU checks for ar-core/ar-kernels, run on a lent CUDA machine (never in CI):
# backend parity tests (math, sdpa, flex, xformers) and the CUDA decode / flex benchmarks.
#
# Prepare here:  uv build --all-packages -o .whl/ar   (plus the wheels the machine lacks:
# xformers, pydantic and its deps, in .whl/), then run this script there with .whl carried.
# Results go to $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl .whl/ar/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, xformers, transformers; print('torch', torch.__version__, 'xformers', xformers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m ar_cli plugins | tee -a "$OUT/gpu.txt"
status=0
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  packages/ar-kernels/tests packages/ar-core/tests/test_attention.py 2>&1 | tee "$OUT/tests.txt" | tail -25 || status=1
timeout 200 python3 packages/ar-core/benchmarks/decode.py --device cuda --out "$OUT/decode_cuda.json" 2>&1 | tee "$OUT/decode.txt" | tail -30 || status=1
timeout 120 python3 packages/ar-kernels/benchmarks/flex_vs_sdpa.py --device cuda --out "$OUT/flex_cuda.json" 2>&1 | tee "$OUT/flex.txt" | tail -20 || status=1
exit $status
