"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.functional._gram import active_set_qp, on_active_tasks

__all__ = ["cagrad_weights"]

INNER_TOLERANCE = 1e-10
"""The golden-section search stops when its bracket on ``t = |g_w|`` is below this fraction of ``max_i |g_i|``."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def cagrad_weights(gram: Tensor, c: float = 0.5, *, rescale: bool = False) -> Tensor:
    """CAGrad's coefficients: ``1 / T + sqrt(phi) / |g_w| * w``, ``w`` the minimiser of the dual problem.

    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021, Algorithm 1. With
    ``g_0 = sum_i g_i / T`` (``|g_0|^2 = 1^T G 1 / T^2``) and ``phi = c^2 |g_0|^2``, the update ``d = g_0 +
    sqrt(phi) / |g_w| g_w`` maximises the worst task's improvement ``min_i <g_i, d>`` in the ball ``|d - g_0| <=
    c |g_0|``, where ``g_w = sum_i w_i g_i`` and ``w`` minimises, over the simplex,

        ``F(w) = <g_w, g_0> + sqrt(phi) |g_w| = w^T G 1 / T + sqrt(phi) sqrt(w^T G w)``.

    The paper solves this with scipy's SLSQP. Here: ``sqrt(q) = min_{t > 0} q / (2 t) + t / 2`` turns it into
    ``min_t h(t)``, ``h(t) = sqrt(phi) t / 2 + min_w [w^T G 1 / T + sqrt(phi) / (2 t) w^T G w]``, a convex function
    of ``t`` (a partial minimum of a perspective) whose inner minimum is a QP on the simplex, solved exactly by an
    active-set method. A golden-section search on ``t`` in ``[0, max_i |g_i|]`` brackets the optimal ``t = |g_w|``
    to ``1e-10 * max_i |g_i|``: deterministic, to a stated tolerance.

    **The rescale.** Algorithm 1 of the paper updates with ``d`` itself, so by default the coefficients are those
    of ``d`` (they sum to ``1 + c`` at most). The official code divides ``d`` by ``1 + c^2`` (its ``rescale=1``,
    LibMTL's default) to keep the step comparable to gradient descent's; ``rescale=True`` does the same.

    A zero gradient gets 0 and the others are as if it were absent. ``c = 0``: ``1 / T`` (gradient descent on the
    mean). ``T = 1``: ``[1 + c]`` (``d = g + c |g| g / |g|``), ``(1 + c) / (1 + c^2)`` with ``rescale``. When
    ``g_w`` vanishes at the optimum (0 is in the hull of the gradients and no direction improves every task,
    e.g. opposite gradients), the correction is undefined and dropped: ``1 / T``.

    Args:
        gram: ``(T, T)``, ``G_ij = <g_i, g_j>``, symmetric positive semi-definite.
        c: the radius of the ball around ``g_0``, relative to ``|g_0|``, ``>= 0`` (the paper's default 0.5).
        rescale: divide by ``1 + c^2`` as the official code does.

    Returns:
        ``(T,)``, in ``gram``'s dtype and device.

    Raises:
        ConfigError: ``c`` is negative or not finite, or ``gram`` is not a finite floating-point ``(T, T)`` tensor.

    Example:
        >>> import torch
        >>> grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # orthogonal, equal norms: w = [1/2, 1/2], d = (1 + c) g_0
        >>> cagrad_weights(grads @ grads.T, c=0.5)
        tensor([0.7500, 0.7500])
        >>> cagrad_weights(grads @ grads.T, c=0.5, rescale=True)  # / (1 + 0.25)
        tensor([0.6000, 0.6000])
    """
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
        raise ConfigError(f"Expected argument `c` of cagrad_weights to be a finite float >= 0, but got {c!r}.")
    scale = 1.0 / (1.0 + c * c) if rescale else 1.0
    return on_active_tasks(gram, "cagrad_weights", lambda work: _cagrad(work, float(c)) * scale)


def _cagrad(gram: Tensor, c: float) -> Tensor:
    count = gram.shape[0]
    mean = torch.full((count,), 1.0 / count, dtype=gram.dtype)
    towards_mean = gram @ mean  # <g_i, g_0>
    radius = c * math.sqrt(max(float(mean @ towards_mean), 0.0))  # sqrt(phi)
    if radius == 0.0:
        return mean
    weights = _inner_minimiser(gram, towards_mean, radius)
    norm = math.sqrt(max(float(weights @ gram @ weights), 0.0))
    if norm <= INNER_TOLERANCE * math.sqrt(float(gram.diagonal().max())):
        return mean
    return mean + radius / norm * weights


def _inner_minimiser(gram: Tensor, towards_mean: Tensor, radius: float) -> Tensor:
    """``argmin_w w^T towards_mean + radius |g_w|`` over the simplex (see :func:`cagrad_weights`)."""
    largest = math.sqrt(float(gram.diagonal().max()))
    tolerance = 1e-12 * float(gram.diagonal().max())
    start = torch.zeros_like(towards_mean)
    start[int(towards_mean.argmin())] = 1.0

    def inner(t: float) -> tuple[float, Tensor]:
        weights = active_set_qp(gram * (radius / t), towards_mean, simplex=True, start=start, tol=tolerance)
        value = radius * t / 2 + float(weights @ towards_mean) + radius / (2 * t) * float(weights @ gram @ weights)
        return value, weights

    low, high = 0.0, largest
    left, right = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    left_value, left_weights = inner(left)
    right_value, right_weights = inner(right)
    while high - low > INNER_TOLERANCE * largest:
        if left_value <= right_value:
            high, right, right_value, right_weights = right, left, left_value, left_weights
            left = high - _GOLDEN * (high - low)
            left_value, left_weights = inner(left)
        else:
            low, left, left_value, left_weights = left, right, right_value, right_weights
            right = low + _GOLDEN * (high - low)
            right_value, right_weights = inner(right)
    return left_weights if left_value <= right_value else right_weights
