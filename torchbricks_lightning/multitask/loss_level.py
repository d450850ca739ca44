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
:class:`~torchbricks_lightning.multitask.uncertainty.UncertaintyWeighting`: its gradient is 0 anyway.)

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
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.distributed import world_size
from torchbricks_lightning.errors import CheckpointError, ConfigError
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

    A step: read the balanced losses' values, all-reduce them under DDP (:func:`global_losses`), compute the
    detached factors ``a_i``, remember them, and return ``sum_i a_i L_i``. The factors come from one of two codes
    with the same formulas: :meth:`_factors` on tensors (accelerators, where reading the values would wait for the
    device), or :meth:`_factors_in_floats` on Python floats for CPU tensors. On CPU a step is a few tensor
    operations: one ``item()`` per loss, and the total as ``a_1 L_1 + a_2 L_2 + ...`` with float factors. Each
    tensor operation cost some 10 to 25 µs in one profile on a 2-core CPU, just after a training step's
    convolutions (caches cold): far more than the arithmetic on ``T`` numbers. So the state a method keeps (the
    last step's factors and labelled mask here, FAMO's logits and moments) stays in Python between steps: no
    buffer is read or written per step. It is
    the module's extra state (``get_extra_state``, ``{prefix}_extra_state`` in its ``state_dict``), so checkpoints
    hold it and a resumed run goes on exactly; what a checkpoint holds is checked before it is used. The tests
    run both codes side by side and check that they agree.
    """

    log_every_step: ClassVar[bool] = True

    def __init__(self, loss_names: Sequence[str] | None = None) -> None:
        super().__init__(loss_names)
        self._tensor_math = False  # True: the tensor code on CPU too (the tests compare both)
        # The last step's factors and labelled mask: Python lists after a CPU step, tensors after the tensor code's.
        self._last_weights: list[float] | torch.Tensor = []
        self._last_labelled: list[bool] | torch.Tensor = []

    def setup_tasks(self, collection: BrickCollection) -> None:
        count = len(self.loss_names)
        if len(self._last_weights) != count:
            self._last_weights = [weight / count for weight in self._static_floats]
            self._last_labelled = [True] * count

    @property
    def last_weights(self) -> torch.Tensor:
        """The last step's factor ``a_i`` of each loss, float32 ``(T,)`` (0 for a task that took no part)."""
        weights = self._last_weights
        return weights if isinstance(weights, torch.Tensor) else torch.tensor(weights, dtype=torch.float32)

    @property
    def last_labelled(self) -> torch.Tensor:
        """Whether each task took part in the last step, bool ``(T,)``."""
        labelled = self._last_labelled
        return labelled if isinstance(labelled, torch.Tensor) else torch.tensor(labelled, dtype=torch.bool)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        balanced = self._balanced(losses)
        like = next(loss for loss in balanced if loss is not None)
        if like.device.type != "cpu" or self._tensor_math:
            return self._forward_tensors(balanced, like, losses)
        with torch.no_grad():
            floats = [0.0 if loss is None else loss.item() for loss in balanced]
        taking_part = [value != 0 for value in floats]  # NaN is not 0: a NaN loss takes part (and is reported)
        if world_size() > 1:
            values, labelled = global_losses(torch.tensor(floats), torch.tensor(taking_part))
            floats, taking_part = values.tolist(), labelled.tolist()
        factors = self._factors_in_floats(floats, taking_part)
        self._last_weights, self._last_labelled = factors, taking_part
        terms = [loss * factor for factor, loss in zip(factors, balanced, strict=True) if loss is not None]
        total = terms[0]  # ``like`` is one of them
        for term in terms[1:]:
            total = total + term
        return self._add_others(total, losses)

    def _forward_tensors(
        self, balanced: list[torch.Tensor | None], like: torch.Tensor, losses: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        stacked = torch.stack([zero if loss is None else loss for loss in balanced])
        with torch.no_grad():
            values, labelled = global_losses(stacked.detach(), stacked != 0)
            factors = self._factors(values.float(), labelled)
        self._last_weights, self._last_labelled = factors, labelled
        return self._add_others(torch.dot(factors.to(stacked.dtype), stacked), losses)

    def _factors(self, values: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        """The step's detached factors ``a_i`` (float32, ``(T,)``) from the all-reduced float losses and the
        labelled mask, on tensors (any device); a method updates its state here too."""
        raise NotImplementedError

    def _factors_in_floats(self, values: list[float], labelled: list[bool]) -> list[float]:
        """:meth:`_factors` on Python floats (for CPU tensors): the same formulas."""
        raise NotImplementedError

    def _balanced(self, losses: Mapping[str, torch.Tensor]) -> list[torch.Tensor | None]:
        """The balanced losses in order; ``None`` for one missing from ``losses`` (a 0 without labels)."""
        names = self.loss_names
        if not names:
            self._check_set_up(losses)  # the error that says how to set it up
        balanced = [losses.get(name) for name in names]
        if all(loss is None for loss in balanced):
            raise ConfigError(
                f"{type(self).__name__} balances {list(names)}, but the step's losses hold none of them: "
                f"{sorted(losses)}. Check that the loss bricks are alive in the training stage."
            )
        return balanced

    # ------------------------------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the balancer: the last step's factors and mask, and a method's own state."""
        return {
            "last_weights": self.last_weights.detach().cpu(),
            "last_labelled": self.last_labelled.cpu(),
            **self._method_state(),
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore :meth:`get_extra_state`'s dict from a checkpoint, after checking it (untrusted input).

        Raises:
            CheckpointError: not a dict of tensors of this balancer's shapes and kinds; the message names the key.
        """
        count = len(self.loss_names)
        expected = {"last_weights": ((count,), False), "last_labelled": ((count,), False), **self._method_shapes()}
        if not isinstance(state, Mapping) or set(state) != set(expected):
            found = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(
                f"{type(self).__name__}'s saved state (loss_balancer._extra_state) holds {found}, not "
                f"{sorted(expected)}: the checkpoint was saved by another balancer, or it is damaged. Resume with "
                "the balancer it was trained with."
            )
        for key, (shape, finite) in expected.items():
            value = state[key]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.is_complex():
                described = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise CheckpointError(
                    f"{type(self).__name__}'s saved {key!r} is {described}, not a real tensor of shape {shape} (one "
                    f"entry per balanced loss, {list(self.loss_names)}): resume with the same balanced losses."
                )
            if finite and not bool(torch.isfinite(value).all()):
                raise CheckpointError(
                    f"{type(self).__name__}'s saved {key!r} is not finite: {value.tolist()}. The checkpoint is "
                    "damaged: resume from another one."
                )
        self._last_weights = state["last_weights"].float().tolist()
        self._last_labelled = [bool(value) for value in state["last_labelled"].tolist()]
        self._load_method_state(state)

    def _method_state(self) -> dict[str, torch.Tensor]:
        """A method's own state for checkpoints (CPU tensors; nothing by default)."""
        return {}

    def _method_shapes(self) -> dict[str, tuple[tuple[int, ...], bool]]:
        """The shape of each of :meth:`_method_state`'s tensors, and whether it must be finite."""
        return {}

    def _load_method_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`_method_state` (checked against :meth:`_method_shapes`)."""

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
    ``(seed, step)`` (the step count is in checkpoints): the same on every DDP process (whose labelled mask is
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

    def __init__(self, loss_names: Sequence[str] | None = None, seed: int = 0) -> None:
        super().__init__(loss_names)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"Expected RandomLossWeighting's seed to be an int, but got {seed!r}.")
        self.seed = seed
        self._step = 0  # the steps drawn (in checkpoints as the extra state's "steps")

    def draws(self, step: int) -> list[float]:
        """The ``T`` standard normal draws of step ``step`` (the same on every machine and process): Python's
        ``random.Random`` seeded with ``(seed, step)``, with no tensor operation (each would cost more than the
        draws inside a training step)."""
        generator = random.Random(self.seed * 1_000_003 + step)  # noqa: S311 - task weights, not a secret
        return [generator.gauss(0.0, 1.0) for _ in self.loss_names]

    def _next_draws(self) -> list[float]:
        """This step's draws; counts the step."""
        draws = self.draws(self._step)
        self._step += 1
        return draws

    def _factors(self, values: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        draws = torch.tensor(self._next_draws(), device=values.device)
        lambdas = torch.where(labelled, torch.softmax(torch.where(labelled, draws, -torch.inf), dim=0), 0.0)
        return self._weights_tensor(lambdas) * lambdas

    def _factors_in_floats(self, values: list[float], labelled: list[bool]) -> list[float]:
        draws = self._next_draws()
        if not any(labelled):
            return [0.0] * len(labelled)
        lambdas = softmax_of_floats(
            [draw if taking_part else -math.inf for draw, taking_part in zip(draws, labelled, strict=True)]
        )
        return [weight * share for weight, share in zip(self._static_weights(), lambdas, strict=True)]

    @property
    def steps(self) -> torch.Tensor:
        """The number of steps drawn so far (int64 scalar)."""
        return torch.tensor(self._step)

    def _method_state(self) -> dict[str, torch.Tensor]:
        return {"steps": self.steps}

    def _method_shapes(self) -> dict[str, tuple[tuple[int, ...], bool]]:
        return {"steps": ((), True)}

    def _load_method_state(self, state: Mapping[str, torch.Tensor]) -> None:
        steps = state["steps"]
        if steps.is_floating_point() or int(steps) < 0:
            raise CheckpointError(
                f"RandomLossWeighting's saved 'steps' is {steps.tolist()!r}, not a count >= 0: the checkpoint is "
                "damaged. Resume from another one."
            )
        self._step = int(steps)

    def state_details(self) -> str:
        return f"; {self._step} steps drawn, seed {self.seed}{self._labelled_details()}"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"


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
