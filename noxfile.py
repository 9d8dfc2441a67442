"""Every check of the ar workspace: ``uv run nox`` runs the default sessions.

Sessions use uv environments. ``tests-<member>`` syncs ONLY that member and its declared
dependencies into a fresh environment (``uv sync --package X --exact``): proof that each
package installs and passes its tests alone. ``slow`` (long tests) is not in the default run.
"""

from __future__ import annotations

import glob
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
MEMBERS = {
    "ar-core": "packages/ar-core",
    "ar-kernels": "packages/ar-kernels",
    "ar-decoding": "packages/ar-decoding",
    "ar-vision": "packages/ar-vision",
    "ar-text": "packages/ar-text",
    "ar-diffusion": "packages/ar-diffusion",
    "ar-video": "packages/ar-video",
    "ar-timeseries": "packages/ar-timeseries",
    "ar-cli": "apps/ar-cli",
}
SOURCES = [f"{path}/src" for path in MEMBERS.values()]
nox.options.sessions = [
    "lint",
    "types",
    *(f"tests-{name}" for name in MEMBERS),
    "wheels",
    "integration",
    "docs",
]


def _sync(session: nox.Session, *args: str) -> None:
    """``uv sync`` into this session's environment, from the committed lock."""
    env = {"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}
    session.run_install("uv", "sync", "--locked", "--exact", *args, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _sync(session, "--only-group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """mypy over every member's sources."""
    _sync(session, "--all-packages", "--group", "types")
    session.run("mypy", *SOURCES)


def _tests(session: nox.Session, name: str) -> None:
    _sync(session, "--package", name)
    path = MEMBERS[name]
    session.run("pytest", f"{path}/tests", *session.posargs)


for _name in MEMBERS:

    @nox.session(name=f"tests-{_name}")
    def _member_tests(session: nox.Session, _n: str = _name) -> None:
        """This member alone: its own dependencies, its own tests."""
        _tests(session, _n)


def _wheel(dist: Path, name: str) -> str:
    (found,) = glob.glob(str(dist / f"{name.replace('-', '_')}-*.whl"))
    return found


@nox.session
def wheels(session: nox.Session) -> None:
    """Build each member without workspace sources; install every wheel into this session's
    venv (all imports, all plugins), then ONLY ar-core, ar-cli and ar-vision into a fresh
    venv: the vision demo trains there, `ar bench` lists the vision benchmark, and a text
    recipe fails naming ar-text. Takes a few minutes (the vision demo: 30-75 s)."""
    started = time.perf_counter()
    dist = Path(tempfile.mkdtemp(prefix="ar-wheels-"))
    try:
        for path in MEMBERS.values():
            session.run(
                "uv", "build", "--no-sources", "--wheel", "-o", str(dist), path, external=True
            )
        session.log(f"built {len(MEMBERS)} wheels in {time.perf_counter() - started:.0f} s")

        # every wheel
        session.install(*sorted(glob.glob(str(dist / "*.whl"))))
        session.run(
            "python",
            "-c",
            "import ar_core, ar_kernels, ar_decoding, ar_vision, ar_text, ar_diffusion, ar_video, ar_timeseries, ar_cli; print('imports ok')",
        )
        session.run("ar", "plugins")
        out = session.run("ar", "plugins", "--json", silent=True)
        assert out and '"ar-core"' in out and '"ar-kernels"' in out, out
        out = session.run("ar", "bench", "--json", silent=True)
        listed = json.loads(out[out.index("{") :]) if out else {}
        everyone = {
            "decode",
            "decoding",
            "diffusion",
            "flex_vs_sdpa",
            "hf_strategies",
            "stargraph_compare",
        }
        assert everyone | {"vision"} <= set(listed), listed
        session.log(f"full install checked at {time.perf_counter() - started:.0f} s")

        # ar-core + ar-cli + ar-vision only, in a fresh venv, run outside the checkout
        venv = dist / "venv-vision"
        session.run("uv", "venv", "-q", "--python", sys.executable, str(venv), external=True)
        python = str(venv / "bin" / "python")
        wheels = [_wheel(dist, n) for n in ("ar-core", "ar-cli", "ar-vision")]
        session.run("uv", "pip", "install", "-q", "--python", python, *wheels, external=True)
        ar = str(venv / "bin" / "ar")
        session.chdir(dist)
        session.run(
            python,
            "-c",
            "import importlib.util as u; missing = [m for m in ('transformers', 'ar_text', "
            "'ar_decoding', 'ar_kernels') if u.find_spec(m)]; assert not missing, missing",
            external=True,
        )
        demo = time.perf_counter()
        out_dir = dist / "digits"
        session.run(ar, "train", "vision-digits", "--demo", "--out", str(out_dir), external=True)
        result = json.loads((out_dir / "result.json").read_text())
        (run,) = result["runs"]
        assert run["recipe"] == "vision-digits" and "class_accuracy" in run["metrics"], run
        assert (out_dir / "index.html").is_file()
        session.log(f"vision demo from wheels: {time.perf_counter() - demo:.0f} s")
        out = session.run(ar, "bench", "--json", silent=True, external=True)
        listed = json.loads(out[out.index("{") :]) if out else {}
        assert set(listed) == {"decode", "vision"}, listed  # ar-core's and ar-vision's
        out = session.run(ar, "train", "text-code", silent=True, success_codes=[2], external=True)
        assert out and "pip install ar-text" in out, out
        session.log(f"wheels session: {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(dist, ignore_errors=True)


@nox.session
def integration(session: nox.Session) -> None:
    """Cross-package tests (tests/) with every member and the example plugin installed."""
    _sync(session, "--all-packages", "--group", "test", "--group", "example", "--group", "docs")
    session.run("pytest", "tests", "docs/examples/ar-zigzag/tests", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """mkdocs build --strict, then a check of the built site's internal links and anchors."""
    _sync(session, "--all-packages", "--group", "docs")
    site = tempfile.mkdtemp(prefix="ar-site-")
    try:
        session.run(
            "mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"}
        )
        session.run("python", "docs/check_links.py", site)
    finally:
        shutil.rmtree(site, ignore_errors=True)


@nox.session
def slow(session: nox.Session) -> None:
    """Long tests (marker ``slow``), every package: one pytest run per test folder (test
    files of different packages share names, e.g. ``test_model.py``)."""
    _sync(session, "--all-packages", "--group", "test", "--group", "example")
    for folder in [*(f"{p}/tests" for p in MEMBERS.values()), "tests"]:
        session.run("pytest", "-m", "slow", folder, *session.posargs, success_codes=[0, 5])


@nox.session
def triton(session: nox.Session) -> None:
    """ar-kernels' Triton kernels against the math backend in Triton's CPU interpreter
    (``TRITON_INTERPRET=1``, tiny shapes, float32 and float16; a few minutes). Not in the
    default run; on a CUDA machine ``tools/gpu_check.sh`` runs the same tests on the GPU."""
    _sync(session, "--package", "ar-kernels")
    tests = sorted(glob.glob("packages/ar-kernels/tests/test_triton*.py"))
    session.run("pytest", "-m", "slow", *tests, *session.posargs, env={"TRITON_INTERPRET": "1"})
