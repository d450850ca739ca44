"""The Gramian balancers by method: each a :class:`~torchbricks_lightning.multitask.gramian.GramianBalancer` with
its weighting from :mod:`torchbricks_lightning.multitask.functional`.

Every class takes ``source`` (``"representation"``, the default: the shared tensor's gradients, no extra pass;
``"parameters"``: the shared bricks' parameters' gradients, ``T`` extra passes through the trunk), ``shared_name``
and ``loss_names``. The default is the representation for every class, for speed: that is MGDA-UB and
Aligned-MTL-UB as their papers name them, and a variant for CAGrad, Nash-MTL and UPGrad, whose papers define them on
the shared parameters (``source="parameters"`` is the papers' method). The heads keep their own static-weighted
gradients; the trunk gets ``sum_i c_i g_i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.functional import (
    aligned_mtl_weights,
    cagrad_weights,
    imtl_g_weights,
    mgda_weights,
    nash_mtl_weights,
    upgrad_weights,
)
from torchbricks_lightning.multitask.gramian import GramianBalancer

__all__ = ["IMTLG", "MGDA", "AlignedMTL", "CAGrad", "NashMTL", "UPGrad"]

Source = Literal["representation", "parameters"]


class MGDA(GramianBalancer):
    """MGDA: the minimum-norm combination of the task gradients (Sener and Koltun, NeurIPS 2018).

    ``c = argmin_{c >= 0, sum c = 1} c^T G c``; the trunk is trained on the min-norm point ``sum_i c_i g_i`` of the
    convex hull of the task gradients, a common descent direction (or 0 at a Pareto-stationary point). On the
    representation (the default) this is the paper's MGDA-UB, its upper bound on the shared tensor's gradients; on
    the parameters (``source="parameters"``) the paper's exact MGDA. Weighting:
    :func:`~torchbricks_lightning.multitask.functional.mgda_weights`.

    Example:
        >>> MGDA()
        MGDA(source='representation', shared_name='features', loss_names=[])
    """

    def __init__(
        self, source: Source = "representation", shared_name: str = "features", loss_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(mgda_weights, source=source, shared_name=shared_name, loss_names=loss_names)


class IMTLG(GramianBalancer):
    """IMTL-G: the combination with equal projections on every task's unit gradient (Liu et al., ICLR 2021).

    ``c = G^+ d / sum(G^+ d)`` with ``d_i = |g_i|``: ``<sum_j c_j g_j, g_i / |g_i|>`` is the same for every task and
    ``sum c = 1``. The paper's "shared parameters or representation" choice: the representation by default
    (``source="parameters"`` for the parameters). Weighting:
    :func:`~torchbricks_lightning.multitask.functional.imtl_g_weights`.
    """

    def __init__(
        self, source: Source = "representation", shared_name: str = "features", loss_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(imtl_g_weights, source=source, shared_name=shared_name, loss_names=loss_names)


class AlignedMTL(GramianBalancer):
    """Aligned-MTL: combine the task gradients after aligning their principal components (Senushkin et al., CVPR
    2023).

    With ``G = V Lambda V^T``, ``B = sqrt(lambda_min) V Lambda^{-1/2} V^T`` and ``c = B 1 / T``: the aligned gradients
    are orthogonal, of equal norm (condition number 1). On the representation (the default) this is the paper's
    Aligned-MTL-UB; ``source="parameters"`` is Aligned-MTL. Weighting:
    :func:`~torchbricks_lightning.multitask.functional.aligned_mtl_weights`.
    """

    def __init__(
        self, source: Source = "representation", shared_name: str = "features", loss_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(aligned_mtl_weights, source=source, shared_name=shared_name, loss_names=loss_names)


class CAGrad(GramianBalancer):
    """CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    The update ``d = g_0 + sqrt(phi) / |g_w| g_w`` with ``g_0`` the mean gradient, ``phi = c^2 |g_0|^2`` and ``w``
    minimising ``<g_w, g_0> + sqrt(phi) |g_w|`` over the simplex: it maximises the worst task's improvement within
    the ball ``|d - g_0| <= c |g_0|``. The paper defines it on the shared parameters (``source="parameters"``); the
    default here is the shared tensor, a cheaper variant. Weighting:
    :func:`~torchbricks_lightning.multitask.functional.cagrad_weights`.

    Args:
        c: the radius of the ball, relative to ``|g_0|`` (0.5 by default; 0 is the mean gradient).
        rescale: divide ``d`` by ``1 + c^2`` as the official code does (its ``rescale=1``).
        source: ``"representation"`` or ``"parameters"``.
        shared_name: the shared tensor.
        loss_names: the tasks (default: every training loss).
    """

    def __init__(
        self,
        c: float = 0.5,
        rescale: bool = False,
        source: Source = "representation",
        shared_name: str = "features",
        loss_names: Sequence[str] | None = None,
    ) -> None:
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c >= 0):
            raise ConfigError(f"Expected CAGrad's c to be a finite number >= 0, but got {c!r}.")
        super().__init__(None, source=source, shared_name=shared_name, loss_names=loss_names)
        self.c, self.rescale = float(c), bool(rescale)

    def weigh(self, gram: torch.Tensor, step: int) -> torch.Tensor:
        return cagrad_weights(gram, c=self.c, rescale=self.rescale)

    def extra_repr(self) -> str:
        return f"c={self.c:g}, {super().extra_repr()}"


class NashMTL(GramianBalancer):
    """Nash-MTL: the Nash bargaining solution of the tasks (Navon et al., ICML 2022).

    The ``c > 0`` with ``(G c)_i = 1 / c_i``: every task's utility ``<g_i, d>`` of the update ``d = sum_j c_j g_j``
    is ``1 / c_i``. As in the official code, ``G`` is first divided by its Frobenius norm (``GTG /
    ||GTG||``), which makes the coefficients independent of the gradients' scale (a loss scale under AMP, the
    world size). The paper defines it on the shared parameters (``source="parameters"``); the default here is the
    shared tensor, a cheaper variant. The official code's ``update_weights_every`` and ``max_norm`` are left out:
    the weights are solved every step. Weighting: :func:`~torchbricks_lightning.multitask.functional.nash_mtl_weights`.
    """

    def __init__(
        self, source: Source = "representation", shared_name: str = "features", loss_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(None, source=source, shared_name=shared_name, loss_names=loss_names)

    def weigh(self, gram: torch.Tensor, step: int) -> torch.Tensor:
        norm = torch.linalg.matrix_norm(gram)
        return nash_mtl_weights(gram / norm if norm > 0 else gram)


class UPGrad(GramianBalancer):
    """UPGrad: the mean of the task gradients, each projected onto the dual cone (Quinton and Rey, 2024).

    Each ``g_i`` is projected onto the cone ``{d : <d, g_j> >= 0 for all j}`` (a QP in the Gram matrix), and the
    update is the mean of the projections: non-conflicting with every task, and equal to the mean gradient when
    nothing conflicts. The paper (Jacobian descent) defines it on the shared parameters (``source="parameters"``);
    the default here is the shared tensor, a cheaper variant. Weighting:
    :func:`~torchbricks_lightning.multitask.functional.upgrad_weights`.
    """

    def __init__(
        self, source: Source = "representation", shared_name: str = "features", loss_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(upgrad_weights, source=source, shared_name=shared_name, loss_names=loss_names)
