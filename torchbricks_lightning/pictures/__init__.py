"""Pictures for people: the brick graph, a confusion matrix and a grid of predictions.

``render_*`` functions return images as ``float32`` tensors ``(3, H, W)`` in ``[0, 1]``, ready for
``SummaryWriter.add_image``. ``draw_*`` functions return a :class:`Picture`: the image, and every text drawn on it with
its place (what the tests check: labels complete, none cut off, none overlapping). Drawing uses Pillow (installed
with torchvision).
"""

from torchbricks_lightning.pictures.canvas import Label, Picture
from torchbricks_lightning.pictures.graph import draw_brick_graph, render_brick_graph
from torchbricks_lightning.pictures.grid import draw_prediction_grid, render_prediction_grid
from torchbricks_lightning.pictures.matrix import draw_confusion_matrix, render_confusion_matrix, render_matrix

__all__ = [
    "Label",
    "Picture",
    "draw_brick_graph",
    "draw_confusion_matrix",
    "draw_prediction_grid",
    "render_brick_graph",
    "render_confusion_matrix",
    "render_matrix",
    "render_prediction_grid",
]
