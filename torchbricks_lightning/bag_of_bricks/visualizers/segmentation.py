"""Segmentation: the predicted and the true masks blended over the image, side by side, with a colour legend."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.utils import draw_segmentation_masks

from torchbricks_lightning.bag_of_bricks.visualizers.canvas import Canvas, Picture, text_size
from torchbricks_lightning.bag_of_bricks.visualizers.drawing import (
    CAPTION_SIZE,
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
from torchbricks_lightning.errors import ConfigError

__all__ = ["SegmentationVisualizer"]

_PAD = 6
_SWATCH = 14


class SegmentationVisualizer(Visualizer):
    """The image twice, side by side: the predicted mask blended over it (``predicted``) and the true one (``true``),
    with a legend of the class colours underneath.

    Pixels whose target is negative (``ignore_index`` -100) are not coloured in the true mask; an image with no
    labelled pixel is titled ``true: not annotated``. A ``background_index`` class is never coloured.

    Arguments of the call (name them in the brick's ``input_names`` dict):
        images: ``(N, C, H, W)`` images, C = 1 or 3.
        predictions: ``(N, H, W)`` class indices, or ``(N, K, H, W)`` scores (the top class is taken).
        targets: ``(N, H, W)`` true classes, optional.

    Args:
        num_classes: the number of classes.
        class_names: their names, for the legend.
        colormap: a matplotlib colormap for the class colours (a qualitative one: ``tab10``, ``tab20``).
        alpha: how opaque the masks are, from 0 (invisible) to 1.
        background_index: a class left uncoloured (e.g. 0 for the background), or None.
        min_size: the shorter side, in pixels, each image is enlarged to.
        font_size: the font size of the titles and the legend.

    Example:
        >>> import torch
        >>> visualizer = SegmentationVisualizer(num_classes=3, class_names=["sky", "road", "car"], background_index=0)
        >>> visualizer.legend()
        ['sky (not coloured)', 'road', 'car']
        >>> masks = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> picture = visualizer.draw(torch.rand(1, 3, 8, 8), masks, torch.full((1, 8, 8), -100))[0]
        >>> picture.texts()[:2]
        ['predicted', 'true: not annotated']
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        colormap: str = "tab10",
        alpha: float = 0.5,
        background_index: int | None = None,
        min_size: int = MIN_SIZE,
        font_size: int = CAPTION_SIZE,
    ) -> None:
        super().__init__()
        where = type(self).__name__
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ConfigError(f"Expected num_classes of {where} to be a whole number >= 1, but got {num_classes!r}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"{where} got {len(class_names)} class_names for {num_classes} classes. Give one name per class."
            )
        self.num_classes = num_classes
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.colors = class_colors(num_classes, colormap)
        self.alpha = float(alpha)
        self.background_index = background_index
        self.min_size = check_min_size(min_size, where)
        self.font_size = font_size

    def legend(self) -> list[str]:
        """The legend's entries, one per class, in class order."""
        return [
            class_name(index, self.class_names) + (" (not coloured)" if index == self.background_index else "")
            for index in range(self.num_classes)
        ]

    def _overlay(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        classes = [index for index in range(self.num_classes) if index != self.background_index]
        if not classes:
            return image
        masks = torch.stack([mask == index for index in classes])
        return draw_segmentation_masks(image, masks, alpha=self.alpha, colors=[self.colors[i] for i in classes])

    def draw(
        self, images: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor | None = None
    ) -> list[Picture]:
        """One :class:`~torchbricks_lightning.pictures.Picture` per sample (titles and legend as its labels)."""
        rgb = as_rgb_uint8(images)
        predictions = predictions.detach().cpu()
        if predictions.ndim == 4:
            predictions = predictions.argmax(dim=1)
        factor = enlargement((rgb.shape[2], rgb.shape[3]), self.min_size)
        width, height = rgb.shape[3] * factor, rgb.shape[2] * factor
        line = text_size("Hg", self.font_size)[1]
        entries = self.legend()
        panels = 1 if targets is None else 2
        total = panels * width + (panels + 1) * _PAD
        rows = _legend_rows(entries, total - 2 * _PAD, self.font_size)
        pictures = []
        for index in range(len(rgb)):
            canvas = Canvas(total, _PAD + line + height + _PAD + len(rows) * (line + 2) + _PAD)
            image = enlarge(rgb[index], factor)
            titled = [("predicted", enlarge(predictions[index].long(), factor))]
            if targets is not None:
                target = enlarge(targets[index].detach().cpu().long(), factor)
                titled.append(("true" if bool((target >= 0).any()) else "true: not annotated", target))
            for panel, (title, mask) in enumerate(titled):
                left = _PAD + panel * (width + _PAD)
                canvas.text((left + width // 2, _PAD), title, size=self.font_size, anchor="ma")
                paste(canvas, self._overlay(image, mask), (left, _PAD + line))
            y = _PAD + line + height + _PAD
            for row in rows:
                x = _PAD
                for entry in row:
                    number = entries.index(entry)
                    fill = "white" if number == self.background_index else self.colors[number]
                    canvas.shape("rectangle", [x, y + 1, x + _SWATCH, y + 1 + _SWATCH], fill=fill, outline="black")
                    x = canvas.text((x + _SWATCH + 4, y), entry, size=self.font_size).box[2] + 12
                y += line + 2
            pictures.append(canvas.picture())
        return pictures

    def forward(
        self, images: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        return stack_pictures(self.draw(images, predictions, targets))


def _legend_rows(entries: list[str], width: int, size: int) -> list[list[str]]:
    """The legend's entries in rows at most ``width`` pixels wide (a swatch, the name and a gap each)."""
    rows: list[list[str]] = [[]]
    used = 0
    for entry in entries:
        needed = _SWATCH + 4 + text_size(entry, size)[0] + 12
        if rows[-1] and used + needed > width:
            rows.append([])
            used = 0
        rows[-1].append(entry)
        used += needed
    return rows
