"""BrickTrainer.predict(output_dir=...): a prediction writer for that call only, on a real Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import N_FEATURES, boring_bricks
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickPredictionWriter, LightningBrickCollection
from torchbricks_lightning.cli.predict import BrickTrainer, report_predictions


def _trainer() -> BrickTrainer:
    return BrickTrainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def _loader(n: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    raw = torch.randn(n, N_FEATURES, generator=torch.Generator().manual_seed(1))
    return DataLoader(TensorDataset(raw), batch_size=4)


def test_two_predictions_with_output_dir_leave_the_callbacks_as_they_were_and_write_each_folder_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    module = LightningBrickCollection(boring_bricks())
    trainer = _trainer()
    before = list(trainer.callbacks)  # type: ignore[attr-defined]

    assert trainer.predict(module, _loader(6), output_dir=str(tmp_path / "first")) is None
    first_writer = trainer.prediction_writer
    assert trainer.callbacks == before  # type: ignore[attr-defined]
    trainer.predict(module, _loader(10), output_dir=str(tmp_path / "second"))

    assert trainer.callbacks == before  # type: ignore[attr-defined]
    assert not [callback for callback in trainer.callbacks if isinstance(callback, BrickPredictionWriter)]  # type: ignore[attr-defined]
    assert isinstance(trainer.prediction_writer, BrickPredictionWriter)
    assert trainer.prediction_writer is not first_writer
    first = json.loads((tmp_path / "first" / "index.json").read_text())
    second = json.loads((tmp_path / "second" / "index.json").read_text())
    # Each folder was written by its own call alone: the first writer did not write the second call's batches too.
    assert (first["num_files"], first["num_rows"]) == (2, 6)
    assert (second["num_files"], second["num_rows"]) == (3, 10)
    assert sorted(path.name for path in (tmp_path / "first" / "rank0").glob("*.npz")) == [
        "dl0-batch000000.npz",
        "dl0-batch000001.npz",
    ]

    report_predictions(trainer)  # what the CLI prints after predict: the last call's writer
    printed = capsys.readouterr().out
    assert f"Wrote 3 prediction file(s) (10 samples) to {tmp_path / 'second'}" in printed
    assert "first" not in printed


def test_a_prediction_without_output_dir_adds_no_writer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = LightningBrickCollection(boring_bricks())
    trainer = _trainer()
    before = list(trainer.callbacks)  # type: ignore[attr-defined]
    predictions = trainer.predict(module, _loader(4))
    assert predictions is not None
    assert len(predictions) == 1
    assert trainer.callbacks == before  # type: ignore[attr-defined]
    assert trainer.prediction_writer is None
