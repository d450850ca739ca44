"""What LightningBrickCollection logs: each step's losses, and at each epoch end the loss means, the metrics and Δm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.lightning.logging.losses import TOTAL_LOSS
from torchbricks_lightning.lightning.logging.metrics import log_matrices, split_metrics
from torchbricks_lightning.lightning.task_balancing import evaluation_total

if TYPE_CHECKING:
    from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["log_epoch", "log_step_losses"]


def log_step_losses(
    module: LightningBrickCollection,
    stage: Stage,
    losses: Mapping[str, torch.Tensor],
    optimised: Mapping[str, torch.Tensor],
    total: torch.Tensor,
    weight: float,
    counts: Mapping[str, torch.Tensor],
) -> None:
    """Add the step's losses to the stage's epoch means, each weighted by its labelled count if it reports one
    (else by the batch's ``weight``, its number of samples); in training, log each step's values too.

    A step's values are the ``optimised`` losses, averaged over the processes: under DDP the counted losses are
    normalised by the labelled count of all processes, so that average is the mean over the whole step's labels.
    """
    means = module.loss_means
    for name, value in losses.items():
        means.update(stage, name, value, counts.get(name, weight))
    if stage is Stage.TRAIN:
        for name, value in optimised.items():
            module.log(f"train/{name}_step", value, on_step=True, on_epoch=False, sync_dist=True)
        module.log("train/loss_step", total, on_step=True, on_epoch=False, sync_dist=True, prog_bar=True)
    if stage is Stage.TRAIN or not counts:  # else the epoch total is the weighted sum of the losses' means
        means.update(stage, TOTAL_LOSS, total, weight)


def log_epoch(module: LightningBrickCollection, stage: Stage) -> None:
    """At a stage's epoch end: log the loss means, the metrics (scalars, per-class values, pictures) and Δm."""
    if module.trainer.world_size > 1:
        # Lightning's progress bar (rank 0 only) computes the epoch's logged values before this hook, and the
        # other ranks would compute them after it. A value logged with sync_dist=True, or a Metric, takes one
        # collective to compute, and the metrics' sync below takes more: compute the logged values here on every
        # rank first, so that each rank runs the collectives in the same order (otherwise DDP deadlocks,
        # Lightning-AI/pytorch-lightning#21264).
        _ = module.trainer.callback_metrics
    metrics = module.brick_collection.summarize(stage, reset=True)
    if module.trainer.sanity_checking:
        module.loss_means.reset(stage)
        return
    _log_loss_means(module, stage)
    if module.delta_m is not None and stage is Stage.VALIDATION and metrics:
        module.log("validation/delta_m", module.delta_m(metrics), sync_dist=False)  # from synced metrics
    if not metrics:
        return
    split = split_metrics(stage.value, metrics)
    if split.scalars:
        # torchmetrics has already synchronised the states across processes in compute().
        module.log_dict({name: value.float() for name, value in split.scalars.items()}, sync_dist=False)
    if split.matrices:  # drawn as pictures, titled with their key and the epoch, classes named where known
        log_matrices(module, module.brick_collection, stage, split.matrices, module.warned_keys)


def _log_loss_means(module: LightningBrickCollection, stage: Stage) -> None:
    """Log the epoch means of the losses as Metric objects: Lightning computes them (torchmetrics syncs their
    states across processes) after the epoch hooks, and resets them."""
    for name, metric in module.loss_means.metrics(stage).items():
        if not metric.update_called:
            continue  # this stage ran no step with this loss (every process alike: each gets batches)
        attribute = f"loss_means.{module.loss_means.attribute(stage, name)}"
        key = f"{stage.value}/{name}"
        total = name == TOTAL_LOSS
        if stage is Stage.TRAIN:
            module.log(f"{key}_epoch", metric, on_epoch=True, prog_bar=total, metric_attribute=attribute)
            module.log(key, metric, on_epoch=True, logger=False, metric_attribute=attribute)  # for monitors
        else:
            module.log(key, metric, on_epoch=True, prog_bar=total, metric_attribute=attribute)
    total_of_means = evaluation_total(module.loss_means, stage, module.brick_collection, module.loss_weights)
    if total_of_means is not None:
        module.log(f"{stage.value}/{TOTAL_LOSS}", total_of_means, on_epoch=True, prog_bar=True, sync_dist=False)
