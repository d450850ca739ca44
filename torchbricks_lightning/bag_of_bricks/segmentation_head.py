"""The segmentation head: a per-pixel classifier, a masked cross-entropy, pixel accuracy and mean IoU."""

from __future__ import annotations

import torch
from torch import nn

from torchbricks_lightning.bag_of_bricks.losses import MaskedCrossEntropyLoss
from torchbricks_lightning.bag_of_bricks.metrics import ConfusionMatrixMetrics
from torchbricks_lightning.core.bricks import BrickInterface, BrickTrainable
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetricSingle
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.labels import IGNORE_INDEX, BrickLabelledLoss, check_ignore_index

__all__ = ["PixelClassifier", "SegmentationHead", "create_segmentation_head"]


class PixelClassifier(nn.Module):
    """A per-pixel classifier on feature maps, upsampled to the mask's size.

    An optional ``3x3`` convolution with ``hidden_channels`` (and a ReLU), then a ``1x1`` convolution to
    ``num_classes * upsample**2`` scores per feature position, rearranged into ``upsample x upsample`` pixels by a
    sub-pixel shuffle (``nn.PixelShuffle``, ONNX's ``DepthToSpace``): every output pixel gets scores of its own,
    however coarse the feature maps (``upsample`` is the backbone's stride). Returns logits ``(N, C, H, W)``,
    probabilities (softmax over classes) and the predicted class of each pixel ``(N, H, W)``.

    Args:
        num_classes: the number of classes of a pixel.
        n_features: the channels of the feature maps.
        upsample: the integer factor from the feature maps to the mask (1: same size).
        hidden_channels: the channels of the optional 3x3 convolution (0: none).

    Example:
        >>> logits, probabilities, classes = PixelClassifier(2, 8, upsample=4)(torch.rand(3, 8, 2, 2))
        >>> tuple(logits.shape), tuple(classes.shape), classes.dtype
        ((3, 2, 8, 8), (3, 8, 8), torch.int64)
    """

    def __init__(self, num_classes: int, n_features: int, upsample: int = 1, hidden_channels: int = 0) -> None:
        super().__init__()
        if num_classes < 2 or n_features < 1 or upsample < 1 or hidden_channels < 0:
            raise ConfigError(
                "Expected num_classes >= 2, n_features >= 1, upsample >= 1 and hidden_channels >= 0, but got "
                f"{num_classes}, {n_features}, {upsample} and {hidden_channels}."
            )
        layers: list[nn.Module] = []
        channels = n_features
        if hidden_channels:
            layers += [nn.Conv2d(n_features, hidden_channels, 3, padding=1), nn.ReLU()]
            channels = hidden_channels
        layers.append(nn.Conv2d(channels, num_classes * upsample * upsample, 1))
        if upsample > 1:
            layers.append(nn.PixelShuffle(upsample))
        self.scores = nn.Sequential(*layers)
        self.upsample = int(upsample)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.scores(features)
        probabilities = torch.softmax(logits, dim=1)
        return logits, probabilities, probabilities.argmax(dim=1)


def create_segmentation_head(
    num_classes: int,
    in_channels: int,
    features_name: str,
    targets_name: str,
    upsample: int = 1,
    hidden_channels: int = 0,
    loss_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    with_confusion_matrix: bool = False,
) -> dict[str, BrickInterface]:
    """The bricks of one segmentation task: a per-pixel classifier, its masked cross-entropy and its metrics.

    Targets are class masks ``(N, H, W)``; pixels equal to ``ignore_index`` are unlabelled (a whole mask of them is
    a sample without this label). The loss averages over labelled pixels and outputs their count (``./labelled``).
    The ``metrics`` brick holds one :class:`ConfusionMatrixMetrics` (one bincount per step) and reports
    ``pixel_accuracy`` (the share of labelled pixels predicted right) and ``mean_iou`` (as torchmetrics'
    ``MulticlassJaccardIndex(average="macro")``), and with ``with_confusion_matrix=True`` the matrix.

    Raises:
        ConfigError: ``ignore_index`` is a valid class index, or a size is not positive.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> head = create_segmentation_head(2, 8, "features", "mask", upsample=4)
        >>> collection = BrickCollection({"segment": head})
        >>> collection.output_names("train")[-2:], collection.metric_keys()
        (['segment/loss_ce', 'segment/labelled'], ['segment/pixel_accuracy', 'segment/mean_iou'])
    """
    check_ignore_index(ignore_index, num_classes, "create_segmentation_head")
    values = ("pixel_accuracy", "mean_iou", "confusion") if with_confusion_matrix else ("pixel_accuracy", "mean_iou")
    return {
        "classify": BrickTrainable(
            PixelClassifier(num_classes, in_channels, upsample=upsample, hidden_channels=hidden_channels),
            input_names=[features_name],
            output_names=["./logits", "./probabilities", "./class_prediction"],
        ),
        "metrics": BrickMetricSingle(
            ConfusionMatrixMetrics(num_classes, values=values, validate_args=False, ignore_index=ignore_index),
            input_names=["./class_prediction", targets_name],
        ),
        "loss": BrickLabelledLoss(
            MaskedCrossEntropyLoss(ignore_index=ignore_index, return_count=True),
            input_names=["./logits", targets_name],
            output_names=["./loss_ce", "./labelled"],
            loss_weight=loss_weight,
        ),
    }


class SegmentationHead(BrickCollection):
    """:func:`create_segmentation_head` as a collection class, so a YAML recipe can name it.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"segment": SegmentationHead(num_classes=2, in_channels=8, upsample=4)})
        >>> collection.metric_keys()
        ['segment/pixel_accuracy', 'segment/mean_iou']
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        features_name: str = "features",
        targets_name: str = "targets",
        upsample: int = 1,
        hidden_channels: int = 0,
        loss_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        with_confusion_matrix: bool = False,
    ) -> None:
        super().__init__(
            create_segmentation_head(
                num_classes,
                in_channels,
                features_name,
                targets_name,
                upsample=upsample,
                hidden_channels=hidden_channels,
                loss_weight=loss_weight,
                ignore_index=ignore_index,
                with_confusion_matrix=with_confusion_matrix,
            )
        )
