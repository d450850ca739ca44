"""IMTL-G: the combination whose projections on every task's unit gradient are equal (Liu et al., ICLR 2021)."""

from __future__ import annotations

from torch import Tensor

from torchbricks_lightning.multitask.functional._gram import native_precision, on_active_tasks

__all__ = ["imtl_g_weights"]


def imtl_g_weights(gram: Tensor) -> Tensor:
    """IMTL-G's coefficients: ``c = G^+ d / sum(G^+ d)`` with ``d_i = sqrt(G_ii) = |g_i|``.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, section 3.2 (IMTL-G): with ``u_i = g_i /
    |g_i|``, ``D = [g_1 - g_2, ..., g_1 - g_T]``, ``U = [u_1 - u_2, ..., u_1 - u_T]``, the paper's closed form
    ``c_{2:T} = g_1^T U (D^T U)^{-1}``, ``c_1 = 1 - sum c_{2:T}`` makes ``<sum_j c_j g_j, u_i>`` the same for every
    task and ``sum c = 1``; ``G c`` proportional to ``d`` says the same, so ``c`` is ``G^{-1} d`` normalised to sum
    1. With the pseudo-inverse ``G^+`` (the generalisation of Quinton & Rey 2024) linearly dependent gradients are
    allowed too. Computed by ``torchjd.aggregation.IMTLGWeighting`` (0.18, which is exactly this), in ``gram``'s own
    precision so that the pseudo-inverse's rank cut-off matches the rounding in ``gram``.

    A zero gradient gets 0 and the others are as if it were absent. ``T = 1``: ``[1]``. Collinear gradients
    ``g``, ``k g`` (``k > 0``): ``[1, k] / (1 + k)``, from the minimum-norm solution of the singular system;
    when ``sum(G^+ d)`` vanishes (opposite gradients ``g``, ``-g``) the coefficients are 0.

    Args:
        gram: ``(T, T)``, ``G_ij = <g_i, g_j>``, symmetric positive semi-definite.

    Returns:
        ``(T,)``, in ``gram``'s dtype and device.

    Raises:
        ConfigError: ``gram`` is not a finite floating-point ``(T, T)`` tensor.

    Example:
        >>> import torch
        >>> grads = torch.tensor([[1.0, 0.0], [-1.0, 3.0**0.5]])
        >>> imtl_g_weights(grads @ grads.T)  # the combination (1/3, 1/sqrt(3)) has projection 1/3 on both
        tensor([0.6667, 0.3333])
    """
    return on_active_tasks(gram, "imtl_g_weights", _imtl_g, precision=native_precision(gram))


def _imtl_g(gram: Tensor) -> Tensor:
    from torchjd.aggregation import IMTLGWeighting  # deferred: the command's --help must not import torchjd

    return IMTLGWeighting()(gram)
