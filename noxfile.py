"""Nox sessions for torchbricks-lightning.

Run ``nox -s tests`` for the test suite, ``nox -s lint typecheck`` for static checks,
or plain ``nox`` for all three. Every install is pinned with ``-c constraints.txt``.
"""

from __future__ import annotations

import nox

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints.txt")

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"  # nox >= 2024.3 name of the old ``reuse_existing_virtualenvs = True``
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True

# Deliberate: on 2-core machines OpenMP spin-waiting makes tiny training steps ~40x slower
# with 2 threads, so tests run single-threaded. PYTHONHASHSEED keeps runs reproducible.
TEST_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
}


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run pytest (unit tests and doctests); extra arguments go to pytest."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run("pytest", *session.posargs, env=TEST_ENV)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Run ruff's linter and formatter check."""
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Run mypy on the package (files are configured in pyproject.toml)."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """The README's main job: train the multi-task digits model offline, test it, export and check it in ONNX."""
    session.install(*CONSTRAINTS, "-e", ".[demo]")
    session.run("python", "examples/demo.py", *session.posargs, env=TEST_ENV)


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks against hand-written baselines: writes build/benchmarks/results.json and results.md.

    Single-threaded, like the tests; extra arguments go to ``benchmarks.run`` (e.g. ``-- --quick`` or
    ``-- --only dispatch,metrics``).
    """
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run(
        "python",
        "-m",
        "benchmarks.run",
        "--output",
        "build/benchmarks",
        *session.posargs,
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
