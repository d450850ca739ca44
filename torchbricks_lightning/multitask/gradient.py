"""PCGrad (Yu et al., NeurIPS 2020) on the Gramian mechanism, and its combination from the Gram matrix.

**The formula** (LibMTL's ``PCGrad``). With ``G_ij = <g_i, g_j>``: for each task ``i``, ``p_i = g_i``; then for
every other task ``j``, in a random order, if ``<p_i, g_j> < 0``: ``p_i <- p_i - <p_i, g_j> / |g_j|^2 g_j``. The
combined gradient is ``sum_i p_i``. Each ``p_i`` is a combination of the ``g_j``, so everything is computed from
``G``: the result is ``sum_j c_j g_j``, and ``c_j`` (1 without conflicts) is logged as ``train/balance/{loss}``,
with the number of conflicting pairs (``G_ij < 0``, ``i < j``) as ``train/balance/conflicts``. The random orders
come from a generator seeded with ``(seed, step)``, the step counter being a buffer: reproducible, the same on every
process, and restored on resume. A task without labels in a batch has ``g_j = 0``: it takes no part, coefficient 0.

**The variant.** The paper projects the gradients of the shared *parameters*; by default this PCGrad projects those
of the shared tensor (``source="representation"``, one backward pass, no extra cost), which LibMTL's maintainer
calls possible "but whether reasonable is unknown" (LibMTL #49). ``source="parameters"`` is the paper's (``T``
extra passes through the trunk). The wiring, the two sources and DDP are those of every Gramian balancer
(:mod:`~torchbricks_lightning.multitask.gramian`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import torch

from torchbricks_lightning.multitask.balancers import format_values
from torchbricks_lightning.multitask.branching import readers_by_task
from torchbricks_lightning.multitask.functional.pcgrad import pcgrad_weights
from torchbricks_lightning.multitask.gramian import GramianBalancer

__all__ = ["PCGrad", "pcgrad_coefficients", "readers_by_task"]


def pcgrad_coefficients(gram: Sequence[Sequence[float]], orders: Sequence[Sequence[int]]) -> tuple[list[float], int]:
    """PCGrad's combination of task gradients from their Gram matrix: ``(c, conflicts)``, ``sum_i p_i = sum_j c_j g_j``.

    A thin wrapper of :func:`~torchbricks_lightning.multitask.functional.pcgrad_weights` (the same computation),
    on lists, with the number of conflicting pairs (``G_ij < 0``, ``i < j``). A zero gradient keeps coefficient 1
    here (``pcgrad_weights`` gives it 0; the combined gradient is the same).

    Args:
        gram: ``G[i][j] = <g_i, g_j>``.
        orders: for each task ``i``, the order in which the other tasks are visited.

    Example:
        >>> coefficients, conflicts = pcgrad_coefficients([[1.0, -1.0], [-1.0, 4.0]], [[1], [0]])
        >>> coefficients, conflicts  # p_0 = g_0 + g_1 / 4, p_1 = g_1 + g_0
        ([2.0, 1.25], 1)
    """
    coefficients = pcgrad_weights(torch.tensor(gram, dtype=torch.float64), orders=orders).tolist()
    # pcgrad_weights gives a zero gradient 0; this function always gave it 1 (its p_i = g_i = 0: the same update)
    coefficients = [1.0 if gram[i][i] <= 0.0 else value for i, value in enumerate(coefficients)]
    conflicts = sum(1 for i in range(len(gram)) for j in range(i + 1, len(gram)) if gram[i][j] < 0.0)
    return coefficients, conflicts


class PCGrad(GramianBalancer):
    """Projecting conflicting gradients (PCGrad) of the tasks, on the shared tensor (default) or the parameters.

    The total is the static-weighted sum ``sum_i w_i L_i``; the projection acts on the gradients flowing back into
    the trunk (see the module's docstring for the formula and :mod:`~torchbricks_lightning.multitask.gramian` for
    the wiring).

    Args:
        shared_name: the data name of the shared tensor (the trunk's output the heads read), e.g. ``"features"``.
        loss_names: the tasks (losses) to project (default: every training loss); at least two must depend on the
            shared tensor.
        seed: the seed of the random visiting orders.
        source: ``"representation"`` (default: the shared tensor's gradients) or ``"parameters"`` (the paper's).

    Raises:
        ConfigError: at set-up, see :func:`readers_by_task` and :meth:`LossBalancer.setup`.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
        >>> collection = BrickCollection({
        ...     "backbone": BrickTrainable(nn.Linear(3, 4), input_names=["raw"], output_names=["features"]),
        ...     "a": BrickTrainable(nn.Linear(4, 1), input_names=["features"], output_names=["pa"]),
        ...     "b": BrickTrainable(nn.Linear(4, 1), input_names=["features"], output_names=["pb"]),
        ...     "la": BrickLoss(nn.MSELoss(), input_names=["pa", "ya"], output_names=["loss_a"]),
        ...     "lb": BrickLoss(nn.MSELoss(), input_names=["pb", "yb"], output_names=["loss_b"]),
        ... })
        >>> balancer = PCGrad(shared_name="features")
        >>> balancer.setup(collection, collection.loss_weights())
        >>> balancer.branch_tasks
        ('loss_a', 'loss_b')
    """

    def __init__(
        self,
        shared_name: str = "features",
        loss_names: Sequence[str] | None = None,
        seed: int = 0,
        source: Literal["representation", "parameters"] = "representation",
    ) -> None:
        super().__init__(None, source=source, shared_name=shared_name, loss_names=loss_names)
        self.seed = int(seed)

    def weigh(self, gram: torch.Tensor, step: int) -> torch.Tensor:
        return pcgrad_weights(gram, orders=self._orders(len(gram), step))

    def _orders(self, count: int, step: int) -> list[list[int]]:
        """For each task, the order in which the others are visited: random, from ``(seed, step)`` only."""
        others = [[j for j in range(count) if j != i] for i in range(count)]
        if count > 2:
            generator = random.Random(self.seed * 1_000_003 + step)  # noqa: S311 - an order, not a secret
            for order in others:
                generator.shuffle(order)
        return others

    def state_details(self) -> str:
        coefficients = dict(zip(self.branch_tasks, self.last_coefficients, strict=True))
        source = "" if self.source == "representation" else " (parameters)"
        return (
            f"; shared tensor {self.shared_name!r}{source}, last step's coefficients {format_values(coefficients)} "
            f"with {self.last_conflicts} conflicting pairs, {int(self.steps)} projected steps"
        )
