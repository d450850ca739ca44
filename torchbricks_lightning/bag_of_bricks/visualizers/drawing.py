"""What the visualisers share: images made RGB ``uint8`` and enlarged, class colours, and pictures stacked.

Example:
    >>> import torch
    >>> rgb = as_rgb_uint8(torch.rand(2, 1, 8, 8))
    >>> rgb.dtype, tuple(rgb.shape)
    (torch.uint8, (2, 3, 8, 8))
    >>> enlargement((8, 8), 160), enlargement((200, 300), 160)
    (20, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from torchbricks_lightning.bag_of_bricks.visualizers.canvas import Canvas, Picture
from torchbricks_lightning.errors import ConfigError

__all__ = [
    "CAPTION_SIZE",
    "MIN_SIZE",
    "as_rgb_uint8",
    "check_min_size",
    "class_colors",
    "class_name",
    "enlarge",
    "enlargement",
    "paste",
    "stack_pictures",
]

MIN_SIZE = 192
"""The default shorter side, in pixels, that a sample's image is enlarged to (so a 14-16 px font is legible)."""
CAPTION_SIZE = 16
"""The default font size of captions and titles, in pixels."""


def check_min_size(value: object, where: str) -> int:
    """``value`` as the smallest side of the drawn images, or a ConfigError naming ``where``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"Expected min_size of {where} to be a whole number of pixels >= 1, but got {value!r}.")
    return value


def as_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images (C = 1 or 3) as ``uint8`` RGB: floats in ``[0, 1]`` are scaled, other floats (e.g.
    normalised inputs) are stretched to the full range per image."""
    images = images.detach().cpu()
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"Expected images (N, 1 or 3, H, W) to draw on, but got shape {tuple(images.shape)}.")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.dtype == torch.uint8:
        return images.contiguous()
    images = images.float()
    if images.numel() and (images.min() < 0 or images.max() > 1):
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-12)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def enlargement(size: tuple[int, int], min_size: int) -> int:
    """The whole factor that makes the shorter side of ``size`` (H, W) at least ``min_size`` (1 if it already is)."""
    shorter = max(min(size), 1)
    return max(1, -(-min_size // shorter))


def enlarge(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``image`` (C, H, W) or (H, W) enlarged ``factor`` times, each pixel a block (no blur)."""
    if factor == 1:
        return image
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def class_colors(count: int, colormap: str) -> list[tuple[int, int, int]]:
    """``count`` distinct colours from a matplotlib colormap: a qualitative map's own colours when it has enough
    (``tab10``, ``tab20``), else evenly spaced samples."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ConfigError(
            f"Unknown matplotlib colormap {colormap!r}. Use one of matplotlib.colormaps, e.g. 'tab10', 'tab20'."
        ) from None
    listed = getattr(cmap, "colors", None)
    if listed is not None and len(listed) >= count and len(listed) <= 32:
        rgba = [matplotlib.colors.to_rgba(color) for color in listed[:count]]
    else:
        rgba = [cmap(value) for value in np.linspace(0, 1, max(count, 1))[:count]]
    return [(int(r * 255), int(g * 255), int(b * 255)) for r, g, b, _ in rgba]


def class_name(index: int, class_names: Sequence[str] | None) -> str:
    """The name of class ``index``, or the index itself when there are no names (or it has none)."""
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)


def paste(canvas: Canvas, image: torch.Tensor, xy: tuple[int, int]) -> None:
    """Paste a ``uint8`` image (3, H, W) on ``canvas`` with its top-left corner at ``xy``."""
    from PIL import Image

    canvas.image.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), xy)


def stack_pictures(pictures: Sequence[Picture]) -> torch.Tensor:
    """The pictures as one ``uint8`` tensor ``(N, 3, H, W)``, each padded with white to the largest size."""
    width = max((picture.size[0] for picture in pictures), default=1)
    height = max((picture.size[1] for picture in pictures), default=1)
    out = torch.full((len(pictures), 3, height, width), 255, dtype=torch.uint8)
    for index, picture in enumerate(pictures):
        array = torch.from_numpy(np.asarray(picture.image.convert("RGB")).copy()).permute(2, 0, 1)
        out[index, :, : array.shape[1], : array.shape[2]] = array
    return out
