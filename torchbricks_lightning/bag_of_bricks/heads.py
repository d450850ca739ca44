"""Heads: classifiers and the bricks (classifier, loss, metrics) of a classification task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchbricks_lightning.bag_of_bricks.losses import MaskedCrossEntropyLoss
from torchbricks_lightning.bag_of_bricks.metrics import ConfusionMatrixMetrics, check_class_names
from torchbricks_lightning.core.bricks import BrickInterface, BrickTrainable
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetricSingle
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.labels import IGNORE_INDEX, BrickLabelledLoss, check_ignore_index

__all__ = ["ClassificationHead", "ImageClassifier", "create_image_classification_head"]


class ImageClassifier(nn.Module):
    """A linear classifier on (pooled) features that returns logits, probabilities and the predicted class.

    Args:
        num_classes: the number of classes.
        n_features: the number of input features (channels).
        use_average_pooling: average-pool 4-D feature maps ``(batch, channels, h, w)`` before the
            linear layer (2-D features pass straight through).
        class_names: a name per class, recorded for export manifests (``class_names``).

    Example:
        >>> import torch
        >>> classifier = ImageClassifier(num_classes=3, n_features=8)
        >>> logits, probabilities, class_prediction = classifier(torch.rand(2, 8, 4, 4))
        >>> tuple(logits.shape), tuple(probabilities.shape), class_prediction.dtype
        ((2, 3), (2, 3), torch.int64)
    """

    def __init__(
        self,
        num_classes: int,
        n_features: int,
        use_average_pooling: bool = True,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or n_features < 1:
            raise ConfigError(
                f"Expected num_classes and n_features to be positive, but got {num_classes} and {n_features}."
            )
        self.class_names = check_class_names(class_names, num_classes, "ImageClassifier")
        self.use_average_pooling = use_average_pooling
        self.fc = nn.Linear(n_features, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.use_average_pooling and features.ndim == 4:
            features = features.mean(dim=(2, 3))
        logits = self.fc(torch.flatten(features, start_dim=1))
        probabilities = torch.softmax(logits, dim=1)
        return logits, probabilities, probabilities.argmax(dim=1)


def create_image_classification_head(
    num_classes: int,
    in_channels: int,
    features_name: str,
    targets_name: str,
    loss_weight: float = 1.0,
    with_confusion_matrix: bool = False,
    ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
) -> dict[str, BrickInterface]:
    """The bricks of one classification task: a classifier, its cross-entropy loss and its metrics.

    The ``metrics`` brick holds one :class:`ConfusionMatrixMetrics` (a single bincount per step) and reports
    ``accuracy`` (macro, as torchmetrics' ``MulticlassAccuracy``) and, with ``with_confusion_matrix=True``,
    ``confusion`` (drawn as a picture in TensorBoard by ``LightningBrickCollection``).

    Partial labels: a target equal to ``ignore_index`` is a missing label. The loss
    (:class:`~torchbricks_lightning.bag_of_bricks.MaskedCrossEntropyLoss` in a
    :class:`~torchbricks_lightning.multitask.BrickLabelledLoss`) averages over the labelled samples and also outputs
    their count (``./labelled``), and the metrics count labelled samples only.

    Outputs use relative names, so the same head can be nested under several names: inside ``head0``
    they become ``head0/logits``, ``head0/probabilities``, ``head0/class_prediction``, ``head0/loss_ce`` and
    ``head0/labelled``.

    ``class_names`` (one per class) name the classes in the confusion-matrix picture and in export manifests.

    Raises:
        ConfigError: ``ignore_index`` is a valid class index, or ``class_names`` does not name every class once.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"head0": create_image_classification_head(3, 8, "features", "targets")})
        >>> collection.output_names("train")
        ['head0/logits', 'head0/probabilities', 'head0/class_prediction', 'head0/loss_ce', 'head0/labelled']
        >>> collection.metric_keys()
        ['head0/accuracy']
    """
    check_ignore_index(ignore_index, num_classes, "create_image_classification_head")
    bricks: dict[str, BrickInterface] = {
        "classify": BrickTrainable(
            ImageClassifier(num_classes=num_classes, n_features=in_channels, class_names=class_names),
            input_names=[features_name],
            output_names=["./logits", "./probabilities", "./class_prediction"],
        ),
        "metrics": BrickMetricSingle(
            # The predictions are the classifier's argmax, so always in range; targets are checked for free.
            ConfusionMatrixMetrics(
                num_classes,
                values=("accuracy", "confusion") if with_confusion_matrix else ("accuracy",),
                validate_args=False,
                ignore_index=ignore_index,
                class_names=class_names,
            ),
            input_names=["./class_prediction", targets_name],
        ),
        "loss": BrickLabelledLoss(
            MaskedCrossEntropyLoss(ignore_index=ignore_index, return_count=True),
            input_names=["./logits", targets_name],
            output_names=["./loss_ce", "./labelled"],
            loss_weight=loss_weight,
        ),
    }
    return bricks


class ClassificationHead(BrickCollection):
    """:func:`create_image_classification_head` as a collection class, so a YAML recipe can name it.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"digit": ClassificationHead(num_classes=10, in_channels=8)})
        >>> collection.loss_names("train"), collection.metric_keys()
        (['digit/loss_ce'], ['digit/accuracy'])
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        features_name: str = "features",
        targets_name: str = "targets",
        loss_weight: float = 1.0,
        with_confusion_matrix: bool = False,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            create_image_classification_head(
                num_classes,
                in_channels,
                features_name,
                targets_name,
                loss_weight,
                with_confusion_matrix,
                ignore_index,
                class_names,
            )
        )
