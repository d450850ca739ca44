"""An empty batch adds nothing to a stage's losses or metrics, and training skips it with a warning naming it.

Each test runs a real Trainer twice on the same weights, once with an empty batch slipped into the data and once
without it, and compares what was logged.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from torch.utils.data import DataLoader

from torchbricks_lightning import LightningBrickCollection
from torchbricks_lightning.lightning.batches import EmptyBatchWarning

Batch = tuple[torch.Tensor, torch.Tensor]


def _batches(empty_at: int | None, n: int = 3, size: int = 4) -> list[Batch]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        raw = torch.randn(size, N_FEATURES, generator=generator)
        batches.append((raw, torch.randint(0, NUM_CLASSES, (size,), generator=generator)))
    if empty_at is not None:
        batches.insert(empty_at, (torch.zeros(0, N_FEATURES), torch.zeros(0, dtype=torch.long)))
    return batches


def _loader(batches: list[Batch]) -> DataLoader[Any]:
    return DataLoader(batches, batch_size=None)  # type: ignore[arg-type]  # each item is a whole batch


def _module() -> LightningBrickCollection:
    torch.manual_seed(0)
    return LightningBrickCollection(boring_bricks())  # type: ignore[arg-type]


def _trainer(**kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.parametrize("stage", ["validate", "test"])
@pytest.mark.parametrize("empty_at", [0, 2, 3])
def test_an_empty_evaluation_batch_adds_nothing_to_losses_or_metrics(stage: str, empty_at: int) -> None:
    run = getattr(_trainer(), stage)
    with pytest.warns(EmptyBatchWarning, match=rf"batch {empty_at} is empty"):
        with_empty = run(_module(), _loader(_batches(empty_at)), verbose=False)[0]
    without = getattr(_trainer(), stage)(_module(), _loader(_batches(None)), verbose=False)[0]

    prefix = "validation" if stage == "validate" else "test"
    assert {f"{prefix}/loss", f"{prefix}/loss_ce"} <= set(with_empty)
    assert any("accuracy" in key for key in with_empty), sorted(with_empty)
    assert sorted(with_empty) == sorted(without)
    for key, value in with_empty.items():
        assert math.isfinite(value), f"{key} = {value}"
        assert value == pytest.approx(without[key], rel=1e-6), key


def test_training_skips_an_empty_batch_with_a_warning_naming_it() -> None:
    trained, reference = _module(), _module()
    trainer = _trainer(max_epochs=1)
    with pytest.warns(EmptyBatchWarning, match=r"The train batch 1 is empty \(no samples\): the training step was"):
        trainer.fit(trained, _loader(_batches(empty_at=1)))
    reference_trainer = _trainer(max_epochs=1)
    reference_trainer.fit(reference, _loader(_batches(None)))

    # The weights moved exactly as without the empty batch: it made no optimiser update.
    for (name, value), expected in zip(trained.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, msg=name)
    for key in ("train/loss_epoch", "train/loss_ce_epoch"):
        value = float(trainer.callback_metrics[key])
        assert math.isfinite(value), key
        assert value == pytest.approx(float(reference_trainer.callback_metrics[key]), rel=1e-6), key


def test_a_batch_of_samples_is_never_taken_for_empty() -> None:
    """Only a batch whose first tensor has no samples is skipped: a full one trains without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyBatchWarning)
        _trainer(max_epochs=1).fit(_module(), _loader(_batches(None, n=1)))
