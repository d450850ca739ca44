"""The resume state a mid-epoch checkpoint carries (``lightning/state/resume.py``): the module's own count of the
epoch's batches, and clear errors for a malformed entry. The kill-and-resume runs are in tests/reliability."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchbricks_lightning
from torchbricks_lightning import BrickLoss, BrickTrainable
from torchbricks_lightning.errors import ResumeStateError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.state.resume import RESUME_STATE_KEY

BATCHES = 6


class StopError(Exception):
    pass


class StopAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise StopError


def _module() -> LightningBrickCollection:
    return LightningBrickCollection(
        {
            "head": BrickTrainable(nn.Linear(4, 3), input_names=["raw"], output_names=["logits"]),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        }
    )


def _loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(4 * BATCHES, 4, generator=generator)
    return DataLoader(TensorDataset(raw, torch.arange(4 * BATCHES) % 3), batch_size=4)


def _trainer(folder: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )


@pytest.fixture(scope="module")
def mid_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written after batch 2 of 6 of epoch 1 (step 8), then the run stops."""
    folder = tmp_path_factory.mktemp("mid_epoch")
    checkpoints = ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=8)
    with pytest.raises(StopError):
        _trainer(folder, [checkpoints, StopAtStep(9)]).fit(_module(), train_dataloaders=_loader())
    return folder / "last.ckpt"


def test_a_mid_epoch_checkpoint_carries_the_module_s_count_of_the_epoch_s_batches(mid_epoch: Path) -> None:
    state = torch.load(mid_epoch, weights_only=True)[RESUME_STATE_KEY]
    assert (state["epoch"], state["mid_epoch"], state["batches_this_epoch"]) == (1, True, 2)


def test_a_resumed_run_goes_on_counting_and_ends_the_epoch(mid_epoch: Path, tmp_path: Path) -> None:
    module = _module()
    trainer = _trainer(tmp_path, [])
    trainer.fit(module, train_dataloaders=_loader(), ckpt_path=mid_epoch)
    assert trainer.global_step == 2 * BATCHES
    assert module.checkpoint_state.batches_this_epoch == BATCHES


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda state: state.pop("world_size"), "'world_size' is missing"),
        (lambda state: state.update(epoch="one"), "'epoch' is a str"),
        (lambda state: state.update(loss_states=[]), "'loss_states' does not hold the states of 1 processes"),
        (lambda state: state.update(metric_states=[]), "'metric_states' does not hold the states of 1 processes"),
        # issue 19, break 13: crafted generator states and counts, refused before anything is restored
        (
            lambda state: state.update(rng_states=[{"torch": "x"}]),
            "the random generator states of rank 0: 'torch' is a str",
        ),
        (
            lambda state: state["rng_states"][0].update(python=(3, (1, 2), None)),
            "the random generator states of rank 0: 'python' is not a state of Python's random",
        ),
        (
            lambda state: state["rng_states"][0].update(numpy={"key": 1}),
            "the random generator states of rank 0: 'numpy' is not a state of NumPy's",
        ),
        (lambda state: state.update(rng_states=["x"]), "the random generator states of rank 0: the states are a str"),
        (lambda state: state.update(batches_this_epoch=-1), "'batches_this_epoch' is -1, below 0"),
        (lambda state: state.update(world_size=0), "'world_size' is 0, below 1"),
    ],
)
def test_a_malformed_resume_entry_is_refused_with_what_is_wrong_and_the_fix(
    mid_epoch: Path, tmp_path: Path, change: Any, named: str
) -> None:
    checkpoint = torch.load(mid_epoch, weights_only=True)
    change(checkpoint[RESUME_STATE_KEY])
    path = tmp_path / "malformed.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ResumeStateError, match=rf"'torchbricks_resume' entry is malformed: {named}.*delete the entry"):
        _trainer(tmp_path, []).fit(_module(), train_dataloaders=_loader(), ckpt_path=path)


def test_the_package_reads_no_loop_internals_of_lightning() -> None:
    """Whether a checkpoint was written mid-epoch is the module's own count, not Lightning's loop progress."""
    internal = {"fit_loop", "epoch_loop", "batch_progress", "_batches_that_stepped"}
    package = Path(torchbricks_lightning.__file__).parent
    found = [
        f"{path.relative_to(package)}:{node.lineno} .{node.attr}"
        for path in sorted(package.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in internal
    ]
    assert found == []
