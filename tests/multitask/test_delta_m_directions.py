"""Δm takes each metric's direction from the metric object, and ``trainer.test`` logs ``test/delta_m``.

The issue's finding: ``DeltaM({"diagnosis/accuracy": 0.95, "worst/mae": 0.20})``, then a model with the same
accuracy and half the MAE, gave Δm = -25% without a word, because the MAE was scored as an accuracy.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_image_classification_head
from torchbricks_lightning.bag_of_bricks.metrics import RegressionMetrics
from torchbricks_lightning.core.metric_bricks import BrickMetricSingle
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import DeltaM


class _Unsaid(Metric):
    """A metric that does not say which way is better (torchmetrics' default ``higher_is_better=None``)."""

    total: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self.total += (preds - targets).sum()

    def compute(self) -> torch.Tensor:
        return self.total


class _Mixed(_Unsaid):
    """A dict-valued metric whose values go different ways, said per value name."""

    value_names: ClassVar[tuple[str, ...]] = ("score", "error")
    value_higher_is_better: ClassVar[dict[str, bool]] = {"score": True, "error": False}

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"score": self.total, "error": self.total}


def diagnosis_model(**extra: Any) -> BrickCollection:
    return BrickCollection(
        {
            "diagnosis": {"accuracy": BrickMetricSingle(MulticlassAccuracy(3), input_names=["preds", "targets"])},
            "worst": {"errors": BrickMetricSingle(RegressionMetrics(values=("mae",)), input_names=["worst", "truth"])},
            **extra,
        }
    )


def test_the_issues_example_scores_half_the_error_as_a_gain_without_being_told_the_direction() -> None:
    module = LightningBrickCollection(
        diagnosis_model(), delta_m=DeltaM({"diagnosis/accuracy": 0.95, "worst/mae": 0.20})
    )
    assert module.delta_m is not None
    value = module.delta_m({"diagnosis/accuracy": torch.tensor(0.95), "worst/mae": torch.tensor(0.10)})
    assert float(value) == pytest.approx(25.0), "half the error is a 50% gain on one of two metrics, not -25%"
    assert module.delta_m.higher_is_better == {"diagnosis/accuracy": True, "worst/mae": False}


def test_a_given_direction_that_agrees_with_the_metric_is_accepted() -> None:
    score = DeltaM({"diagnosis/accuracy": 0.95, "worst/mae": 0.20}, higher_is_better={"worst/mae": False})
    LightningBrickCollection(diagnosis_model(), delta_m=score)
    assert float(score({"diagnosis/accuracy": 0.95, "worst/mae": 0.10})) == pytest.approx(25.0)


def test_a_given_direction_that_disagrees_with_the_metric_is_refused_naming_the_key() -> None:
    score = DeltaM({"diagnosis/accuracy": 0.95, "worst/mae": 0.20}, higher_is_better={"worst/mae": True})
    with pytest.raises(
        ConfigError, match=r"higher_is_better=\{'worst/mae': True\}, but the metric behind 'worst/mae' says .*=False"
    ):
        LightningBrickCollection(diagnosis_model(), delta_m=score)


def test_a_metric_of_unknown_direction_is_refused_when_built_unless_given() -> None:
    unsaid = {"drift": BrickMetricSingle(_Unsaid(), input_names=["worst", "truth"])}
    with pytest.raises(
        ConfigError, match=r"which way the metric 'drift' goes: .*higher_is_better=None.*\{'drift': False\}"
    ):
        LightningBrickCollection(diagnosis_model(**unsaid), delta_m=DeltaM({"worst/mae": 0.2, "drift": 1.0}))
    given = DeltaM({"worst/mae": 0.2, "drift": 1.0}, higher_is_better={"drift": False})
    LightningBrickCollection(diagnosis_model(**unsaid), delta_m=given)
    assert given.higher_is_better == {"worst/mae": False, "drift": False}


def test_a_dict_valued_metric_gives_the_direction_of_each_value() -> None:
    from torchbricks_lightning.multitask.score import (
        metric_directions,
    )  # new: imported here so the others run on old code

    collection = BrickCollection({"task": {"both": BrickMetricSingle(_Mixed(), input_names=["a", "b"])}})
    assert metric_directions(collection) == {"task/score": True, "task/error": False}


# ------------------------------------------------------------------------------------------------ test/delta_m
def test_trainer_test_logs_test_delta_m_from_the_same_baselines(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    collection = BrickCollection(
        {
            "backbone": BrickTrainable(backbone, input_names=["raw"], output_names=["features"]),
            "digit": create_image_classification_head(10, 16, "features", "targets"),
            "parity": create_image_classification_head(2, 16, "features", "parity"),
        }
    )
    baselines = {"digit/accuracy": 0.5, "parity/accuracy": 0.6}
    module = LightningBrickCollection(collection, delta_m=DeltaM(baselines))
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="logs", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    (results,) = trainer.test(module, datamodule=DigitsDataModule(batch_size=128), verbose=False)
    with (tmp_path / "logs" / "version_0" / "metrics.csv").open(newline="") as file:
        (row,) = [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(file)]
    gains = [(row[f"test/{key}"] - baseline) / baseline for key, baseline in baselines.items()]
    assert row["test/delta_m"] == pytest.approx(100 * sum(gains) / 2, rel=1e-5)
    assert results["test/delta_m"] == pytest.approx(row["test/delta_m"])
