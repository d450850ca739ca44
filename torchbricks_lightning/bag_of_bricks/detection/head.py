"""The detection head's bricks: network, decoder (with NMS), loss and COCO mAP, and the collection class for YAML."""

from __future__ import annotations

from collections.abc import Sequence

from torchbricks_lightning.bag_of_bricks.detection.decoding import DetectionDecoder
from torchbricks_lightning.bag_of_bricks.detection.loss import DetectionLoss
from torchbricks_lightning.bag_of_bricks.detection.metric import DetectionMeanAP
from torchbricks_lightning.bag_of_bricks.detection.network import DetectionNetwork
from torchbricks_lightning.core.bricks import BrickInterface, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetricSingle
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.multitask.labels import IGNORE_INDEX, BrickLabelledLoss, check_ignore_index

__all__ = ["DECODE_STAGES", "DetectionHead", "create_detection_head"]

DECODE_STAGES = (Stage.VALIDATION, Stage.TEST, Stage.INFERENCE, Stage.EXPORT)
"""Where the decoder (and its NMS) is alive: everywhere but training, whose step needs only the loss."""


def create_detection_head(
    num_classes: int,
    in_channels: int,
    features_name: str,
    boxes_name: str,
    labels_name: str,
    stride: int,
    max_detections: int = 100,
    image_name: str | None = None,
    hidden_channels: int = 32,
    num_convs: int = 1,
    score_threshold: float = 0.2,
    iou_threshold: float = 0.6,
    pre_nms_top_k: int = 1000,
    center_sampling_radius: float = 1.5,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    loss_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
    validate_targets: bool = True,
) -> dict[str, BrickInterface]:
    """The bricks of one object-detection task: a one-stage anchor-free (FCOS-style) head on one feature map.

    Why FCOS, and how it assigns and decodes: see :mod:`~torchbricks_lightning.bag_of_bricks.detection.network`,
    :mod:`~torchbricks_lightning.bag_of_bricks.detection.loss` and
    :mod:`~torchbricks_lightning.bag_of_bricks.detection.decoding`.

    **Targets** (see :mod:`~torchbricks_lightning.bag_of_bricks.detection.targets`): padded boxes ``(B, N, 4)``,
    float ``xyxy`` in pixels, at ``boxes_name``, and labels ``(B, N)``, long, at ``labels_name``. Padding rows have
    the label ``ignore_index`` (-100); an image annotated with zero objects has only padding rows; an image not
    annotated for this task has NaN boxes: no loss and no metric update from it, the rest of the batch still trains.
    :func:`~torchbricks_lightning.bag_of_bricks.detection.pad_detection_targets` builds them.

    **Bricks and names** (relative to the head's key, e.g. ``det``):

    - ``network`` (trainable, every stage): ``./class_logits``, ``./box_distances``, ``./centerness_logits``;
    - ``decode`` (validation, test, inference, export): ``./boxes (B, K, 4)``, ``./scores (B, K)``, ``./labels (B,
      K)``, ``./count (B,)`` with ``K = max_detections``, best first; rows past ``count`` are padding (score 0,
      label -1, boxes 0). The decoding and its NMS are part of the exported model.
    - ``loss`` (train, validation, test): ``./loss_detection`` and its count ``./positives`` (a
      :class:`~torchbricks_lightning.multitask.BrickLabelledLoss`); a batch without annotated images gives 0;
    - ``metrics`` (validation, test): ``./map``, ``./map_50``, ``./map_75`` (COCO, by pycocotools through
      torchmetrics' ``MeanAveragePrecision``), over the annotated images only.

    An export manifest records, for the ``decode`` brick, the box format (``xyxy`` pixels), the stride, ``K``, the
    padding values and the class names.

    Args:
        num_classes: the object classes.
        in_channels: the channels of the feature map at ``features_name``.
        features_name: the feature map ``(B, in_channels, H / stride, W / stride)``.
        boxes_name: the target boxes.
        labels_name: the target labels.
        stride: the feature map's stride in pixels of the input image.
        max_detections: ``K``, the detection rows per image (>= 1).
        image_name: the input image ``(B, C, H, W)``; when given, the network checks at each batch (sizes only)
            that the stride divides the image and that the feature map is the image's size over the stride.
        hidden_channels: the channels of the network's shared tower.
        num_convs: the ``3x3`` convolutions of the shared tower.
        score_threshold: detections scoring at most this are dropped.
        iou_threshold: NMS's IoU threshold (per class).
        pre_nms_top_k: the candidates per image that go into NMS.
        center_sampling_radius: how near a box's centre its positive locations must be, in strides.
        focal_alpha: ``alpha`` of the classification's sigmoid focal loss (FCOS: 0.25; negative: no class
            weighting).
        focal_gamma: ``gamma`` of that loss (FCOS: 2). ``focal_gamma=0.0`` with ``focal_alpha=-1.0`` is plain
            binary cross-entropy, which learns to tell classes apart much sooner on small data and short schedules:
            on the digit scenes example (12 epochs of 800 scenes) the focal loss stayed near chance on the digit classes
            (mAP@0.5 0.14) where cross-entropy reached 0.99.
        loss_weight: the weight of the detection loss in the total.
        ignore_index: the label of padding rows.
        class_names: a name per class, recorded in export manifests.
        validate_targets: check the target values of every batch (one device sync per step; shapes are always
            checked).

    Raises:
        ConfigError: ``max_detections < 1``, a size that is not positive, ``ignore_index`` a valid class, or
            ``class_names`` that do not name every class once.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"det": create_detection_head(3, 16, "features", "boxes", "labels", 4)})
        >>> collection.output_names("export")
        ['det/class_logits', 'det/box_distances', 'det/centerness_logits', 'det/boxes', 'det/scores', 'det/labels', \
'det/count']
        >>> collection.loss_names("train"), collection.metric_keys()
        (['det/loss_detection'], ['det/map', 'det/map_50', 'det/map_75'])
    """
    check_ignore_index(ignore_index, num_classes, "create_detection_head")
    network_inputs = [features_name] if image_name is None else [features_name, image_name]
    where = f"detection head (features {features_name!r}, targets {boxes_name!r} and {labels_name!r})"
    predictions = ["./class_logits", "./box_distances", "./centerness_logits"]
    detections = ["./boxes", "./scores", "./labels", "./count"]
    return {
        "network": BrickTrainable(
            DetectionNetwork(
                num_classes,
                in_channels,
                stride,
                hidden_channels=hidden_channels,
                num_convs=num_convs,
                class_names=class_names,
                where=f"brick 'network' of the {where}",
            ),
            input_names=network_inputs,
            output_names=predictions,
        ),
        "decode": BrickNotTrainable(
            DetectionDecoder(
                num_classes,
                stride,
                max_detections=max_detections,
                score_threshold=score_threshold,
                iou_threshold=iou_threshold,
                pre_nms_top_k=pre_nms_top_k,
                class_names=class_names,
                where=f"brick 'decode' of the {where}",
            ),
            input_names=predictions,
            output_names=detections,
            alive_stages=DECODE_STAGES,
            calculate_gradients=False,
        ),
        "loss": BrickLabelledLoss(
            DetectionLoss(
                num_classes,
                stride,
                center_sampling_radius=center_sampling_radius,
                focal_alpha=focal_alpha,
                focal_gamma=focal_gamma,
                ignore_index=ignore_index,
                validate_targets=validate_targets,
                where=f"brick 'loss' of the {where}",
            ),
            input_names=[*predictions, boxes_name, labels_name],
            output_names=["./loss_detection", "./positives"],
            loss_weight=loss_weight,
        ),
        "metrics": BrickMetricSingle(
            DetectionMeanAP(ignore_index=ignore_index),
            input_names=[*detections, boxes_name, labels_name],
            alive_stages=(Stage.VALIDATION, Stage.TEST),
        ),
    }


