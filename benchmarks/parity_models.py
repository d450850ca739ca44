"""The cases of the Lightning parity benchmark: models, data (a third of the labels missing), the hand-written
LightningModule, and the brick module with one piece of its step taken out at a time (the ablations).

Every variant trains the same model from the same initial weights (copied from one seeded build) on the same data.
The ablations are ``LightningBrickCollection`` subclasses that each replace one piece of the step with the least
code that computes the same losses, so their paired step times against the full brick module say what that piece
costs:

* ``no_epoch_means``: the epoch means of the losses (:class:`~torchbricks_lightning.lightning.logging.losses.
  LossMeans`) are not kept, nor logged;
* ``plain_ce``: the head's loss is a plain ``nn.CrossEntropyLoss`` brick instead of the counting masked loss, so
  no labelled count is output, read, or used as the epoch weight;
* ``no_batch_naming``: the tuple batch is turned into named inputs by two assignments;
* ``no_dispatch``: the bricks' modules are called directly rather than by the collection's forward;
* ``no_step_logging``: the per-step ``self.log`` calls (``train/{name}_step`` and ``train/loss_step``) are left out;
* ``no_finite_check``: ``check_finite_loss=False``;
* ``step_logs_at_log_steps`` (a prototype, not an ablation): the per-loss ``train/{name}_step`` values are logged
  only on the steps the loggers write (every ``log_every_n_steps``), ``train/loss_step`` every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.common import Settings
from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
from torchbricks_lightning.bag_of_bricks import ConfusionMatrixMetrics, SmallConvNet, create_image_classification_head
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.lightning import LightningBrickCollection

__all__ = [
    "ABLATIONS",
    "IGNORE_INDEX",
    "PROTOTYPES",
    "HandWrittenLightningModule",
    "ModelSpec",
    "bricks_of",
    "dataset_of",
    "lightning_module_of",
    "model_specs",
    "modules_of",
]

NUM_CLASSES = 10
LEARNING_RATE = 1e-3
IGNORE_INDEX = -100
MISSING_FRACTION = 1 / 3
ABLATIONS = {
    "no_epoch_means": "epoch loss means (LossMeans)",
    "plain_ce": "counting masked loss vs plain CE",
    "no_batch_naming": "batch naming",
    "no_dispatch": "dispatch (the collection's forward)",
    "no_step_logging": "step logging (train/*_step)",
    "bricks_no_finite_check": "finite-loss check",
}
"""Ablation variant -> the piece it takes out of the brick module's step."""
PROTOTYPES = {"step_logs_at_log_steps": "per-loss train/{name}_step only on the steps the loggers write"}
"""Variants that prototype a change to the brick module (figures: their gain over the brick module)."""


@dataclass(frozen=True)
class ModelSpec:
    """The data and model of one parity case."""

    name: str
    n_samples: int
    batch_size: int
    epochs: int
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...] = ()
    """The hidden widths of an MLP (empty for the CNN)."""

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_samples // self.batch_size)


def model_specs(settings: Settings) -> dict[str, ModelSpec]:
    """The cases: ``mlp`` and ``cnn`` (the bench's), and ``small`` (MLP 64->128->128->10, about 1 ms per step,
    where the fixed cost per step shows)."""
    if settings.quick:
        return {
            "mlp": ModelSpec("mlp", n_samples=32, batch_size=8, epochs=2, input_shape=(16,), hidden=(16, 16)),
            "cnn": ModelSpec("cnn", n_samples=16, batch_size=8, epochs=2, input_shape=(3, 8, 8)),
            "small": ModelSpec("small", n_samples=16, batch_size=8, epochs=2, input_shape=(8,), hidden=(16, 16)),
        }
    return {
        "mlp": ModelSpec("mlp", n_samples=1024, batch_size=32, epochs=3, input_shape=(32,), hidden=(64, 64)),
        "cnn": ModelSpec("cnn", n_samples=512, batch_size=32, epochs=3, input_shape=(3, 16, 16)),
        "small": ModelSpec("small", n_samples=1024, batch_size=32, epochs=3, input_shape=(64,), hidden=(128, 128)),
    }


def backbone_of(spec: ModelSpec) -> tuple[nn.Module, int]:
    """The backbone of a case and its number of output features."""
    if spec.hidden:
        layers: list[nn.Module] = []
        width = spec.input_shape[0]
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers), width
    backbone = SmallConvNet(in_channels=spec.input_shape[0], widths=(8, 16))
    return backbone, backbone.n_backbone_features


def dataset_of(spec: ModelSpec) -> TensorDataset:
    """Random inputs and class labels, a third of them missing (``IGNORE_INDEX``), the same for every variant."""
    generator = torch.Generator().manual_seed(1)
    raw = torch.randn(spec.n_samples, *spec.input_shape, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (spec.n_samples,), generator=generator)
    missing = torch.randperm(spec.n_samples, generator=generator)[: round(spec.n_samples * MISSING_FRACTION)]
    targets[missing] = IGNORE_INDEX
    return TensorDataset(raw, targets)


