"""Line charts of logged values over training steps (loss curves, the balancer's per-task weights).

Each line has its own colour, dash pattern and marker, so a line lying on another still shows; ticks are matplotlib's
nice numbers, steps are whole numbers, and both axes are titled.

Example:
    >>> figure = draw_line_chart({"digit": [(0, 0.5), (10, 0.4)], "parity": [(0, 0.5), (10, 0.6)]},
    ...                          title="Task weights", y_label="weight")
    >>> axes = figure.axes[0]
    >>> axes.get_title(), axes.get_xlabel(), axes.get_ylabel()
    ('Task weights', 'training step', 'weight')
    >>> [text.get_text() for text in figure.legends[0].get_texts()]
    ['digit', 'parity']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from torchbricks_lightning.pictures.figures import FONT_SIZE, figure_to_tensor, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LINE_STYLES", "draw_line_chart", "render_line_chart"]

LINE_STYLES = [
    ("#1f77b4", "-", "o"),
    ("#ff7f0e", "--", "s"),
    ("#2ca02c", ":", "^"),
    ("#d62728", "-.", "D"),
    ("#9467bd", (0, (5, 1, 1, 1)), "v"),
    ("#8c564b", (0, (1, 2)), "P"),
]
"""``(colour, dash pattern, marker)`` of each line, in turn."""


def draw_line_chart(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str = "training step",
    y_label: str = "value",
    size: tuple[int, int] = (720, 420),
) -> Figure:
    """A line chart of ``curves`` (``{label: [(x, y), ...]}``), with a legend above the plot.

    Args:
        curves: the points of each line, in any order (drawn sorted by x).
        title: the chart's title.
        x_label: the title of the x axis (whole-number ticks: training steps or epochs).
        y_label: the title of the y axis.
        size: ``(width, height)`` in pixels.
    """
    from matplotlib.ticker import MaxNLocator

    figure = new_figure(*size)
    figure.set_layout_engine("constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=FONT_SIZE + 1)
    axes.set_xlabel(x_label, fontsize=FONT_SIZE)
    axes.set_ylabel(y_label, fontsize=FONT_SIZE)
    axes.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10]))
    axes.grid(True, color="#e0e0e0", linewidth=0.8)
    axes.set_axisbelow(True)
    if not any(curves.values()):
        axes.text(0.5, 0.5, "nothing logged", transform=axes.transAxes, ha="center", va="center")
        return figure
    for index, (label, curve) in enumerate(curves.items()):
        color, dashes, marker = LINE_STYLES[index % len(LINE_STYLES)]
        points = sorted(curve)
        xs, ys = [x for x, _ in points], [y for _, y in points]
        every = max(1, len(points) // 10)
        axes.plot(
            xs,
            ys,
            color=color,
            linestyle=dashes,
            marker=marker,
            markevery=(index % every, every),
            markersize=5,
            linewidth=1.8,
            label=label,
        )
    figure.legend(loc="outside lower center", ncols=min(len(curves), 3), fontsize=FONT_SIZE, frameon=False)
    return figure


def render_line_chart(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str = "training step",
    y_label: str = "value",
    size: tuple[int, int] = (720, 420),
) -> torch.Tensor:
    """:func:`draw_line_chart` as a ``float32`` image tensor ``(3, H, W)`` in ``[0, 1]``.

    Example:
        >>> tuple(render_line_chart({"loss": [(0, 1.0), (5, 0.5)]}, "Loss", size=(300, 200)).shape)
        (3, 200, 300)
    """
    return figure_to_tensor(draw_line_chart(curves, title, x_label, y_label, size))
