"""COCO mean average precision of a detection head: torchmetrics' ``MeanAveragePrecision``, fed the batched form.

The numbers are the reference COCO ones: ``compute`` hands every image to torchmetrics' ``MeanAveragePrecision``
with its default backend, ``pycocotools`` (the official COCO evaluation code, pinned in the project's constraints),
and reports its ``map`` (IoU 0.50:0.95), ``map_50`` and ``map_75``. ``faster_coco_eval`` is about 5x faster at the
COCOeval step, but pycocotools is the implementation every published COCO figure comes from and it is what
torchmetrics uses unless told otherwise.

Why not ``MeanAveragePrecision`` itself as the metric: its states are lists with one tensor per image and no
reduction, and torchmetrics gathers them tensor by tensor under DDP, so two processes that hold different numbers of
images (which leaving out images without annotations makes common) would wait on each other forever. Here each
state is a list of flat float rows (``dist_reduce_fx="cat"``: concatenated, then gathered once whatever its length
on each process), and each row names its image by ``(rank, index on that rank)``, unique across processes;
``compute`` splits the rows back into images. Every value is float32 (labels and indices are exact below
``2**24``), so even a process that saw no batch gathers a tensor of the same kind as the others.
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
_IMAGES_PER_PROCESS = float(1 << 24)  # an image's key: rank * this + its index on that rank (exact in float64)


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
    images: list[torch.Tensor]
    detections: list[torch.Tensor]
    targets: list[torch.Tensor]
    seen: torch.Tensor

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        # rows: images (rank, index); detections (rank, index, x1, y1, x2, y2, score, label); targets (rank, index,
        # x1, y1, x2, y2, label); flattened
        for name in ("images", "detections", "targets"):
            self.add_state(name, [], dist_reduce_fx="cat")
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
        device = scores.device
        annotated = annotated_images(target_boxes)
        image = torch.stack(
            [
                torch.full((batch,), float(global_rank()), device=device),
                (torch.arange(batch, device=device) + self.seen).float(),
            ],
            dim=1,
        )
        self.seen += batch
        detected = (torch.arange(rows, device=device).unsqueeze(0) < count.unsqueeze(1)) & annotated[:, None]
        objects = (target_labels != self.ignore_index) & annotated[:, None]
        detection_rows = torch.cat(
            [
                image.unsqueeze(1).expand(batch, rows, 2),
                boxes.detach().float(),
                scores.detach().float().unsqueeze(-1),
                labels.float().unsqueeze(-1),
            ],
            dim=-1,
        )
        target_rows = torch.cat(
            [
                image.unsqueeze(1).expand(batch, target_labels.shape[1], 2),
                target_boxes.float(),
                target_labels.float().unsqueeze(-1),
            ],
            dim=-1,
        )
        self.images.append(image[annotated].flatten())
        self.detections.append(detection_rows[detected].flatten())
        self.targets.append(target_rows[objects].flatten())

    def compute(self) -> dict[str, torch.Tensor]:
        """``map``, ``map_50`` and ``map_75`` by pycocotools over every annotated image (NaN before any)."""
        images, detections, targets = (
            _rows(state, width) for state, width in ((self.images, 2), (self.detections, 8), (self.targets, 7))
        )
        if not len(images):
            return {name: torch.tensor(float("nan")) for name in _VALUES}
        keys = images[:, 0].double() * _IMAGES_PER_PROCESS + images[:, 1].double()
        order = torch.argsort(keys)
        keys = keys[order]
        per_detection = _split(keys, detections)
        per_target = _split(keys, targets)
        coco = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        coco.warn_on_many_detections = False
        coco.update(
            [{"boxes": d[:, 2:6], "scores": d[:, 6], "labels": d[:, 7].long()} for d in per_detection],
            [{"boxes": t[:, 2:6], "labels": t[:, 6].long()} for t in per_target],
        )
        result = coco.compute()
        return {name: result[name].float() for name in _VALUES}


def _rows(state: list[torch.Tensor] | torch.Tensor, width: int) -> torch.Tensor:
    """A state (a list of flat tensors, or one after a sync) as rows of ``width`` values, on the CPU."""
    flat = torch.cat([t.flatten() for t in state]) if isinstance(state, list) and state else state
    if isinstance(flat, list):  # an empty list
        return torch.zeros(0, width)
    return flat.reshape(-1, width).cpu()


def _split(keys: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
    """``rows`` grouped by image, in the order of ``keys`` (sorted image keys), rows of each image in their order."""
    row_keys = rows[:, 0].double() * _IMAGES_PER_PROCESS + rows[:, 1].double()
    order = torch.argsort(row_keys, stable=True)
    row_keys = row_keys[order]
    counts = torch.searchsorted(row_keys, keys, right=True) - torch.searchsorted(row_keys, keys)
    return list(torch.split(rows[order], counts.tolist()))