def bricks_of(spec: ModelSpec, plain_ce: bool = False) -> BrickCollection:
    """The brick model, built from seed 0: a backbone brick and a classification head (classifier, loss, accuracy).

    With ``plain_ce``, the head's counting masked loss is replaced by ``nn.CrossEntropyLoss`` (same values).
    """
    torch.manual_seed(0)
    backbone, n_features = backbone_of(spec)
    head = create_image_classification_head(NUM_CLASSES, n_features, "features", "targets")
    if plain_ce:
        head["loss"] = BrickLoss(nn.CrossEntropyLoss(), input_names=["./logits", "targets"], output_names=["./loss_ce"])
    return BrickCollection(
        {"backbone": BrickTrainable(backbone, input_names=["raw"], output_names=["features"]), "head": head}
    )


def modules_of(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    """The backbone and classifier of a fresh brick model: the same initial weights for every variant."""
    bricks = bricks_of(spec)
    return bricks["backbone"].model, bricks["head"]["classify"].model  # type: ignore[index,return-value]


class HandWrittenLightningModule(pl.LightningModule):
    """What one writes by hand: the same model, loss, metric and logging as the brick module."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.loss = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)  # the mean over the labelled samples
        self.accuracy = ConfusionMatrixMetrics(NUM_CLASSES, validate_args=False, ignore_index=IGNORE_INDEX)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        raw, targets = batch
        features = self.backbone(raw)
        logits, _probabilities, class_prediction = self.classifier(features)
        loss = self.loss(logits, targets)
        self.accuracy.update(class_prediction, targets)
        batch_size = raw.shape[0]
        self.log("train/head/loss_ce", loss, batch_size=batch_size, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/loss", loss, batch_size=batch_size, on_step=True, on_epoch=True, sync_dist=True, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict({"train/head/accuracy": self.accuracy.compute()["accuracy"].float()}, sync_dist=False)
        self.accuracy.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LEARNING_RATE)


# ------------------------------------------------------------------------------------------------ ablations
class _NoLossMeans:
    """Stands in for ``LossMeans``: keeps nothing."""

    def update(self, *args: Any) -> None:
        pass

    def reset(self, stage: Stage) -> None:
        pass

    def metrics(self, stage: Stage) -> dict[str, Any]:
        return {}


class _NoEpochMeans(LightningBrickCollection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.loss_means  # a submodule: removed before a plain attribute takes its name
        self.loss_means = _NoLossMeans()  # type: ignore[assignment]


class _NoBatchNaming(LightningBrickCollection):
    def named_inputs_of(self, batch: Any, stage: Stage) -> dict[str, Any]:
        return {"raw": batch[0], "targets": batch[1]}


class _NoDispatch(LightningBrickCollection):
    """Calls the bricks' modules directly, in the order the collection would (the train stage only)."""

    def _run(self, named_inputs: Mapping[str, Any], stage: Stage) -> dict[str, Any]:
        if stage is not Stage.TRAIN:
            return super()._run(named_inputs, stage)
        bricks = self.brick_collection
        head = bricks["head"]
        features = bricks["backbone"].model(named_inputs["raw"])  # type: ignore[union-attr]
        logits, probabilities, class_prediction = head["classify"].model(features)  # type: ignore[index]
        targets = named_inputs["targets"]
        head["metrics"].forward(class_prediction, targets, stage=stage)  # type: ignore[index]
        loss, labelled = head["loss"].model(logits, targets)  # type: ignore[index]
        return {
            **named_inputs,
            "features": features,
            "head/logits": logits,
            "head/probabilities": probabilities,
            "head/class_prediction": class_prediction,
            "head/loss_ce": loss,
            "head/labelled": labelled,
        }


class _NoStepLogging(LightningBrickCollection):
    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if not name.endswith("_step"):
            super().log(name, value, *args, **kwargs)


class _StepLogsAtLogSteps(LightningBrickCollection):
    """The proposal: per-loss step values only where a logger writes them (Lightning's own rule, public APIs)."""

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if name.endswith("_step") and name != "train/loss_step":
            trainer = self.trainer
            every = trainer.log_every_n_steps
            if not every or ((trainer.global_step + 1) % every and not trainer.should_stop):
                return
        super().log(name, value, *args, **kwargs)


_BRICK_CLASSES: dict[str, type[LightningBrickCollection]] = {
    "bricks": LightningBrickCollection,
    "bricks_no_finite_check": LightningBrickCollection,
    "plain_ce": LightningBrickCollection,
    "no_epoch_means": _NoEpochMeans,
    "no_batch_naming": _NoBatchNaming,
    "no_dispatch": _NoDispatch,
    "no_step_logging": _NoStepLogging,
    "step_logs_at_log_steps": _StepLogsAtLogSteps,
}


def lightning_module_of(variant: str, spec: ModelSpec) -> pl.LightningModule:
    """The LightningModule of a variant (every one but ``plain``), with the common initial weights."""
    if variant == "handwritten":
        backbone, classifier = modules_of(spec)
        return HandWrittenLightningModule(backbone, classifier)
    return _BRICK_CLASSES[variant](
        bricks_of(spec, plain_ce=variant == "plain_ce"),
        optimizer=partial(torch.optim.Adam, lr=LEARNING_RATE),
        check_finite_loss=variant != "bricks_no_finite_check",
    )
