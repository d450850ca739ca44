"""The surface-normal head: a dense regressor of unit normals, a masked cosine loss, and the NYUv2 angle metrics."""

from __future__ import annotations

import torch
from torch import nn

from torchbricks_lightning.bag_of_bricks.dense_functional import check_normals_pair
from torchbricks_lightning.bag_of_bricks.dense_metrics import NormalsMetrics
from torchbricks_lightning.bag_of_bricks.dense_regressor import DenseRegressor
from torchbricks_lightning.core.bricks import BrickInterface, BrickTrainable
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetricSingle
from torchbricks_lightning.multitask.labels import BrickLabelledLoss

__all__ = ["CosineNormalLoss", "NormalsHead", "NormalsRegressor", "create_normals_head"]


class NormalsRegressor(nn.Module):
    """Unit normals ``(N, 3, H * upsample, W * upsample)`` from feature maps: a :class:`DenseRegressor` of three
    channels, L2-normalised over the channels (as ``F.normalize``; a zero vector stays zero).

    Args:
        n_features: the channels of the feature maps.
        upsample: the integer factor from the feature maps to the normal maps.
        hidden_channels: the channels of the optional 3x3 convolution (0: none).

    Example:
        >>> normals = NormalsRegressor(8, upsample=2)(torch.rand(2, 8, 4, 4))
        >>> tuple(normals.shape), bool(torch.allclose(normals.norm(dim=1), torch.ones(2, 8, 8)))
        ((2, 3, 8, 8), True)
    """

    def __init__(self, n_features: int, upsample: int = 1, hidden_channels: int = 0) -> None:
        super().__init__()
        self.regressor = DenseRegressor(3, n_features, upsample=upsample, hidden_channels=hidden_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        values = self.regressor(features)
        # As F.normalize(values, dim=1) (eps 1e-12), without its norm over the channels (10x slower on a CPU).
        return values * values.square().sum(dim=1, keepdim=True).clamp(min=1e-24).rsqrt()


class CosineNormalLoss(nn.Module):
    """``1 - cos(pred, target)`` averaged over the labelled pixels; the count is pixels.

    A target pixel with a NaN component (or the zero vector) is missing; targets need not be unit vectors (both
    sides are normalised). A batch without a labelled pixel gives exactly 0, connected to the graph, with a count
    of 0 (see :mod:`~torchbricks_lightning.bag_of_bricks.losses`).

    Args:
        return_count: return ``(loss, labelled count)`` instead of the loss alone.
        where: how error messages name the loss (the head passes its description).

    Raises:
        ConfigError: when called, targets that are not ``(N, 3, H, W)`` floats of the predictions' size.

    Example:
        >>> preds = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
        >>> targets = torch.tensor([[0.0, 2.0, 0.0], [float("nan"), 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
        >>> loss, count = CosineNormalLoss(return_count=True)(preds, targets)  # 90 degrees, then a missing pixel
        >>> float(loss), float(count)
        (1.0, 1.0)
    """

    def __init__(self, return_count: bool = False, where: str = "CosineNormalLoss") -> None:
        super().__init__()
        self.return_count = bool(return_count)
        self.where = str(where)

    def forward(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_normals_pair(preds, targets, self.where)
        dtype = torch.promote_types(preds.dtype, torch.float32)  # float16 / bfloat16 predictions: a float32 loss
        preds, targets = preds.to(dtype), targets.to(dtype)
        labelled = targets.square().sum(dim=1) > 0  # a NaN component makes the sum NaN: False
        clean = torch.where(labelled.unsqueeze(1), targets, 0.0)
        # As F.cosine_similarity(preds, clean, dim=1) (eps 1e-8), without its norms (10x slower on a CPU).
        lengths = (preds.square().sum(dim=1) * clean.square().sum(dim=1)).clamp(min=1e-16).sqrt()
        cosine = (preds * clean).sum(dim=1) / lengths
        errors = torch.where(labelled, 1.0 - cosine, 0.0)
        count = labelled.sum().to(torch.float32)
        loss = errors.sum() / count.clamp(min=1.0).to(errors.dtype)
        return (loss, count) if self.return_count else loss


def create_normals_head(
    in_channels: int,
    features_name: str,
    targets_name: str,
    upsample: int = 1,
    hidden_channels: int = 0,
    loss_weight: float = 1.0,
    bin_width: float = 0.01,
) -> dict[str, BrickInterface]:
    """The bricks of one surface-normal task: a regressor of unit normals, its cosine loss and its angle metrics.

    Targets are normal maps ``(N, 3, H, W)`` (float) of the size of the feature maps times ``upsample``; a pixel
    with a NaN component is missing (the zero vector too), and a map of NaN is a sample without this label. Outputs,
    in the head's directory: ``./normals`` (unit vectors; alive in every stage, so at inference and export),
    ``./loss_cosine`` (``1 - cos``, :class:`CosineNormalLoss`) with its labelled pixel count ``./labelled``, and the
    metrics of :class:`~torchbricks_lightning.bag_of_bricks.dense_metrics.NormalsMetrics`: ``./mean_angle``,
    ``./median_angle`` (degrees; the median from a histogram of ``bin_width`` degrees, within ``bin_width`` of the
    exact one), ``./within_11_25``, ``./within_22_5`` and ``./within_30`` (shares in [0, 1], not percent). Losses
    and metrics are alive in train, validation and test.

    Args:
        in_channels: the channels of the feature maps.
        features_name: the feature maps ``(N, C, h, w)``.
        targets_name: the normal targets ``(N, 3, h * upsample, w * upsample)``.
        upsample: the factor from the feature maps to the normal maps (the backbone's stride).
        hidden_channels: the channels of an optional 3x3 convolution before the output (0: none).
        loss_weight: the weight of the loss in the total.
        bin_width: the bin width in degrees of the median's histogram; it must divide 180.

    Raises:
        ConfigError: a size that is not positive or a ``bin_width`` that does not divide 180; at the first batch,
            targets of the wrong rank, channels, dtype or size (the message names the head and the fix).

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"normals": create_normals_head(8, "features", "normals", upsample=4)})
        >>> collection.output_names("train")
        ['normals/normals', 'normals/loss_cosine', 'normals/labelled']
        >>> collection.metric_keys()
        ['normals/mean_angle', 'normals/median_angle', 'normals/within_11_25', 'normals/within_22_5', ...]
    """
    where = f"the normals head on {features_name!r} with targets {targets_name!r}"
    return {
        "regress": BrickTrainable(
            NormalsRegressor(in_channels, upsample=upsample, hidden_channels=hidden_channels),
            input_names=[features_name],
            output_names=["./normals"],
        ),
        "metrics": BrickMetricSingle(
            NormalsMetrics(bin_width=bin_width, where=f"NormalsMetrics of {where}"),
            input_names=["./normals", targets_name],
        ),
        "loss": BrickLabelledLoss(
            CosineNormalLoss(return_count=True, where=f"CosineNormalLoss of {where}"),
            input_names=["./normals", targets_name],
            output_names=["./loss_cosine", "./labelled"],
            loss_weight=loss_weight,
        ),
    }


class NormalsHead(BrickCollection):
    """:func:`create_normals_head` as a collection class, so a YAML recipe can name it.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"normals": NormalsHead(in_channels=8, upsample=4)})
        >>> collection.loss_names("train"), collection.input_names("export")
        (['normals/loss_cosine'], ['features'])
    """

    def __init__(
        self,
        in_channels: int,
        features_name: str = "features",
        targets_name: str = "targets",
        upsample: int = 1,
        hidden_channels: int = 0,
        loss_weight: float = 1.0,
        bin_width: float = 0.01,
    ) -> None:
        super().__init__(
            create_normals_head(
                in_channels,
                features_name,
                targets_name,
                upsample=upsample,
                hidden_channels=hidden_channels,
                loss_weight=loss_weight,
                bin_width=bin_width,
            )
        )
