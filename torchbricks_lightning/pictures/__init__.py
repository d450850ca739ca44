"""Pictures for people, drawn with matplotlib: the brick graph, a confusion matrix, a grid of predictions and line
charts of logged values.

``draw_*`` functions return a :class:`matplotlib.figure.Figure` (to show, save, or give to a logger's
``add_figure``; the tests read its texts back: title, axis titles, tick labels, legend). ``render_*`` functions
return the same picture as a ``float32`` tensor ``(3, H, W)`` in ``[0, 1]``, ready for ``SummaryWriter.add_image``.
Figures are made without pyplot on the Agg canvas: no display is needed and none is left open.
"""

from torchbricks_lightning.pictures.graph import GraphLayout, draw_brick_graph, layout_brick_graph, render_brick_graph
from torchbricks_lightning.pictures.grid import draw_prediction_grid, render_prediction_grid
from torchbricks_lightning.pictures.lines import draw_line_chart, render_line_chart
from torchbricks_lightning.pictures.matrix import draw_confusion_matrix, render_confusion_matrix, render_matrix

__all__ = [
    "GraphLayout",
    "draw_brick_graph",
    "draw_confusion_matrix",
    "draw_line_chart",
    "draw_prediction_grid",
    "layout_brick_graph",
    "render_brick_graph",
    "render_confusion_matrix",
    "render_line_chart",
    "render_matrix",
    "render_prediction_grid",
]
