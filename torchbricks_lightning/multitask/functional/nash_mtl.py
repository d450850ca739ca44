"""Nash-MTL: the Nash bargaining solution of the tasks (Navon et al., ICML 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.functional._gram import on_active_tasks

__all__ = ["nash_mtl_weights"]

TOLERANCE = 1e-10
"""Newton's method stops when ``max_i |c_i (G_ridge c)_i - 1| <= TOLERANCE`` (the condition is scale-free)."""

MAX_ITERATIONS = 500


def nash_mtl_weights(gram: Tensor, *, ridge: float = 1e-6) -> Tensor:
    """Nash-MTL's coefficients: the ``c > 0`` with ``G c = 1 / c`` (elementwise), on a ridge-regularised ``G``.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, equation (2): the update ``d = sum_j c_j
    g_j`` is the Nash bargaining solution, where every task's utility ``<g_i, d>`` is ``1 / c_i``. The
    solution minimises the strictly convex ``phi(c) = c^T G c / 2 - sum_i log c_i`` (its gradient is ``G c -
    1 / c``). The paper approximates it by a sequence of convex programs solved with cvxpy (the CCP of its
    section 3.1), not available here; this solves ``grad phi = 0`` by damped Newton (the Hessian ``G + diag(1 /
    c^2)`` is positive definite and ``phi`` self-concordant: no line search), from ``c_i = 1 / |g_i|``, until
    ``max_i |c_i (G c)_i - 1| <= 1e-10``, at most 500 iterations. No clipping of the update (the official code's
    ``max_norm``) and no reuse of old weights (its ``update_weights_every``): a pure function of ``G``.

    **Singular G.** When a non-negative combination of the gradients is 0 (e.g. opposite gradients ``g``, ``-g``)
    ``phi`` is unbounded below and the equation has no solution (the point is Pareto-stationary). So it is solved
    for ``G_ridge = G + ridge * mean_i(G_ii) * I``: the coefficients are at most ``sqrt(T / (ridge * mean_i G_ii))``
    (as ``c^T G_ridge c = T``), finite, and differ from the exact ones by a relative ``O(ridge)`` otherwise.
    Collinear gradients in the same direction (``g``, ``k g``, ``k > 0``) have a solution, ``c = [1, 1 / k] /
    (sqrt(2) |g|)``, whose update is ``sqrt(2) g / |g|``. A zero gradient gets 0 and the others are as if it were
    absent. ``T = 1``: ``[1 / |g|]``, the unit gradient.

    Scale: ``c`` scales as ``1 / sqrt(s)`` when ``G`` scales by ``s``: the combined gradient's norm is ``sqrt(T)``
    on orthogonal gradients, whatever their norms.

    Args:
        gram: ``(T, T)``, ``G_ij = <g_i, g_j>``, symmetric positive semi-definite.
        ridge: the ridge, relative to the mean squared gradient norm, ``>= 0``.

    Returns:
        ``(T,)``, in ``gram``'s dtype and device.

    Raises:
        ConfigError: ``ridge`` is negative or not finite, or ``gram`` is not a finite floating-point ``(T, T)``
            tensor.

    Example:
        >>> import torch
        >>> grads = torch.tensor([[2.0, 0.0], [0.0, 0.5]])  # orthogonal: c_i = 1 / |g_i|
        >>> nash_mtl_weights(grads @ grads.T, ridge=0.0)
        tensor([0.5000, 2.0000])
    """
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise ConfigError(
            f"Expected argument `ridge` of nash_mtl_weights to be a finite float >= 0, but got {ridge!r}."
        )
    return on_active_tasks(gram, "nash_mtl_weights", lambda work: _bargaining(work, float(ridge)))


def _bargaining(gram: Tensor, ridge: float) -> Tensor:
    """Damped Newton on the self-concordant ``phi`` (Nesterov & Nemirovski; Boyd & Vandenberghe, section 9.6).

    With the Newton decrement ``lambda = sqrt(-<grad, step>)``, the step ``1 / (1 + lambda)`` keeps ``c > 0`` and
    decreases ``phi``, and the full step once ``lambda < 1/4`` converges quadratically: no line search, which
    would compare values of ``phi`` that rounding no longer tells apart near the solution.
    """
    count = gram.shape[0]
    regularised = gram + ridge * float(gram.diagonal().mean()) * torch.eye(count, dtype=gram.dtype)
    weights = 1.0 / regularised.diagonal().sqrt()
    for _ in range(MAX_ITERATIONS):
        product = regularised @ weights
        if float((weights * product - 1.0).abs().max()) <= TOLERANCE:
            return weights
        gradient = product - 1.0 / weights
        hessian = regularised + torch.diag(1.0 / weights**2)
        step = -torch.linalg.lstsq(hessian, gradient.unsqueeze(1), driver="gelsd").solution.flatten()
        decrement = math.sqrt(max(-float(gradient @ step), 0.0))
        weights = weights + (step if decrement < 0.25 else step / (1.0 + decrement))
    if ridge == 0.0 and not _solved(regularised, weights):
        raise ConfigError(
            "nash_mtl_weights(ridge=0) found no c > 0 with G c = 1 / c: a non-negative combination of the gradients "
            f"is 0 (G = {gram.tolist()} is singular that way), so phi is unbounded below. Use ridge > 0 (the "
            "default 1e-6)."
        )
    return weights


def _solved(gram: Tensor, weights: Tensor) -> bool:
    return bool(torch.isfinite(weights).all()) and float((weights * (gram @ weights) - 1.0).abs().max()) <= 1e-6
