"""Task balancing at the loss level: how the training losses of several tasks become the optimised total.

``LightningBrickCollection(loss_balancer=...)`` takes one balancer (a class path in a YAML recipe). Each task is a
loss name; ``w_i`` below is its static weight (the loss brick's ``loss_weight``, or the module's ``loss_weights``
override), and ``L_i`` its training loss of the step (a mean over labelled elements for the heads' losses):

- :class:`StaticWeights`: ``total = sum_i w_i L_i``, what the module does without a balancer.
- :class:`~torchbricks_lightning.multitask.uncertainty.UncertaintyWeighting` (Kendall, Gal and Cipolla, CVPR 2018,
  in its own module), with a learnable ``s_i = log sigma_i^2`` per task: ``total = sum_i w_i (exp(-s_i) L_i / 2 +
  s_i / 2)``. This is the paper's regression form, used for every task as LibMTL does (``losses / (2 *
  loss_scale.exp()) + loss_scale / 2``). The ``s_i`` are parameters of the balancer, itself a submodule of the
  LightningModule: the optimizer gets them with the model's parameters, and checkpoints save and restore them. The
  logged weight is ``w_i exp(-s_i) / 2``, the factor of ``L_i``. A task whose loss is exactly 0 in a step (the
  masked losses' value for a batch without its labels) is left out of that step: it adds nothing and its ``s_i``
  gets no gradient. Each ``s_i`` is kept within ``[-B, B]`` (``log_variance_bound``, 10 by default).
- :class:`DynamicWeightAverage` (Liu, Johns and Davison, CVPR 2019): ``total = sum_i w_i lambda_i L_i`` with
  ``lambda_i = K exp(r_i / T) / sum_k exp(r_k / T)``, ``r_i = L_i(t-1) / L_i(t-2)`` the ratio of the task's mean
  training loss over the last two epochs, ``K`` the number of balanced tasks and ``T`` the temperature (2 in the
  paper); ``lambda_i = 1`` in the first two epochs. The epoch means are those logged as ``train/{loss}_epoch``
  (over labelled elements and every process). A task whose mean is missing, not finite or not positive in either of
  the two last epochs (a task without labels in an epoch) has no ratio: it takes ``lambda_i = 1``, and the tasks
  with a ratio share the rest of ``K``. The two last means and the current weights are buffers: checkpoints
  carry them, so a resumed run continues with the same weights.

A balancer names the losses it balances (default: every loss of the training stage); the others keep
``w_i L_i``. Every balancer reports its per-task weights, which the module logs as ``train/balance/{loss}``, and
describes its state in words (:meth:`LossBalancer.describe_state`) for the error raised when a total is not finite.
Every balancer stays finite through a task that has no labels for a step or a whole epoch.
Gradient-level balancing (:class:`~torchbricks_lightning.multitask.gradient.PCGrad`) is a balancer too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import ClassVar

import torch
from torch import nn

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, did_you_mean

__all__ = ["DynamicWeightAverage", "LossBalancer", "StaticWeights", "format_values"]


def format_values(values: Mapping[str, float]) -> str:
    """``{name: value}`` with 6 significant digits, for the descriptions of balancer states.

    Example:
        >>> format_values({"age/loss": 0.123456789, "digit/loss_ce": float("nan")})
        "{'age/loss': 0.123457, 'digit/loss_ce': nan}"
    """
    return "{" + ", ".join(f"{name!r}: {float(value):.6g}" for name, value in values.items()) + "}"


class LossBalancer(nn.Module):
    """Base class of the balancers: turns the training losses into the total that is optimised.

    ``LightningBrickCollection`` calls :meth:`setup` once, when it is built, with the collection and the static
    weights of its training losses; then, in every training step, :meth:`forward` with the losses (inside
    :meth:`training_pass`, around the forward pass of the bricks), and at each training epoch's start and end
    :meth:`on_train_epoch_start` and :meth:`on_train_epoch_end`. Validation and test totals keep the static weights,
    so that ``validation/loss`` stays comparable across epochs.

    Args:
        loss_names: the losses to balance (default: every loss of the training stage); the others keep their static
            weight.

    Attributes:
        log_every_step: whether the weights change every step (logged at every training batch end) or once per
            epoch (logged at each training epoch end).
    """

    log_every_step: ClassVar[bool] = False

    def __init__(self, loss_names: Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(loss_names, str):
            raise BrickDefinitionError(f"Expected loss_names to be a list of names, but got the string {loss_names!r}.")
        self.requested_names = None if loss_names is None else tuple(loss_names)
        self.loss_names: tuple[str, ...] = ()
        self.static_weights: dict[str, float] = {}
        self._others: tuple[tuple[str, float], ...] = ()
        self.__dict__["_balanced_weights"] = torch.ones(0)
        self._static_floats: list[float] = []  # the balanced losses' static weights as Python floats (set up)

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self, collection: BrickCollection, static_weights: Mapping[str, float]) -> None:
        """Check the names against the collection's training losses and remember the static weights.

        Raises:
            ConfigError: a balanced loss is not a training loss of the collection (with a close match), or nothing
                is left to balance.
        """
        train_losses = collection.loss_names(Stage.TRAIN)
        where = type(self).__name__
        requested = self.requested_names if self.requested_names is not None else tuple(train_losses)
        for name in requested:
            if name not in train_losses:
                hint = did_you_mean(name, train_losses)
                raise ConfigError(
                    f"{where} balances the loss {name!r}, but the training stage has no such loss.{hint} Training "
                    f"losses: {train_losses}."
                )
        if len(set(requested)) != len(requested):
            raise ConfigError(f"{where} names a loss more than once: {list(requested)}.")
        if not requested:
            raise ConfigError(f"{where} has no loss to balance: the training stage produces none. Add a loss brick.")
        self.loss_names = tuple(requested)
        self.static_weights = {name: float(static_weights.get(name, 1.0)) for name in train_losses}
        self._others = tuple((name, self.static_weights[name]) for name in train_losses if name not in requested)
        self._static_floats = [self.static_weights[name] for name in requested]
        self.__dict__["_balanced_weights"] = torch.tensor(self._static_floats)
        self.setup_tasks(collection)

    def setup_tasks(self, collection: BrickCollection) -> None:
        """Set up what the balancer needs per task, after :attr:`loss_names` is known (subclasses)."""

    def _static_weights(self) -> list[float]:
        """The static weights ``w_i`` of the balanced losses, as Python floats."""
        return self._static_floats

    def _weights_tensor(self, like: torch.Tensor) -> torch.Tensor:
        weights: torch.Tensor = self.__dict__["_balanced_weights"]
        if weights.device != like.device or weights.dtype != like.dtype:
            weights = weights.to(device=like.device, dtype=like.dtype)
            self.__dict__["_balanced_weights"] = weights
        return weights

    def _check_set_up(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.loss_names:
            raise ConfigError(
                f"{type(self).__name__} was not set up: pass it to LightningBrickCollection(loss_balancer=...), which "
                "calls setup(collection, weights) with the collection's training losses."
            )
        return torch.stack(self._balanced_losses(losses))

    def _balanced_losses(self, losses: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The balanced losses in order (after :meth:`_check_set_up`'s check that the balancer was set up).

        Raises:
            ConfigError: a balanced loss is not among the step's losses.
        """
        missing = [name for name in self.loss_names if name not in losses]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} balances {list(self.loss_names)}, but the step's losses lack {missing} "
                f"(they hold {sorted(losses)}). Check that those loss bricks are alive in the training stage, or "
                "pass loss_names= with the losses to balance."
            )
        return [losses[name] for name in self.loss_names]

    def _add_others(self, total: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        for name, weight in self._others:
            if name in losses:
                total = total + weight * losses[name]
        return total

    # ------------------------------------------------------------------------------------------ training
    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The total of a training step's losses (static weights; subclasses balance)."""
        stacked = self._check_set_up(losses)
        return self._add_others((self._weights_tensor(stacked) * stacked).sum(), losses)

    def training_pass(self) -> AbstractContextManager[None]:
        """A context around the training forward pass of the bricks (gradient-level balancers act inside it)."""
        return nullcontext()

    def on_train_epoch_start(self) -> None:
        """Called at the start of every training epoch."""

    def on_train_epoch_end(self, epoch_means: Mapping[str, float]) -> None:
        """Called at the end of every training epoch with the epoch means of the balanced losses."""

    def weights(self) -> dict[str, torch.Tensor]:
        """The current per-task weights (what multiplies each loss), logged as ``train/balance/{loss}``."""
        weights: torch.Tensor = self.__dict__["_balanced_weights"]
        return {name: weights[index].detach() for index, name in enumerate(self.loss_names)}

    def logged_values(self) -> dict[str, torch.Tensor]:
        """The values the module logs under ``train/balance/``: the weights by default."""
        return self.weights()

    def describe_state(self) -> str:
        """The balancer and its current state in one line, for an error message (e.g. a total that is not finite).

        Example:
            >>> from torch import nn
            >>> from torchbricks_lightning import BrickCollection, BrickLoss
            >>> collection = BrickCollection({
            ...     "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["l1"], loss_weight=2.0),
            ... })
            >>> balancer = StaticWeights()
            >>> balancer.setup(collection, collection.loss_weights())
            >>> balancer.describe_state()
            "StaticWeights: weights {'l1': 2}"
        """
        weights = {name: float(value) for name, value in self.weights().items()}
        return f"{type(self).__name__}: weights {format_values(weights)}{self.state_details()}"

    def state_details(self) -> str:
        """What :meth:`describe_state` adds after the weights (subclasses: their state, starting with ``'; '``)."""
        return ""

    def extra_repr(self) -> str:
        return f"loss_names={list(self.loss_names or self.requested_names or [])}"


class StaticWeights(LossBalancer):
    """Today's behaviour, as a balancer: ``total = sum_i w_i L_i`` with the bricks' (or ``loss_weights``') weights.

    Unlike ``loss_balancer=None``, it logs the weights as ``train/balance/{loss}`` at every epoch end.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss
        >>> collection = BrickCollection({
        ...     "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["l1"], loss_weight=2.0),
        ...     "b": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["l2"]),
        ... })
        >>> balancer = StaticWeights()
        >>> balancer.setup(collection, collection.loss_weights())
        >>> balancer({"l1": torch.tensor(1.0), "l2": torch.tensor(3.0)})
        tensor(5.)
    """


class DynamicWeightAverage(LossBalancer):
    """Task weights from the rate at which each training loss falls (Liu et al., CVPR 2019).

    ``lambda_i = K exp(r_i / T) / sum_k exp(r_k / T)`` with ``r_i = L_i(t-1) / L_i(t-2)`` (the task's epoch mean
    training loss one and two epochs ago); 1 for every task in the first two epochs. ``total = sum_i w_i lambda_i
    L_i``. A task whose loss falls slower gets more weight.

    **A task without a ratio.** A task whose epoch mean is missing (no labels in the epoch), not finite or not
    positive, in either of the two last epochs, has no ``r_i`` (the ratio would be ``0 / 0`` or ``x / 0``, and one NaN
    turns every weight into NaN through the softmax). It takes ``lambda_i = 1``, the weight of the first epochs, and
    the ``K'`` tasks with a ratio get ``K' exp(r_i / T) / sum_k exp(r_k / T)`` over themselves, so the weights still
    sum to ``K``. A missing mean is recorded as 0 in ``history``.

    Args:
        loss_names: the losses to balance (default: every training loss).
        temperature: ``T``; larger values make the weights more equal.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss
        >>> collection = BrickCollection({
        ...     "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["l1"]),
        ...     "b": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["l2"]),
        ... })
        >>> balancer = DynamicWeightAverage(temperature=2.0)
        >>> balancer.setup(collection, collection.loss_weights())
        >>> for means in ({"l1": 1.0, "l2": 1.0}, {"l1": 0.5, "l2": 1.0}):
        ...     balancer.on_train_epoch_start()
        ...     balancer.on_train_epoch_end(means)
        >>> balancer.on_train_epoch_start()
        >>> {name: round(float(weight), 4) for name, weight in balancer.weights().items()}
        {'l1': 0.8756, 'l2': 1.1244}
        >>> balancer.on_train_epoch_end({"l2": 0.5})  # no mean for l1: it falls back to 1
        >>> balancer.on_train_epoch_start()
        >>> {name: round(float(weight), 4) for name, weight in balancer.weights().items()}
        {'l1': 1.0, 'l2': 1.0}
    """

    history: torch.Tensor
    epochs_seen: torch.Tensor
    lambdas: torch.Tensor

    def __init__(self, loss_names: Sequence[str] | None = None, temperature: float = 2.0) -> None:
        super().__init__(loss_names)
        if not temperature > 0:
            raise ConfigError(f"Expected a temperature > 0, but got {temperature!r}.")
        self.temperature = float(temperature)
        self.register_buffer("history", torch.zeros(2, 0, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("lambdas", torch.ones(0))

    def setup_tasks(self, collection: BrickCollection) -> None:
        count = len(self.loss_names)
        if self.history.shape[1] != count:
            self.history = torch.zeros(2, count, dtype=torch.float64)
            self.lambdas = torch.ones(count)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stacked = self._check_set_up(losses)
        factors = self._weights_tensor(stacked) * self.lambdas.to(stacked.dtype)
        return self._add_others((factors * stacked).sum(), losses)

    def on_train_epoch_start(self) -> None:
        if int(self.epochs_seen) < 2:
            self.lambdas.fill_(1.0)
            return
        before, last = self.history[0], self.history[1]
        usable = torch.isfinite(before) & torch.isfinite(last) & (before > 0) & (last > 0)
        lambdas = torch.ones_like(before)  # a task without a ratio: the weight of the first epochs
        if bool(usable.any()):
            ratios = last[usable] / before[usable]
            lambdas[usable] = int(usable.sum()) * torch.softmax(ratios / self.temperature, dim=0)
        self.lambdas.copy_(lambdas.to(self.lambdas.dtype))

    def on_train_epoch_end(self, epoch_means: Mapping[str, float]) -> None:
        latest = torch.zeros_like(self.history[1])  # 0: a missing mean, which gives the task no ratio
        for index, name in enumerate(self.loss_names):
            value = float(epoch_means.get(name, 0.0))
            if math.isfinite(value) and value > 0:
                latest[index] = value
        self.history[0].copy_(self.history[1])
        self.history[1].copy_(latest)
        self.epochs_seen.add_(1)

    def state_details(self) -> str:
        means = [format_values(dict(zip(self.loss_names, row, strict=True))) for row in self.history.tolist()]
        return (
            f"; epoch means two epochs ago {means[0]}, one epoch ago {means[1]} (0: missing), "
            f"{int(self.epochs_seen)} epochs seen, temperature {self.temperature:g}"
        )

    def weights(self) -> dict[str, torch.Tensor]:
        base: torch.Tensor = self.__dict__["_balanced_weights"].to(self.lambdas.device)
        return dict(zip(self.loss_names, (base * self.lambdas).unbind(), strict=True))
