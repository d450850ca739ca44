"""The cheap loss-level balancers: random loss weighting (RLW), the geometric loss strategy (GLS), and what they share
with FAMO (:mod:`~torchbricks_lightning.multitask.famo`).

Each reads only the values of the training losses, so a step costs a few operations on a vector of ``T`` numbers
(``T`` the number of balanced losses) and, under DDP, one ``all_reduce`` of ``2T`` numbers. ``w_i`` is a task's
static weight (its loss brick's ``loss_weight`` or the module's ``loss_weights``), 1 unless set: with every
``w_i = 1`` each formula below is its paper's.

**A task without labels.** The masked losses give exactly 0 for a batch without their labels; a balanced loss of
exactly 0, or missing from the step's losses, is *unlabelled* in that step. It takes no part: its weight is 0, the
others' weights are computed over the labelled tasks alone, and nothing divides by it or takes its logarithm, so
no NaN comes from it. (A labelled loss that is exactly 0 is treated the same, as in
:class:`~torchbricks_lightning.multitask.balancers.UncertaintyWeighting`: its gradient is 0 anyway.)

**DDP.** The weights must be those one process would compute on the whole batch, on every process. So what they
read is all-reduced first (:func:`global_losses`): the losses averaged over the processes (each counted loss is
already rescaled by the labelled count of all processes, :func:`~.labels.scale_to_global_counts`) and the labelled
mask (labelled on any process). The total is ``sum_i a_i L_i`` with detached factors ``a_i`` and this process's
losses: DDP averages the gradients ``sum_i a_i grad L_i``, the single-process gradient.

Every weight is logged as ``train/balance/{loss}`` at the steps where its task takes part (a step without a task's
labels leaves a gap in its curve, rather than a 0 that would read as the method's choice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.distributed import world_size
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.balancers import LossBalancer

__all__ = ["GeometricLossStrategy", "LossLevelBalancer", "RandomLossWeighting", "global_losses", "softmax_of_floats"]


def global_losses(values: torch.Tensor, labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The losses averaged over the DDP processes, and whether each task is labelled on any process.

    ``values``: ``(T,)`` detached float losses of this process; ``labelled``: ``(T,)`` bool. One ``all_reduce`` of
    ``2T`` numbers under DDP (every process calls it at the same step); without a process group, both unchanged.

    Example:
        >>> global_losses(torch.tensor([0.5, 0.0]), torch.tensor([True, False]))
        (tensor([0.5000, 0.0000]), tensor([ True, False]))
    """
    world = world_size()
    if world == 1:
        return values, labelled
    packed = torch.cat([values.float(), labelled.float()])
    torch.distributed.all_reduce(packed)
    count = values.numel()
    return packed[:count] / world, packed[count:] > 0


def softmax_of_floats(values: list[float]) -> list[float]:
    """``softmax`` of Python floats; a ``-inf`` entry gets 0 (at least one must be finite).

    Example:
        >>> softmax_of_floats([0.0, 0.0, -math.inf])
        [0.5, 0.5, 0.0]
    """
    top = max(values)
    exponentials = [math.exp(value - top) for value in values]
    total = sum(exponentials)
    return [value / total for value in exponentials]