class DetectionHead(BrickCollection):
    """:func:`create_detection_head` as a collection class, so a YAML recipe can name it.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"det": DetectionHead(num_classes=2, in_channels=8, stride=4)})
        >>> collection.output_names("export")[-4:]
        ['det/boxes', 'det/scores', 'det/labels', 'det/count']
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        stride: int,
        features_name: str = "features",
        boxes_name: str = "boxes",
        labels_name: str = "labels",
        max_detections: int = 100,
        image_name: str | None = None,
        hidden_channels: int = 32,
        num_convs: int = 1,
        score_threshold: float = 0.2,
        iou_threshold: float = 0.6,
        pre_nms_top_k: int = 1000,
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        validate_targets: bool = True,
    ) -> None:
        super().__init__(
            create_detection_head(
                num_classes,
                in_channels,
                features_name,
                boxes_name,
                labels_name,
                stride,
                max_detections=max_detections,
                image_name=image_name,
                hidden_channels=hidden_channels,
                num_convs=num_convs,
                score_threshold=score_threshold,
                iou_threshold=iou_threshold,
                pre_nms_top_k=pre_nms_top_k,
                center_sampling_radius=center_sampling_radius,
                focal_alpha=focal_alpha,
                focal_gamma=focal_gamma,
                loss_weight=loss_weight,
                ignore_index=ignore_index,
                class_names=class_names,
                validate_targets=validate_targets,
            )
        )
