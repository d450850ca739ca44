"""What ``LightningBrickCollection`` does for multi-task training: :class:`MultiTask`, the component that owns the
loss balancer, Δm and the labelled counts.

The logic lives in :mod:`torchbricks_lightning.multitask` (which never imports Lightning); this module holds the
steps the LightningModule's hooks call: checking the constructor arguments, finding each loss's labelled count in
a step's outputs, the optimised total, handing the balancer the epoch means of its losses, and logging
``train/balance/...``, ``validation/delta_m`` and ``test/delta_m``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.losses import merge_loss_weights
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError
from torchbricks_lightning.lightning.logging import warning_filters
from torchbricks_lightning.lightning.logging.epoch import Logs
from torchbricks_lightning.lightning.logging.losses import LossMeans
from torchbricks_lightning.lightning.logging.steps import step_values_needed
from torchbricks_lightning.multitask.balancers import LossBalancer
from torchbricks_lightning.multitask.labels import labelled_count_names, scale_to_global_counts
from torchbricks_lightning.multitask.score import DeltaM, metric_directions

__all__ = [
    "BALANCE_PREFIX",
    "DELTA_M_KEY",
    "TEST_DELTA_M_KEY",
    "LabelledCounts",
    "MultiTask",
    "check_multitask_arguments",
    "drop_balancer_state",
]

_BALANCER_PREFIX = "loss_balancer."
BALANCE_PREFIX = "train/balance/"
"""The balancer's values are logged as ``train/balance/{name}``."""
DELTA_M_KEY = "validation/delta_m"
TEST_DELTA_M_KEY = "test/delta_m"
"""Δm of the test metrics, from the same baselines, logged at the end of ``trainer.test``."""


def check_multitask_arguments(
    collection: BrickCollection,
    loss_weights: Mapping[str, float] | None,
    loss_balancer: LossBalancer | None,
    delta_m: DeltaM | None,
) -> None:
    """Check the types, set the balancer up on the collection's training losses and check Δm's metric keys and
    their directions (taken from the metric objects).

    Raises:
        BrickDefinitionError: an argument has the wrong type.
        ConfigError: the balancer names an unknown loss or shared tensor, or Δm an unknown metric key, a direction
            that disagrees with its metric's, or a metric whose direction neither its metric nor the user gives.
    """
    if loss_balancer is not None and not isinstance(loss_balancer, LossBalancer):
        raise BrickDefinitionError(
            "Expected loss_balancer to be a LossBalancer (e.g. torchbricks_lightning.multitask.UncertaintyWeighting()"
            f"), but got {type(loss_balancer).__name__}."
        )
    if delta_m is not None and not isinstance(delta_m, DeltaM):
        raise BrickDefinitionError(
            f"Expected delta_m to be a torchbricks_lightning.multitask.DeltaM, but got {type(delta_m).__name__}."
        )
    if loss_balancer is not None:
        loss_balancer.setup(collection, merge_loss_weights(collection.loss_weights(), loss_weights))
    if delta_m is not None:
        delta_m.check_keys(collection.metric_keys())
        delta_m.check_directions(metric_directions(collection))


