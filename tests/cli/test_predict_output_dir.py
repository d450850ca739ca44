"""``predict --output_dir`` at a file, or at a folder that cannot be written: a clear error naming the path and the
fix, from Python (``BrickTrainer.predict``) and from the installed command in a subprocess (one line, exit 2)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from cli_runs import run_script
from conftest import N_FEATURES, boring_bricks
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import LightningBrickCollection
from torchbricks_lightning.cli.predict import BrickTrainer
from torchbricks_lightning.errors import ConfigError, FileWriteError

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
QUIET = ["--trainer.enable_progress_bar", "false"]


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create: under a read-only folder, or, for root (whom permissions do not stop),
    under ``/sys``, which refuses new folders."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked / "preds"
    candidate = Path("/sys/torchbricks-lightning-preds")
    try:
        candidate.mkdir()
    except OSError:
        return candidate
    candidate.rmdir()
    pytest.skip("no folder that this process cannot write: root, and /sys takes new folders")


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr[stderr.index("error:") :].strip().splitlines()


def _predict(output_dir: Path) -> None:
    torch.manual_seed(0)
    trainer = BrickTrainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    loader = DataLoader(TensorDataset(torch.randn(4, N_FEATURES)), batch_size=2)
    trainer.predict(LightningBrickCollection(boring_bricks()), loader, output_dir=str(output_dir))


def test_an_output_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "preds").write_text("the user's file")
    with pytest.raises(ConfigError, match=re.escape(f"{str(tmp_path / 'preds')!r} is a file, not a folder. Give")):
        _predict(tmp_path / "preds")

    process = run_script(["predict", "--config", str(RECIPE), "--output_dir", "preds", *QUIET], tmp_path)
    assert process.returncode == 2, process.stderr[-3000:]
    assert _error_lines(process.stderr) == [
        "error: ConfigError: The prediction output_dir 'preds' is a file, not a folder. Give the path of a folder "
        "(it is created if needed), or move the file away."
    ]
    assert (tmp_path / "preds").read_text() == "the user's file"


def test_an_output_dir_that_cannot_be_written(tmp_path: Path) -> None:
    target = _unwritable_folder(tmp_path)
    with pytest.raises(FileWriteError, match=re.escape(f"Cannot write predictions to {str(target)!r}: ")) as raised:
        _predict(target)
    assert raised.value.errno is not None

    process = run_script(["predict", "--config", str(RECIPE), "--output_dir", str(target), *QUIET], tmp_path)
    assert process.returncode == 2, process.stderr[-3000:]
    (line,) = _error_lines(process.stderr)
    assert line.startswith(f"error: FileWriteError: Cannot write predictions to {str(target)!r}: "), line
    assert line.endswith("To fix it, choose an output_dir you can write to, or make this one writable."), line
    assert not target.exists()
