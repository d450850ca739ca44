"""Classification: each image enlarged, captioned with the predicted and the true class."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchbricks_lightning.bag_of_bricks.visualizers.canvas import Canvas, Picture, text_size, wrap
from torchbricks_lightning.bag_of_bricks.visualizers.drawing import (
    CAPTION_SIZE,
    MIN_SIZE,
    as_rgb_uint8,
    check_min_size,
    class_name,
    enlarge,
    enlargement,
    paste,
    stack_pictures,
)
from torchbricks_lightning.core.visualization import Visualizer

__all__ = ["ClassificationVisualizer"]

RIGHT = (0, 130, 0)
WRONG = (200, 0, 0)
UNLABELLED = (90, 90, 90)
_PAD = 6


class ClassificationVisualizer(Visualizer):
    """Each image, enlarged, over the caption ``predicted: NAME (p)`` / ``true: NAME``.

    The caption is green when the prediction is right, red (and the image framed in red) when it is wrong, grey when
    the sample has no label (a negative target, such as ``ignore_index`` -100: ``true: not labelled``).

    Arguments of the call (name them in the brick's ``input_names`` dict):
        images: ``(N, C, H, W)`` images, C = 1 or 3 (``uint8``, floats in ``[0, 1]``, or normalised floats, which
            are stretched per image).
        predictions: ``(N,)`` class indices, or ``(N, K)`` scores (the top class is taken; its probability is shown
            when the rows are probabilities).
        targets: ``(N,)`` true classes, optional.

    Args:
        class_names: the names of the classes, shown instead of their indices.
        min_size: the shorter side, in pixels, each image is enlarged to (by a whole factor).
        font_size: the caption's font size in pixels.

    Example:
        >>> import torch
        >>> visualizer = ClassificationVisualizer(class_names=["cat", "dog"])
        >>> visualizer.captions(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, -100]))
        [('predicted: cat (0.90)', 'true: cat'), ('predicted: dog (0.80)', 'true: not labelled')]
        >>> tuple(visualizer(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 0])).shape)
        (2, 3, 252, 204)
    """

    def __init__(
        self, class_names: Sequence[str] | None = None, min_size: int = MIN_SIZE, font_size: int = CAPTION_SIZE
    ) -> None:
        super().__init__()
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.min_size = check_min_size(min_size, type(self).__name__)
        self.font_size = font_size

    def captions(self, predictions: torch.Tensor, targets: torch.Tensor | None = None) -> list[tuple[str, str]]:
        """The two caption lines of each sample: ``predicted: ...`` and ``true: ...``."""
        classes, confidences = self._predicted(predictions)
        lines = []
        for index, predicted in enumerate(classes):
            confidence = f" ({confidences[index]:.2f})" if confidences is not None else ""
            first = f"predicted: {class_name(predicted, self.class_names)}{confidence}"
            if targets is None:
                second = "true: not given"
            elif int(targets[index]) < 0:
                second = "true: not labelled"
            else:
                second = f"true: {class_name(int(targets[index]), self.class_names)}"
            lines.append((first, second))
        return lines

    @staticmethod
    def _predicted(predictions: torch.Tensor) -> tuple[list[int], list[float] | None]:
        predictions = predictions.detach().cpu()
        if predictions.ndim == 1:
            return [int(each) for each in predictions], None
        scores = predictions.float()
        top, classes = scores.max(dim=1)
        rows = scores.sum(dim=1)
        probabilities = bool(((scores >= 0) & (scores <= 1)).all()) and bool(
            torch.allclose(rows, torch.ones_like(rows))
        )
        return [int(each) for each in classes], ([float(each) for each in top] if probabilities else None)

    def draw(
        self, images: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor | None = None
    ) -> list[Picture]:
        """One :class:`~torchbricks_lightning.pictures.Picture` per sample (the image, the captions as labels)."""
        rgb = as_rgb_uint8(images)
        factor = enlargement((rgb.shape[2], rgb.shape[3]), self.min_size)
        classes, _ = self._predicted(predictions)
        width, height = rgb.shape[3] * factor, rgb.shape[2] * factor
        line = text_size("Hg", self.font_size)[1]
        pictures = []
        for index, (first, second) in enumerate(self.captions(predictions, targets)):
            wrapped = wrap(first, width, self.font_size) + wrap(second, width, self.font_size)
            column = max([width, *(text_size(text, self.font_size)[0] for text in wrapped)]) + 2 * _PAD
            canvas = Canvas(column, height + 2 * _PAD + len(wrapped) * line + _PAD)
            left = (column - width) // 2
            paste(canvas, enlarge(rgb[index], factor), (left, _PAD))
            labelled = targets is not None and int(targets[index]) >= 0
            right = labelled and targets is not None and classes[index] == int(targets[index])
            color = UNLABELLED if not labelled else RIGHT if right else WRONG
            if labelled and not right:
                canvas.shape(
                    "rectangle", [left - 3, _PAD - 3, left + width + 2, _PAD + height + 2], outline=WRONG, width=3
                )
            for number, text in enumerate(wrapped):
                y = _PAD + height + _PAD + number * line
                canvas.text((column // 2, y), text, fill=color, size=self.font_size, anchor="ma")
            pictures.append(canvas.picture())
        return pictures

    def forward(
        self, images: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        return stack_pictures(self.draw(images, predictions, targets))
