"""check_one_batch: the pre-fit check finds bricks that do not fit the data, and leaves no trace."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickTrainable
from torchbricks_lightning.errors import BrickDefinitionError, MissingInputError, RecipeError
from torchbricks_lightning.lightning import LightningBrickCollection, check_one_batch


class CountingData(pl.LightningDataModule):
    """Tuple batches of random features and classes; counts the hooks the check calls, and draws random numbers in
    them, as augmenting datamodules do."""

    def __init__(self, n_features: int = N_FEATURES, batch_size: int = 8) -> None:
        super().__init__()
        self.n_features = n_features
        self.batch_size = batch_size
        self.calls: list[str] = []

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")
        random.random()  # noqa: S311 - not cryptography: a draw the check must undo

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup({stage})")
        generator = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(32, self.n_features, generator=generator), torch.arange(32) % NUM_CLASSES)

    def train_dataloader(self) -> DataLoader[Any]:
        self.calls.append("train_dataloader")
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)  # shuffling draws from torch's RNG


def _with_batch_norm() -> LightningBrickCollection:
    bricks = boring_bricks()
    bricks["backbone"] = BrickTrainable(
        nn.Sequential(nn.Linear(N_FEATURES, N_FEATURES), nn.BatchNorm1d(N_FEATURES)),
        input_names=["processed"],
        output_names=["features"],
    )
    return LightningBrickCollection(bricks)


def _random_states() -> tuple[torch.Tensor, object, object]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tolist()


def test_the_check_runs_one_batch_and_leaves_no_trace() -> None:
    module = _with_batch_norm()
    collection = module.brick_collection
    collection["head"].eval()  # a mix of modes, to see that each is put back
    modes = {name: submodule.training for name, submodule in module.named_modules()}
    weights = {name: value.clone() for name, value in module.state_dict().items()}
    data = CountingData()
    before = _random_states()

    assert check_one_batch(module, data) is True

    assert data.calls == ["prepare_data", "setup(fit)", "train_dataloader"]
    after = _random_states()
    assert torch.equal(after[0], before[0])
    assert after[1:] == before[1:]
    assert {name: submodule.training for name, submodule in module.named_modules()} == modes
    for name, value in module.state_dict().items():  # batch-norm statistics included
        assert torch.equal(value, weights[name]), name
    for stage in ("train", "validation"):
        assert collection.summarize(stage) == {}, stage


def test_a_brick_that_does_not_fit_the_data_fails_with_the_stage_and_the_brick() -> None:
    module = LightningBrickCollection(boring_bricks())
    with pytest.raises(RecipeError, match=r"stage 'validation'.*mat1 and mat2 shapes cannot be multiplied \([2-4]x7"):
        check_one_batch(module, CountingData(n_features=7))


def test_a_batch_without_a_needed_name_fails_before_anything_runs() -> None:
    module = LightningBrickCollection(boring_bricks(), batch_names=["raw", "labels"])
    with pytest.raises(MissingInputError, match="'targets'"):
        check_one_batch(module, CountingData())


def test_other_processes_leave_the_datamodule_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only rank 0 prepares data (which may download) and runs the check: every process runs the same recipe."""
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what Lightning sets in the second process of a DDP run
    data = CountingData(n_features=7)  # would fail the check
    assert check_one_batch(LightningBrickCollection(boring_bricks()), data) is False
    assert data.calls == []


def test_the_check_needs_a_lightning_brick_collection() -> None:
    with pytest.raises(BrickDefinitionError, match="Expected module to be a LightningBrickCollection"):
        check_one_batch(nn.Linear(2, 2), CountingData())  # type: ignore[arg-type]
