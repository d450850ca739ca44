"""MGDA: the minimum-norm point of the convex hull of the task gradients (Sener & Koltun, NeurIPS 2018)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from torchbricks_lightning.multitask.functional._gram import active_set_qp, on_active_tasks

__all__ = ["mgda_weights"]

SOLVER_TOLERANCE = 1e-12
"""The active-set solver's tolerance on the KKT conditions, relative to the largest ``G_ii``."""


def mgda_weights(gram: Tensor) -> Tensor:
    """MGDA's coefficients: ``c = argmin_{c >= 0, sum c = 1} c^T G c``, the min-norm point ``sum_j c_j g_j``.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (problem (3), the
    multiple-gradient descent algorithm of Désidéri 2012). MGDA-UB is this applied to the gradients of the shared
    representation instead of the shared parameters: that is the gradients' source, not this function's business.

    Solved exactly (the KKT conditions to ``1e-12 * max_i G_ii``) by a primal active-set method, not by the
    paper's Frank-Wolfe iterations, which stop on a step size. The coefficients sum to 1 over the tasks with a
    non-zero gradient; a zero gradient gets 0 (else the min-norm point would be that zero gradient, and no task
    would move). ``T = 1``: ``[1]``. Collinear gradients: the shortest one's side of the hull, e.g. ``g`` and
    ``2 g`` give ``[1, 0]``; opposite ones ``g`` and ``-g`` give ``[0.5, 0.5]`` (the combined gradient is 0:
    Pareto-stationary).

    Args:
        gram: ``(T, T)``, ``G_ij = <g_i, g_j>``, symmetric positive semi-definite.

    Returns:
        ``(T,)``, in ``gram``'s dtype and device.

    Raises:
        ConfigError: ``gram`` is not a finite floating-point ``(T, T)`` tensor.

    Example:
        >>> import torch
        >>> grads = torch.tensor([[1.0, 0.0], [-1.0, 3.0**0.5]])  # 120 degrees apart, norms 1 and 2
        >>> mgda_weights(grads @ grads.T)  # (G_22 - G_12) / (G_11 + G_22 - 2 G_12) = 5 / 7
        tensor([0.7143, 0.2857])
    """
    return on_active_tasks(gram, "mgda_weights", _min_norm_point)


def _min_norm_point(gram: Tensor) -> Tensor:
    matrix = gram.numpy()
    diagonal = matrix.diagonal()
    start = np.zeros(len(diagonal))
    start[int(diagonal.argmin())] = 1.0
    tolerance = SOLVER_TOLERANCE * float(diagonal.max())
    solution = active_set_qp(matrix, np.zeros(len(diagonal)), simplex=True, start=start, tol=tolerance)
    return torch.from_numpy(solution)
