"""What LightningBrickCollection logs for its losses and metrics: :class:`LossLogging`, the component that owns the
epoch means of the losses, the step values waiting for a logger, and the keys already warned about.

The module calls it from its hooks: :meth:`LossLogging.add_step` from each step, :meth:`LossLogging.log_step_values`
from ``on_train_batch_end``, :meth:`LossLogging.start_epoch` and :meth:`LossLogging.end_epoch` from the epoch hooks.
It logs through anything with Lightning's ``log``/``log_dict`` (:class:`Logs`), and reads the Trainer it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import pytorch_lightning as pl
import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.distributed import is_distributed
from torchbricks_lightning.core.losses import merge_loss_weights
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.lightning.logging.losses import TOTAL_LOSS, LossMeans
from torchbricks_lightning.lightning.logging.metrics import log_matrices, split_metrics
from torchbricks_lightning.lightning.logging.steps import step_values_needed, watches_step_keys

__all__ = ["Logs", "LossLogging", "evaluation_total"]


class Logs(Protocol):
    """What logs a value: a LightningModule's ``log`` and ``log_dict``."""

    def log(
        self,
        name: str,
        value: Any,
        *,
        prog_bar: bool = ...,
        logger: bool | None = ...,
        on_step: bool | None = ...,
        on_epoch: bool | None = ...,
        sync_dist: bool = ...,
        metric_attribute: str | None = ...,
    ) -> None: ...

    def log_dict(self, dictionary: Mapping[str, Any], *, sync_dist: bool = ...) -> None: ...


