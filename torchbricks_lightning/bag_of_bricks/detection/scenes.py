"""Synthetic detection scenes: bright coloured rectangles on noise, with their boxes, for tests and benchmarks.

Each image has up to ``max_objects`` rectangles, one per cell of a 2x2 grid (so they never overlap), each filled
with the colour of its class (class ``c`` lights channel ``c % 3``, darker for ``c >= 3``), on uniform noise. The
targets are in the batched form of :mod:`~torchbricks_lightning.bag_of_bricks.detection.targets`.
"""

from __future__ import annotations

import torch

from torchbricks_lightning.bag_of_bricks.detection.targets import Annotation, pad_detection_targets
from torchbricks_lightning.errors import ConfigError

__all__ = ["box_scenes"]


def box_scenes(
    count: int,
    size: int = 32,
    num_classes: int = 3,
    max_objects: int = 3,
    not_annotated: float = 0.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``count`` images ``(count, 3, size, size)`` with their padded ``boxes`` and ``labels``.

    Args:
        count: the number of images.
        size: their side in pixels (>= 16).
        num_classes: the object classes (at most 6).
        max_objects: at most this many objects per image (1 to 4); each image has 0 to ``max_objects``.
        not_annotated: the share of images marked not annotated (NaN boxes; their pixels still show objects).
        seed: the generator's seed: the same arguments give the same scenes.

    Returns:
        ``{"image", "boxes", "labels"}``: float images in ``[0, 1]``, boxes ``(count, max_objects, 4)`` xyxy pixels,
        labels ``(count, max_objects)`` (padding rows -100).

    Example:
        >>> scenes = box_scenes(4, size=32, seed=1)
        >>> tuple(scenes["image"].shape), tuple(scenes["boxes"].shape), tuple(scenes["labels"].shape)
        ((4, 3, 32, 32), (4, 3, 4), (4, 3))
    """
    if size < 16 or not 1 <= num_classes <= 6 or not 1 <= max_objects <= 4 or not 0.0 <= not_annotated <= 1.0:
        raise ConfigError(
            "box_scenes: expected size >= 16, 1 <= num_classes <= 6, 1 <= max_objects <= 4 and not_annotated in "
            f"[0, 1], but got {size}, {num_classes}, {max_objects} and {not_annotated}."
        )
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.3
    cell = size // 2
    annotations: list[Annotation] = []
    for index in range(count):
        objects = int(torch.randint(0, max_objects + 1, (), generator=generator))
        cells = torch.randperm(4, generator=generator)[:objects].tolist()
        boxes, labels = [], []
        for where in cells:
            width, height = (int(v) for v in torch.randint(cell // 2, cell - 1, (2,), generator=generator))
            x1 = (where % 2) * cell + int(torch.randint(0, cell - width + 1, (), generator=generator))
            y1 = (where // 2) * cell + int(torch.randint(0, cell - height + 1, (), generator=generator))
            label = int(torch.randint(0, num_classes, (), generator=generator))
            images[index, :, y1 : y1 + height, x1 : x1 + width] = 0.1
            images[index, label % 3, y1 : y1 + height, x1 : x1 + width] = 1.0 if label < 3 else 0.6
            boxes.append([x1, y1, x1 + width, y1 + height])
            labels.append(label)
        annotations.append(
            (torch.tensor(boxes, dtype=torch.float32).view(-1, 4), torch.tensor(labels, dtype=torch.long))
        )
    missing = torch.rand(count, generator=generator) < not_annotated
    annotations = [None if drop else entry for entry, drop in zip(annotations, missing.tolist(), strict=True)]
    padded_boxes, padded_labels = pad_detection_targets(annotations, max_objects=max_objects)
    return {"image": images, "boxes": padded_boxes, "labels": padded_labels}
