"""Pictures for people: the brick graph, a confusion matrix and a grid of predictions, as image tensors.

Images are ``float32`` tensors ``(3, H, W)`` in ``[0, 1]``, ready for ``SummaryWriter.add_image``. Drawing uses
Pillow (installed with torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import StageLike, parse_stage

if TYPE_CHECKING:
    from PIL import ImageDraw

__all__ = ["render_brick_graph", "render_matrix", "render_prediction_grid"]

_BRICK_COLORS = {
    "BrickNotTrainable": (181, 101, 118),
    "BrickTrainable": (109, 89, 122),
    "BrickLoss": (92, 103, 125),
    "BrickMetrics": (20, 80, 163),
    "BrickMetricSingle": (20, 80, 163),
}
_INPUT_COLOR = (34, 166, 153)
_OUTPUT_COLOR = (242, 190, 34)


def _to_tensor(image: object) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def render_matrix(matrix: torch.Tensor, cell: int = 48) -> torch.Tensor:
    """Draw a 2-D matrix (e.g. a confusion matrix) with shaded, labelled cells.

    Non-negative matrices are shaded by row share (a confusion matrix's recall per class).

    Example:
        >>> import torch
        >>> tuple(render_matrix(torch.tensor([[3, 1], [0, 4]]), cell=10).shape)
        (3, 20, 20)
    """
    from PIL import Image, ImageDraw

    values = matrix.detach().float().cpu()
    if values.ndim != 2:
        values = values.reshape(-1, values.shape[-1])
    rows, columns = values.shape
    if bool((values >= 0).all()):
        shade = values / values.sum(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        shade = (values - values.min()) / (values.max() - values.min()).clamp_min(1e-12)
    low, high = np.array([255, 255, 255]), np.array([8, 48, 107])
    image = Image.new("RGB", (columns * cell, rows * cell), "white")
    draw = ImageDraw.Draw(image)
    integer = bool(torch.all(values == values.round()))
    for r in range(rows):
        for c in range(columns):
            share = float(shade[r, c])
            fill = tuple(int(v) for v in low + (high - low) * share)
            draw.rectangle([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], fill=fill)
            if cell >= 16:
                text = f"{int(values[r, c])}" if integer else f"{float(values[r, c]):.2f}"
                draw.text((c * cell + 3, r * cell + cell // 2 - 5), text, fill="white" if share > 0.5 else "black")
    return _to_tensor(image)


def render_prediction_grid(
    images: torch.Tensor,
    predictions: Sequence[int] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    columns: int = 8,
    scale: int = 8,
) -> torch.Tensor:
    """A grid of images, each captioned ``prediction/target``, green when right and red when wrong.

    Example:
        >>> import torch
        >>> tuple(render_prediction_grid(torch.rand(3, 1, 8, 8), [1, 2, 3], [1, 2, 0], columns=2, scale=2).shape)
        (3, 60, 32)
    """
    from PIL import Image, ImageDraw

    pictures = images.detach().float().cpu()
    if pictures.shape[1] == 1:
        pictures = pictures.repeat(1, 3, 1, 1)
    low, high = pictures.amin(dim=(1, 2, 3), keepdim=True), pictures.amax(dim=(1, 2, 3), keepdim=True)
    pictures = (pictures - low) / (high - low).clamp_min(1e-12)
    height, width = pictures.shape[2] * scale, pictures.shape[3] * scale
    caption = 14
    rows = (len(pictures) + columns - 1) // columns
    sheet = Image.new("RGB", (max(columns * width, 1), rows * (height + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, picture in enumerate(pictures):
        r, c = divmod(index, columns)
        tile = (picture.permute(1, 2, 0).numpy() * 255).astype("uint8")
        tile_image = Image.fromarray(tile).resize((width, height), Image.Resampling.NEAREST)
        sheet.paste(tile_image, (c * width, r * (height + caption)))
        predicted, target = int(predictions[index]), int(targets[index])
        color = (0, 140, 0) if predicted == target else (200, 0, 0)
        draw.text((c * width + 2, r * (height + caption) + height + 1), f"{predicted}/{target}", fill=color)
    return _to_tensor(sheet)


def render_brick_graph(collection: BrickCollection, stage: StageLike | None = None) -> torch.Tensor:
    """Draw the bricks alive in ``stage`` as boxes in columns by depth, with arrows labelled by data names.

    Inputs (names no brick produces, teal) sit just left of their first reader, and outputs nobody reads
    (yellow) just right of their producer.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickTrainable
        >>> collection = BrickCollection({"head": BrickTrainable(nn.Linear(2, 2), ["raw"], ["logits"])})
        >>> render_brick_graph(collection, "inference").shape[0]
        3
    """
    from PIL import Image, ImageDraw

    parsed = None if stage is None else parse_stage(stage)
    order = collection.plan(parsed).nodes if parsed else collection.brick_nodes()
    nodes = [n for n in order if (parsed in n.alive_stages if parsed else n.alive_stages)]
    bricks = dict(collection.named_bricks())
    producer = {name: node.path for node in nodes for name in node.output_names}
    consumed = {name for node in nodes for name in node.data_inputs}
    column: dict[tuple[str, str], int] = {("brick", node.path): 1 for node in nodes}
    for _ in range(len(nodes)):  # longest path from the inputs; a stage plan is ordered, the union of stages is not
        changed = False
        for node in nodes:
            parents = [column[("brick", producer[n])] for n in node.data_inputs if n in producer]
            depth = 1 + max(parents, default=0)
            if depth != column[("brick", node.path)]:
                column[("brick", node.path)], changed = depth, True
        if not changed:
            break
    for node in nodes:
        for name in node.data_inputs:
            if name not in producer:
                here = column[("brick", node.path)] - 1
                column[("input", name)] = min(column.get(("input", name), here), here)
        for name in node.output_names:
            if name not in consumed:
                column[("output", name)] = column[("brick", node.path)] + 1
    n_columns = max(column.values(), default=0) + 1
    stacks: list[list[tuple[str, str]]] = [[] for _ in range(n_columns)]
    for key, index in column.items():
        stacks[index].append(key)
    box_w, box_h, gap_x, gap_y, margin = 220, 44, 60, 16, 20
    tallest = max((len(stack) for stack in stacks), default=1)
    image = Image.new(
        "RGB",
        (margin * 2 + n_columns * box_w + (n_columns - 1) * gap_x, margin * 2 + tallest * (box_h + gap_y) - gap_y),
        "white",
    )
    draw = ImageDraw.Draw(image)
    position: dict[tuple[str, str], tuple[int, int]] = {}
    for c, stack in enumerate(stacks):
        offset = (tallest - len(stack)) * (box_h + gap_y) // 2
        for r, key in enumerate(stack):
            position[key] = (margin + c * (box_w + gap_x), margin + offset + r * (box_h + gap_y))
    for node in nodes:  # edges first, so boxes are drawn over them
        x1, y1 = position[("brick", node.path)]
        for name in node.data_inputs:
            source = ("brick", producer[name]) if name in producer else ("input", name)
            x0, y0 = position[source]
            _arrow(draw, (x0 + box_w, y0 + box_h // 2), (x1, y1 + box_h // 2), name if source[0] == "brick" else "")
        for name in node.output_names:
            if ("output", name) in position:
                x2, y2 = position[("output", name)]
                _arrow(draw, (x1 + box_w, y1 + box_h // 2), (x2, y2 + box_h // 2), "")
    for (kind, name), (x, y) in position.items():
        if kind == "brick":
            brick = bricks[name]
            fill = _BRICK_COLORS.get(type(brick).__name__, (53, 80, 112))
            draw.rounded_rectangle([x, y, x + box_w, y + box_h], radius=8, fill=fill)
            draw.text((x + 8, y + 6), name[:34], fill="white")
            draw.text((x + 8, y + 24), f"{type(brick).__name__}: {brick.describe_model()}"[:34], fill="white")
        else:
            fill = _INPUT_COLOR if kind == "input" else _OUTPUT_COLOR
            draw.rounded_rectangle([x, y + 8, x + box_w, y + box_h - 8], radius=14, fill=fill)
            draw.text((x + 10, y + box_h // 2 - 6), name[:34], fill="black")
    return _to_tensor(image)


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[int, int], end: tuple[int, int], label: str) -> None:
    draw.line([start, end], fill=(120, 120, 120), width=2)
    ex, ey = end
    draw.polygon([(ex, ey), (ex - 8, ey - 5), (ex - 8, ey + 5)], fill=(120, 120, 120))
    if label:
        mx, my = (start[0] + end[0]) // 2, (start[1] + end[1]) // 2
        draw.text((mx - 3 * len(label), my - 12), label, fill=(60, 60, 60))
