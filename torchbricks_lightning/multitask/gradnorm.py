"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018) on the Gramian mechanism.

Learnable task weights ``v_i`` (``task_weights``, a buffer, starting at 1) multiply the static-weighted losses:
``total = sum_i v_i w_i L_i``. Each step, with ``G`` the Gram matrix of the gradients of the terms ``v_i w_i L_i``
on the chosen source (the shared tensor by default, or the shared parameters as in the paper, whose ``W`` is the
last shared layer):

- ``G_W^i = sqrt(G_ii)`` is the norm of task ``i``'s weighted gradient, and ``mean_G`` their mean;
- ``L~_i = L_i(t) / L_i(0)`` is the inverse training rate and ``r_i = L~_i / mean_j L~_j`` the relative one
  (``L_i(0)``: the task's loss at its first labelled step, a buffer);
- the paper's loss ``L_grad = sum_i | G_W^i - mean_G r_i^alpha |``, the target held constant, has the gradient
  ``d L_grad / d v_i = sign(G_W^i - mean_G r_i^alpha) G_W^i / v_i``;
- the balancer updates the weights itself: ``v_i <- v_i - lr d L_grad / d v_i / mean_G`` (divided by ``mean_G``, so
  the step does not depend on the scale of the gradients: a loss scale under AMP, the size of the model), kept
  above ``min_weight``, then renormalised so that the updated weights keep their sum (``T`` at the start: the
  paper's renormalisation ``sum_i v_i = T``).

The combination is the plain sum of the weighted gradients (coefficients 1): GradNorm weighs the losses, and the
heads get the weighted gradients too, as in the paper. ``G`` and the losses are summed over the processes, so every
process updates the same weights; a task without labels in the step (``G_ii = 0``, on every process) is left out
of the update and keeps its weight. The weights and ``L_i(0)`` are buffers, so a resumed run continues with them.
Logged as ``train/balance/{loss}``: ``v_i w_i``, the factor of ``L_i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.balancers import format_values
from torchbricks_lightning.multitask.gramian import GramianBalancer

__all__ = ["GradNorm", "gradnorm_step"]


def gradnorm_step(
    weights: torch.Tensor,
    gram: torch.Tensor,
    losses: torch.Tensor,
    initial_losses: torch.Tensor,
    alpha: float = 1.5,
    lr: float = 0.025,
    min_weight: float = 1e-3,
) -> torch.Tensor:
    """One GradNorm update of the task weights (see the module's docstring), for the tasks with a gradient.

    Args:
        weights: the current weights ``v`` ``(T,)``.
        gram: the Gram matrix ``(T, T)`` of the weighted task gradients.
        losses: the tasks' losses ``L_i(t)`` ``(T,)``.
        initial_losses: ``L_i(0)`` ``(T,)`` (> 0).
        alpha: the restoring force's exponent.
        lr: the step, relative to the mean gradient norm.
        min_weight: the smallest weight.

    Returns:
        The new weights; a task with ``G_ii = 0`` keeps its weight.

    Example:
        >>> gram = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # norms 2 and 1
        >>> same = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> gradnorm_step(same.clone(), gram, same, same, lr=0.1)  # equal rates: towards equal norms, sum 2
        tensor([0.8966, 1.1034], dtype=torch.float64)
    """
    norms = gram.diagonal().clamp(min=0.0).sqrt()
    active = (norms > 0) & (initial_losses > 0) & torch.isfinite(losses)
    if not bool(active.any()):
        return weights
    rates = losses[active] / initial_losses[active]
    relative = rates / rates.mean()
    mean_norm = norms[active].mean()
    target = mean_norm * relative**alpha
    gradient = torch.sign(norms[active] - target) * norms[active] / weights[active]
    updated = (weights[active] - lr * gradient / mean_norm).clamp(min=min_weight)
    new = weights.clone()
    new[active] = updated * weights[active].sum() / updated.sum()
    return new


class GradNorm(GramianBalancer):
    """GradNorm: learned task weights that equalise the tasks' gradient norms, scaled by their training rates.

    Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML
    2018. The formulas and the update are in the module's docstring. The paper takes the norms on the last shared
    layer's weights; by default this one takes them on the shared tensor (``source="representation"``: no extra
    pass), ``source="parameters"`` on the shared bricks' parameters (``T`` extra passes through the trunk).

    Args:
        alpha: the exponent of the relative training rate (1.5 in the paper's NYUv2 runs; 0 equalises the norms).
        lr: the weights' step, relative to the mean gradient norm (about the per-step change of a weight).
        min_weight: the smallest weight, > 0.
        source: ``"representation"`` or ``"parameters"``.
        shared_name: the shared tensor (the trunk's output the heads read).
        loss_names: the tasks (default: every training loss).

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
        >>> collection = BrickCollection({
        ...     "backbone": BrickTrainable(nn.Linear(3, 4), input_names=["raw"], output_names=["features"]),
        ...     "la": BrickLoss(nn.MSELoss(), input_names=["features", "ya"], output_names=["loss_a"]),
        ...     "lb": BrickLoss(nn.MSELoss(), input_names=["features", "yb"], output_names=["loss_b"]),
        ... })
        >>> balancer = GradNorm()
        >>> balancer.setup(collection, collection.loss_weights())
        >>> sorted(balancer.state_dict())
        ['initial_losses', 'steps', 'task_weights']
    """

    needs_losses: ClassVar[bool] = True
    task_weights: torch.Tensor
    initial_losses: torch.Tensor

    def __init__(
        self,
        alpha: float = 1.5,
        lr: float = 0.025,
        min_weight: float = 1e-3,
        source: Literal["representation", "parameters"] = "representation",
        shared_name: str = "features",
        loss_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(None, source=source, shared_name=shared_name, loss_names=loss_names)
        for name, value in (("alpha", alpha), ("lr", lr), ("min_weight", min_weight)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"Expected GradNorm's {name} to be a finite number >= 0, but got {value!r}.")
        if not min_weight > 0:
            raise ConfigError(f"Expected GradNorm's min_weight to be > 0, but got {min_weight!r}.")
        self.alpha, self.lr, self.min_weight = float(alpha), float(lr), float(min_weight)
        self.register_buffer("task_weights", torch.ones(0))
        self.register_buffer("initial_losses", torch.zeros(0, dtype=torch.float64))

    def setup_tasks(self, collection: BrickCollection) -> None:
        super().setup_tasks(collection)
        count = len(self.loss_names)
        if self.task_weights.shape != (count,):
            self.task_weights = torch.ones(count)
            self.initial_losses = torch.zeros(count, dtype=torch.float64)

    def loss_factors(self, like: torch.Tensor) -> torch.Tensor:
        return self._weights_tensor(like) * self.task_weights.to(device=like.device, dtype=like.dtype)

    def weigh(self, gram: torch.Tensor, step: int) -> torch.Tensor:
        return torch.ones(len(gram), dtype=torch.float64)  # the weights are in the losses

    def update(self, gram: torch.Tensor, losses: torch.Tensor | None) -> None:
        if losses is None:
            return
        index = self._task_index
        every_initial = self.initial_losses.detach().cpu().clone()
        every_weight = self.task_weights.detach().cpu().double()
        initial = every_initial[index]
        first = (initial <= 0) & (gram.diagonal() > 0) & torch.isfinite(losses) & (losses > 0)
        every_initial[index] = torch.where(first, losses, initial)
        every_weight[index] = gradnorm_step(
            every_weight[index], gram, losses, every_initial[index], self.alpha, self.lr, self.min_weight
        )
        self.initial_losses.copy_(every_initial)
        self.task_weights.copy_(every_weight)

    def weights(self) -> dict[str, torch.Tensor]:
        base: torch.Tensor = self.__dict__["_balanced_weights"].to(self.task_weights.device)
        return dict(zip(self.loss_names, (base * self.task_weights).unbind(), strict=True))

    def logged_values(self) -> dict[str, torch.Tensor]:
        values = {name: value.detach().clone() for name, value in self.weights().items() if name in self.branch_tasks}
        values["conflicts"] = torch.tensor(float(self.last_conflicts))
        return values

    def state_details(self) -> str:
        initial = dict(zip(self.loss_names, self.initial_losses.tolist(), strict=True))
        return (
            f"; shared tensor {self.shared_name!r} ({self.source}), initial losses {format_values(initial)} (0: not "
            f"seen), alpha {self.alpha:g}, lr {self.lr:g}, {int(self.steps)} steps"
        )
