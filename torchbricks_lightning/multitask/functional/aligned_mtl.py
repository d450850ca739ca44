"""Aligned-MTL: align the task gradients' principal components (Senushkin et al., CVPR 2023)."""

from __future__ import annotations

from torch import Tensor

from torchbricks_lightning.multitask.functional._gram import native_precision, on_active_tasks

__all__ = ["aligned_mtl_weights"]


def aligned_mtl_weights(gram: Tensor) -> Tensor:
    """Aligned-MTL's coefficients: ``c = B w``, ``B = sqrt(lambda_min) V Lambda^{-1/2} V^T``, ``w = 1 / T``.

    Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023, Algorithm 1: with
    ``G = V Lambda V^T`` (the eigenvalues above the rank cut-off ``T * eps * lambda_max``, the others dropped),
    the aligned gradients ``g'_j = sum_i B_ij g_i`` have the Gram matrix ``B^T G B = lambda_min V V^T``:
    orthogonal, of equal norm ``sqrt(lambda_min)``, condition number 1. The update is their combination with the
    task weights ``w = 1 / T``, so ``c = B w``. The scale ``sqrt(lambda_min)`` is the paper's (torchjd's
    ``scale_mode="min"``; the original code's "rmse" uses the mean eigenvalue). Computed by
    ``torchjd.aggregation.AlignedMTLWeighting()`` (0.18), in ``gram``'s own precision so that the rank cut-off
    matches its rounding. Aligned-MTL-UB is this on the shared representation's gradients.

    A zero gradient gets 0 and the others are as if it were absent (``w = 1 / T'`` over the ``T'`` others).
    ``T = 1``: ``[1]``. Collinear gradients: one direction, ``c = V V^T w`` (finite); near-collinear ones make
    ``lambda_min`` and the update small, as in the paper.

    Args:
        gram: ``(T, T)``, ``G_ij = <g_i, g_j>``, symmetric positive semi-definite.

    Returns:
        ``(T,)``, in ``gram``'s dtype and device.

    Raises:
        ConfigError: ``gram`` is not a finite floating-point ``(T, T)`` tensor.

    Example:
        >>> import torch
        >>> grads = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # orthogonal: B = diag(1/3, 1), aligned norms 1
        >>> aligned_mtl_weights(grads @ grads.T)
        tensor([0.1667, 0.5000])
    """
    return on_active_tasks(gram, "aligned_mtl_weights", _aligned_mtl, precision=native_precision(gram))


def _aligned_mtl(gram: Tensor) -> Tensor:
    from torchjd.aggregation import AlignedMTLWeighting  # deferred: the command's --help must not import torchjd

    return AlignedMTLWeighting(scale_mode="min")(gram)
