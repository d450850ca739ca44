"""The per-loss step values (``train/{name}_step``) are logged only at the steps Lightning's loggers write, and the
rows the loggers write are the same as when every step logs them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickLoss, BrickTrainable
from torchbricks_lightning.lightning import LightningBrickCollection

BATCHES = 5  # odd, so that log_every_n_steps=2 falls on other batches in each epoch
EPOCHS = 3


class CountingModule(LightningBrickCollection):
    """Counts its ``self.log`` calls by key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["calls"] = {}

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        super().log(name, value, *args, **kwargs)


class WatchesAStepValue(pl.Callback):
    """A callback that watches a step value (as ``ModelCheckpoint(monitor=...)`` would): every step logs it."""

    monitor = "train/ce_step"


def _fit(folder: Path, callbacks: list[pl.Callback]) -> CountingModule:
    torch.manual_seed(0)
    module = CountingModule(
        {
            "head": BrickTrainable(nn.Linear(4, 3), input_names=["raw"], output_names=["logits"]),
            "ce": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
            "nll": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["nll"]),
        }
    )
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8 * BATCHES, 4, generator=generator), torch.arange(8 * BATCHES) % 3)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=[CSVLogger(folder, name="csv"), TensorBoardLogger(folder, name="tb")],
        log_every_n_steps=2,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=folder,
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=8))
    return module


def _csv_rows(folder: Path) -> list[dict[str, str]]:
    (path,) = folder.glob("csv/version_0/metrics.csv")
    with path.open() as file:
        return list(csv.DictReader(file))


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    (path,) = folder.glob("tb/version_0/events.out.tfevents.*")
    events = EventAccumulator(str(path))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_loggers_write_the_same_rows_as_when_every_step_logs(tmp_path: Path) -> None:
    few = _fit(tmp_path / "few", [])
    every = _fit(tmp_path / "every", [WatchesAStepValue()])
    rows = _csv_rows(tmp_path / "few")
    assert rows == _csv_rows(tmp_path / "every")
    steps = sorted({int(row["step"]) for row in rows if row.get("train/ce_step")})
    assert steps == [step for step in range(BATCHES * EPOCHS) if (step + 1) % 2 == 0]  # Lightning's own choice
    scalars = _tensorboard_scalars(tmp_path / "few")
    assert scalars == _tensorboard_scalars(tmp_path / "every")
    assert {"train/ce_step", "train/nll_step", "train/loss_step"} <= set(scalars)
    # Fewer calls: the steps the loggers write, and each epoch's last batch (for trainer.callback_metrics).
    assert every.calls["train/ce_step"] == BATCHES * EPOCHS
    assert few.calls["train/ce_step"] < every.calls["train/ce_step"]
    assert few.calls["train/loss_step"] == BATCHES * EPOCHS  # the progress bar's value, every step