class LossLogging:
    """The losses' step values and epoch means, and the stages' summarised metrics, logged at the right hooks.

    Args:
        loss_means: the epoch means (a submodule of the LightningModule, so they move with it to its device).
        means_attribute: the name of ``loss_means`` in the LightningModule (``self.log``'s ``metric_attribute`` is
            relative to it).
        loss_weights: the module's weights by loss name that override the bricks' own.

    Example:
        >>> logging = LossLogging(LossMeans(), "loss_means", None)
        >>> logging.every_step  # until a Trainer's fit says otherwise (see watch)
        True
    """

    def __init__(self, loss_means: LossMeans, means_attribute: str, loss_weights: Mapping[str, float] | None) -> None:
        self.loss_means = loss_means
        self.means_attribute = means_attribute
        self.loss_weights = loss_weights
        self.warned_keys: set[str] = set()  # keys already warned about (one warning each)
        self.every_step = True
        """Log each loss's ``train/{name}_step`` in every step (else at the steps :func:`.step_values_needed` picks)."""
        self.pending: dict[str, torch.Tensor] = {}  # this batch's step values, logged at batch end

    def watch(self, callbacks: Iterable[Any], also_watched: Iterable[str] = ()) -> None:
        """Decide, at the start of a fit, when to log the step values: every step if a callback watches a step value
        (it reads it before the loggers write), else only at the steps the loggers write (see :mod:`.steps`)."""
        self.every_step = watches_step_keys(callbacks, also_watched)

    def add_step(
        self,
        log: Logs,
        stage: Stage,
        losses: Mapping[str, torch.Tensor],
        optimised: Mapping[str, torch.Tensor],
        total: torch.Tensor,
        weight: float,
        counts: Mapping[str, torch.Tensor],
    ) -> None:
        """Add the step's losses to the stage's epoch means, each weighted by its labelled count if it reports one
        (else by the batch's ``weight``, its number of samples); in training, log the step's values too.

        A step's values are the ``optimised`` losses, averaged over the processes: under DDP the counted losses are
        normalised by the labelled count of all processes, so that average is the mean over the whole step's labels.
        ``train/loss_step`` (on the progress bar) is logged every step, the losses' step values every step or at
        :meth:`log_step_values` (see :attr:`every_step`).
        """
        means = self.loss_means
        for name, value in losses.items():
            means.update(stage, name, value, counts.get(name, weight))
        if stage is Stage.TRAIN:
            if self.every_step:
                for name, value in optimised.items():
                    log.log(f"train/{name}_step", value, on_step=True, on_epoch=False, sync_dist=True)
            else:
                self.pending = {name: value.detach() for name, value in optimised.items()}
            log.log("train/loss_step", total, on_step=True, on_epoch=False, sync_dist=True, prog_bar=True)
        if stage is Stage.TRAIN or not counts:  # else the epoch total is the weighted sum of the losses' means
            means.update(stage, TOTAL_LOSS, total, weight)

    def log_step_values(self, log: Logs, trainer: pl.Trainer) -> None:
        """Log the batch's step values held back by :meth:`add_step` if :func:`.step_values_needed` (call from
        ``on_train_batch_end``)."""
        pending, self.pending = self.pending, {}
        if pending and step_values_needed(trainer):
            for name, value in pending.items():
                log.log(f"train/{name}_step", value, on_step=True, on_epoch=False, sync_dist=True)

    def start_epoch(self, stage: Stage) -> None:
        """Start the stage's epoch means afresh."""
        self.loss_means.reset(stage)
        self.pending = {}

    def end_epoch(
        self, log: Logs, trainer: pl.Trainer, collection: BrickCollection, stage: Stage
    ) -> dict[str, torch.Tensor] | None:
        """Log the loss means and the metrics (scalars, per-class values, pictures) at a stage's epoch end.

        Returns:
            The summarised metrics of the stage (reset in the bricks), or None during the sanity check (nothing is
            logged then).
        """
        if trainer.world_size > 1:
            # Lightning's progress bar (rank 0 only) computes the epoch's logged values before this hook, and the
            # other ranks would compute them after it. A value logged with sync_dist=True, or a Metric, takes one
            # collective to compute, and the metrics' sync below takes more: compute the logged values here on every
            # rank first, so that each rank runs the collectives in the same order (otherwise DDP deadlocks,
            # Lightning-AI/pytorch-lightning#21264).
            _ = trainer.callback_metrics
        metrics = collection.summarize(stage, reset=True)
        if trainer.sanity_checking:
            self.loss_means.reset(stage)
            return None
        self._log_loss_means(log, collection, stage)
        if not metrics:
            return metrics
        split = split_metrics(stage.value, metrics)
        if split.scalars:
            # torchmetrics has already synchronised the states across processes in compute().
            log.log_dict({name: value.float() for name, value in split.scalars.items()}, sync_dist=False)
        if split.matrices:  # drawn as pictures, titled with their key and the epoch, classes named where known
            log_matrices(trainer, collection, stage, split.matrices, self.warned_keys)
        return metrics

    def _log_loss_means(self, log: Logs, collection: BrickCollection, stage: Stage) -> None:
        """Log the epoch means of the losses as Metric objects: Lightning computes them (torchmetrics syncs their
        states across processes) after the epoch hooks, and resets them."""
        for name, metric in self.loss_means.metrics(stage).items():
            if not metric.update_called:
                continue  # this stage ran no step with this loss (every process alike: each gets batches)
            attribute = f"{self.means_attribute}.{self.loss_means.attribute(stage, name)}"
            key = f"{stage.value}/{name}"
            total = name == TOTAL_LOSS
            if stage is Stage.TRAIN:
                log.log(f"{key}_epoch", metric, on_epoch=True, prog_bar=total, metric_attribute=attribute)
                log.log(key, metric, on_epoch=True, logger=False, metric_attribute=attribute)  # for monitors
            else:
                log.log(key, metric, on_epoch=True, prog_bar=total, metric_attribute=attribute)
        total_of_means = evaluation_total(self.loss_means, stage, collection, self.loss_weights)
        if total_of_means is not None:
            log.log(f"{stage.value}/{TOTAL_LOSS}", total_of_means, on_epoch=True, prog_bar=True, sync_dist=False)


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
    if is_distributed():
        torch.distributed.all_reduce(counts)  # every process runs the epoch end: one collective, in order
    weights = merge_loss_weights(collection.loss_weights(), loss_weights)
    terms = [
        weights.get(name, 1.0) * metric.compute()
        for (name, metric), count in zip(updated.items(), counts.tolist(), strict=True)
        if count > 0
    ]
    return torch.stack(terms).sum() if terms else None
