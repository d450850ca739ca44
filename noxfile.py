"""Nox sessions for torchbricks-lightning.

Run ``nox -s demo`` for the main job, ``nox -s tests`` for the test suite, ``nox -s lint typecheck`` for static
checks and ``nox -s bench`` for the benchmarks.

Every session runs in ONE environment, ``.nox/dev``, created the first time a session needs it and reused after
that, so torch (a few GB with its CUDA libraries) is installed once, not once per session. It is built with uv when
uv is installed (``pip install nox uv``: about 15 s for everything here) and with ``venv`` and pip otherwise, always
pinned by ``constraints.txt``. It is rebuilt when ``pyproject.toml`` or ``constraints.txt`` change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
DEV_ENV = ROOT / ".nox" / "dev"
CONSTRAINTS = ("-c", "constraints.txt")

nox.options.sessions = ["lint", "typecheck", "tests"]

# Deliberate: on 2-core machines OpenMP spin-waiting makes tiny training steps ~40x slower
# with 2 threads, so tests run single-threaded. PYTHONHASHSEED keeps runs reproducible.
TEST_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
}


def _fingerprint() -> str:
    """What the environment was built from: the interpreter and both files that pin its contents."""
    digest = hashlib.sha256(sys.executable.encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _uv() -> str | None:
    """The uv executable installed beside nox (``pip install nox uv``), or on the PATH; None without one."""
    try:
        import uv  # type: ignore[import-not-found]

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _dev_env(session: nox.Session) -> dict[str, str]:
    """Create ``.nox/dev`` if it is missing or stale, and return the environment variables that select it."""
    python = DEV_ENV / "bin" / "python"
    stamp = DEV_ENV / "torchbricks-installed.txt"
    wanted = _fingerprint()
    if not (python.is_file() and stamp.is_file() and stamp.read_text() == wanted):
        uv = _uv()
        if uv is not None:
            session.log(f"Creating {DEV_ENV} with uv (one environment for every session)")
            session.run(uv, "venv", "--quiet", "--clear", "--python", sys.executable, str(DEV_ENV), external=True)
            session.run(
                # --compile-bytecode, as pip does: without it every process compiles the modules it imports (torch,
                # Lightning) again where bytecode is not written (PYTHONDONTWRITEBYTECODE), which doubled the tests'
                # time; with it, each of the many subprocesses of the tests imports from .pyc files.
                uv,
                "pip",
                "install",
                "--quiet",
                "--compile-bytecode",
                "--python",
                str(python),
                *CONSTRAINTS,
                "-e",
                ".[dev]",
                external=True,
            )
        else:
            session.log(f"Creating {DEV_ENV} with venv and pip (install uv for a faster first run)")
            session.run(sys.executable, "-m", "venv", "--clear", str(DEV_ENV), external=True)
            session.run(str(python), "-m", "pip", "install", "--quiet", *CONSTRAINTS, "-e", ".[dev]", external=True)
        stamp.write_text(wanted)
    return {"PATH": f"{DEV_ENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(DEV_ENV)}


def _run(session: nox.Session, program: str, *arguments: str, env: dict[str, str] | None = None) -> None:
    """Run ``program`` from ``.nox/dev`` (named by its path: nox looks programs up on its own PATH)."""
    variables = _dev_env(session)
    session.run(str(DEV_ENV / "bin" / program), *arguments, env={**variables, **(env or {})}, external=True)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Run pytest (unit tests, README and docstring examples); extra arguments go to pytest.

    The tests run in one worker process per core, at most four (pytest-xdist): each test is single-threaded and many
    wait on subprocesses, so two workers on a 2-core machine take about 60% of the time of one. Each test file goes
    to one worker (``--dist=loadfile``): with xdist's default (``load``) a file's tests were spread over both workers,
    and each ran the file's module-scoped fixtures (the DDP and kill-and-resume jobs, the recipe fits) again: 586 and
    645 s against 452 s on 2 cores. ``nox -s tests -- -n 0`` runs them in this process (for ``--pdb``).
    """
    workers = (
        []
        if any(arg == "-n" or arg.startswith(("-n", "--numprocesses")) for arg in session.posargs)
        else [
            "--numprocesses=auto",
            "--maxprocesses=4",
            "--dist=loadfile",
        ]
    )
    _run(session, "pytest", *workers, *session.posargs, env=TEST_ENV)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """Run ruff's linter and formatter check."""
    _run(session, "ruff", "check", ".")
    _run(session, "ruff", "format", "--check", ".")


@nox.session(python=False)
def typecheck(session: nox.Session) -> None:
    """Run mypy on the package (files are configured in pyproject.toml)."""
    _run(session, "mypy")


@nox.session(python=False, default=False)
def demo(session: nox.Session) -> None:
    """The README's main job: train the multi-task digits model offline, test it, export and check it in ONNX."""
    _run(session, "python", "examples/demo.py", *session.posargs, env=TEST_ENV)


@nox.session(python=False, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks against hand-written baselines: writes build/benchmarks/results.json and results.md.

    Single-threaded, like the tests; extra arguments go to ``benchmarks.run`` (e.g. ``-- --quick`` or
    ``-- --only dispatch,metrics``).
    """
    _run(
        session,
        "python",
        "-m",
        "benchmarks.run",
        "--output",
        "build/benchmarks",
        *session.posargs,
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
