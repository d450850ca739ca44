"""The depth head: a dense regressor of positive depths, a masked L1 or scale-invariant log loss, and NYUv2 metrics."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from torchbricks_lightning.bag_of_bricks.dense_functional import check_depth_pair
from torchbricks_lightning.bag_of_bricks.dense_metrics import DepthMetrics
from torchbricks_lightning.bag_of_bricks.dense_regressor import DenseRegressor
from torchbricks_lightning.core.bricks import BrickInterface, BrickTrainable
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetricSingle
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.labels import BrickLabelledLoss

__all__ = ["DepthHead", "DepthRegressor", "MaskedDepthLoss", "create_depth_head"]

DepthLossKind = Literal["l1", "silog"]
_SMALLEST_DEPTH = 1e-6
"""The depth below which the log loss stops at a constant (softplus underflows to 0 far below it)."""


class DepthRegressor(nn.Module):
    """Positive depths ``(N, H * upsample, W * upsample)`` from feature maps: a :class:`DenseRegressor` of one
    channel, then ``softplus``.

    Softplus rather than ``exp``: it grows linearly for large inputs, so a depth of 10 m and one of 1 m get gradients
    of the same size from an L1 loss (``exp`` scales them by the depth and overflows float16 beyond ``exp(11)``),
    and it is strictly positive, so the relative errors and the log loss are defined.

    Args:
        n_features: the channels of the feature maps.
        upsample: the integer factor from the feature maps to the depth maps.
        hidden_channels: the channels of the optional 3x3 convolution (0: none).

    Example:
        >>> depth = DepthRegressor(8, upsample=4)(torch.rand(2, 8, 2, 2))
        >>> tuple(depth.shape), bool((depth > 0).all())
        ((2, 8, 8), True)
    """

    def __init__(self, n_features: int, upsample: int = 1, hidden_channels: int = 0) -> None:
        super().__init__()
        self.regressor = DenseRegressor(1, n_features, upsample=upsample, hidden_channels=hidden_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.regressor(features)).squeeze(1)


class MaskedDepthLoss(nn.Module):
    """A depth loss over the labelled pixels (targets > 0; NaN and 0 are missing): L1 or scale-invariant log.

    - ``"l1"``: the mean of ``|pred - gt|`` over the labelled pixels of the batch; the count is pixels.
    - ``"silog"``: the scale-invariant log loss of Eigen, Puhrsch and Fergus (NeurIPS 2014, eq. 4), per image,
      with ``d = log pred - log gt`` over its ``n`` labelled pixels: ``mean(d^2) - silog_lambda * mean(d)^2``;
      the batch loss is the mean over the images with a labelled pixel, and the count is those images.
      ``silog_lambda=0.5`` is the paper's training value; 1 makes the loss blind to a global scale of each image,
      0 makes it the mean squared log error.

    A batch without a labelled pixel gives exactly 0, connected to the graph, with a count of 0 (see
    :mod:`~torchbricks_lightning.bag_of_bricks.losses`).

    Args:
        kind: ``"l1"`` or ``"silog"``.
        silog_lambda: the weight ``lambda`` of the scale-invariant term, in [0, 1].
        return_count: return ``(loss, labelled count)`` instead of the loss alone.
        where: how error messages name the loss (the head passes its description).

    Raises:
        ConfigError: an unknown ``kind`` or a ``silog_lambda`` outside [0, 1]; when called, targets that are not
            ``(N, H, W)`` floats of the predictions' size.

    Example:
        >>> preds = torch.tensor([[[2.0, 4.0], [1.0, 1.0]]])
        >>> targets = torch.tensor([[[1.0, 2.0], [float("nan"), float("nan")]]])
        >>> loss, count = MaskedDepthLoss("l1", return_count=True)(preds, targets)
        >>> float(loss), float(count)
        (1.5, 2.0)
        >>> round(float(MaskedDepthLoss("silog", silog_lambda=1.0)(preds, targets)), 6)  # twice the depth: no error
        0.0
    """

    def __init__(
        self,
        kind: DepthLossKind = "l1",
        silog_lambda: float = 0.5,
        return_count: bool = False,
        where: str = "MaskedDepthLoss",
    ) -> None:
        super().__init__()
        if kind not in ("l1", "silog"):
            raise ConfigError(f"{where}: expected loss to be 'l1' or 'silog', but got {kind!r}.")
        if isinstance(silog_lambda, bool) or not isinstance(silog_lambda, int | float) or not 0 <= silog_lambda <= 1:
            raise ConfigError(f"{where}: expected silog_lambda in [0, 1] (Eigen et al. use 0.5), got {silog_lambda!r}.")
        self.kind = kind
        self.silog_lambda = float(silog_lambda)
        self.return_count = bool(return_count)
        self.where = str(where)

    def forward(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_depth_pair(preds, targets, self.where)
        dtype = torch.promote_types(preds.dtype, torch.float32)  # float16 / bfloat16 predictions: a float32 loss
        preds, targets = preds.to(dtype), targets.to(dtype)
        labelled = targets > 0  # False for NaN
        if self.kind == "l1":
            errors = torch.where(labelled, preds - torch.where(labelled, targets, 0.0), 0.0).abs()
            count = labelled.sum().to(torch.float32)
            loss = errors.sum() / count.clamp(min=1.0).to(errors.dtype)
        else:
            log_ratio = torch.log(preds.clamp(min=_SMALLEST_DEPTH)) - torch.log(torch.where(labelled, targets, 1.0))
            log_ratio = torch.where(labelled, log_ratio, 0.0)
            pixels = labelled.sum(dim=(1, 2)).to(preds.dtype)
            per_pixel = pixels.clamp(min=1.0)
            mean = log_ratio.sum(dim=(1, 2)) / per_pixel
            per_image = log_ratio.square().sum(dim=(1, 2)) / per_pixel - self.silog_lambda * mean.square()
            images = (pixels > 0).to(preds.dtype)
            count = images.sum().to(torch.float32)
            loss = (per_image * images).sum() / count.clamp(min=1.0).to(per_image.dtype)
        return (loss, count) if self.return_count else loss

    def extra_repr(self) -> str:
        silog = f", silog_lambda={self.silog_lambda}" if self.kind == "silog" else ""
        return f"kind={self.kind!r}{silog}"


def create_depth_head(
    in_channels: int,
    features_name: str,
    targets_name: str,
    upsample: int = 1,
    hidden_channels: int = 0,
    loss: DepthLossKind = "l1",
    silog_lambda: float = 0.5,
    loss_weight: float = 1.0,
) -> dict[str, BrickInterface]:
    """The bricks of one depth task: a regressor of positive depths, its masked loss and its NYUv2 metrics.

    Targets are depth maps ``(N, H, W)`` (float, e.g. metres) of the size of the feature maps times ``upsample``;
    missing pixels are NaN (0 counts as missing too), and a map of NaN is a sample without this label. Outputs, in
    the head's directory: ``./depth`` (the prediction, positive by ``softplus``; alive in every stage, so at
    inference and export), ``./loss_l1`` or ``./loss_silog`` with its labelled count ``./labelled`` (pixels for L1,
    images for the scale-invariant log loss; see :class:`MaskedDepthLoss`), and the metrics of
    :class:`~torchbricks_lightning.bag_of_bricks.dense_metrics.DepthMetrics` (``./abs_rel``, ``./rmse``,
    ``./delta1``, ``./delta2``, ``./delta3``). Losses and metrics are alive in train, validation and test.

    Args:
        in_channels: the channels of the feature maps.
        features_name: the feature maps ``(N, C, h, w)``.
        targets_name: the depth targets ``(N, h * upsample, w * upsample)``.
        upsample: the factor from the feature maps to the depth maps (the backbone's stride).
        hidden_channels: the channels of an optional 3x3 convolution before the output (0: none).
        loss: ``"l1"`` (masked L1) or ``"silog"`` (Eigen et al.'s scale-invariant log loss).
        silog_lambda: the ``lambda`` of the scale-invariant log loss (0.5, the paper's).
        loss_weight: the weight of the loss in the total.

    Raises:
        ConfigError: an unknown ``loss``, a ``silog_lambda`` outside [0, 1], or a size that is not positive; at the
            first batch, targets of the wrong rank, dtype or size (the message names the head and the fix).

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"depth": create_depth_head(8, "features", "depth", upsample=4)})
        >>> collection.output_names("train")
        ['depth/depth', 'depth/loss_l1', 'depth/labelled']
        >>> collection.metric_keys()
        ['depth/abs_rel', 'depth/rmse', 'depth/delta1', 'depth/delta2', 'depth/delta3']
    """
    where = f"the depth head on {features_name!r} with targets {targets_name!r}"
    return {
        "regress": BrickTrainable(
            DepthRegressor(in_channels, upsample=upsample, hidden_channels=hidden_channels),
            input_names=[features_name],
            output_names=["./depth"],
        ),
        "metrics": BrickMetricSingle(
            DepthMetrics(where=f"DepthMetrics of {where}"), input_names=["./depth", targets_name]
        ),
        "loss": BrickLabelledLoss(
            MaskedDepthLoss(loss, silog_lambda, return_count=True, where=f"MaskedDepthLoss of {where}"),
            input_names=["./depth", targets_name],
            output_names=[f"./loss_{loss}", "./labelled"],
            loss_weight=loss_weight,
        ),
    }


class DepthHead(BrickCollection):
    """:func:`create_depth_head` as a collection class, so a YAML recipe can name it.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"depth": DepthHead(in_channels=8, upsample=4, loss="silog")})
        >>> collection.loss_names("train"), collection.input_names("export")
        (['depth/loss_silog'], ['features'])
    """

    def __init__(
        self,
        in_channels: int,
        features_name: str = "features",
        targets_name: str = "targets",
        upsample: int = 1,
        hidden_channels: int = 0,
        loss: DepthLossKind = "l1",
        silog_lambda: float = 0.5,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            create_depth_head(
                in_channels,
                features_name,
                targets_name,
                upsample=upsample,
                hidden_channels=hidden_channels,
                loss=loss,
                silog_lambda=silog_lambda,
                loss_weight=loss_weight,
            )
        )
