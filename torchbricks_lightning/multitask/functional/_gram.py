"""What every weighting shares: the argument check, the treatment of zero gradients, and a small exact QP solver.

Every public function goes through :func:`on_active_tasks`: it checks ``gram``, copies it to float64 on the CPU
(``T`` is small; this makes the result the same on every process and device, and independent of the input's
precision), drops the tasks whose gradient is zero (``G_ii <= eps(dtype) * max_k G_kk``), solves on the
remaining ``T' x T'`` matrix, gives the dropped tasks coefficient 0, and returns the coefficients in ``gram``'s
dtype and device, detached. No random state, no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from torchbricks_lightning.errors import ConfigError

__all__ = ["active_set_qp", "check_gram", "native_precision", "on_active_tasks"]

WORK_DTYPE = torch.float64


def check_gram(gram: Tensor, method: str) -> None:
    """Raise :class:`ConfigError` unless ``gram`` is a finite, square, floating-point ``(T, T)`` tensor."""
    if not isinstance(gram, Tensor):
        raise ConfigError(
            f"{method} expects `gram` to be a torch.Tensor of shape (T, T), but got {type(gram).__name__}. "
            "Build it as `grads @ grads.T` from the (T, D) task gradients."
        )
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ConfigError(
            f"{method} expects `gram` to be a square (T, T) matrix with T >= 1, but got shape {tuple(gram.shape)}. "
            "Build it as `grads @ grads.T` from the (T, D) task gradients."
        )
    if not gram.is_floating_point():
        raise ConfigError(f"{method} expects a floating-point `gram`, but got dtype {gram.dtype}. Convert it first.")
    if not bool(torch.isfinite(gram).all()):
        raise ConfigError(
            f"{method} got a `gram` with non-finite entries: {gram.tolist()}. The task gradients overflowed or are "
            "NaN; under AMP, compute the Gram matrix from the unscaled gradients, in float32."
        )


def native_precision(gram: Tensor) -> torch.dtype:
    """The dtype ``gram`` was computed in (float16 and bfloat16 promoted to float32, which LAPACK needs).

    The weightings that decide a rank (a pseudo-inverse, an eigendecomposition) run in it, so that their rank
    rule, ``T * eps * largest eigenvalue``, matches the rounding in ``gram``: a float32 Gram matrix of collinear
    gradients has an eigenvalue of about ``1e-7 * largest`` that is rounding, not a direction, and a float64
    pseudo-inverse would invert it.
    """
    return gram.dtype if gram.dtype in (torch.float32, torch.float64) else torch.float32


def on_active_tasks(
    gram: Tensor, method: str, solve: Callable[[Tensor], Tensor], *, precision: torch.dtype = WORK_DTYPE
) -> Tensor:
    """``solve`` on the CPU Gram matrix of the tasks with a non-zero gradient; 0 for the others.

    ``solve`` receives the ``(T', T')`` matrix (``T' >= 1``) in ``precision`` and returns its ``(T',)``
    coefficients. All zero: zeros.
    """
    check_gram(gram, method)
    with torch.no_grad():
        work = gram.detach().to(device="cpu", dtype=WORK_DTYPE)
        work = (work + work.T) / 2
        diagonal = work.diagonal()
        largest = float(diagonal.max())
        coefficients = torch.zeros(work.shape[0], dtype=WORK_DTYPE)
        if largest > 0.0:
            active = (diagonal > torch.finfo(gram.dtype).eps * largest).nonzero().flatten()
            coefficients[active] = solve(work[active][:, active].to(precision)).to(WORK_DTYPE)
        return coefficients.to(device=gram.device, dtype=gram.dtype)


def _solve_subproblem(q: np.ndarray, b: np.ndarray, simplex: bool) -> np.ndarray:
    """The minimiser of ``x^T q x / 2 + b^T x`` (with ``sum x = 1`` if ``simplex``), least squares if singular."""
    size = q.shape[0]
    if simplex:
        kkt = np.zeros((size + 1, size + 1))
        kkt[:size, :size], kkt[:size, size], kkt[size, :size] = q, 1.0, 1.0
        return _solve(kkt, np.append(-b, 1.0))[:size]
    return _solve(q, -b)


_SINGULAR = 1e8
"""A solution of ``q x = -b`` above this (with ``q`` scaled to ``max |q| = 1``) comes from a singular block."""


def _solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``matrix^-1 rhs`` by LU (some 10x faster than an SVD at these sizes); the least-squares minimum-norm solution
    where the matrix is singular (LU fails, or its solution blows up on a rounding-sized pivot)."""
    try:
        solution = np.linalg.solve(matrix, rhs)
    except np.linalg.LinAlgError:
        solution = None
    if solution is not None and bool(np.isfinite(solution).all()) and float(np.abs(solution).max()) < _SINGULAR:
        return solution
    return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def active_set_qp(q: np.ndarray, b: np.ndarray, *, simplex: bool, start: np.ndarray, tol: float) -> np.ndarray:
    """``argmin x^T q x / 2 + b^T x`` subject to ``x >= 0`` (and ``sum x = 1`` if ``simplex``), exactly.

    The primal active-set method (Nocedal & Wright, *Numerical Optimization*, Algorithm 16.3), with ``q``
    symmetric positive semi-definite and the problem bounded below. Each iteration solves the problem on the
    free variables (least squares when that block is singular); it stops when the step is below ``tol`` and
    every fixed variable's multiplier is ``>= -tol``: the KKT conditions to ``tol``. Deterministic: no random
    choice, ties broken by the lowest index. It ends after finitely many iterations on a non-degenerate problem;
    ``50 + 10 T`` is its cap. ``q``, ``b`` and ``tol`` are divided by ``max |q|`` first. In numpy float64:
    ``T`` is small, and torch's per-operation overhead would dominate.

    Args:
        q: ``(T, T)``, float64.
        b: ``(T,)``.
        simplex: add the constraint ``sum x = 1``.
        start: a feasible point.
        tol: the tolerance on the step and on the multipliers, in the units of ``q x``.
    """
    scale = float(np.abs(q).max()) or 1.0  # the KKT matrix mixes q with ones: its rank cut-off needs q ~ 1
    q, b, tol = q / scale, b / scale, tol / scale
    x = start.astype(np.float64, copy=True)
    free = x > 0
    for _ in range(50 + 10 * q.shape[0]):
        index = np.flatnonzero(free)
        target = _solve_subproblem(q[np.ix_(index, index)], b[index], simplex) if index.size else x[index]
        step = target - x[index]
        if step.size == 0 or float(np.abs(step).max()) <= tol:
            if step.size and bool((target >= 0).all()):
                x[index] = target
            gradient = q @ x + b
            level = float(gradient[index].mean()) if simplex and index.size else 0.0
            multipliers = np.where(free, np.inf, gradient - level)
            worst = int(multipliers.argmin())
            if float(multipliers[worst]) >= -tol:
                return x
            free[worst] = True
            continue
        blocking = np.flatnonzero(step < 0)
        length, stop = 1.0, -1
        for position in blocking.tolist():
            ratio = float(x[index[position]] / -step[position])
            if ratio < length:
                length, stop = ratio, int(index[position])
        x[index] = x[index] + length * step
        if stop >= 0:
            x[stop] = 0.0
            free[stop] = False
    return x
