"""Matplotlib figures made without pyplot, measured before they are laid out, and turned into image tensors.

Figures are built as :class:`matplotlib.figure.Figure` objects with the Agg canvas: no display is needed, and no
figure is registered in pyplot's global list, so none is left open (nothing to close, nothing leaks). Sizes are
given in pixels at :data:`DPI`.

Example:
    >>> figure = new_figure(120, 40)
    >>> _ = figure.text(0.05, 0.5, "predicted class")
    >>> tuple(figure_to_tensor(figure).shape), text_size("predicted class")[0] > 50
    ((3, 40, 120), True)
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.figure import Figure

__all__ = ["DPI", "FONT_SIZE", "figure_to_tensor", "new_figure", "text_size"]

DPI = 100
FONT_SIZE = 10.0
"""Points; at :data:`DPI` a line of text is about 14 pixels high."""


def new_figure(width: float, height: float) -> Figure:
    """A white figure of ``width`` x ``height`` pixels on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(width, 1) / DPI, max(height, 1) / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def figure_to_tensor(figure: Figure) -> torch.Tensor:
    """Render ``figure`` as a ``float32`` tensor ``(3, H, W)`` in ``[0, 1]``, ready for ``SummaryWriter.add_image``.

    The figure is drawn on a fresh Agg canvas, so the figure of a pyplot user is not changed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


@functools.lru_cache(maxsize=1)
def _renderer() -> RendererAgg:
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(1, 1, DPI)


@functools.lru_cache(maxsize=4096)
def text_size(text: str, size: float = FONT_SIZE, weight: str = "normal") -> tuple[float, float]:
    """``(width, height)`` in pixels of ``text`` drawn at ``size`` points; the height is a full line's, for any text."""
    from matplotlib.font_manager import FontProperties

    prop = FontProperties(size=size, weight=weight)
    width, _, _ = _renderer().get_text_width_height_descent(text, prop, ismath=False)
    _, height, _ = _renderer().get_text_width_height_descent("Hgjy|[", prop, ismath=False)
    return float(width), float(height)
