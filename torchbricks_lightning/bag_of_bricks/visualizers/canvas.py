"""A drawing surface that remembers every text it draws, so that a picture's labels can be checked, not only seen.

Drawing uses Pillow (installed with torchvision) and its bundled scalable font, so text is measured before it is
placed: boxes are made as wide as their labels, and nothing is cut off.

Example:
    >>> canvas = Canvas(120, 40)
    >>> _ = canvas.text((4, 4), "predicted class")
    >>> picture = canvas.picture()
    >>> [label.text for label in picture.labels], tuple(picture.tensor().shape)
    (['predicted class'], (3, 40, 120))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image, ImageFont

__all__ = ["FONT_SIZE", "Canvas", "Color", "Label", "Picture", "font", "text_size", "wrap"]

FONT_SIZE = 13
Color = tuple[int, int, int] | str


@dataclasses.dataclass(frozen=True)
class Label:
    """A text drawn on a picture, with the box ``(left, top, right, bottom)`` its pixels lie in."""

    text: str
    box: tuple[int, int, int, int]

    def overlaps(self, other: Label) -> bool:
        """Whether the two labels' boxes share a pixel."""
        left, top, right, bottom = self.box
        other_left, other_top, other_right, other_bottom = other.box
        return left < other_right and other_left < right and top < other_bottom and other_top < bottom


@dataclasses.dataclass(frozen=True)
class Picture:
    """An image with the labels drawn on it."""

    image: Image.Image
    labels: tuple[Label, ...]

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        width, height = self.image.size
        return width, height

    def texts(self) -> list[str]:
        """The labels' texts, in drawing order."""
        return [label.text for label in self.labels]

    def tensor(self) -> torch.Tensor:
        """The image as a ``float32`` tensor ``(3, H, W)`` in ``[0, 1]``, ready for ``SummaryWriter.add_image``."""
        return torch.from_numpy(np.asarray(self.image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


@functools.lru_cache(maxsize=8)
def font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def text_size(text: str, size: int = FONT_SIZE) -> tuple[int, int]:
    """``(width, height)`` of ``text`` drawn at ``size``; the height is the font's line height, for any text."""
    left, _, right, _ = font(size).getbbox(text)
    bottom = font(size).getbbox("Hgjy|[")[3]
    return int(right - left), int(bottom) + 2


def wrap(text: str, width: int, size: int = FONT_SIZE) -> list[str]:
    """``text`` split into lines at most ``width`` pixels wide, at spaces (a word wider than ``width`` stays whole).

    Example:
        >>> wrap("BrickMetrics: ['accuracy', 'f1', 'recall']", 160)
        ["BrickMetrics: ['accuracy',", "'f1', 'recall']"]
    """
    lines: list[str] = []
    for word in text.split(" "):
        if lines and text_size(f"{lines[-1]} {word}")[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


class Canvas:
    """A white RGB image to draw shapes and texts on; every text is recorded as a :class:`Label`."""

    def __init__(self, width: int, height: int) -> None:
        from PIL import Image, ImageDraw

        self.image = Image.new("RGB", (max(width, 1), max(height, 1)), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.labels: list[Label] = []

    def text(
        self,
        xy: tuple[int, int],
        text: str,
        fill: Color = "black",
        size: int = FONT_SIZE,
        background: Color | None = None,
        anchor: str = "la",
    ) -> Label:
        """Draw ``text`` at ``xy`` (Pillow's ``anchor``, left-ascender by default), optionally on a background."""
        left, top, right, bottom = (int(v) for v in self.draw.textbbox(xy, text, font=font(size), anchor=anchor))
        if background is not None:
            self.draw.rectangle([left - 2, top - 1, right + 1, bottom + 1], fill=background)
        self.draw.text(xy, text, fill=fill, font=font(size), anchor=anchor)
        label = Label(text, (left, top, right, bottom))
        self.labels.append(label)
        return label

    def vertical_text(self, center: tuple[int, int], text: str, fill: Color = "black", size: int = FONT_SIZE) -> Label:
        """Draw ``text`` turned a quarter to the left (reading upwards), centred on ``center``."""
        from PIL import Image, ImageDraw

        width, height = text_size(text, size)
        strip = Image.new("RGB", (width + 2, height), "white")
        ImageDraw.Draw(strip).text((1, 0), text, fill=fill, font=font(size))
        turned = strip.rotate(90, expand=True)
        left, top = center[0] - turned.width // 2, center[1] - turned.height // 2
        self.image.paste(turned, (left, top))
        label = Label(text, (left, top, left + turned.width, top + turned.height))
        self.labels.append(label)
        return label

    def shape(self, kind: str, *args: Any, **kwargs: Any) -> None:
        """Draw with one of Pillow's ``ImageDraw`` methods (``rectangle``, ``rounded_rectangle``, ``line``, ...)."""
        getattr(self.draw, kind)(*args, **kwargs)

    def picture(self) -> Picture:
        """The image drawn so far, with its labels."""
        return Picture(self.image, tuple(self.labels))
