"""Running the ``torchbricks-lightning`` command from tests: in-process (``main``) or as the installed console
script in a subprocess (not a test module)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from torchbricks_lightning.cli import main


def script_command() -> list[str]:
    """The installed console script next to the interpreter, or ``python -m`` when it is missing."""
    script = Path(sys.executable).with_name("torchbricks-lightning")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torchbricks_lightning.cli"]


def run_script(args: Sequence[str], cwd: Path, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    """The console script with ``args`` in ``cwd``, single-threaded, warnings off; its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*script_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@contextmanager
def in_folder(path: Path) -> Iterator[None]:
    """Run in ``path``, with ``sys.argv`` the command's own (not pytest's arguments)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        patch.setattr(sys, "argv", ["torchbricks-lightning"])
        yield


def exit_code(args: Sequence[str], cwd: Path) -> int:
    """``main(args)`` in ``cwd``: its return value, or the code it exited with (the parser exits on a bad recipe)."""
    with in_folder(cwd):
        try:
            return main(list(args))
        except SystemExit as exit_:
            return int(exit_.code or 0)
