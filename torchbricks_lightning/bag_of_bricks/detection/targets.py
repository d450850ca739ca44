"""Detection targets in one batched form: padded boxes and labels, the three cases they encode, and their checks.

**The form** (what a ``DataLoader`` collates, DDP shards and an exported model never sees):

- ``boxes (B, N, 4)``, float, ``xyxy`` in pixels of the input image (``x1 <= x2``, ``y1 <= y2``, inside the image);
- ``labels (B, N)``, long, class indices in ``[0, num_classes)``.

``N`` is the largest object count of the batch (or a fixed ``max_objects``). Each image is one of three cases:

- **annotated with objects**: its first rows are its objects, the other rows padding;
- **annotated with zero objects**: only padding rows;
- **not annotated for this task**: every box is NaN (the missing-label value for floats). It contributes no
  detection loss and no metric update; the rest of the batch trains as usual.

A padding row has the label ``ignore_index`` (-100) and zero boxes. :func:`pad_detection_targets` builds the form
from one entry per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.labels import IGNORE_INDEX

__all__ = ["annotated_images", "check_detection_targets", "pad_detection_targets"]

Annotation = tuple[torch.Tensor, torch.Tensor] | None
"""One image's annotation: ``(boxes (n, 4), labels (n,))``, or ``None`` for an image not annotated."""


