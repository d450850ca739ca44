"""Freeze bricks for the first epochs of training, then train them: ``unfreeze={"backbone": 3}``.

``LightningBrickCollection(unfreeze={pattern: epoch})`` keeps the bricks a pattern matches (the same patterns as
``param_groups``, see :mod:`~torchbricks_lightning.lightning.optim.optimizers`; when two patterns match a brick,
the first wins) frozen in epochs ``0 .. epoch - 1`` and trains them from epoch ``epoch`` on (Lightning counts epochs
from 0). While frozen, a brick's parameters do not require gradients and the brick runs in eval mode, so its batch norm
statistics stay fixed and its dropout is off; when it unfreezes it goes back to train mode. Gradients still flow
through a frozen brick to trainable bricks before it. Its learning rate and other options are those of its
parameter group (``param_groups=[{"bricks": "backbone", "lr": 1e-4}]``).

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
from pytorch_lightning.trainer.states import TrainerFn
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

    def release(self, training: bool) -> None:
        """Make every scheduled brick trainable again, in the module's mode (as built)."""
        self.apply(training, epoch=max((start for start, _ in self.schedule.values()), default=0))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(pl_module.training, trainer.current_epoch)  # also the epoch a mid-epoch resume continues

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
