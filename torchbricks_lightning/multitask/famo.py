"""FAMO (Liu et al., NeurIPS 2023): a loss-level balancer whose weights make every loss fall at the same rate.

It shares the loss-level machinery of :mod:`~torchbricks_lightning.multitask.loss_level` (the labelled mask, the
all-reduced losses, the logged weights); see that module for the unlabelled-task and DDP rules.
"""

from __future__ import annotations

import array
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.errors import CheckpointError, ConfigError, did_you_mean
from torchbricks_lightning.multitask.balancers import format_values
from torchbricks_lightning.multitask.loss_level import LossLevelBalancer, softmax_of_floats

__all__ = ["FAMO"]

_FAMO_EPSILON = 1e-8  # the official code's, in log(L - L_min + 1e-8)
_ROWS = ("logits", "exp_avg", "exp_avg_sq", "update_counts", "previous_losses", "previous_labelled")
_LOGITS, _FIRST, _SECOND, _COUNTS, _PREVIOUS, _PREVIOUS_LABELLED = range(len(_ROWS))
_MAX_COUNT = 2.0**24  # the last count float32 holds exactly


class FAMO(LossLevelBalancer):
    """Fast adaptive multitask optimisation (Liu, Liu, Jin, Stone and Liu, "FAMO: Fast Adaptive Multitask
    Optimization", NeurIPS 2023): task weights that make every loss fall at the same rate, in O(1) per step.

    **The weighting** (the official code's ``get_weighted_loss``). Learnable logits ``xi`` (state, not trained by
    the model's optimizer), ``z = softmax(xi)``, ``D_i = L_i - L_i^min + 1e-8``. The paper's objective is
    ``sum_i z_i log(D_i) / c`` with ``c = sum_i z_i / D_i`` held constant; its gradient is ``sum_i a_i grad L_i``
    with ``a_i = z_i / (c D_i)``. The total optimised here is that linearisation,
    ``total = sum_{i in P_t} a_i L_i`` with ``a_i = w_i z_i / (c D_i)``, ``c = sum_{j in P_t} w_j z_j / D_j``
    (``a`` detached, read from the all-reduced losses; ``P_t`` the tasks labelled in step ``t``): the same gradient
    (for ``w_i = 1``), a value that is a weighted mean of the losses (the ``a_i`` sum to 1 for ``w_i = 1``, so the
    total is about ``1 / T`` of the static sum: scale the learning rate accordingly), and one formula under DDP. The
    logged weight is ``a_i``.

    **The update** (the official code's ``update``). ``delta_i = log D_i(t-1) - log D_i(t)``, how much task ``i``'s
    loss fell over the last optimizer step, for the tasks ``U = P_{t-1} ∩ P_t`` labelled in both steps. The
    gradient of ``delta . softmax(xi)`` over ``U``: ``g_i = z^U_i (delta_i - sum_{j in U} z^U_j delta_j)`` with
    ``z^U = softmax(xi_U)``, plus the weight decay ``gamma xi_i``, then an Adam step (``torch.optim.Adam``'s rule:
    betas 0.9 and 0.999, eps 1e-8, ``lr``): ``m_i <- b1 m_i + (1 - b1) g_i``, ``v_i <- b2 v_i + (1 - b2) g_i^2``,
    ``xi_i <- xi_i - lr (m_i / (1 - b1^n_i)) / (sqrt(v_i / (1 - b2^n_i)) + eps)``, where ``n_i`` counts task
    ``i``'s updates. Only the tasks in ``U`` move (their logits, moments and counts): a task without labels in
    this step or the previous one takes no part. With every task labelled it is exactly the official code's
    ``Adam([xi], lr, weight_decay=gamma)`` step.

    **Which losses the update reads.** The official code (and LibMTL's trainer) recomputes the losses on the same
    batch after the optimizer step: an extra forward pass, which Lightning's automatic optimization has no place for
    (and which would run dropout and batch-norm statistics again). So ``delta`` compares step ``t - 1``'s loss
    (before its update) with step ``t``'s (after it), on two batches, as FAMO's toy does: one step late, with
    batch-to-batch noise that Adam's moments average. Under gradient accumulation two successive batches can lie
    within one optimizer step: their ``delta`` is noise only.

    **Defaults**: ``lr = 0.025`` and ``gamma = 0.01``, the official code's (``famo.py``; ``experiments/utils.py``:
    ``--method-params-lr 0.025``, ``--gamma 0.01``); LibMTL and torchjd default to ``gamma = 1e-3``. The official
    runs also clip the model's gradient norm to 1 (``max_norm``): ``Trainer(gradient_clip_val=1.0)``.

    **State** (in checkpoints, as the extra state's ``"famo"``, a ``(6, T)`` float32 tensor: a resumed run goes
    on as the uninterrupted one): the logits, Adam's two moments, the update counts, the last step's all-reduced
    losses and its labelled mask (1 or 0), also readable as :attr:`logits`, :attr:`exp_avg`, :attr:`exp_avg_sq`,
    :attr:`update_counts`, :attr:`previous_losses` and :attr:`previous_labelled`. On CPU it stays in Python
    between steps, each value rounded to float32 as it is stored, so a checkpoint holds it exactly. The counts stop
    at ``2^24``, the last that float32 holds exactly (Adam's bias corrections are exactly 1 long before).

    Args:
        loss_names: the losses to balance (default: every training loss).
        lr: the step size of the logits' Adam update, >= 0.
        gamma: the weight decay of the logits (``weight_decay`` of the official code's Adam), >= 0.
        min_losses: ``L_i^min`` by loss name (default 0), a lower bound of each loss. A loss at or below its bound
            gives ``D_i = 1e-8`` (``L_i - L_i^min`` is clamped at 0, so no logarithm of a negative number), and a
            non-finite loss takes no part in the update (the module's finite-loss check reports it).

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss
        >>> collection = BrickCollection({
        ...     "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["l1"]),
        ...     "b": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["l2"]),
        ... })
        >>> balancer = FAMO()
        >>> balancer.setup(collection, collection.loss_weights())
        >>> balancer({"l1": torch.tensor(1.0), "l2": torch.tensor(3.0)})  # z = (1/2, 1/2): a = (3/4, 1/4)
        tensor(1.5000)
        >>> {name: round(float(weight), 4) for name, weight in balancer.weights().items()}
        {'l1': 0.75, 'l2': 0.25}
        >>> _ = balancer({"l1": torch.tensor(0.5), "l2": torch.tensor(3.0)})  # l1 fell: l2's logit goes up
        >>> [round(logit, 4) for logit in balancer.logits.tolist()]  # Adam's first step: lr times the sign
        [-0.025, 0.025]
        >>> _ = balancer({"l1": torch.tensor(0.0), "l2": torch.tensor(2.0)})  # no label for l1: l2 alone
        >>> {name: float(weight) for name, weight in balancer.weights().items()}
        {'l1': 0.0, 'l2': 1.0}
    """

    min_loss_values: torch.Tensor

    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    adam_eps: ClassVar[float] = 1e-8

    def __init__(
        self,
        loss_names: Sequence[str] | None = None,
        lr: float = 0.025,
        gamma: float = 0.01,
        min_losses: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(loss_names)
        for name, value in (("lr", lr), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"Expected FAMO's {name} to be a finite number >= 0, but got {value!r}.")
        self.lr, self.gamma = float(lr), float(gamma)
        self.min_losses = dict(min_losses or {})
        for name, value in self.min_losses.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"Expected FAMO's min_losses[{name!r}] to be a finite number, but got {value!r}.")
        # The six rows: Python lists after a CPU step, a tensor after the tensor code's (on the losses' device).
        self._state: list[list[float]] | torch.Tensor = [[] for _ in _ROWS]
        self.register_buffer("min_loss_values", torch.zeros(0), persistent=False)  # configuration, not state
        self._min_losses: list[float] = []  # min_loss_values as Python floats

    def setup_tasks(self, collection: BrickCollection) -> None:
        super().setup_tasks(collection)
        unknown = [name for name in self.min_losses if name not in self.loss_names]
        if unknown:
            raise ConfigError(
                f"FAMO has min_losses for {unknown}, which it does not balance."
                f"{did_you_mean(unknown[0], self.loss_names)} Balanced losses: {list(self.loss_names)}."
            )
        count = len(self.loss_names)
        self._min_losses = [float(self.min_losses.get(name, 0.0)) for name in self.loss_names]
        self.min_loss_values = torch.tensor(self._min_losses)
        if len(self._state[0]) != count:
            self._state = [[0.0] * count for _ in _ROWS]

    @property
    def state(self) -> torch.Tensor:
        """The state's six rows, ``(6, T)`` float32 (see the class docstring; a copy after a CPU step)."""
        state = self._state
        return state if isinstance(state, torch.Tensor) else torch.tensor(state, dtype=torch.float32)

    @property
    def logits(self) -> torch.Tensor:
        """The logits ``xi`` of the weights ``z = softmax(xi)``, ``(T,)`` (a copy)."""
        return self.state[_LOGITS].clone()

    @property
    def exp_avg(self) -> torch.Tensor:
        """Adam's first moments of the logits, ``(T,)`` (a copy)."""
        return self.state[_FIRST].clone()

    @property
    def exp_avg_sq(self) -> torch.Tensor:
        """Adam's second moments of the logits, ``(T,)`` (a copy)."""
        return self.state[_SECOND].clone()

    @property
    def update_counts(self) -> torch.Tensor:
        """How many updates each task's logit had, ``(T,)`` int64 (a copy)."""
        return self.state[_COUNTS].long()

    @property
    def previous_losses(self) -> torch.Tensor:
        """The last step's all-reduced losses, ``(T,)`` (a copy)."""
        return self.state[_PREVIOUS].clone()

    @property
    def previous_labelled(self) -> torch.Tensor:
        """Whether each task was labelled in the last step, ``(T,)`` bool (a copy)."""
        return self.state[_PREVIOUS_LABELLED] > 0

    def _factors(self, values: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        state = self._state
        if not isinstance(state, torch.Tensor) or state.device != values.device:
            state = torch.as_tensor(state, dtype=torch.float32, device=values.device)
        logits, first, second, counts, previous, previous_labelled = state.unbind()
        shifted = (values - self.min_loss_values).clamp_min(0.0) + _FAMO_EPSILON
        # The update: one Adam step of the logits from the fall of the log-losses since the last step, over U.
        change = torch.log((previous - self.min_loss_values).clamp_min(0.0) + _FAMO_EPSILON) - torch.log(shifted)
        taking_part = labelled & (previous_labelled > 0) & torch.isfinite(change)  # a NaN loss never reaches xi
        delta = torch.where(taking_part, change, 0.0)
        z = torch.where(taking_part, torch.softmax(torch.where(taking_part, logits, -torch.inf), dim=0), 0.0)
        grad = z * (delta - (z * delta).sum()) + self.gamma * logits
        beta1, beta2 = self.betas
        first = torch.where(taking_part, beta1 * first + (1 - beta1) * grad, first)
        second = torch.where(taking_part, beta2 * second + (1 - beta2) * grad * grad, second)
        counts = torch.where(taking_part, (counts + 1).clamp_max(_MAX_COUNT), counts)
        correction1 = torch.where(taking_part, 1 - torch.pow(beta1, counts), 1.0)
        correction2 = torch.where(taking_part, 1 - torch.pow(beta2, counts), 1.0)
        step = self.lr / correction1 * first / (second.sqrt() / correction2.sqrt() + self.adam_eps)
        logits = torch.where(taking_part, logits - step, logits)
        self._state = torch.stack([logits, first, second, counts, values.float(), labelled.float()])
        # The factors from the updated logits.
        z = torch.softmax(logits, dim=0)
        ratios = torch.where(labelled, self._weights_tensor(z) * z / shifted, 0.0)
        normaliser = ratios.sum()
        return ratios / torch.where(normaliser > 0, normaliser, 1.0)

    def _factors_in_floats(self, values: list[float], labelled: list[bool]) -> list[float]:
        """The update and the factors of :meth:`_factors` on Python floats (the state stays in Python)."""
        state = self._state
        logits, first, second, counts, previous, previous_labelled = (
            state.tolist() if isinstance(state, torch.Tensor) else state
        )
        minimums = self._min_losses
        shifted = [max(loss - low, 0.0) + _FAMO_EPSILON for loss, low in zip(values, minimums, strict=True)]
        change = [
            math.log(max(before - low, 0.0) + _FAMO_EPSILON) - math.log(now)
            for before, low, now in zip(previous, minimums, shifted, strict=True)
        ]
        taking_part = [
            now and then > 0 and math.isfinite(delta)
            for now, then, delta in zip(labelled, previous_labelled, change, strict=True)
        ]
        if any(taking_part):
            z = softmax_of_floats(
                [logit if part else -math.inf for logit, part in zip(logits, taking_part, strict=True)]
            )
            mean = sum(weight * delta for weight, delta, part in zip(z, change, taking_part, strict=True) if part)
            (beta1, beta2), lr = self.betas, self.lr
            for task, part in enumerate(taking_part):
                if not part:
                    continue
                grad = z[task] * (change[task] - mean) + self.gamma * logits[task]
                first[task] = beta1 * first[task] + (1 - beta1) * grad
                second[task] = beta2 * second[task] + (1 - beta2) * grad * grad
                counts[task] = min(counts[task] + 1, _MAX_COUNT)
                denominator = math.sqrt(second[task]) / math.sqrt(1 - beta2 ** counts[task]) + self.adam_eps
                logits[task] -= lr / (1 - beta1 ** counts[task]) * first[task] / denominator
            # Stored in float32, as the tensor code computes and a checkpoint keeps them; the factors read them so.
            logits, first, second = (array.array("f", row).tolist() for row in (logits, first, second))
        self._state = [
            logits,
            first,
            second,
            counts,
            array.array("f", values).tolist(),
            [float(now) for now in labelled],
        ]
        z = softmax_of_floats(logits)
        ratios = [
            weight * share / size if now else 0.0
            for weight, share, size, now in zip(self._static_weights(), z, shifted, labelled, strict=True)
        ]
        normaliser = sum(ratios)
        return [ratio / normaliser if normaliser > 0 else ratio for ratio in ratios]

    def _method_state(self) -> dict[str, torch.Tensor]:
        return {"famo": self.state.cpu()}

    def _method_shapes(self) -> dict[str, tuple[tuple[int, ...], bool]]:
        return {"famo": ((len(_ROWS), len(self.loss_names)), False)}

    def _load_method_state(self, state: Mapping[str, torch.Tensor]) -> None:
        rows = state["famo"].float()
        learned = rows[: _COUNTS + 1]  # the logits, the moments and the counts (a NaN loss may be a previous loss)
        if not bool(torch.isfinite(learned).all()) or bool((rows[_SECOND] < 0).any() or (rows[_COUNTS] < 0).any()):
            raise CheckpointError(
                f"FAMO's saved state is not a valid one (non-finite logits or moments, or negative second moments "
                f"or counts): {rows.tolist()}. The checkpoint is damaged: resume from another one."
            )
        self._state = rows.tolist()

    def state_details(self) -> str:
        names = self.loss_names
        z = format_values(dict(zip(names, torch.softmax(self.logits.float(), 0).tolist(), strict=True)))
        logits = format_values(dict(zip(names, self.logits.tolist(), strict=True)))
        previous = format_values(dict(zip(names, self.previous_losses.tolist(), strict=True)))
        updates = dict(zip(names, self.update_counts.tolist(), strict=True))
        return (
            f"; z = softmax(logits) {z}, logits {logits}, last step's losses {previous}, updates {updates}, "
            f"lr {self.lr:g}, gamma {self.gamma:g}{self._labelled_details()}"
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lr={self.lr:g}, gamma={self.gamma:g}"
