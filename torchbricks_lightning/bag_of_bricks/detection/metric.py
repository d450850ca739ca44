"""COCO mean average precision of a detection head: torchmetrics' ``MeanAveragePrecision``, fed the batched form.

The numbers are the reference COCO ones: ``compute`` hands every image to torchmetrics' ``MeanAveragePrecision``
with its default backend, ``pycocotools`` (the official COCO evaluation code, pinned in the project's constraints),
and reports its ``map`` (IoU 0.50:0.95), ``map_50`` and ``map_75``. ``faster_coco_eval`` is about 5x faster at the
COCOeval step, but pycocotools is the implementation every published COCO figure comes from and it is what
torchmetrics uses unless told otherwise.

Why not ``MeanAveragePrecision`` itself as the metric: its states are lists with one tensor per image and no
reduction, and torchmetrics gathers them tensor by tensor under DDP, so two processes that hold different numbers of
images (which leaving out images without annotations makes common) would wait on each other forever. Here the
states are flat tensors concatenated over the batches (``dist_reduce_fx="cat"``, gathered once each whatever their
lengths), with an image id per row that is unique across processes; ``compute`` splits them back into images.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision

from torchbricks_lightning.bag_of_bricks.detection.targets import annotated_images
from torchbricks_lightning.core.distributed import global_rank
from torchbricks_lightning.multitask.labels import IGNORE_INDEX

__all__ = ["DetectionMeanAP"]

_VALUES = ("map", "map_50", "map_75")
_IMAGES_PER_PROCESS = 1 << 40  # image ids: rank * this + the image's index on that rank


class DetectionMeanAP(Metric):
    """COCO mAP (``map``, ``map_50``, ``map_75``) over the annotated images, from fixed-shape detections.

    ``update(boxes, scores, labels, count, target_boxes, target_labels)`` takes the decoder's outputs (``(B, K,
    4)``, ``(B, K)``, ``(B, K)``, ``(B,)``) and the batched targets (``(B, N, 4)`` xyxy pixels, ``(B, N)``, padding
    rows labelled ``ignore_index``). Images whose boxes are all NaN (not annotated) are left out: they change no
    value. An annotated image without objects counts: its detections are false positives.

    ``compute()`` returns ``{"map", "map_50", "map_75"}`` (a metric brick reports them beside itself, e.g.
    ``det/map``); before any annotated image was seen (on every process) they are NaN, the missing value.

    COCO counts at most 100 detections per image (its ``maxDets`` are ``[1, 10, 100]``, and pycocotools' ``map``
    needs 100 among them), so with ``K > 100`` only the 100 best of each image count.

    Args:
        ignore_index: the label of padding rows.
        **kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> metric = DetectionMeanAP()
        >>> target = torch.tensor([[[2.0, 2.0, 10.0, 10.0]], [[float("nan")] * 4]]), torch.tensor([[1], [-100]])
        >>> metric.update(torch.tensor([[[2.0, 2.0, 10.0, 10.0]], [[0.0, 0.0, 5.0, 5.0]]]),
        ...               torch.tensor([[0.9], [0.8]]), torch.tensor([[1], [1]]), torch.tensor([1, 1]), *target)
        >>> {name: round(float(value), 3) for name, value in metric.compute().items()}
        {'map': 1.0, 'map_50': 1.0, 'map_75': 1.0}
        >>> unannotated = DetectionMeanAP()
        >>> unannotated.update(torch.ones(1, 1, 4), torch.ones(1, 1), torch.ones(1, 1, dtype=torch.long),
        ...                    torch.tensor([1]), torch.full((1, 1, 4), float("nan")), torch.tensor([[-100]]))
        >>> unannotated.compute()
        {'map': tensor(nan), 'map_50': tensor(nan), 'map_75': tensor(nan)}
    """

    is_differentiable: bool = False
    higher_is_better: bool = True
    full_state_update: bool = False
    value_names: tuple[str, ...] = _VALUES
    image_ids: torch.Tensor
    detection_boxes: torch.Tensor
    detection_scores: torch.Tensor
    detection_labels: torch.Tensor
    detection_images: torch.Tensor
    target_boxes: torch.Tensor
    target_labels: torch.Tensor
    target_images: torch.Tensor
    seen: torch.Tensor

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        for name, shape, dtype in (
            ("image_ids", (0,), torch.long),
            ("detection_boxes", (0, 4), torch.float32),
            ("detection_scores", (0,), torch.float32),
            ("detection_labels", (0,), torch.long),
            ("detection_images", (0,), torch.long),
            ("target_boxes", (0, 4), torch.float32),
            ("target_labels", (0,), torch.long),
            ("target_images", (0,), torch.long),
        ):
            self.add_state(name, torch.zeros(shape, dtype=dtype), dist_reduce_fx="cat")
        self.add_state("seen", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")  # images on this process

    def update(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        count: torch.Tensor,
        target_boxes: torch.Tensor,
        target_labels: torch.Tensor,
    ) -> None:
        """Add a batch: the decoder's fixed-shape detections and the batched targets."""
        batch, rows = scores.shape
        annotated = annotated_images(target_boxes)
        # ids unique across processes, so that the images gathered from every process stay apart in compute
        image_id = torch.arange(batch, device=scores.device) + self.seen + global_rank() * _IMAGES_PER_PROCESS
        self.seen += batch
        ids = image_id[annotated]
        detected = (torch.arange(rows, device=scores.device).unsqueeze(0) < count.unsqueeze(1)) & annotated[:, None]
        objects = (target_labels != self.ignore_index) & annotated[:, None]
        self.image_ids = torch.cat([self.image_ids, ids])
        self.detection_boxes = torch.cat([self.detection_boxes, boxes.detach()[detected].float()])
        self.detection_scores = torch.cat([self.detection_scores, scores.detach()[detected].float()])
        self.detection_labels = torch.cat([self.detection_labels, labels[detected].long()])
        self.detection_images = torch.cat([self.detection_images, image_id.unsqueeze(1).expand_as(detected)[detected]])
        self.target_boxes = torch.cat([self.target_boxes, target_boxes[objects].float()])
        self.target_labels = torch.cat([self.target_labels, target_labels[objects].long()])
        self.target_images = torch.cat([self.target_images, image_id.unsqueeze(1).expand_as(objects)[objects]])

    def compute(self) -> dict[str, torch.Tensor]:
        """``map``, ``map_50`` and ``map_75`` by pycocotools over every annotated image (NaN before any)."""
        if not self.image_ids.numel():
            return {name: torch.tensor(float("nan")) for name in _VALUES}
        ids = self.image_ids.sort().values
        detections = _per_image(ids, self.detection_images, self.detection_boxes, self.detection_labels)
        targets = _per_image(ids, self.target_images, self.target_boxes, self.target_labels)
        scores = _split(ids, self.detection_images, self.detection_scores)
        coco = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        coco.warn_on_many_detections = False
        coco.update(
            [{"boxes": b, "scores": s, "labels": label} for (b, label), s in zip(detections, scores, strict=True)],
            [{"boxes": b, "labels": label} for b, label in targets],
        )
        result = coco.compute()
        return {name: result[name].float() for name in _VALUES}


def _split(ids: torch.Tensor, images: torch.Tensor, values: torch.Tensor) -> list[torch.Tensor]:
    """``values`` split by image, in the order of ``ids`` (sorted), rows of each image in their order."""
    order = torch.argsort(images, stable=True)
    counts = torch.searchsorted(images[order], ids, right=True) - torch.searchsorted(images[order], ids)
    return list(torch.split(values[order].cpu(), counts.cpu().tolist()))


def _per_image(
    ids: torch.Tensor, images: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(_split(ids, images, boxes), _split(ids, images, labels), strict=True))
