"""The brick graph drawn with matplotlib from its layout (:mod:`.layout`): bricks as boxes coloured by type, inputs
(teal) and unread outputs (yellow) as pills, each data name beside the edge that leaves its producer.

Example:
    >>> from torch import nn
    >>> from torchbricks_lightning import BrickCollection, BrickTrainable
    >>> collection = BrickCollection({
    ...     "backbone": BrickTrainable(nn.Linear(2, 2), ["raw"], ["features"]),
    ...     "head": BrickTrainable(nn.Linear(2, 2), ["features"], ["logits"]),
    ... })
    >>> figure = draw_brick_graph(collection, "inference")
    >>> [text.get_text() for text in figure.axes[0].texts]
    ['features', 'backbone', 'BrickTrainable: Linear', 'raw', 'head', 'BrickTrainable: Linear', 'logits']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import StageLike
from torchbricks_lightning.pictures.figures import FONT_SIZE, figure_to_tensor, new_figure, text_size
from torchbricks_lightning.pictures.graph.layout import LABEL_SIZE, GraphLayout, layout_brick_graph

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["BRICK_COLORS", "INPUT_COLOR", "OUTPUT_COLOR", "draw_brick_graph", "draw_graph_layout", "render_brick_graph"]

BRICK_COLORS = {
    "BrickNotTrainable": "#b56576",
    "BrickTrainable": "#6d597a",
    "BrickLoss": "#5c677d",
    "BrickMetrics": "#1450a3",
    "BrickMetricSingle": "#1450a3",
}
OTHER_BRICK_COLOR = "#355070"
INPUT_COLOR = "#22a699"
OUTPUT_COLOR = "#f2be22"
EDGE_COLOR = "#787878"
LABEL_COLOR = "#3c3c3c"


def draw_brick_graph(collection: BrickCollection, stage: StageLike | None = None) -> Figure:
    """Draw the bricks alive in ``stage`` (every brick when None) as a matplotlib figure.

    Each brick box shows the brick's path and ``{brick type}: {what it wraps}``; its inputs come in on the left,
    its outputs leave on the right, each data name written once beside the edge leaving its producer. Edges never
    run through a box they do not start or end at (see :mod:`torchbricks_lightning.pictures.graph.layout`).

    Raises:
        ModuleNotFoundError: matplotlib or grandalf is not installed; the mermaid text
            (:func:`~torchbricks_lightning.create_mermaid_dag_graph`) needs neither.
    """
    return draw_graph_layout(layout_brick_graph(collection, stage))


def render_brick_graph(collection: BrickCollection, stage: StageLike | None = None) -> torch.Tensor:
    """:func:`draw_brick_graph` as a ``float32`` image tensor ``(3, H, W)`` in ``[0, 1]``.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickTrainable
        >>> collection = BrickCollection({"head": BrickTrainable(nn.Linear(2, 2), ["raw"], ["logits"])})
        >>> render_brick_graph(collection, "inference").shape[0]
        3
    """
    return figure_to_tensor(draw_brick_graph(collection, stage))


def draw_graph_layout(layout: GraphLayout) -> Figure:
    """Draw a :class:`~torchbricks_lightning.pictures.graph.layout.GraphLayout`, one pixel per layout unit."""
    from matplotlib.patches import FancyBboxPatch, Polygon

    figure = new_figure(layout.width, layout.height)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_xlim(0, layout.width)
    axes.set_ylim(layout.height, 0)
    axes.set_axis_off()
    for edge in layout.edges:
        xs, ys = zip(*edge.points, strict=True)
        axes.plot(xs, ys, color=EDGE_COLOR, linewidth=1.4, solid_joinstyle="round", zorder=1)
        x, y = edge.points[-1]
        axes.add_patch(Polygon([(x, y), (x - 8, y - 4), (x - 8, y + 4)], closed=True, color=EDGE_COLOR, zorder=2))
    for label in layout.labels:
        left, _, _, bottom = label.box
        axes.text(left, bottom, label.text, fontsize=LABEL_SIZE, color=LABEL_COLOR, ha="left", va="bottom", zorder=3)
    for box in layout.boxes.values():
        pill = box.kind != "brick"
        radius = box.height / 2 if pill else 6.0
        color = {"input": INPUT_COLOR, "output": OUTPUT_COLOR}.get(box.kind) or BRICK_COLORS.get(
            box.brick_type, OTHER_BRICK_COLOR
        )
        axes.add_patch(
            FancyBboxPatch(
                (box.left + radius, box.top + radius),
                max(box.width - 2 * radius, 0.0),
                max(box.height - 2 * radius, 0.0),
                boxstyle=f"round,pad={radius}",
                facecolor=color,
                edgecolor="none",
                zorder=4,
            )
        )
        _box_texts(axes, box.lines, box.left, box.top, box.width, box.height, "black" if pill else "white", pill)
    return figure


def _box_texts(
    axes: Axes, lines: tuple[str, ...], left: float, top: float, width: float, height: float, color: str, pill: bool
) -> None:
    line = text_size("Hg")[1]
    first = top + (height - len(lines) * line) / 2
    for index, text in enumerate(lines):
        y = first + (index + 0.5) * line
        x, align = (left + width / 2, "center") if pill else (left + 8.0, "left")
        weight = "bold" if index == 0 and not pill else "normal"
        axes.text(x, y, text, fontsize=FONT_SIZE, color=color, ha=align, va="center", zorder=5, fontweight=weight)
