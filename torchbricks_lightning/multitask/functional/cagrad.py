"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.functional._gram import active_set_qp, on_active_tasks

__all__ = ["cagrad_weights"]

INNER_TOLERANCE = 1e-10
"""The root search stops when ``t = |g_w|`` is known to this fraction of ``max_i |g_i|``."""


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
    active-set method. A bracketing root search on ``h'`` in ``[sqrt(T * eps * max_i G_ii), max_i |g_i|]`` finds
    the optimal ``t = |g_w|`` to ``1e-10 * max_i |g_i|``: deterministic, to a stated tolerance.

    **The rescale.** Algorithm 1 of the paper updates with ``d`` itself, so by default the coefficients are those
    of ``d``. The official code divides ``d`` by ``1 + c^2`` (its ``rescale=1``,
    LibMTL's default) to keep the step comparable to gradient descent's; ``rescale=True`` does the same.

    A zero gradient gets 0 and the others are as if it were absent. ``c = 0``: ``1 / T`` (gradient descent on the
    mean). ``T = 1``: ``[1 + c]`` (``d = g + c |g| g / |g|``), ``(1 + c) / (1 + c^2)`` with ``rescale``. When
    ``g_w`` vanishes at the optimum (below ``sqrt(T * eps * max_i G_ii)``, ``eps`` of ``gram``'s dtype: 0 is in
    the hull of the gradients and no direction improves every task, e.g. two opposite gradients among others),
    ``sqrt(phi) / |g_w|`` is undefined, and ``F* = 0``: then any ``d`` in the ball with every ``<g_i, d> >= 0``
    is optimal, and the update is the projection of ``g_0`` onto that dual cone, ``c = 1 / T + z`` with ``z =
    argmin_{z >= 0} |g_0 + sum_j z_j g_j|`` (UPGrad's program; it lies in the ball since some optimal ``d``
    does). This keeps the coefficients bounded where the formula would divide by rounding. If ``g_0 = 0``
    (e.g. ``g``, ``-g``): ``1 / T``.

    Args:
        gram: ``(T, T)``, ``G_ij = <g_i, g_j>``, symmetric positive semi-definite.
        c: the radius of the ball around ``g_0``, relative to ``|g_0|``, ``>= 0`` (0.5: LibMTL's default).
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
    return on_active_tasks(
        gram, "cagrad_weights", lambda work: _cagrad(work, float(c), torch.finfo(gram.dtype).eps) * scale
    )


def _cagrad(gram: Tensor, c: float, eps: float) -> Tensor:
    matrix = gram.numpy()
    count = len(matrix)
    mean = np.full(count, 1.0 / count)
    towards_mean = matrix @ mean  # <g_i, g_0>
    radius = c * math.sqrt(max(float(mean @ towards_mean), 0.0))  # sqrt(phi)
    if radius == 0.0:
        return torch.from_numpy(mean)
    largest = float(matrix.diagonal().max())
    resolution = math.sqrt(count * eps * largest)  # |g_w| below this is rounding in G
    weights = _inner_minimiser(matrix, towards_mean, radius, resolution)
    if weights is None:  # g_w = 0 at the optimum, F* = 0: the projection of g_0 onto the dual cone is optimal
        shift = active_set_qp(matrix, towards_mean, simplex=False, start=np.zeros(count), tol=1e-12 * largest)
        return torch.from_numpy(mean + shift)
    norm = math.sqrt(max(float(weights @ matrix @ weights), 0.0))
    return torch.from_numpy(mean + radius / norm * weights)


def _inner_minimiser(gram: np.ndarray, towards_mean: np.ndarray, radius: float, resolution: float) -> np.ndarray | None:
    """``argmin_w w^T towards_mean + radius |g_w|`` over the simplex (see :func:`cagrad_weights`); ``None``
    when ``|g_w| <= resolution`` there.

    With ``w_t`` the inner QP's solution at ``t``, ``h'(t) = radius / 2 (1 - |g_{w_t}|^2 / t^2)``, so the optimal
    ``t`` is a root of ``f(t) = t - |g_{w_t}|``, which is non-decreasing (``|g_{w_t}|`` grows with ``t``), and
    ``f(max_i |g_i|) >= 0``. Below ``resolution`` ``|g_{w_t}|`` is rounding, so the search starts there: if
    ``f(resolution) >= 0`` the root is below it (``None``); else the Illinois variant of regula falsi brackets
    it in ``[resolution, max_i |g_i|]`` to ``INNER_TOLERANCE * max_i |g_i|``.
    """
    largest = math.sqrt(float(gram.diagonal().max()))
    tolerance = 1e-12 * float(gram.diagonal().max())
    weights = np.zeros(len(towards_mean))
    weights[int(towards_mean.argmin())] = 1.0

    def value_at(t: float) -> tuple[float, np.ndarray]:
        nonlocal weights
        weights = active_set_qp(gram * (radius / t), towards_mean, simplex=True, start=weights, tol=tolerance)
        return t - math.sqrt(max(float(weights @ gram @ weights), 0.0)), weights

    high = largest
    high_value, best = value_at(high)
    if high_value <= INNER_TOLERANCE * largest:
        return best
    low = min(resolution, high / 2)
    low_value, _ = value_at(low)
    if low_value >= 0.0:
        return None
    side = 0
    while high - low > INNER_TOLERANCE * largest:
        t = (low * high_value - high * low_value) / (high_value - low_value)
        value, best = value_at(t)
        if value > 0:
            high, high_value = t, value
            if side == 1:
                low_value /= 2
            side = 1
        elif value < 0:
            low, low_value = t, value
            if side == -1:
                high_value /= 2
            side = -1
        else:
            break
    return best
