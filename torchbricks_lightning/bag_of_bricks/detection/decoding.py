"""Decoding: from the network's per-location predictions to ``K`` boxes per image of fixed shape, after NMS.

The outputs have fixed shapes, so that an exported model (ONNX or ``.pt2``) returns the same tensors as eager
PyTorch:

- ``boxes (B, K, 4)``: float, ``xyxy`` in pixels of the input image, clipped to it;
- ``scores (B, K)``: float in ``(0, 1]``, best first;
- ``labels (B, K)``: long class indices;
- ``count (B,)``: long, the valid detections of each image (at most ``K``).

Rows ``count..K-1`` of an image are padding: score 0, label -1 and boxes 0.

The steps, all tensor operations of fixed shape but one:

1. the score of a location and class is ``sqrt(sigmoid(class logit) * sigmoid(centerness logit))`` (as FCOS);
2. the ``pre_nms_top_k`` best pairs of each image (equal scores in index order) are decoded into boxes, clipped to
   the image;
3. ``torchvision.ops.nms`` runs once over the whole batch, each (image, class) pair moved to its own region of the
   plane: the coordinate trick of ``torchvision.ops.batched_nms``, written out here because ``batched_nms``
   switches to a per-class Python loop over ``torch.unique`` above 1000 boxes on a CPU, which ``torch.export``
   cannot trace. ``nms`` returns a list of data-dependent length, but it is only scattered into a fixed-shape mask;
4. the kept pairs above ``score_threshold`` fill the ``K`` rows, best first.

Export: torch's ONNX exporter translates ``torchvision::nms`` into ONNX's ``NonMaxSuppression`` (the same rule:
suppress when IoU > threshold), and ``torch.export`` keeps it in ``.pt2`` programs (import ``torchvision`` before
``torch.export.load`` so that the operator is registered). Both are checked against eager PyTorch by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from torchbricks_lightning.bag_of_bricks.detection.network import check_positive_int, location_centers
from torchbricks_lightning.bag_of_bricks.metrics import check_class_names
from torchbricks_lightning.errors import ConfigError

__all__ = ["BOX_FORMAT", "DetectionDecoder", "distances_to_boxes", "select_detections"]

BOX_FORMAT = "xyxy"
"""The box format of targets and outputs: ``(x1, y1, x2, y2)`` in pixels of the input image."""


def distances_to_boxes(centers: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Boxes ``xyxy`` from points ``(..., 2)`` and their distances to the left, top, right, bottom sides ``(..., 4)``.

    Example:
        >>> distances_to_boxes(torch.tensor([[4.0, 4.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist()
        [[3.0, 2.0, 7.0, 8.0]]
    """
    return torch.cat([centers - distances[..., :2], centers + distances[..., 2:]], dim=-1)


