"""Detection: predicted boxes with class names and scores beside the true boxes with class names."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.utils import draw_bounding_boxes

from torchbricks_lightning.bag_of_bricks.visualizers.canvas import Canvas, Picture, text_size
from torchbricks_lightning.bag_of_bricks.visualizers.drawing import (
    MIN_SIZE,
    as_rgb_uint8,
    check_min_size,
    class_colors,
    class_name,
    enlarge,
    enlargement,
    paste,
    stack_pictures,
)
from torchbricks_lightning.core.visualization import Visualizer

__all__ = ["DetectionVisualizer"]

_PAD = 6
_FONT_SIZE = 14


class DetectionVisualizer(Visualizer):
    """The image twice, side by side: the predicted boxes labelled ``name score`` (``predicted``) and the true boxes
    labelled ``name`` (``true``), each class in its own colour; the titles give the number of boxes drawn.

    Reads the detection head's outputs and targets as they are named there (``det/boxes``, ``det/scores``,
    ``det/labels``, ``det/count``; targets boxes ``(B, N, 4)`` and labels ``(B, N)``). A prediction is drawn if it is
    among the image's ``count`` valid rows and scores at least ``score_threshold``; a padding row (label -1, score 0)
    never is. A true row with a negative label (``ignore_index`` -100) is padding; an image whose target boxes are
    NaN is not annotated for detection: nothing true is drawn, and its title says ``true: not annotated``.

    Arguments of the call (name them in the brick's ``input_names`` dict):
        images: ``(B, C, H, W)`` images, C = 1 or 3.
        boxes: ``(B, K, 4)`` predicted boxes, ``xyxy`` in pixels of ``images``.
        scores: ``(B, K)``; labels: ``(B, K)``; count: ``(B,)`` valid detections per image.
        target_boxes: ``(B, N, 4)`` true boxes, ``xyxy`` in pixels (optional); target_labels: ``(B, N)``.

    Args:
        class_names: the names of the classes, shown instead of their indices.
        score_threshold: the lowest score drawn.
        colormap: a matplotlib colormap for the class colours.
        num_classes: how many colours to take from the colormap (classes beyond it reuse them).
        min_size: the shorter side, in pixels, each image is enlarged to.
        font_size: the labels' font size.

    Example:
        >>> import torch
        >>> visualizer = DetectionVisualizer(class_names=["cat", "dog"])
        >>> boxes = torch.tensor([[[1.0, 1.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]]])
        >>> visualizer.box_labels(boxes, torch.tensor([[0.87, 0.0]]), torch.tensor([[1, -1]]), torch.tensor([1]))
        [['dog 0.87']]
        >>> visualizer.true_labels(torch.full((1, 1, 4), float("nan")), torch.tensor([[-100]]))
        [None]
    """

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        score_threshold: float = 0.3,
        colormap: str = "tab10",
        num_classes: int = 10,
        min_size: int = MIN_SIZE,
        font_size: int = _FONT_SIZE,
    ) -> None:
        super().__init__()
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.score_threshold = float(score_threshold)
        self.colors = class_colors(max(num_classes, len(self.class_names or ())), colormap)
        self.min_size = check_min_size(min_size, type(self).__name__)
        self.font_size = font_size

    def _kept(self, scores: torch.Tensor, labels: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(scores.shape[1]).unsqueeze(0)
        return (rows < count.reshape(-1, 1)) & (labels >= 0) & (scores >= self.score_threshold)

    def box_labels(
        self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, count: torch.Tensor
    ) -> list[list[str]]:
        """The label of each predicted box drawn, per image: ``name score``."""
        scores, labels = scores.detach().cpu(), labels.detach().cpu()
        kept = self._kept(scores, labels, count.detach().cpu())
        return [
            [
                f"{class_name(int(label), self.class_names)} {float(score):.2f}"
                for score, label in zip(image_scores[keep], image_labels[keep], strict=True)
            ]
            for image_scores, image_labels, keep in zip(scores, labels, kept, strict=True)
        ]

    def true_labels(self, target_boxes: torch.Tensor, target_labels: torch.Tensor) -> list[list[str] | None]:
        """The label of each true box, per image, or None for an image not annotated (NaN boxes)."""
        out: list[list[str] | None] = []
        for boxes, labels in zip(target_boxes.detach().cpu(), target_labels.detach().cpu(), strict=True):
            if bool(torch.isnan(boxes).any()):
                out.append(None)
            else:
                out.append([class_name(int(label), self.class_names) for label in labels[labels >= 0]])
        return out

    def _panel(
        self,
        canvas: Canvas,
        image: torch.Tensor,
        boxes: torch.Tensor,
        labels: list[int],
        texts: list[str],
        xy: tuple[int, int],
    ) -> None:
        """Draw ``boxes`` (already enlarged, best first) on ``image`` at ``xy`` of ``canvas``, each labelled above its
        corner; the best box is drawn last (on top), and a label that would cover an earlier one moves down a line."""
        colors = [self.colors[label % len(self.colors)] for label in labels]
        if len(boxes):
            backwards = torch.arange(len(boxes) - 1, -1, -1)
            image = draw_bounding_boxes(image, boxes[backwards], colors="black", width=5)  # dark edge: seen anywhere
            image = draw_bounding_boxes(image, boxes[backwards], colors=colors[::-1], width=3)
        paste(canvas, image, xy)
        height = text_size("Hg", self.font_size)[1]
        placed: list[tuple[int, int, int, int]] = []
        for box, text, color in zip(boxes.tolist(), texts, colors, strict=True):
            width = text_size(text, self.font_size)[0]
            left = xy[0] + min(max(int(box[0]), 0), max(image.shape[2] - width - 2, 0))
            top = xy[1] + int(box[1]) - height  # above the box, or inside it when that leaves the image
            if top < xy[1]:
                top = xy[1] + int(box[1]) + 2
            while any(
                left < x2 and x1 < left + width + 4 and top < y2 and y1 < top + height for x1, y1, x2, y2 in placed
            ):
                top += height  # below the label it would hide
            placed.append((left, top, left + width + 4, top + height))
            ink = "black" if sum(color) > 380 else "white"
            canvas.text((left + 2, top + 1), text, fill=ink, size=self.font_size, background=color)

    def draw(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        count: torch.Tensor,
        target_boxes: torch.Tensor | None = None,
        target_labels: torch.Tensor | None = None,
    ) -> list[Picture]:
        """One :class:`~torchbricks_lightning.pictures.Picture` per image (titles and box labels as its labels)."""
        rgb = as_rgb_uint8(images)
        factor = enlargement((rgb.shape[2], rgb.shape[3]), self.min_size)
        width, height = rgb.shape[3] * factor, rgb.shape[2] * factor
        boxes, scores, labels = boxes.detach().cpu().float(), scores.detach().cpu(), labels.detach().cpu()
        kept = self._kept(scores, labels, count.detach().cpu())
        predicted = self.box_labels(boxes, scores, labels, count)
        truth = None if target_boxes is None or target_labels is None else self.true_labels(target_boxes, target_labels)
        line = text_size("Hg", self.font_size)[1]
        panels = 1 if truth is None else 2
        pictures = []
        for index in range(len(rgb)):
            canvas = Canvas(panels * width + (panels + 1) * _PAD, _PAD + line + 4 + height + _PAD)
            image = enlarge(rgb[index], factor)
            top = _PAD + line + 4
            title = f"predicted: {len(predicted[index])} (score >= {self.score_threshold:.2f})"
            canvas.text((_PAD + width // 2, _PAD), title, size=self.font_size, anchor="ma")
            shown = boxes[index][kept[index]] * factor
            self._panel(canvas, image, shown, labels[index][kept[index]].tolist(), predicted[index], (_PAD, top))
            if truth is not None and target_boxes is not None and target_labels is not None:
                left = 2 * _PAD + width
                texts = truth[index]
                caption = f"true: {len(texts)}" if texts is not None else "true: not annotated"
                canvas.text((left + width // 2, _PAD), caption, size=self.font_size, anchor="ma")
                classes = target_labels[index].detach().cpu()
                valid = (classes >= 0) if texts is not None else torch.zeros_like(classes, dtype=torch.bool)
                true_boxes = target_boxes[index].detach().cpu().float()[valid] * factor
                self._panel(canvas, image, true_boxes, classes[valid].tolist(), texts or [], (left, top))
            pictures.append(canvas.picture())
        return pictures

    def forward(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        count: torch.Tensor,
        target_boxes: torch.Tensor | None = None,
        target_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return stack_pictures(self.draw(images, boxes, scores, labels, count, target_boxes, target_labels))
