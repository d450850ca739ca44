"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018): learned task weights from homoscedastic uncertainty.

``total = sum_i w_i (exp(-s_i) L_i / 2 + s_i / 2)`` with one learnable ``s_i = log sigma_i^2`` per balanced loss; see
:class:`UncertaintyWeighting`. On CPU the total is computed on Python floats as one autograd node
(:class:`_UncertaintyTotal`); on accelerators by the tensor code, which reads no value back from the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.balancers import LossBalancer, format_values

__all__ = ["UncertaintyWeighting"]


class UncertaintyWeighting(LossBalancer):
    """Learned task weights from homoscedastic uncertainty (Kendall et al., CVPR 2018).

    ``total = sum_i w_i (exp(-s_i) L_i / 2 + s_i / 2)`` with one learnable ``s_i = log sigma_i^2`` per balanced
    loss (the parameter ``log_variances``). At its optimum ``exp(s_i) = L_i``: each task is weighted by the inverse
    of its loss. The logged weight of task ``i`` is ``w_i exp(-s_i) / 2``.

    **A task without labels.** Its masked loss is exactly 0 in that step, and ``d total / d s_i`` would be ``w_i / 2``
    whatever happened before: a task left unlabelled for 400 steps reached a weight of 2.4e8, and its first labelled
    batch then dominated the total. So a task whose loss is exactly 0 is left out of the step: it adds 0 to the total
    and its ``s_i`` gets no gradient (its weight stays where it was).

    **The bound.** Each ``s_i`` is projected onto ``[-B, B]`` before every step (``B = log_variance_bound``), so a
    weight stays within ``w_i exp(-B) / 2`` and ``w_i exp(B) / 2`` (with ``B = 10``, a factor of 2.2e4 from ``w_i /
    2``). ``s_i`` only reaches the bound when the task's loss is below ``exp(-B)`` (4.5e-5) or above ``exp(B)``
    (2.2e4) for a long run of steps, where the paper's weight ``1 / L_i`` is no longer a useful one: a task that is
    solved, or whose loss is 0 for another reason than missing labels, then weighs at most ``exp(B) / 2`` times its
    loss. Inside the bound the formula is unchanged, and a projection (not a clamp inside the formula) keeps the
    gradient of ``s_i``, so it moves back once the loss does.

    Args:
        loss_names: the losses to balance (default: every training loss).
        initial_log_variance: the starting ``s_i`` (0: every weight starts at ``w_i / 2``), within the bound.
        log_variance_bound: ``B`` above, > 0.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss
        >>> collection = BrickCollection({
        ...     "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["l1"]),
        ...     "b": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["l2"]),
        ... })
        >>> balancer = UncertaintyWeighting()
        >>> balancer.setup(collection, collection.loss_weights())
        >>> balancer({"l1": torch.tensor(1.0), "l2": torch.tensor(3.0)})
        tensor(2., grad_fn=<_UncertaintyTotalBackward>)
        >>> [name for name, _ in balancer.named_parameters()]
        ['log_variances']
        >>> balancer({"l1": torch.tensor(0.0), "l2": torch.tensor(3.0)})  # no label for l1: left out
        tensor(1.5000, grad_fn=<_UncertaintyTotalBackward>)
    """

    log_every_step: ClassVar[bool] = True

    def __init__(
        self,
        loss_names: Sequence[str] | None = None,
        initial_log_variance: float = 0.0,
        log_variance_bound: float = 10.0,
    ) -> None:
        super().__init__(loss_names)
        if not (isinstance(log_variance_bound, (int, float)) and math.isfinite(log_variance_bound)):
            raise ConfigError(f"Expected a finite log_variance_bound > 0, but got {log_variance_bound!r}.")
        if log_variance_bound <= 0:
            raise ConfigError(f"Expected a finite log_variance_bound > 0, but got {log_variance_bound!r}.")
        if not math.isfinite(initial_log_variance) or abs(initial_log_variance) > log_variance_bound:
            raise ConfigError(
                f"Expected a finite initial_log_variance within [-{log_variance_bound}, {log_variance_bound}] "
                f"(log_variance_bound), but got {initial_log_variance!r}."
            )
        self.initial_log_variance = float(initial_log_variance)
        self.log_variance_bound = float(log_variance_bound)
        # Sized at set-up, when the balanced losses are known; empty (and not yet optimised) before.
        self.log_variances = nn.Parameter(torch.zeros(0))
        self._tensor_math = False  # True: the tensor code on CPU too (the tests compare both)

    def setup_tasks(self, collection: BrickCollection) -> None:
        if self.log_variances.numel() != len(self.loss_names):
            self.log_variances = nn.Parameter(torch.full((len(self.loss_names),), self.initial_log_variance))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.log_variances.device.type == "cpu" and not self._tensor_math:
            return self._forward_floats(losses)
        stacked = self._check_set_up(losses)
        with torch.no_grad():
            self.log_variances.clamp_(-self.log_variance_bound, self.log_variance_bound)  # the projection onto [-B, B]
            # w_i / 2, and 0 for a loss of exactly 0 (no label in the batch): its term, finite since s_i is bounded,
            # times 0, so no gradient reaches s_i (a NaN loss is not 0: it stays in, and the module's check catches
            # it). Folded into one detached factor: fewer autograd nodes on every step.
            factors = self._weights_tensor(stacked) * 0.5 * (stacked.detach() != 0)
        s = self.log_variances.to(stacked.dtype)
        return self._add_others((factors * (torch.exp(-s) * stacked + s)).sum(), losses)

    def _forward_floats(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` for CPU tensors: the same formula on Python floats, and one autograd node.

        The tensor code's dozen small operations (and their backward) cost more than the arithmetic on ``T``
        numbers; here a step reads each loss and the ``s_i`` once, and :class:`_UncertaintyTotal` gives the total
        with its exact gradients (``w_i exp(-s_i) / 2`` for ``L_i``, ``w_i (1 - exp(-s_i) L_i) / 2`` for ``s_i``).
        """
        if not self.loss_names:
            self._check_set_up(losses)  # the error that says how to set it up
        balanced = self._balanced_losses(losses)
        bound = self.log_variance_bound
        with torch.no_grad():
            logs = self.log_variances.tolist()
            if any(not -bound <= value <= bound for value in logs):  # the projection onto [-B, B] (NaN included)
                self.log_variances.clamp_(-bound, bound)
                logs = self.log_variances.tolist()
            values = [loss.item() for loss in balanced]
        total = 0.0
        loss_slopes: list[float] = []
        variance_slopes: list[float] = []
        for weight, log_variance, value in zip(self._static_weights(), logs, values, strict=True):
            half = 0.5 * weight
            if value == 0:  # no label in the batch: left out (its s_i gets no gradient); NaN is not 0 and stays in
                loss_slopes.append(0.0)
                variance_slopes.append(0.0)
                continue
            precision = math.exp(-log_variance)
            total += half * (precision * value + log_variance)
            loss_slopes.append(half * precision)
            variance_slopes.append(half * (1.0 - precision * value))
        variances = self.log_variances
        result: torch.Tensor = _UncertaintyTotal.apply(total, loss_slopes, variance_slopes, variances, *balanced)
        return self._add_others(result, losses)

    def _bounded(self) -> torch.Tensor:
        return self.log_variances.detach().float().clamp(-self.log_variance_bound, self.log_variance_bound)

    def weights(self) -> dict[str, torch.Tensor]:
        weights: torch.Tensor = self.__dict__["_balanced_weights"].to(self.log_variances.device)
        factors = (weights * torch.exp(-self._bounded()) * 0.5).unbind()
        return dict(zip(self.loss_names, factors, strict=True))

    def state_details(self) -> str:
        values = dict(zip(self.loss_names, self.log_variances.detach().float().tolist(), strict=True))
        return f"; log_variances {format_values(values)} (bound {self.log_variance_bound:g})"


class _UncertaintyTotal(torch.autograd.Function):
    """Uncertainty weighting's total, computed in Python floats, as one node with its exact gradients.

    ``forward(total, loss_slopes, variance_slopes, log_variances, *losses)`` returns ``total`` as a tensor of the
    losses' kind; the gradient of loss ``i`` is ``loss_slopes[i]`` times the incoming one, that of the
    log-variances ``variance_slopes`` times it.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        total: float,
        loss_slopes: list[float],
        variance_slopes: list[float],
        log_variances: torch.Tensor,
        *losses: torch.Tensor,
    ) -> torch.Tensor:
        ctx.loss_slopes = loss_slopes  # type: ignore[attr-defined]
        ctx.variance_slopes = variance_slopes  # type: ignore[attr-defined]
        ctx.variance_dtype = log_variances.dtype  # type: ignore[attr-defined]
        return losses[0].new_tensor(total)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        slopes: list[float] = ctx.loss_slopes  # type: ignore[attr-defined]
        variance = torch.tensor(ctx.variance_slopes, dtype=ctx.variance_dtype) * grad  # type: ignore[attr-defined]
        return (None, None, None, variance, *(grad * slope if slope != 0 else None for slope in slopes))
