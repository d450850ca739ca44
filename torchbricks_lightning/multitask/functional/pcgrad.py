"""PCGrad: projecting conflicting gradients (Yu et al., NeurIPS 2020), from the Gram matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.functional._gram import check_gram

__all__ = ["pcgrad_orders", "pcgrad_weights"]


def pcgrad_orders(count: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """For each task ``i``, the order in which PCGrad visits the other tasks.

    ``generator``: ``count`` permutations of the ``count - 1`` others, ``torch.randperm(count - 1,
    generator=generator)`` each, in task order; so the same generator state gives the same orders on every
    process. ``None``: ascending order (deterministic; the global random state is never used).

    Example:
        >>> pcgrad_orders(3)
        [[1, 2], [0, 2], [0, 1]]
        >>> pcgrad_orders(3, torch.Generator().manual_seed(0)) == pcgrad_orders(3, torch.Generator().manual_seed(0))
        True
    """
    others = [[j for j in range(count) if j != i] for i in range(count)]
    if generator is None:
        return others
    return [[order[k] for k in torch.randperm(count - 1, generator=generator).tolist()] for order in others]


def pcgrad_weights(
    gram: Tensor, generator: torch.Generator | None = None, *, orders: Sequence[Sequence[int]] | None = None
) -> Tensor:
    """PCGrad's coefficients: ``sum_i p_i = sum_j c_j g_j``, each ``p_i`` projected off the gradients it opposes.

    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1: for each task ``i``, ``p_i
    = g_i``; then for every other task ``j``, in a random order, if ``<p_i, g_j> < 0``, ``p_i <- p_i - <p_i, g_j>
    / |g_j|^2 g_j``. The update is ``sum_i p_i`` (the paper's sum, not a mean). Each ``p_i`` stays a combination
    of the ``g_j``, so everything follows from ``G``: the row ``r`` of ``p_i = sum_k r_k g_k`` gives ``<p_i, g_j>
    = sum_k r_k G_kj``. Computed in Python floats on ``G`` in float64, exactly as
    :func:`~torchbricks_lightning.multitask.gradient.pcgrad_coefficients` (which calls this).

    torchjd's ``PCGradWeighting`` computes the same, but draws its orders from the global random state
    (``torch.randperm`` without a generator): not reproducible from a seed and step alone. Here the orders come
    from ``generator`` (see :func:`pcgrad_orders`), or are given as ``orders``.

    Without conflicts every coefficient is 1. A zero gradient gets 0 (it takes no part: it is never projected on
    and its own ``p_i`` is 0), the others are as if it were absent. ``T = 1``: ``[1]``. Collinear gradients:
    same direction, ``[1, 1]``; opposite, ``g`` and ``-k g``: ``[1 + k, 1 + 1 / k]``, each
    ``p_i`` projected to 0, so the update is 0.

    Args:
        gram: ``(T, T)``, ``G_ij = <g_i, g_j>``, symmetric positive semi-definite.
        generator: where the random visiting orders come from; ``None``: ascending order.
        orders: instead of ``generator``, for each task ``i`` the order of the others (an entry ``i`` is skipped).

    Returns:
        ``(T,)``, in ``gram``'s dtype and device.

    Raises:
        ConfigError: ``gram`` is not a finite floating-point ``(T, T)`` tensor, ``orders`` does not have ``T``
            entries, or both ``generator`` and ``orders`` are given.

    Example:
        >>> import torch
        >>> gram = torch.tensor([[1.0, -1.0], [-1.0, 4.0]])
        >>> pcgrad_weights(gram)  # p_1 = g_1 + g_2 / 4, p_2 = g_2 + g_1
        tensor([2.0000, 1.2500])
    """
    check_gram(gram, "pcgrad_weights")
    count = gram.shape[0]
    if orders is not None and generator is not None:
        raise ConfigError("pcgrad_weights takes `generator` or `orders`, not both: the orders would be ambiguous.")
    if orders is None:
        orders = pcgrad_orders(count, generator)
    elif len(orders) != count:
        raise ConfigError(f"pcgrad_weights expects one visiting order per task ({count}), but got {len(orders)}.")
    work = gram.detach().to(device="cpu", dtype=torch.float64)
    rows = work.tolist()
    norms = work.diagonal().tolist()
    zero = torch.finfo(gram.dtype).eps * max(max(norms), 0.0)
    coefficients = _project(rows, orders, [norm > zero for norm in norms])
    return torch.tensor(coefficients, dtype=gram.dtype, device=gram.device)


def _project(gram: list[list[float]], orders: Sequence[Sequence[int]], alive: list[bool]) -> list[float]:
    count = len(gram)
    rows = [[1.0 if i == k else 0.0 for k in range(count)] for i in range(count)]  # p_i = sum_k rows[i][k] g_k
    for i in range(count):
        row = rows[i]
        if not alive[i]:
            row[i] = 0.0
            continue
        for j in orders[i]:
            if j == i or not alive[j]:
                continue
            dot = sum(row[k] * gram[k][j] for k in range(count))
            if dot < 0.0:
                row[j] -= dot / gram[j][j]
    return [sum(rows[i][j] for i in range(count)) for j in range(count)]