class LabelledCounts:
    """The labelled count of each loss that reports one, read from a step's outputs.

    The loss-to-count names are found once per structure of the bricks (the collection's node tuple changes when
    they change), so a step pays one dict lookup per counted loss.
    """

    def __init__(self) -> None:
        self._nodes: object = None
        self._names: dict[str, str] = {}

    def __call__(self, collection: BrickCollection, named_outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        nodes = collection.brick_nodes()
        if nodes is not self._nodes:
            self._names = labelled_count_names(collection)
            self._nodes = nodes
        return {loss: named_outputs[count] for loss, count in self._names.items() if count in named_outputs}

    def __getstate__(self) -> dict[str, Any]:
        return {"_nodes": None, "_names": {}}


class MultiTask:
    """The module's multi-task part: the loss balancer, Δm and the labelled counts of the losses.

    The balancer is also a submodule of the LightningModule (its parameters are trained, its state checkpointed under
    ``loss_balancer.*``); this component holds the same object and calls it from the module's hooks.

    Args:
        collection: the bricks (the balancer is set up on their training losses, Δm's keys checked against them).
        loss_weights: the module's weights by loss name that override the bricks' own.
        balancer: None for the static weights, or a :class:`~torchbricks_lightning.multitask.LossBalancer`.
        delta_m: a :class:`~torchbricks_lightning.multitask.DeltaM`, logged as ``validation/delta_m`` and
            ``test/delta_m``.

    Raises:
        BrickDefinitionError: an argument has the wrong type.
        ConfigError: the balancer names an unknown loss or shared tensor, or Δm an unknown metric key or a wrong
            or unknown direction.
    """

    def __init__(
        self,
        collection: BrickCollection,
        loss_weights: Mapping[str, float] | None,
        balancer: LossBalancer | None,
        delta_m: DeltaM | None,
    ) -> None:
        check_multitask_arguments(collection, loss_weights, balancer, delta_m)
        self.loss_weights = loss_weights
        self.balancer = balancer
        self.delta_m = delta_m
        self.labelled_counts = LabelledCounts()

    def also_logged_keys(self) -> list[str]:
        """The keys logged during fit besides the bricks' losses and metrics, for the key checks: the balancer's
        ``train/balance/{name}`` (the names of its :meth:`~torchbricks_lightning.multitask.LossBalancer.logged_values`:
        its losses, and ``conflicts`` for PCGrad) and ``validation/delta_m``."""
        balanced = [] if self.balancer is None else list(self.balancer.logged_values())
        return [
            *(f"{BALANCE_PREFIX}{name}" for name in balanced),
            *([DELTA_M_KEY] if self.delta_m is not None else []),
        ]

    def training_pass(self) -> contextlib.AbstractContextManager[Any]:
        """The context of a training forward pass: a gradient-level balancer branches the shared tensor in it."""
        return self.balancer.training_pass() if self.balancer is not None else contextlib.nullcontext()

    def total(
        self, collection: BrickCollection, stage: Stage, losses: Mapping[str, torch.Tensor], counts: Mapping[str, Any]
    ) -> tuple[Mapping[str, torch.Tensor], torch.Tensor]:
        """The losses to optimise and their total: in training normalised by the global labelled counts and balanced
        by the balancer; else the static-weighted total."""
        training = stage is Stage.TRAIN
        optimised = scale_to_global_counts(losses, counts) if training and counts else losses
        if training and self.balancer is not None:
            return optimised, self.balancer(optimised)
        return optimised, collection.total_loss(optimised, self.loss_weights)

    def non_finite_hint(self) -> str:
        """What to check when the training total is not finite: the balancer's state first, when there is one."""
        if self.balancer is None:
            return "Lower the learning rate, check the inputs for NaN, or add gradient clipping."
        return (
            f"The losses are balanced by {self.balancer.describe_state()}: check that state before lowering the "
            "learning rate; else check the inputs for NaN, or add gradient clipping."
        )

    def start_train_epoch(self) -> None:
        if self.balancer is not None:
            self.balancer.on_train_epoch_start()

    def end_train_epoch(self, log: Logs, loss_means: LossMeans) -> None:
        """Hand the balancer the epoch means of its losses (synced over the processes, so the same everywhere) and
        log its weights if they change once per epoch."""
        balancer = self.balancer
        if balancer is None:
            return
        means = loss_means.metrics(Stage.TRAIN)
        balancer.on_train_epoch_end(
            {name: float(means[name].compute()) for name in balancer.loss_names if name in means}
        )
        if not balancer.log_every_step:
            values = balancer.logged_values()
            warning_filters.install([f"{BALANCE_PREFIX}{name}" for name in values])  # synced: no advice to sync
            for name, value in values.items():
                log.log(f"{BALANCE_PREFIX}{name}", value, on_step=False, on_epoch=True)

    def log_step(self, log: Logs, trainer: pl.Trainer) -> None:
        """Log the balancer's per-step values as ``train/balance/{name}`` (the same on every process: no sync) at
        the steps :func:`~.logging.steps.step_values_needed` picks (call from ``on_train_batch_end``)."""
        balancer = self.balancer
        if balancer is None or not balancer.log_every_step or not step_values_needed(trainer):
            return
        for name, value in balancer.logged_values().items():
            log.log(f"{BALANCE_PREFIX}{name}", value, on_step=True, on_epoch=False)

    def log_delta_m(
        self, log: Logs, metrics: Mapping[str, torch.Tensor] | None, stage: Stage = Stage.VALIDATION
    ) -> None:
        """Log Δm of a validation or test epoch's (synced) metrics, as ``{stage}/delta_m``."""
        if self.delta_m is None or not metrics:
            return
        key = TEST_DELTA_M_KEY if stage is Stage.TEST else DELTA_M_KEY
        if stage is Stage.TEST:
            warning_filters.install([key])  # synced metrics: no advice to sync (validation's is installed at setup)
        log.log(key, self.delta_m(metrics), sync_dist=False)

    def drop_unused_state(self, checkpoint: dict[str, Any]) -> None:
        """Without a balancer, drop a checkpoint's balancer weights (see :func:`drop_balancer_state`)."""
        if self.balancer is None:
            drop_balancer_state(checkpoint)


def drop_balancer_state(checkpoint: dict[str, Any]) -> None:
    """Remove the balancer's weights (``loss_balancer.*``) from a checkpoint's ``state_dict``, in place.

    A balancer's state (learned log-variances, loss histories) only matters for training; a module rebuilt to
    predict or export (``load_from_checkpoint(path, brick_collection=...)``) has no balancer and loads the rest.
    """
    state = checkpoint.get("state_dict")
    if isinstance(state, dict):
        for key in [key for key in state if isinstance(key, str) and key.startswith(_BALANCER_PREFIX)]:
            del state[key]
