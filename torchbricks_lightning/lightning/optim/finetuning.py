"""Freeze bricks for the first epochs of training, then train them: ``unfreeze={"backbone": 3}``.

``LightningBrickCollection(unfreeze={pattern: epoch})`` keeps the bricks a pattern matches (the same patterns as
``param_groups``, see :mod:`~torchbricks_lightning.lightning.optim.optimizers`; when two patterns match a brick,
the first wins) frozen in epochs ``0 .. epoch - 1`` and trains them from epoch ``epoch`` on (Lightning counts epochs
from 0). While frozen, a brick's parameters do not require gradients and the brick runs in eval mode (every module
in it, batch norm included), so its batch norm layers normalise with their running statistics and do not update
them, and its dropout is off; when it unfreezes it goes back to train mode, and its batch norm statistics update
again. Gradients still flow through a frozen brick to trainable bricks before it. Its learning rate and other options
are those of its parameter group (``param_groups=[{"bricks": "backbone", "lr": 1e-4}]``).

Freezing is for pretrained bricks. A frozen brick that was randomly initialised stays a fixed random function until
it unfreezes, and its batch norm layers normalise with their initial statistics (mean 0, variance 1) whatever the
data: the bricks after it then learn little or nothing. Whether weights are pretrained cannot be told in general,
but batch norm statistics can: when training starts, a frozen brick holding a batch norm layer whose running
statistics are still exactly 0 and 1 (never trained, never loaded) gets one warning that names it and the fix (load
pretrained weights, e.g. ``TorchvisionBackbone(weights="DEFAULT")``, or do not freeze it).

How it works, and why not Lightning's ``BaseFinetuning``. The frozen bricks' parameters are in the optimiser from the
start, in their group, and simply have no gradients while frozen (torch's optimisers skip parameters without a
gradient: no update, no weight decay, no momentum). ``BaseFinetuning`` instead adds a parameter group when a brick
unfreezes, which breaks three things: a learning-rate scheduler built at the start knows only the groups of the
start (its ``base_lrs``), so it never schedules the new group; a checkpoint written after the unfreeze has one group
more than the optimiser a resumed run builds, and Lightning restores the optimiser state before any callback could
add the group; and it unfreezes in ``on_train_epoch_start``, which a run resumed mid-epoch does not call. Here the
groups never change, so schedulers (``LambdaLR`` with one function per group, for a warm-up that starts at the
unfreeze) and resumes work, and the frozen state is a function of the epoch alone: it is set again when training
starts (also after a mid-epoch resume) and at each epoch start.

The schedule is a callback, :class:`UnfreezeSchedule`, that the module adds to its Trainer itself
(``configure_callbacks``, see :meth:`~torchbricks_lightning.lightning.optim.optimizers.Optimisation.callbacks`). When
training stops, normally or by an exception, the bricks are made trainable and put back in the module's mode, as
they were built.

Under DDP, use ``strategy="ddp_find_unused_parameters_true"``: DDP expects a gradient for every parameter that
required one when it wrapped the model, and a frozen brick's parameters get none.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from typing_extensions import override

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.lightning.optim.param_groups import ScheduledBrick

__all__ = ["UnfreezeSchedule"]


class UnfreezeSchedule(pl.Callback):
    """Keep bricks frozen, in eval mode, until their epoch; added by the module for its ``unfreeze`` argument.

    Args:
        schedule: what :func:`~torchbricks_lightning.lightning.optim.param_groups.plan_unfreeze` returns.
        collection: the bricks the schedule names.
    """

    def __init__(self, schedule: Mapping[str, ScheduledBrick], collection: BrickCollection) -> None:
        self.schedule = dict(schedule)
        self.collection = collection
        self._warned_batch_norm = False

    def warn_beyond(self, trainer: pl.Trainer) -> None:
        """Warn about bricks that would never train: their epoch is not below ``max_epochs``."""
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            return  # step-based or endless training: the last epoch is unknown
        never = {path: epoch for path, (epoch, _) in self.schedule.items() if epoch >= max_epochs}
        if never:
            warnings.warn(
                f"unfreeze: {never} start training at an epoch the run never reaches (max_epochs={max_epochs}, so "
                f"epochs 0 to {max_epochs - 1}): they stay frozen for the whole run. Lower their epoch, or raise "
                "max_epochs.",
                UserWarning,
                stacklevel=2,
            )

    def apply(self, training: bool, epoch: int) -> None:
        """Freeze (and put in eval mode) the bricks whose epoch has not come, unfreeze the others (in train mode if
        ``training``, the mode of the module)."""
        bricks = dict(self.collection.named_bricks())
        for path, (start, names) in self.schedule.items():
            brick = bricks[path]
            frozen = epoch < start
            for name, parameter in brick.named_parameters():
                if name in names:
                    parameter.requires_grad_(not frozen)
            brick.train(not frozen and training)

    def warn_untrained_batch_norm(self, epoch: int) -> None:
        """Warn once about the bricks frozen in ``epoch`` whose batch norm statistics were never trained or loaded."""
        bricks = dict(self.collection.named_bricks())
        frozen = [path for path, (start, _) in self.schedule.items() if epoch < start]
        untrained = {path: layers for path in frozen if (layers := _untrained_batch_norm(bricks[path]))}
        if not untrained or self._warned_batch_norm:
            return
        self._warned_batch_norm = True
        described = ", ".join(
            f"{path!r} ({', '.join(layers[:3])}{', ...' if len(layers) > 3 else ''})"
            for path, layers in untrained.items()
        )
        warnings.warn(
            f"Frozen bricks with batch norm statistics at their initial values (running mean 0, variance 1): "
            f"{described}. They look randomly initialised rather than pretrained. A frozen brick runs in eval mode, "
            "so until its unfreeze epoch it is a fixed random function whose batch norm ignores the data, and the "
            "bricks after it learn little. Load pretrained weights into it (e.g. TorchvisionBackbone(weights="
            "'DEFAULT')), or leave it out of unfreeze to train it from the start.",
            UserWarning,
            stacklevel=2,
        )

    def release(self, training: bool) -> None:
        """Make every scheduled brick trainable again, in the module's mode (as built)."""
        self.apply(training, epoch=max((start for start, _ in self.schedule.values()), default=0))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(pl_module.training, trainer.current_epoch)  # also the epoch a mid-epoch resume continues
        self.warn_untrained_batch_norm(trainer.current_epoch)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(pl_module.training, trainer.current_epoch)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING.value:
            self.release(pl_module.training)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.release(pl_module.training)


def _untrained_batch_norm(brick: nn.Module) -> list[str]:
    """The batch norm layers of ``brick`` whose running statistics are exactly their initial values (0 and 1)."""
    return [
        name or type(module).__name__
        for name, module in brick.named_modules()
        if isinstance(module, _BATCH_NORMS)
        and module.running_mean is not None
        and module.running_var is not None
        and not bool(torch.count_nonzero(module.running_mean))
        and bool(torch.all(module.running_var == 1))
    ]


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
"""The batch norm layers with running statistics (lazy ones have none before their first batch)."""
