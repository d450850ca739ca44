"""The optimiser and scheduler of a :class:`~torchbricks_lightning.lightning.module.LightningBrickCollection`.

``configure_optimizers`` calls the optimiser factory (Lightning's ``OptimizerCallable``: ``partial(torch.optim.SGD,
lr=0.1)`` in Python, ``class_path``/``init_args`` in a recipe) once, with the parameter groups of
:mod:`~torchbricks_lightning.lightning.optim.param_groups` (or, when nothing asks for groups, the flat list of the
parameters that require gradients), then the scheduler factory with that optimiser: the scheduler acts on every group.

**The learning rate the LR finder tunes.** The module's ``lr`` attribute (its ``lr`` argument) is the learning rate
of the default group; None keeps the optimiser's own (the factory's ``lr``). Lightning's LR finder
(``Tuner.lr_find(module, update_attr=True)``, or the ``LearningRateFinder`` callback in a recipe) sweeps every group
with the same learning rate and then sets ``module.lr`` to its suggestion, which the next ``configure_optimizers``
uses. A group's ``lr_scale`` is a factor of that base learning rate (``module.lr``, or the optimiser's own when it
is None), so ``{"bricks": "backbone", "lr_scale": 0.1}`` keeps the backbone ten times slower than the tuned rate; a
group with an absolute ``lr`` keeps it.

Mistakes are found when the module is built (:func:`plan_optimisation`), before a Trainer writes anything: patterns
that match no brick or only frozen ones, and group options the optimiser does not take (torch's optimisers keep
unknown group keys silently). For the options the factory is called once on a dummy parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from typing_extensions import override

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, did_you_mean
from torchbricks_lightning.lightning.optim.finetuning import UnfreezeSchedule
from torchbricks_lightning.lightning.optim.param_groups import (
    LR_SCALE,
    GroupSpec,
    ScheduledBrick,
    param_groups_for,
    parse_param_groups,
    plan_unfreeze,
    positive_number,
)

__all__ = [
    "GroupLearningRates",
    "Optimisation",
    "OptimisationPlan",
    "build_optimizer",
    "plan_optimisation",
]


@dataclass(frozen=True)
class OptimisationPlan:
    """What the optimiser is built from besides the factories and ``lr``: plain data, checked at construction."""

    groups: tuple[GroupSpec, ...] = ()
    decay_norms_and_biases: bool = True
    scheduled: Mapping[str, ScheduledBrick] = field(default_factory=dict)
    """The bricks the unfreeze schedule freezes (see :func:`~.param_groups.plan_unfreeze`)."""

    def plain(self, lr: float | None) -> bool:
        """Whether the optimiser gets the flat list of the parameters that require gradients (nothing to arrange)."""
        return not self.groups and lr is None and self.decay_norms_and_biases and not self.scheduled


def _probe(optimizer_factory: Callable[..., Any]) -> torch.optim.Optimizer:
    """The optimiser the factory builds for one dummy parameter, to read the options it takes (``defaults``)."""
    optimizer = optimizer_factory([nn.Parameter(torch.zeros(1))])
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise BrickDefinitionError(
            f"Expected the optimizer factory to return a torch.optim.Optimizer, but it returned {type(optimizer)}."
        )
    return optimizer


def plan_optimisation(
    collection: BrickCollection,
    optimizer_factory: Callable[..., Any],
    param_groups: Sequence[Mapping[str, Any]] | None = None,
    lr: float | None = None,
    decay_norms_and_biases: bool = True,
    unfreeze: Mapping[str, int] | None = None,
) -> OptimisationPlan:
    """Check the module's optimisation arguments against the bricks and the optimiser, and keep them as a plan.

    Raises:
        BrickDefinitionError: an argument of the wrong type.
        ConfigError: ``lr`` not positive; a pattern that matches no brick, or only frozen ones; a group that gets no
            parameter (an earlier pattern took them all); an option the optimiser does not take; ``lr``,
            ``lr_scale`` or ``decay_norms_and_biases=False`` with an optimiser without ``lr`` or ``weight_decay``.

    Example:
        >>> from functools import partial
        >>> from torchbricks_lightning import BrickTrainable
        >>> collection = BrickCollection({"backbone": BrickTrainable(nn.Linear(2, 2), ["x"], ["y"])})
        >>> plan_optimisation(collection, partial(torch.optim.SGD, lr=0.1), [{"bricks": "backbone", "lr": 0.01}])
        OptimisationPlan(groups=(GroupSpec(name='backbone', ...),), decay_norms_and_biases=True, scheduled={})
        >>> try:
        ...     plan_optimisation(collection, partial(torch.optim.SGD), [{"bricks": "backbone", "momentun": 0.9}])
        ... except ConfigError as error:
        ...     print(error)
        param_groups[0] ('backbone') sets ['momentun'], which SGD does not take. Did you mean 'momentum'? ...
    """
    if lr is not None:
        positive_number(lr, "lr")
    plan = OptimisationPlan(
        parse_param_groups(param_groups), bool(decay_norms_and_biases), plan_unfreeze(collection, unfreeze)
    )
    param_groups_for(collection, collection, plan.groups, lr, plan.decay_norms_and_biases, plan.scheduled)
    if plan.plain(lr):
        return plan
    optimizer = _probe(optimizer_factory)
    known = sorted(optimizer.defaults)
    kind = type(optimizer).__name__
    for spec in plan.groups:
        unknown = [key for key in spec.options if key not in optimizer.defaults]
        if unknown:
            raise ConfigError(
                f"{spec.where} ({spec.name!r}) sets {unknown}, which {kind} does not take."
                f"{did_you_mean(unknown[0], [*known, LR_SCALE])} {kind} takes {known}, and a group also takes "
                f"'{LR_SCALE}' (a factor of the base learning rate)."
            )
    if "lr" not in optimizer.defaults and (lr is not None or any(spec.lr_scale for spec in plan.groups)):
        raise ConfigError(f"lr and lr_scale set learning rates, but {kind} has no 'lr' option ({known}).")
    if not plan.decay_norms_and_biases and "weight_decay" not in optimizer.defaults:
        raise ConfigError(
            f"decay_norms_and_biases=False takes biases and norms out of weight decay, but {kind} has no "
            f"'weight_decay' option ({known})."
        )
    return plan


def _groups(
    optimizer_factory: Callable[..., Any],
    module: nn.Module,
    collection: BrickCollection,
    plan: OptimisationPlan,
    lr: float | None,
) -> list[dict[str, Any]]:
    """The parameter groups of ``plan`` with ``lr_scale`` resolved against ``lr`` (or the optimiser's own)."""
    groups = param_groups_for(module, collection, plan.groups, lr, plan.decay_norms_and_biases, plan.scheduled)
    scales = [group.pop(LR_SCALE, None) for group in groups]
    if any(scale is not None for scale in scales):
        base = lr if lr is not None else _probe(optimizer_factory).defaults["lr"]
        for group, scale in zip(groups, scales, strict=True):
            if scale is not None:
                group["lr"] = base * scale
    return groups


def build_optimizer(
    optimizer_factory: Callable[..., Any],
    module: nn.Module,
    collection: BrickCollection,
    plan: OptimisationPlan,
    lr: float | None,
) -> Any:
    """The optimiser over the groups of ``plan`` (the flat list of trainable parameters when it is plain)."""
    if plan.plain(lr):
        return optimizer_factory([parameter for parameter in module.parameters() if parameter.requires_grad])
    return optimizer_factory(_groups(optimizer_factory, module, collection, plan, lr))


class GroupLearningRates(pl.Callback):
    """Gives each parameter group its own learning rate again after Lightning's ``LearningRateFinder`` callback.

    That callback searches at the start of ``fit``, sets ``module.lr`` to its suggestion, and also sets every group
    of the optimiser already built to that one learning rate, so the backbone's ``lr_scale`` or a head's own ``lr``
    would be lost for the run. When ``module.lr`` (the attribute the LR finder sets) changed between ``setup`` and
    ``on_fit_start`` (Lightning runs the tuner callbacks' ``on_fit_start`` first), this sets each group's ``lr`` (and
    ``initial_lr``, and the schedulers' ``base_lrs``) to what :meth:`Optimisation.group_learning_rates` gives for the
    new ``module.lr``. The module adds it to its Trainer when it has parameter groups.

    Args:
        optimisation: the module's optimisation component.
        collection: the module's bricks.
    """

    def __init__(self, optimisation: Optimisation, collection: BrickCollection) -> None:
        self.optimisation = optimisation
        self.collection = collection
        self.lr_at_setup: float | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.lr_at_setup = getattr(pl_module, "lr", None)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lr = getattr(pl_module, "lr", None)
        if lr == self.lr_at_setup:
            return
        targets = self.optimisation.group_learning_rates(pl_module, self.collection, lr)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if group.get("name") in targets:
                    group["lr"] = targets[group["name"]]
                    if "initial_lr" in group:
                        group["initial_lr"] = targets[group["name"]]
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(getattr(scheduler, "base_lrs", None), list):
                scheduler.base_lrs = [
                    group.get("initial_lr", group["lr"]) for group in scheduler.optimizer.param_groups
                ]


class Optimisation:
    """The module's optimisation: parameter groups, the optimiser and scheduler, the unfreeze schedule and the
    callbacks that go with them.

    Everything is checked when it is built (:func:`plan_optimisation`). The learning rate is not kept here: it is the
    module's ``lr``, which Lightning's LR finder reads and sets, passed to each call.

    Args:
        collection: the bricks.
        optimizer_factory: ``parameters -> Optimizer``.
        lr_scheduler_factory: ``optimizer -> LRScheduler``, or None.
        lr_scheduler_interval: ``"epoch"`` or ``"step"``.
        lr_scheduler_monitor: the logged value the scheduler watches, or None.
        param_groups, lr, decay_norms_and_biases, unfreeze: as the module's arguments.

    Example:
        >>> from functools import partial
        >>> from torchbricks_lightning import BrickTrainable
        >>> collection = BrickCollection({"backbone": BrickTrainable(nn.Linear(4, 4), ["raw"], ["features"]),
        ...                               "head": BrickTrainable(nn.Linear(4, 3), ["features"], ["logits"])})
        >>> optimisation = Optimisation(collection, partial(torch.optim.AdamW, lr=0.1),
        ...     param_groups=[{"bricks": "backbone", "lr_scale": 0.5}], decay_norms_and_biases=False)
        >>> optimisation.group_learning_rates(collection, collection, lr=None)
        {'backbone': 0.05, 'backbone/no_decay': 0.05, 'default': 0.1, 'default/no_decay': 0.1}
        >>> optimizer = optimisation.optimizers(collection, collection, lr=0.2)  # what the LR finder does: a new lr
        >>> [(group["name"], group["lr"]) for group in optimizer.param_groups]
        [('backbone', 0.1), ('backbone/no_decay', 0.1), ('default', 0.2), ('default/no_decay', 0.2)]
    """

    def __init__(
        self,
        collection: BrickCollection,
        optimizer_factory: Callable[..., Any],
        lr_scheduler_factory: Callable[..., Any] | None = None,
        lr_scheduler_interval: str = "epoch",
        lr_scheduler_monitor: str | None = None,
        param_groups: Sequence[Mapping[str, Any]] | None = None,
        lr: float | None = None,
        decay_norms_and_biases: bool = True,
        unfreeze: Mapping[str, int] | None = None,
    ) -> None:
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ConfigError(
                f"Expected lr_scheduler_interval to be 'epoch' or 'step', but got {lr_scheduler_interval!r}."
            )
        self.optimizer_factory = optimizer_factory
        self.lr_scheduler_factory = lr_scheduler_factory
        self.lr_scheduler_interval = lr_scheduler_interval
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.plan = plan_optimisation(collection, optimizer_factory, param_groups, lr, decay_norms_and_biases, unfreeze)
        self._callbacks: list[pl.Callback] | None = None

    def optimizers(self, parameters: nn.Module, collection: BrickCollection, lr: float | None) -> Any:
        """What ``configure_optimizers`` returns: the optimiser over the groups of the parameters of ``parameters``
        (the LightningModule, whose bricks are ``collection``), and the scheduler (acting on every group) with its
        interval and monitored value."""
        optimizer = build_optimizer(self.optimizer_factory, parameters, collection, self.plan, lr)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.lr_scheduler_monitor or "validation/loss"
        elif self.lr_scheduler_monitor:
            config["monitor"] = self.lr_scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def group_learning_rates(
        self, parameters: nn.Module, collection: BrickCollection, lr: float | None
    ) -> dict[str, float]:
        """The learning rate of each group, by name, for ``lr`` (what a new optimiser would get)."""
        factory = self.optimizer_factory
        groups = _groups(factory, parameters, collection, self.plan, lr)
        own = lr if lr is not None else _probe(factory).defaults["lr"]
        return {group["name"]: float(group.get("lr", own)) for group in groups}

    def callbacks(self, collection: BrickCollection, trainer: pl.Trainer | None) -> list[pl.Callback]:
        """What ``configure_callbacks`` returns: the unfreeze schedule, and :class:`GroupLearningRates` when there are
        groups; made once, and left out when ``trainer`` already holds them (from an earlier ``fit``, ``validate`` or
        ``test``), so that Lightning does not report them as overriding the Trainer's callbacks. When fitting, warns
        about bricks that the run's ``max_epochs`` never unfreezes."""
        if self._callbacks is None:
            self._callbacks = []
            if self.plan.scheduled:
                self._callbacks.append(UnfreezeSchedule(self.plan.scheduled, collection))
            if self.plan.groups or not self.plan.decay_norms_and_biases:
                self._callbacks.append(GroupLearningRates(self, collection))
        if trainer is None:
            return list(self._callbacks)
        if trainer.state.fn == TrainerFn.FITTING:
            for callback in self._callbacks:
                if isinstance(callback, UnfreezeSchedule):
                    callback.warn_beyond(trainer)
        attached = {id(callback) for callback in trainer.callbacks}  # type: ignore[attr-defined]
        return [callback for callback in self._callbacks if id(callback) not in attached]