def select_detections(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, max_detections: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``max_detections`` kept candidates of each image, in candidate order, padded to a fixed shape.

    Args:
        boxes: ``(B, M, 4)`` candidates, best first in each image.
        scores: ``(B, M)``.
        labels: ``(B, M)``.
        keep: ``(B, M)`` bool, the candidates to output.
        max_detections: ``K``.

    Returns:
        ``boxes (B, K, 4)``, ``scores (B, K)``, ``labels (B, K)``, ``count (B,)``; padding rows have score 0,
        label -1 and boxes 0.

    Example:
        >>> boxes, scores, labels, count = select_detections(
        ...     torch.ones(1, 3, 4), torch.tensor([[0.9, 0.8, 0.7]]), torch.tensor([[2, 0, 1]]),
        ...     torch.tensor([[True, False, True]]), max_detections=4)
        >>> [round(score, 2) for score in scores[0].tolist()], labels.tolist(), count.tolist()
        ([0.9, 0.7, 0.0, 0.0], [[2, 1, -1, -1]], [2])
    """
    batch, candidates = scores.shape
    if candidates < max_detections:  # fewer candidates than rows: pad them (sizes are known when traced)
        extra = max_detections - candidates
        boxes = torch.cat([boxes, boxes.new_zeros(batch, extra, 4)], dim=1)
        scores = torch.cat([scores, scores.new_zeros(batch, extra)], dim=1)
        labels = torch.cat([labels, labels.new_zeros(batch, extra)], dim=1)
        keep = torch.cat([keep, keep.new_zeros(batch, extra)], dim=1)
        candidates = max_detections
    # A distinct key per kept candidate, decreasing along the candidates: top-k then takes the kept ones in order
    # with no tie between them (ties among the others do not matter: they become padding).
    order = torch.arange(candidates, 0, -1, device=scores.device, dtype=torch.float32)
    rows = (keep.to(torch.float32) * order).topk(max_detections, dim=1).indices
    valid = torch.gather(keep, 1, rows)
    count = keep.sum(dim=1).clamp(max=max_detections)
    picked_boxes = torch.gather(boxes, 1, rows.unsqueeze(-1).expand(batch, max_detections, 4))
    picked_boxes = torch.where(valid.unsqueeze(-1), picked_boxes, torch.zeros_like(picked_boxes))
    picked_scores = torch.where(valid, torch.gather(scores, 1, rows), torch.zeros_like(valid, dtype=scores.dtype))
    picked_labels = torch.where(valid, torch.gather(labels, 1, rows), torch.full_like(rows, -1))
    return picked_boxes, picked_scores, picked_labels, count


def _top_candidates(scores: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top_k`` best scores of each row and their indices; equal scores in index order, in every runtime.

    ``topk`` leaves the order of equal values to the kernel (eager PyTorch and onnxruntime differ), and ONNX has no
    stable sort, so the ranking key is made unique: the score in steps of ``2**-24`` (exact for scores in ``[0,
    1]``), then the index, as one int64.

    Example:
        >>> _top_candidates(torch.tensor([[0.5, 0.9, 0.5, 0.5]]), 3)
        (tensor([[0.9000, 0.5000, 0.5000]]), tensor([[1, 0, 2]]))
    """
    size = scores.shape[1]
    steps = (scores * float(1 << 24)).to(torch.int64)  # floor: scores are not negative
    tie_break = torch.arange(size - 1, -1, -1, device=scores.device, dtype=torch.int64)
    index = (steps * size + tie_break).topk(top_k, dim=1).indices
    return torch.gather(scores, 1, index), index


class DetectionDecoder(nn.Module):
    """Scores, top-k, boxes, class-wise NMS and ``K`` fixed-shape detections per image (see the module docstring).

    Args:
        num_classes: the number of classes.
        stride: the feature map's stride in pixels.
        max_detections: ``K``, the detection rows per image.
        score_threshold: candidates scoring at most this are dropped.
        iou_threshold: NMS suppresses a box whose IoU with a better box of its class exceeds this.
        pre_nms_top_k: the candidates (location, class) per image that go into NMS.
        class_names: a name per class, recorded for export manifests.
        where: the brick, for error messages.

    Attributes:
        export_metadata: what an export manifest records about the outputs (box format, stride, ``K``, padding).

    Example:
        >>> decoder = DetectionDecoder(num_classes=2, stride=4, max_detections=5)
        >>> boxes, scores, labels, count = decoder(torch.randn(3, 2, 4, 4), torch.rand(3, 4, 4, 4) * 8,
        ...                                        torch.randn(3, 1, 4, 4))
        >>> tuple(boxes.shape), tuple(scores.shape), labels.dtype, tuple(count.shape)
        ((3, 5, 4), (3, 5), torch.int64, (3,))
    """

    def __init__(
        self,
        num_classes: int,
        stride: int,
        max_detections: int = 100,
        score_threshold: float = 0.2,
        iou_threshold: float = 0.6,
        pre_nms_top_k: int = 1000,
        class_names: Sequence[str] | None = None,
        where: str = "DetectionDecoder",
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes", where)
        self.stride = check_positive_int(stride, "stride", where)
        if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
            raise ConfigError(
                f"{where}: expected max_detections (K, the detection rows per image) to be an int >= 1, but got "
                f"{max_detections!r}. The exported outputs have K rows per image; pick K >= the most objects an "
                "image may hold (100 is COCO's)."
            )
        self.max_detections = max_detections
        self.pre_nms_top_k = check_positive_int(pre_nms_top_k, "pre_nms_top_k", where)
        for name, value in (("score_threshold", score_threshold), ("iou_threshold", iou_threshold)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{where}: expected {name} in [0, 1], but got {value!r}.")
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.class_names = check_class_names(class_names, num_classes, where)
        self.export_metadata: dict[str, Any] = {
            "task": "detection",
            "box_format": BOX_FORMAT,
            "box_units": "pixels",
            "stride": self.stride,
            "max_detections": self.max_detections,
            "padding": {"score": 0.0, "label": -1, "box": [0.0, 0.0, 0.0, 0.0]},
        }

    def forward(
        self, class_logits: torch.Tensor, box_distances: torch.Tensor, centerness_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, classes, height, width = class_logits.shape
        # (B, C, h, w) -> (B, h*w*C): location-major, so index // C is the location and index % C the class
        scores = torch.sqrt(torch.sigmoid(class_logits) * torch.sigmoid(centerness_logits))
        scores = scores.permute(0, 2, 3, 1).reshape(batch, height * width * classes)
        top_k = min(self.pre_nms_top_k, height * width * classes)
        top_scores, index = _top_candidates(scores, top_k)
        location = torch.div(index, classes, rounding_mode="floor")
        labels = index - location * classes
        distances = box_distances.permute(0, 2, 3, 1).reshape(batch, height * width, 4)
        distances = torch.gather(distances, 1, location.unsqueeze(-1).expand(batch, top_k, 4))
        centers = location_centers(height, width, self.stride, class_logits.device)[location]
        boxes = distances_to_boxes(centers, distances)
        size = torch.tensor([width * self.stride, height * self.stride] * 2, dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0.0), size)
        # Class-wise NMS over the whole batch in one call: each (image, class) pair gets a region of its own.
        group = torch.arange(batch, device=boxes.device).unsqueeze(1) * classes + labels
        offset = group.to(boxes.dtype) * (max(height, width) * self.stride + 1)
        # NMS ranks by the candidates' order (already best first) rather than by their scores: no tie, so every
        # runtime visits the boxes in the same order and keeps the same ones.
        rank = torch.arange(top_k, 0, -1, device=boxes.device, dtype=boxes.dtype).expand(batch, top_k)
        kept = torchvision.ops.nms((boxes + offset.unsqueeze(-1)).reshape(-1, 4), rank.reshape(-1), self.iou_threshold)
        keep = torch.zeros(batch * top_k, dtype=torch.bool, device=boxes.device).index_fill(0, kept, True)
        keep = keep.reshape(batch, top_k) & (top_scores > self.score_threshold)
        return select_detections(boxes, top_scores, labels, keep, self.max_detections)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, stride={self.stride}, max_detections={self.max_detections}, "
            f"score_threshold={self.score_threshold}, iou_threshold={self.iou_threshold}"
        )
