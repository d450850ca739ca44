"""The metrics path: the per-step cost of a classification head's metric brick against a lower bound.

The candidate is what a training step of ``create_image_classification_head(..., with_confusion_matrix=True)``
spends on metrics: its ``metrics`` brick (one ``ConfusionMatrixMetrics`` reporting accuracy and the confusion
matrix) run by a ``BrickCollection`` in the train stage, as the generated stage function runs it. The lower bound
is a single ``torch.bincount`` that accumulates the confusion matrix (the accuracy follows from its diagonal) on
the same predictions and targets. Target: <= 2x.

For scale, two informational rows: torchmetrics' ``MulticlassAccuracy`` + ``MulticlassConfusionMatrix`` updated
directly (what a head carried before the fused metric), and again with ``validate_args=False``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from benchmarks.common import BenchmarkResult, Figure, Settings, ratio_figure, time_interleaved
from torchbricks_lightning import BrickCollection, BrickMetricSingle, Stage
from torchbricks_lightning.bag_of_bricks import create_image_classification_head

__all__ = ["MAX_RATIO", "BincountConfusion", "metric_bricks", "run"]

MAX_RATIO = 2.0
NUM_CLASSES = 10


class BincountConfusion:
    """The lower bound: one ``torch.bincount`` per step into a confusion matrix (rows: targets, columns: preds)."""

    def __init__(self, num_classes: int, device: str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self.matrix += torch.bincount(targets * self.num_classes + preds, minlength=self.num_classes**2)

    def confusion(self) -> torch.Tensor:
        return self.matrix.view(self.num_classes, self.num_classes)

    def macro_accuracy(self) -> torch.Tensor:
        """Macro-averaged accuracy (mean per-class recall), as ``MulticlassAccuracy`` computes it by default."""
        matrix = self.confusion().double()
        support = matrix.sum(dim=1)
        recall = matrix.diagonal() / support.clamp(min=1)
        return recall[support > 0].mean()


def metric_bricks(device: str = "cpu") -> BrickCollection:
    """A collection holding the metric brick of a 10-class head built with ``with_confusion_matrix=True``.

    Its inputs are ``head/class_prediction`` and ``targets``, as inside a model.
    """
    head = create_image_classification_head(
        NUM_CLASSES, 16, features_name="features", targets_name="targets", with_confusion_matrix=True
    )
    brick = head["metrics"]
    if not isinstance(brick, BrickMetricSingle):
        raise TypeError("create_image_classification_head no longer returns a BrickMetricSingle metrics brick")
    return BrickCollection({"head": {"metrics": brick}}).to(device)


def check_equal(settings: Settings, steps: int = 3) -> dict[str, Any]:
    """After the same updates, the brick's confusion matrix and accuracy equal the bincount lower bound's."""
    collection = metric_bricks(settings.device)
    lower_bound = BincountConfusion(NUM_CLASSES, settings.device)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        preds = torch.randint(0, NUM_CLASSES, (64,), generator=generator).to(settings.device)
        targets = torch.randint(0, NUM_CLASSES, (64,), generator=generator).to(settings.device)
        collection({"head/class_prediction": preds, "targets": targets}, Stage.TRAIN)
        lower_bound.update(preds, targets)
    summary = collection.summarize(Stage.TRAIN)
    return {
        "confusion_equal": bool(torch.equal(summary["head/confusion"].cpu().long(), lower_bound.confusion().cpu())),
        "accuracy_close": bool(
            torch.allclose(summary["head/accuracy"].double().cpu(), lower_bound.macro_accuracy().cpu(), atol=1e-6)
        ),
    }


def run(settings: Settings | None = None) -> BenchmarkResult:
    settings = settings or Settings.full()
    start = time.perf_counter()
    suffix = "" if settings.device == "cpu" else f" [{settings.device}]"
    batch = 32 if settings.quick else 256
    generator = torch.Generator().manual_seed(0)
    preds = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(settings.device)
    targets = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(settings.device)

    collection = metric_bricks(settings.device)
    named_inputs = {"head/class_prediction": preds, "targets": targets}
    lower_bound = BincountConfusion(NUM_CLASSES, settings.device)
    plain = (MulticlassAccuracy(NUM_CLASSES).to(settings.device), MulticlassConfusionMatrix(NUM_CLASSES))
    plain[1].to(settings.device)
    unchecked = (
        MulticlassAccuracy(NUM_CLASSES, validate_args=False).to(settings.device),
        MulticlassConfusionMatrix(NUM_CLASSES, validate_args=False).to(settings.device),
    )

    def bricks_step() -> None:
        collection(named_inputs, Stage.TRAIN)

    def torchmetrics_step() -> None:
        plain[0].update(preds, targets)
        plain[1].update(preds, targets)

    def unchecked_step() -> None:
        unchecked[0].update(preds, targets)
        unchecked[1].update(preds, targets)

    samples = time_interleaved(
        {
            "bricks": bricks_step,
            "bincount": lambda: lower_bound.update(preds, targets),
            "torchmetrics": torchmetrics_step,
            "torchmetrics_unchecked": unchecked_step,
        },
        settings,
    )
    details: dict[str, Any] = {"equal": check_equal(settings), "samples": samples, "batch": batch}
    figures: list[Figure] = [
        ratio_figure(
            f"metrics{suffix}: head metric brick (accuracy + confusion matrix) per step",
            samples,
            "bricks",
            "bincount",
            unit="us/step",
            scale=1e6,
            max_ratio=MAX_RATIO,
            notes=(
                f"batch {batch}, {NUM_CLASSES} classes; a BrickCollection runs the head's ConfusionMatrixMetrics "
                "brick; baseline: one torch.bincount into a confusion matrix"
            ),
        ),
        ratio_figure(
            f"metrics{suffix}: torchmetrics accuracy + confusion matrix updated directly (no brick)",
            samples,
            "torchmetrics",
            "bincount",
            unit="us/step",
            scale=1e6,
            notes="informational: MulticlassAccuracy.update + MulticlassConfusionMatrix.update, validate_args=True",
        ),
        ratio_figure(
            f"metrics{suffix}: the same torchmetrics, validate_args=False",
            samples,
            "torchmetrics_unchecked",
            "bincount",
            unit="us/step",
            scale=1e6,
            notes="informational: without torchmetrics' input checks",
        ),
    ]
    return BenchmarkResult("metrics", figures, details, time.perf_counter() - start)