def pad_detection_targets(
    annotations: Sequence[Annotation], max_objects: int | None = None, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad one annotation per image into the batched form: ``boxes (B, N, 4)`` and ``labels (B, N)``.

    Args:
        annotations: per image, ``(boxes (n, 4) xyxy pixels, labels (n,))`` (``n`` may be 0), or ``None`` when the
            image is not annotated for this task (its boxes become NaN).
        max_objects: ``N``, the rows per image (default: the largest ``n``, at least 1), e.g. fixed so that
            samples padded one by one in a ``Dataset`` collate.
        ignore_index: the label of padding rows.

    Returns:
        ``(boxes, labels)``: float32 and long.

    Raises:
        ConfigError: an annotation of the wrong shape, or more objects than ``max_objects``.

    Example:
        >>> boxes, labels = pad_detection_targets(
        ...     [(torch.tensor([[1.0, 2.0, 5.0, 6.0]]), torch.tensor([2])), (torch.zeros(0, 4), torch.zeros(0)), None]
        ... )
        >>> tuple(boxes.shape), labels.tolist()
        ((3, 1, 4), [[2], [-100], [-100]])
        >>> boxes[1].tolist(), boxes[2].isnan().all().item()
        ([[0.0, 0.0, 0.0, 0.0]], True)
    """
    entries = list(annotations)
    counts = []
    for index, entry in enumerate(entries):
        if entry is None:
            counts.append(0)
            continue
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ConfigError(
                f"pad_detection_targets: annotation {index} must be (boxes (n, 4), labels (n,)) or None (not "
                f"annotated), but got {type(entry).__name__}."
            )
        boxes, labels = torch.as_tensor(entry[0]), torch.as_tensor(entry[1])
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.ndim != 1 or len(labels) != len(boxes):
            raise ConfigError(
                f"pad_detection_targets: annotation {index} must hold boxes (n, 4) and labels (n,), but got boxes "
                f"{tuple(boxes.shape)} and labels {tuple(labels.shape)}."
            )
        counts.append(len(boxes))
    rows = max([1, *counts]) if max_objects is None else max_objects
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"pad_detection_targets: expected max_objects to be a positive int, but got {max_objects!r}.")
    if max(counts, default=0) > rows:
        raise ConfigError(
            f"pad_detection_targets: an image has {max(counts)} objects, more than max_objects={rows}. Raise "
            "max_objects (or leave it out to pad to the largest image)."
        )
    padded_boxes = torch.zeros(len(entries), rows, 4)
    padded_labels = torch.full((len(entries), rows), ignore_index, dtype=torch.long)
    for index, (entry, count) in enumerate(zip(entries, counts, strict=True)):
        if entry is None:
            padded_boxes[index] = float("nan")
        elif count:
            padded_boxes[index, :count] = torch.as_tensor(entry[0], dtype=torch.float32)
            padded_labels[index, :count] = torch.as_tensor(entry[1]).long()
    return padded_boxes, padded_labels


def annotated_images(boxes: torch.Tensor) -> torch.Tensor:
    """Which images of a batch are annotated for the task: ``(B,)`` bool, False where every box is NaN.

    Example:
        >>> annotated_images(torch.tensor([[[0.0, 0.0, 2.0, 2.0]], [[float("nan")] * 4]])).tolist()
        [True, False]
    """
    return ~torch.isnan(boxes).flatten(1).all(dim=1)


def check_target_shapes(boxes: torch.Tensor, labels: torch.Tensor, where: str) -> None:
    """Raise unless ``boxes (B, N, 4)`` float and ``labels (B, N)`` integer (shapes only: no device sync)."""
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
        raise ConfigError(
            f"{where}: expected target boxes of shape (B, N, 4), float xyxy pixels, but got a {boxes.ndim}-D "
            f"{boxes.dtype} tensor of shape {tuple(boxes.shape)}. Pad each image's boxes with "
            "pad_detection_targets(...) (one (boxes (n, 4), labels (n,)) or None per image)."
        )
    if labels.ndim != 2 or labels.shape != boxes.shape[:2] or labels.is_floating_point():
        raise ConfigError(
            f"{where}: expected target labels of shape (B, N) = {tuple(boxes.shape[:2])}, long, beside boxes "
            f"{tuple(boxes.shape)}, but got a {labels.ndim}-D {labels.dtype} tensor of shape {tuple(labels.shape)}. "
            "Pad them with pad_detection_targets(...)."
        )


def check_detection_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    image_size: tuple[int, int],
    where: str,
    ignore_index: int = IGNORE_INDEX,
    tolerance: float = 1.0,
) -> None:
    """Raise a clear error for targets that break the form: shapes, labels, boxes not ``xyxy``, boxes outside.

    The values are checked with one device sync. Only the rows of annotated images that are not padding count.

    Args:
        boxes: ``(B, N, 4)``.
        labels: ``(B, N)``.
        num_classes: labels must lie in ``[0, num_classes)`` (or be ``ignore_index``).
        image_size: ``(height, width)`` of the input images in pixels.
        where: the brick, for the message.
        ignore_index: the label of padding rows.
        tolerance: how many pixels a box may reach beyond the image (rounding of annotations).

    Raises:
        ConfigError: what is wrong, where, and the fix.

    Example:
        >>> boxes, labels = pad_detection_targets([(torch.tensor([[5.0, 1.0, 2.0, 4.0]]), torch.tensor([0]))])
        >>> check_detection_targets(boxes, labels, 2, (8, 8), "brick 'det/loss'")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: brick 'det/loss': image 0, row 0 has x2 < x1 or y2 < y1...
    """
    check_target_shapes(boxes, labels, where)
    annotated = annotated_images(boxes)
    objects = (labels != ignore_index) & annotated[:, None]
    height, width = image_size
    values = boxes.detach()
    bad_label = objects & ((labels < 0) | (labels >= num_classes))
    nan_row = objects & torch.isnan(values).any(dim=-1)
    safe = torch.nan_to_num(values)
    not_xyxy = objects & ((safe[..., 2] < safe[..., 0]) | (safe[..., 3] < safe[..., 1]))
    low, high = -tolerance, torch.tensor([width, height, width, height], dtype=values.dtype) + tolerance
    outside = objects & ((safe < low) | (safe > high.to(values.device))).any(dim=-1)
    problems = torch.stack([bad_label.any(), nan_row.any(), not_xyxy.any(), outside.any()])
    if not bool(problems.any()):  # the one sync
        return
    if bool(problems[0]):
        image, row = (int(v) for v in bad_label.nonzero()[0])
        raise ConfigError(
            f"{where}: image {image}, row {row} has label {int(labels[image, row])}, outside [0, {num_classes}). "
            f"Check num_classes (the head has {num_classes}); padding rows must have the label {ignore_index}."
        )
    if bool(problems[1]):
        image, row = (int(v) for v in nan_row.nonzero()[0])
        raise ConfigError(
            f"{where}: image {image}, row {row} has a NaN box but a label; NaN boxes mark an image not annotated for "
            "the task, so every box of that image must be NaN. Drop the object or give its box."
        )
    if bool(problems[2]):
        image, row = (int(v) for v in not_xyxy.nonzero()[0])
        raise ConfigError(
            f"{where}: image {image}, row {row} has x2 < x1 or y2 < y1: {values[image, row].tolist()}. Boxes must be "
            "xyxy pixels (x1, y1, x2, y2); convert xywh or cxcywh boxes with torchvision.ops.box_convert(boxes, "
            "in_fmt='xywh', out_fmt='xyxy')."
        )
    image, row = (int(v) for v in outside.nonzero()[0])
    raise ConfigError(
        f"{where}: image {image}, row {row} has the box {values[image, row].tolist()}, outside the {height}x{width} "
        f"image. Boxes are xyxy in pixels of the input image; normalised boxes must be multiplied by the image size, "
        "and boxes of a resized image resized with it (or clipped with torchvision.ops.clip_boxes_to_image)."
    )