class LossLevelBalancer(LossBalancer):
    """What the three share: the labelled mask, the all-reduced losses, the last step's weights and their logging.

    A step: :meth:`_stack` the balanced losses, all-reduce their values (:func:`global_losses`), compute the
    detached factors ``a_i``, remember them, and return ``sum_i a_i L_i``. The factors come from one of two codes
    with the same formulas: :meth:`_factors` on tensors (accelerators, where reading the values would wait for the
    device), or :meth:`_factors_in_floats` on Python floats for CPU tensors, where a step of the tensor code is some
    10 to 80 operations on ``T`` numbers, each dearer than the arithmetic it does. The tests run both codes side by
    side and check that they agree.
    """

    log_every_step: ClassVar[bool] = True
    last_weights: torch.Tensor
    last_labelled: torch.Tensor

    def __init__(self, loss_names: Sequence[str] | None = None) -> None:
        super().__init__(loss_names)
        self.register_buffer("last_weights", torch.zeros(0))
        self.register_buffer("last_labelled", torch.zeros(0, dtype=torch.bool))
        self._tensor_math = False  # True: the tensor code on CPU too (the tests compare both)
        self._static_floats: list[float] = []  # the static weights as Python floats (set up with the tasks)

    def setup_tasks(self, collection: BrickCollection) -> None:
        count = len(self.loss_names)
        if self.last_weights.numel() != count:
            static: torch.Tensor = self.__dict__["_balanced_weights"]
            self.last_weights = static.float() / count
            self.last_labelled = torch.ones(count, dtype=torch.bool)
        self._static_floats = self.__dict__["_balanced_weights"].tolist()

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stacked, labelled = self._stack(losses)
        with torch.no_grad():
            if stacked.device.type == "cpu" and not self._tensor_math:
                if world_size() == 1:  # the values as they are: no all-reduce, the mask read from them
                    floats = stacked.tolist()
                    taking_part = [value != 0 for value in floats]  # as ``stacked != 0`` (NaN is not 0)
                else:
                    values, labelled = global_losses(stacked.detach(), labelled)
                    floats, taking_part = values.tolist(), labelled.tolist()
                factors = torch.tensor(self._factors_in_floats(floats, taking_part), dtype=torch.float32)
            else:
                values, labelled = global_losses(stacked.detach(), labelled)
                factors = self._factors(values.float(), labelled)
            self.last_weights.copy_(factors)
            self.last_labelled.copy_(labelled)
        if factors.dtype != stacked.dtype:
            factors = factors.to(stacked.dtype)
        return self._add_others(torch.dot(factors, stacked), losses)

    def _factors(self, values: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        """The step's detached factors ``a_i`` (float32, ``(T,)``) from the all-reduced float losses and the
        labelled mask, on tensors (any device); a method updates its state here too."""
        raise NotImplementedError

    def _factors_in_floats(self, values: list[float], labelled: list[bool]) -> list[float]:
        """:meth:`_factors` on Python floats (for CPU tensors): the same formulas."""
        raise NotImplementedError

    def _static_weights(self) -> list[float]:
        """The static weights ``w_i`` of the balanced losses, as Python floats."""
        return self._static_floats

    def _stack(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(stacked losses, labelled mask)``: a loss missing from ``losses`` is a 0 without labels."""
        names = self.loss_names
        if not names:
            self._check_set_up(losses)  # the error that says how to set it up
        if all(name in losses for name in names):
            stacked = torch.stack([losses[name] for name in names])
        else:
            like = next((losses[name] for name in names if name in losses), None)
            if like is None:
                raise ConfigError(
                    f"{type(self).__name__} balances {list(names)}, but the step's losses hold none of them: "
                    f"{sorted(losses)}. Check that the loss bricks are alive in the training stage."
                )
            zero = torch.zeros((), dtype=like.dtype, device=like.device)
            stacked = torch.stack([losses.get(name, zero) for name in names])
        return stacked, stacked != 0  # a comparison: no autograd node

    def weights(self) -> dict[str, torch.Tensor]:
        """The last step's factor of each loss (0 for a task that took no part)."""
        return dict(zip(self.loss_names, self.last_weights.detach().unbind(), strict=True))

    def logged_values(self) -> dict[str, torch.Tensor]:
        """The weights of the tasks that took part in the last step (see the module's docstring)."""
        labelled = self.last_labelled.tolist()
        return {
            name: value
            for (name, value), taking_part in zip(self.weights().items(), labelled, strict=True)
            if taking_part
        }

    def _labelled_details(self, separator: str = ", ") -> str:
        """Which tasks had no labels in the last step, after ``separator`` (nothing when every task had some)."""
        labelled = self.last_labelled.tolist()
        absent = [name for name, taking_part in zip(self.loss_names, labelled, strict=True) if not taking_part]
        return f"{separator}unlabelled in the last step: {absent}" if absent else ""


class RandomLossWeighting(LossLevelBalancer):
    """Random loss weighting (Lin, Ye, Xu, Shi, Zhang and Kwok, "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning", TMLR 2022): new random weights at every step.

    ``eps ~ N(0, I_T)`` (the paper's default distribution, LibMTL's ``dist='Normal'``), ``lambda = softmax(eps_P)``
    over the tasks ``P`` labelled in the step (renormalised over them; an unlabelled task's weight is 0), and
    ``total = sum_{i in P} w_i lambda_i L_i``. The weights sum to 1, as in the paper and LibMTL (not scaled by the
    number of tasks): the total is about ``1 / T`` of the static sum. The draws come from a generator seeded with
    ``(seed, step)`` (the step count is a buffer): the same on every DDP process (whose labelled mask is
    all-reduced), continued exactly by a resumed run. All ``T`` are drawn each step, whichever tasks are labelled.
    The logged weight is ``w_i lambda_i``.

    Args:
        loss_names: the losses to balance (default: every training loss).
        seed: the seed of the draws.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss
        >>> collection = BrickCollection({
        ...     "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["l1"]),
        ...     "b": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["l2"]),
        ... })
        >>> balancer = RandomLossWeighting(seed=0)
        >>> balancer.setup(collection, collection.loss_weights())
        >>> total = balancer({"l1": torch.tensor(1.0), "l2": torch.tensor(3.0)})
        >>> round(float(sum(balancer.weights().values())), 6)
        1.0
        >>> _ = balancer({"l1": torch.tensor(0.0), "l2": torch.tensor(3.0)})  # no label for l1
        >>> {name: float(weight) for name, weight in balancer.weights().items()}
        {'l1': 0.0, 'l2': 1.0}
    """

    steps: torch.Tensor

    def __init__(self, loss_names: Sequence[str] | None = None, seed: int = 0) -> None:
        super().__init__(loss_names)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"Expected RandomLossWeighting's seed to be an int, but got {seed!r}.")
        self.seed = seed
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self._step = 0  # the buffer's value on the host (no device sync per step), refreshed when a state is loaded
        self.register_load_state_dict_post_hook(_read_step)

    def draws(self, step: int) -> torch.Tensor:
        """The ``T`` normal draws of step ``step`` (on the CPU; the same on every machine and process)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randn(len(self.loss_names), generator=generator)

    def _next_draws(self) -> torch.Tensor:
        """This step's draws; counts the step."""
        draws = self.draws(self._step)
        self._step += 1
        self.steps.fill_(self._step)
        return draws

    def _factors(self, values: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        draws = self._next_draws().to(values.device, non_blocking=True)
        lambdas = torch.where(labelled, torch.softmax(torch.where(labelled, draws, -torch.inf), dim=0), 0.0)
        return self._weights_tensor(lambdas) * lambdas

    def _factors_in_floats(self, values: list[float], labelled: list[bool]) -> list[float]:
        draws = self._next_draws().tolist()
        if not any(labelled):
            return [0.0] * len(labelled)
        lambdas = softmax_of_floats(
            [draw if taking_part else -math.inf for draw, taking_part in zip(draws, labelled, strict=True)]
        )
        return [weight * share for weight, share in zip(self._static_weights(), lambdas, strict=True)]

    def state_details(self) -> str:
        return f"; {self._step} steps drawn, seed {self.seed}{self._labelled_details()}"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"


def _read_step(module: nn.Module, incompatible_keys: Any) -> None:
    if isinstance(module, RandomLossWeighting):
        module._step = int(module.steps)


class GeometricLossStrategy(LossLevelBalancer):
    """The geometric loss strategy, GLS (Chennupati, Sistu, Yogamani and Rawashdeh, "MultiNet++: Multi-Stream
    Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019).

    ``total = (prod_i L_i)^(1/T)``, the geometric mean of the losses, computed as ``G = exp(sum_{i in P} w_i log L_i
    / sum_{i in P} w_i)`` over the tasks ``P`` labelled in the step (for ``w_i = 1``, ``exp(mean_{i in P} log L_i)``:
    no product to under- or overflow, and an unlabelled task's 0 neither makes the total 0 nor enters a logarithm).
    The logged weight is the effective factor of each loss, ``a_i = dG / dL_i = G w_i / (W L_i)`` with ``W =
    sum_{j in P} w_j`` (``G / (T L_i)`` for ``w_i = 1``). The total is ``sum_{i in P} a_i L_i`` with detached
    ``a_i``: its value is ``G`` and its gradient ``grad G`` in one process, and under DDP the ``a_i`` come from the
    all-reduced losses. The losses must be positive (a negative one has no logarithm).

    Args:
        loss_names: the losses to balance (default: every training loss).

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss
        >>> collection = BrickCollection({
        ...     "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["l1"]),
        ...     "b": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["l2"]),
        ... })
        >>> balancer = GeometricLossStrategy()
        >>> balancer.setup(collection, collection.loss_weights())
        >>> balancer({"l1": torch.tensor(1.0), "l2": torch.tensor(4.0)})  # sqrt(1 * 4)
        tensor(2.)
        >>> {name: float(weight) for name, weight in balancer.weights().items()}  # G / (2 L_i)
        {'l1': 1.0, 'l2': 0.25}
        >>> balancer({"l1": torch.tensor(0.0), "l2": torch.tensor(4.0)})  # no label for l1: not a total of 0
        tensor(4.)
    """

    def _factors(self, values: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        weights = torch.where(labelled, self._weights_tensor(values), 0.0)
        total_weight = weights.sum()
        safe_total = torch.where(total_weight > 0, total_weight, 1.0)
        safe_values = torch.where(labelled, values, 1.0)
        geometric = torch.exp((weights * torch.log(safe_values)).sum() / safe_total)
        return torch.where(labelled, geometric * weights / (safe_total * safe_values), 0.0)

    def _factors_in_floats(self, values: list[float], labelled: list[bool]) -> list[float]:
        weights = [
            weight if taking_part else 0.0 for weight, taking_part in zip(self._static_weights(), labelled, strict=True)
        ]
        total_weight = sum(weights)
        if not total_weight > 0:
            return [0.0] * len(weights)
        safe = [value if taking_part else 1.0 for value, taking_part in zip(values, labelled, strict=True)]
        geometric = math.exp(
            sum(weight * _log(value) for weight, value in zip(weights, safe, strict=True)) / total_weight
        )
        return [
            geometric * weight / (total_weight * value) if taking_part else 0.0
            for weight, value, taking_part in zip(weights, safe, labelled, strict=True)
        ]

    def state_details(self) -> str:
        return self._labelled_details("; ")


def _log(value: float) -> float:
    """``math.log`` as ``torch.log`` reads it: ``-inf`` at 0 and NaN below (not a ``ValueError``)."""
    if value > 0:
        return math.log(value)
    return -math.inf if value == 0 else math.nan
