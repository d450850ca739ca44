"""The brick graph as a picture: a layered layout (:mod:`.layout`) drawn with matplotlib (:mod:`.drawing`)."""

from torchbricks_lightning.pictures.graph.drawing import draw_brick_graph, draw_graph_layout, render_brick_graph
from torchbricks_lightning.pictures.graph.layout import Box, EdgeLabel, EdgePath, GraphLayout, layout_brick_graph

__all__ = [
    "Box",
    "EdgeLabel",
    "EdgePath",
    "GraphLayout",
    "draw_brick_graph",
    "draw_graph_layout",
    "layout_brick_graph",
    "render_brick_graph",
]
