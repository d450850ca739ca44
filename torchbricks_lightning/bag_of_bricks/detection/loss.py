"""The detection loss: FCOS's assignment of locations to boxes, then focal, GIoU and centerness losses.

**Assignment** (hand-written: ``torchvision.ops`` has none). A location is a positive of a box when its point lies
inside the box and within ``center_sampling_radius * stride`` of the box's centre (FCOS's centre sampling); a
location claimed by several boxes takes the smallest. The others are negatives (background for every class).

**Losses** (from ``torchvision.ops``), summed, then divided by the number of positives of the batch (at least 1),
as torchvision's FCOS does:

- ``sigmoid_focal_loss`` of every location and class of the annotated images (by default FCOS's ``alpha = 0.25``,
  ``gamma = 2``);
- ``generalized_box_iou_loss`` between the decoded box and the box of each positive;
- a binary cross-entropy of the centerness logit against ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``
  at each positive.

Images that are not annotated (NaN boxes) take part in nothing. The loss returns ``(loss, positives)``: the count
is the normaliser, so :class:`~torchbricks_lightning.multitask.BrickLabelledLoss` weighs epoch means by it and, under
DDP, divides by the positives of all processes (DETR and FCOS normalise by the number of boxes the same way). A
batch in which no image is annotated gives exactly 0, connected to the graph, and a count of 0. (An annotated batch
without a single object still has a classification loss, the negatives', over a count of 0; under DDP it scales by
the positives of the other processes, like every counted loss.)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from torchbricks_lightning.bag_of_bricks.detection.decoding import distances_to_boxes
from torchbricks_lightning.bag_of_bricks.detection.network import check_positive_int, location_centers
from torchbricks_lightning.bag_of_bricks.detection.targets import (
    annotated_images,
    check_detection_targets,
    check_target_shapes,
)
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.labels import IGNORE_INDEX

__all__ = ["DetectionLoss", "assign_locations"]


def assign_locations(
    centers: torch.Tensor,
    boxes: torch.Tensor,
    objects: torch.Tensor,
    stride: int,
    center_sampling_radius: float = 1.5,
) -> torch.Tensor:
    """The box each location is a positive of: ``(B, L)`` long, -1 for a negative.

    Args:
        centers: ``(L, 2)`` the locations' image points.
        boxes: ``(B, N, 4)`` target boxes (any value in rows that are not objects).
        objects: ``(B, N)`` bool, the rows that are objects.
        stride: the feature map's stride.
        center_sampling_radius: how near the box's centre a positive must be, in strides.

    Example:
        >>> centers = location_centers(2, 2, 4)  # points (2, 2), (6, 2), (2, 6), (6, 6)
        >>> assign_locations(centers, torch.tensor([[[0.0, 0.0, 8.0, 4.0]]]), torch.tensor([[True]]), 4).tolist()
        [[0, 0, -1, -1]]
    """
    x, y = centers[:, 0].view(1, -1, 1), centers[:, 1].view(1, -1, 1)
    x1, y1, x2, y2 = (boxes[..., index].unsqueeze(1) for index in range(4))  # (B, 1, N)
    inside = (x > x1) & (x < x2) & (y > y1) & (y < y2)
    radius = center_sampling_radius * stride
    near = ((x - (x1 + x2) / 2).abs() < radius) & ((y - (y1 + y2) / 2).abs() < radius)
    match = inside & near & objects.unsqueeze(1)  # (B, L, N)
    area = ((x2 - x1) * (y2 - y1)).nan_to_num(0.0)
    # the smallest matching box: the largest of (big - area) over the matches, 0 where none matches
    claim = torch.where(match, area.amax(dim=(1, 2), keepdim=True) + 1.0 - area, torch.zeros_like(area))
    if claim.shape[-1] == 0:
        return torch.full(claim.shape[:2], -1, dtype=torch.long, device=boxes.device)
    best, index = claim.max(dim=-1)
    return torch.where(best > 0, index, torch.full_like(index, -1))


class DetectionLoss(nn.Module):
    """FCOS's loss on one feature map, with the targets' checks; returns ``(loss, positives)``.

    Args:
        num_classes: the number of classes.
        stride: the feature map's stride in pixels.
        center_sampling_radius: how near the box's centre a positive location must be, in strides.
        focal_alpha: ``alpha`` of the focal loss.
        focal_gamma: ``gamma`` of the focal loss.
        ignore_index: the label of padding rows.
        validate_targets: check every batch's target values (labels in range, ``xyxy`` boxes inside the image);
            costs one device sync per step. The shapes are always checked (free).
        where: the brick, for error messages.

    Example:
        >>> from torchbricks_lightning.bag_of_bricks.detection import pad_detection_targets
        >>> loss = DetectionLoss(num_classes=2, stride=4)
        >>> boxes, labels = pad_detection_targets([(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([1])), None])
        >>> value, positives = loss(torch.zeros(2, 2, 2, 2), torch.full((2, 4, 2, 2), 4.0), torch.zeros(2, 1, 2, 2),
        ...                         boxes, labels)
        >>> round(float(value), 4), float(positives)
        (1.5551, 4.0)
    """

    def __init__(
        self,
        num_classes: int,
        stride: int,
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        ignore_index: int = IGNORE_INDEX,
        validate_targets: bool = True,
        where: str = "DetectionLoss",
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes", where)
        self.stride = check_positive_int(stride, "stride", where)
        if not center_sampling_radius > 0:
            raise ConfigError(f"{where}: expected center_sampling_radius > 0, but got {center_sampling_radius!r}.")
        self.center_sampling_radius = float(center_sampling_radius)
        if not (isinstance(focal_alpha, (int, float)) and focal_alpha <= 1.0 and math.isfinite(focal_alpha)):
            raise ConfigError(
                f"{where}: expected focal_alpha <= 1 (a negative value turns the class weighting off), but got "
                f"{focal_alpha!r}."
            )
        if not (isinstance(focal_gamma, (int, float)) and 0.0 <= focal_gamma < math.inf):
            raise ConfigError(
                f"{where}: expected focal_gamma >= 0 (0 with focal_alpha=-1 is plain binary cross-entropy), but got "
                f"{focal_gamma!r}."
            )
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.ignore_index = ignore_index
        self.validate_targets = bool(validate_targets)
        self.where = where

    def forward(
        self,
        class_logits: torch.Tensor,
        box_distances: torch.Tensor,
        centerness_logits: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, classes, height, width = class_logits.shape
        check_target_shapes(boxes, labels, self.where)
        if boxes.shape[0] != batch:
            raise ConfigError(
                f"{self.where}: the target boxes hold {boxes.shape[0]} images, but the feature map {batch}. Give one "
                "row of targets per image."
            )
        if self.validate_targets:
            size = (height * self.stride, width * self.stride)
            check_detection_targets(boxes, labels, self.num_classes, size, self.where, self.ignore_index)
        annotated = annotated_images(boxes)  # (B,)
        objects = (labels != self.ignore_index) & annotated.unsqueeze(1)
        boxes = torch.where(objects.unsqueeze(-1), boxes, torch.zeros_like(boxes)).to(box_distances.dtype)
        centers = location_centers(height, width, self.stride, class_logits.device)
        matched = assign_locations(centers, boxes, objects, self.stride, self.center_sampling_radius)  # (B, L)
        positive = matched >= 0
        count = positive.sum().to(torch.float32)
        normaliser = count.clamp(min=1.0)

        logits = class_logits.permute(0, 2, 3, 1).reshape(batch, height * width, classes)
        safe_match = matched.clamp(min=0)
        matched_labels = torch.gather(labels.clamp(min=0), 1, safe_match)
        one_hot = F.one_hot(matched_labels, classes).to(logits.dtype) * positive.unsqueeze(-1)
        focal = sigmoid_focal_loss(logits, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none")
        focal = (focal * annotated.view(batch, 1, 1).to(focal.dtype)).sum()

        distances = box_distances.permute(0, 2, 3, 1).reshape(batch, height * width, 4)
        predicted = distances_to_boxes(centers.unsqueeze(0), distances)  # (B, L, 4)
        target_boxes = torch.gather(boxes, 1, safe_match.unsqueeze(-1).expand(batch, height * width, 4))
        weight = positive.to(predicted.dtype)
        # Negatives compare a box with itself (loss 0, finite) so no tensor is indexed by a data-dependent mask.
        reference = torch.where(positive.unsqueeze(-1), target_boxes, predicted.detach())
        giou = (generalized_box_iou_loss(predicted, reference, reduction="none") * weight).sum()

        target_distances = torch.cat([centers - target_boxes[..., :2], target_boxes[..., 2:] - centers], dim=-1)
        target_distances = torch.where(positive.unsqueeze(-1), target_distances, torch.ones_like(target_distances))
        left_right, top_bottom = target_distances[..., 0::2], target_distances[..., 1::2]
        centerness = torch.sqrt(
            (left_right.amin(-1) / left_right.amax(-1)) * (top_bottom.amin(-1) / top_bottom.amax(-1))
        ).clamp(0.0, 1.0)
        centerness_loss = F.binary_cross_entropy_with_logits(
            centerness_logits.reshape(batch, height * width), centerness, reduction="none"
        )
        centerness_loss = (centerness_loss * weight).sum()
        return (focal + giou + centerness_loss) / normaliser, count

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, stride={self.stride}"
