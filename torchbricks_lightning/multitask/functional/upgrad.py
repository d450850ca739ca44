"""UPGrad: the mean of the task gradients projected onto the dual cone (Quinton & Rey, 2024)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from torchbricks_lightning.multitask.functional._gram import active_set_qp, on_active_tasks

__all__ = ["upgrad_weights"]

SOLVER_TOLERANCE = 1e-12
"""The active-set solver's tolerance on the KKT conditions, relative to the largest ``G_ii``."""


def upgrad_weights(gram: Tensor) -> Tensor:
    """UPGrad's coefficients: ``c = sum_i v_i / T``, ``v_i = argmin_{v >= e_i} v^T G v``.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, equations (3)-(5) and
    Proposition 1: the projection of ``g_i`` onto the dual cone ``{x : <g_j, x> >= 0 for all j}`` is ``sum_j
    (v_i)_j g_j`` with ``v_i`` the solution of that quadratic program, and UPGrad averages the ``T``
    projections (the preference vector ``1 / T``). Each program is solved exactly (the KKT conditions to ``1e-12 *
    max_i G_ii``) by an active-set method on ``v = e_i + z``, ``z >= 0``. torchjd's ``UPGradWeighting`` solves the
    same programs with quadprog (not installed here), after dividing ``G`` by its trace and adding ``1e-4 I``: its
    coefficients differ from the paper's by about ``1e-4``.

    Every coefficient is at least ``1 / T``; without conflicts ``c = 1 / T`` (the mean). A zero gradient gets 0 and
    the others are as if it were absent. ``T = 1``: ``[1]``. Collinear gradients in the same direction: ``1 / T``;
    opposite ones ``g``, ``-g``: the dual cone is the plane orthogonal to ``g``, both projections are 0 and so is
    the update (``c = [1, 1]``).

    Args:
        gram: ``(T, T)``, ``G_ij = <g_i, g_j>``, symmetric positive semi-definite.

    Returns:
        ``(T,)``, in ``gram``'s dtype and device.

    Raises:
        ConfigError: ``gram`` is not a finite floating-point ``(T, T)`` tensor.

    Example:
        >>> import torch
        >>> grads = torch.tensor([[1.0, 0.0], [-1.0, 3.0**0.5]])  # G_12 = -1: v_1 = [1, 1/4], v_2 = [1, 1]
        >>> upgrad_weights(grads @ grads.T)
        tensor([1.0000, 0.6250])
    """
    return on_active_tasks(gram, "upgrad_weights", _upgrad)


def _upgrad(gram: Tensor) -> Tensor:
    matrix = gram.numpy()
    count = len(matrix)
    tolerance = SOLVER_TOLERANCE * float(matrix.diagonal().max())
    total = np.zeros(count)
    for task in range(count):
        total += active_set_qp(matrix, matrix[:, task], simplex=False, start=np.zeros(count), tol=tolerance)
        total[task] += 1.0
    return torch.from_numpy(total / count)
