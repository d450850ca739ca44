"""What ``LightningBrickCollection`` does for multi-task training: labelled counts, the balancer's hooks and logs.

The logic lives in :mod:`torchbricks_lightning.multitask` (which never imports Lightning); this module holds the
few steps that need the LightningModule: checking the constructor arguments, finding each loss's labelled count in
a step's outputs, handing the balancer the epoch means of its losses and logging ``train/balance/...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.losses import merge_loss_weights
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError
from torchbricks_lightning.lightning.logging.losses import TOTAL_LOSS, LossMeans
from torchbricks_lightning.multitask.balancers import LossBalancer
from torchbricks_lightning.multitask.labels import labelled_count_names
from torchbricks_lightning.multitask.score import DeltaM

__all__ = [
    "LabelledCounts",
    "check_multitask_arguments",
    "drop_balancer_state",
    "end_balancer_epoch",
    "evaluation_total",
    "log_balance",
]

_BALANCER_PREFIX = "loss_balancer."


def check_multitask_arguments(
    collection: BrickCollection,
    loss_weights: Mapping[str, float] | None,
    loss_balancer: LossBalancer | None,
    delta_m: DeltaM | None,
) -> None:
    """Check the types, set the balancer up on the collection's training losses and check Δm's metric keys.

    Raises:
        BrickDefinitionError: an argument has the wrong type.
        ConfigError: the balancer names an unknown loss or shared tensor, or Δm an unknown metric key.
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


def end_balancer_epoch(module: pl.LightningModule, balancer: LossBalancer, loss_means: LossMeans) -> None:
    """Hand the balancer the epoch means of its losses (synced over the processes, so the same everywhere) and log
    its weights if they change once per epoch."""
    means = loss_means.metrics(Stage.TRAIN)
    balancer.on_train_epoch_end({name: float(means[name].compute()) for name in balancer.loss_names if name in means})
    if not balancer.log_every_step:
        log_balance(module, balancer, on_step=False)


def log_balance(module: pl.LightningModule, balancer: LossBalancer, on_step: bool) -> None:
    """Log the balancer's values as ``train/balance/{name}`` (the same on every process: no sync).

    Per-step values are logged at the steps whose values the loggers write (every ``log_every_n_steps`` optimizer
    steps, as Lightning counts them): a ``self.log`` call costs about as much as a small model's loss, and values
    logged in between would never reach a logger.
    """
    if on_step:
        trainer = module.trainer
        every = int(getattr(trainer, "log_every_n_steps", 1))  # set by the Trainer from its argument
        if not every or (trainer.global_step % every and not trainer.is_last_batch):
            return
    for name, value in balancer.logged_values().items():
        module.log(f"train/balance/{name}", value, on_step=on_step, on_epoch=not on_step)


def drop_balancer_state(checkpoint: dict[str, Any]) -> None:
    """Remove the balancer's weights (``loss_balancer.*``) from a checkpoint's ``state_dict``, in place.

    A balancer's state (learned log-variances, loss histories) only matters for training; a module rebuilt to
    predict or export (``load_from_checkpoint(path, brick_collection=...)``) has no balancer and loads the rest.
    """
    state = checkpoint.get("state_dict")
    if isinstance(state, dict):
        for key in [key for key in state if isinstance(key, str) and key.startswith(_BALANCER_PREFIX)]:
            del state[key]


def evaluation_total(
    loss_means: LossMeans, stage: Stage, collection: BrickCollection, loss_weights: Mapping[str, float] | None
) -> torch.Tensor | None:
    """The epoch total of a validation or test stage with counted losses: ``sum_i w_i mean_i`` (else None).

    With partial labels each loss's epoch mean is over its labelled elements, so the total is the static-weighted sum
    of those means, whatever the batches (or the processes' shards) held. A loss without a single labelled element in
    the epoch (on any process) has no mean (its own key is NaN) and is left out of the total. Without counted losses
    the module keeps the total's own epoch mean, weighted by batch size, which is the same sum.
    """
    means = loss_means.metrics(stage)
    if stage is Stage.TRAIN or (TOTAL_LOSS in means and means[TOTAL_LOSS].update_called):
        return None
    updated = {name: metric for name, metric in means.items() if name != TOTAL_LOSS and metric.update_called}
    if not updated:
        return None
    counts = torch.stack([metric.weight.detach().double() for metric in updated.values()])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)  # every process runs the epoch end: one collective, in order
    weights = merge_loss_weights(collection.loss_weights(), loss_weights)
    terms = [
        weights.get(name, 1.0) * metric.compute()
        for (name, metric), count in zip(updated.items(), counts.tolist(), strict=True)
        if count > 0
    ]
    return torch.stack(terms).sum() if terms else None
