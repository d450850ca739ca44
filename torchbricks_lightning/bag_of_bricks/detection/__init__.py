"""Object detection: a one-stage anchor-free (FCOS-style) head on one feature map, with partial annotations.

- :func:`create_detection_head` / :class:`DetectionHead`: the bricks (network, decoder with NMS, loss, COCO mAP);
- :func:`pad_detection_targets`: one ``(boxes, labels)`` or ``None`` per image -> the batched targets;
- the pieces: :class:`DetectionNetwork`, :class:`DetectionDecoder`, :class:`DetectionLoss`,
  :class:`DetectionMeanAP`.
"""

from torchbricks_lightning.bag_of_bricks.detection.decoding import BOX_FORMAT, DetectionDecoder, select_detections
from torchbricks_lightning.bag_of_bricks.detection.head import DECODE_STAGES, DetectionHead, create_detection_head
from torchbricks_lightning.bag_of_bricks.detection.loss import DetectionLoss, assign_locations
from torchbricks_lightning.bag_of_bricks.detection.metric import DetectionMeanAP
from torchbricks_lightning.bag_of_bricks.detection.network import DetectionNetwork
from torchbricks_lightning.bag_of_bricks.detection.targets import (
    annotated_images,
    check_detection_targets,
    pad_detection_targets,
)

__all__ = [
    "BOX_FORMAT",
    "DECODE_STAGES",
    "DetectionDecoder",
    "DetectionHead",
    "DetectionLoss",
    "DetectionMeanAP",
    "DetectionNetwork",
    "annotated_images",
    "assign_locations",
    "check_detection_targets",
    "create_detection_head",
    "pad_detection_targets",
    "select_detections",
]
