"""Shared fixtures: a tiny "boring" brick model, single-threaded torch and fixed seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from torchbricks_lightning import (
    BrickCollection,
    BrickLoss,
    BrickMetricSingle,
    BrickNotTrainable,
    BrickTrainable,
    Stage,
)

# Deliberate: on 2-core machines OpenMP spin-waiting makes tiny ops much slower with 2 threads.
torch.set_num_threads(1)

NUM_CLASSES = 3
N_FEATURES = 5


class Scale(nn.Module):
    """A preprocessor without parameters."""

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return raw / 2


class TwoOutputs(nn.Module):
    """Logits and softmax from features."""

    def __init__(self, n_features: int = N_FEATURES, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.fc = nn.Linear(n_features, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(features)
        return logits, logits.softmax(dim=1)


class ArgMax(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)


def boring_bricks() -> dict[str, object]:
    """preprocessor -> backbone -> head -> (prediction, loss, accuracy), as a plain dict."""
    return {
        "preprocessor": BrickNotTrainable(Scale(), input_names=["raw"], output_names=["processed"]),
        "backbone": BrickTrainable(
            nn.Linear(N_FEATURES, N_FEATURES), input_names=["processed"], output_names=["features"]
        ),
        "head": BrickTrainable(TwoOutputs(), input_names=["features"], output_names=["logits", "probabilities"]),
        "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"]),
        "accuracy": BrickMetricSingle(
            MulticlassAccuracy(num_classes=NUM_CLASSES), input_names=["class_prediction", "targets"]
        ),
    }


def same_state(first: Any, second: Any) -> bool:
    """Whether two ``state_dict`` entries are equal: tensors exactly, and a module's extra state (a dict of them,
    e.g. a loss-level balancer's ``_extra_state``) entry by entry."""
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return torch.equal(first, second)
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(same_state(first[key], second[key]) for key in first)
    return bool(first == second)


def quiet_trainer(folder: Path, **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer that writes and prints nothing of its own (no logger, progress bar, summary or checkpoints) in
    ``folder``; ``kwargs`` override or add Trainer arguments."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": folder,
    }
    return pl.Trainer(**(settings | kwargs))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def boring_collection() -> BrickCollection:
    return BrickCollection(boring_bricks())  # type: ignore[arg-type]


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return {"raw": torch.randn(4, N_FEATURES), "targets": torch.tensor([0, 1, 2, 1])}


ALL_STAGES = list(Stage)
