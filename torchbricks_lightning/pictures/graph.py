"""The brick graph as a picture: bricks as boxes in columns by depth, data names on the arrows between them.

Every text is measured before it is placed. A box is as wide as its longest line (long descriptions wrap), so no
label is cut off. Each data name leaves its brick at a port of its own on the box's right side and is written once,
above a short horizontal stub, before the arrows fan out to the bricks that read it; ports are spaced a text line
apart and the gap between columns is as wide as the widest name, so no two names overlap.

Example:
    >>> from torch import nn
    >>> from torchbricks_lightning import BrickCollection, BrickTrainable
    >>> collection = BrickCollection({
    ...     "backbone": BrickTrainable(nn.Linear(2, 2), ["raw"], ["features"]),
    ...     "head": BrickTrainable(nn.Linear(2, 2), ["features"], ["logits"]),
    ... })
    >>> draw_brick_graph(collection, "inference").texts()
    ['features', 'backbone', 'BrickTrainable: Linear', 'raw', 'head', 'BrickTrainable: Linear', 'logits']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.graph import BrickNode
from torchbricks_lightning.core.stages import StageLike, parse_stage
from torchbricks_lightning.pictures.canvas import Canvas, Picture, text_size, wrap

__all__ = ["draw_brick_graph", "render_brick_graph"]

BRICK_COLORS = {
    "BrickNotTrainable": (181, 101, 118),
    "BrickTrainable": (109, 89, 122),
    "BrickLoss": (92, 103, 125),
    "BrickMetrics": (20, 80, 163),
    "BrickMetricSingle": (20, 80, 163),
}
OTHER_BRICK_COLOR = (53, 80, 112)
INPUT_COLOR = (34, 166, 153)
OUTPUT_COLOR = (242, 190, 34)
EDGE_COLOR = (120, 120, 120)
_MARGIN, _PAD, _GAP_Y, _ARROW_ROOM, _MAX_TEXT = 20, 8, 16, 48, 300

Key = tuple[str, str]  # ("brick", path), ("input", name) or ("output", name)


@dataclasses.dataclass
class _Item:
    key: Key
    lines: list[str]
    width: int
    height: int
    inputs: list[str] = dataclasses.field(default_factory=list)  # names arriving on the left side, in port order
    outputs: list[str] = dataclasses.field(default_factory=list)  # names leaving on the right side, in port order
    left: int = 0
    top: int = 0

    def port(self, name: str, side: str) -> tuple[int, int]:
        """Where the arrow of ``name`` leaves (``"out"``, right side) or arrives (``"in"``, left side)."""
        names = self.outputs if side == "out" else self.inputs
        index = names.index(name) if name in names else 0
        y = self.top + (index + 1) * self.height // (len(names) + 1) if names else self.top + self.height // 2
        return (self.left + self.width, y) if side == "out" else (self.left, y)


def draw_brick_graph(collection: BrickCollection, stage: StageLike | None = None) -> Picture:
    """Draw the bricks alive in ``stage`` (every brick when None), with their inputs (teal) and outputs (yellow).

    Inputs (names no brick produces) sit just left of their first reader, and outputs nobody reads just right of
    their producer. Each brick box shows the brick's path and ``{brick type}: {what it wraps}``.
    """
    flow = collection.data_flow(None if stage is None else parse_stage(stage))
    nodes = list(flow.nodes)
    bricks = dict(collection.named_bricks())
    producer = {name: each[-1] for name, each in flow.producers.items()}  # the union of stages: the last declared
    readers = flow.readers
    items = _items(nodes, bricks, producer, readers)
    columns = _columns(nodes, producer, readers)
    stacks = _stacks(items, columns, producer)
    line = text_size("Hg")[1]
    gaps = [
        max([text_size(name)[0] for key in stack for name in items[key].outputs if name in readers] + [0]) + _ARROW_ROOM
        for stack in stacks
    ]
    widths = [max(items[key].width for key in stack) for stack in stacks]
    heights = [sum(items[key].height for key in stack) + _GAP_Y * (len(stack) - 1) for stack in stacks]
    left = _MARGIN
    for index, stack in enumerate(stacks):
        top = _MARGIN + (max(heights) - heights[index]) // 2
        for key in stack:
            item = items[key]
            item.left, item.top, item.width = left, top, widths[index] if key[0] == "brick" else item.width
            if key[0] == "output":
                item.left = left
            top += item.height + _GAP_Y
        left += widths[index] + gaps[index]
    canvas = Canvas(left - gaps[-1] + _MARGIN if stacks else 2 * _MARGIN, max(heights, default=0) + 2 * _MARGIN)
    _draw_edges(canvas, items, producer, readers, line)
    _draw_items(canvas, items, bricks)
    return canvas.picture()


def render_brick_graph(collection: BrickCollection, stage: StageLike | None = None) -> torch.Tensor:
    """:func:`draw_brick_graph` as a ``float32`` image tensor ``(3, H, W)`` in ``[0, 1]``.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickTrainable
        >>> collection = BrickCollection({"head": BrickTrainable(nn.Linear(2, 2), ["raw"], ["logits"])})
        >>> render_brick_graph(collection, "inference").shape[0]
        3
    """
    return draw_brick_graph(collection, stage).tensor()


def _items(
    nodes: list[BrickNode],
    bricks: Mapping[str, object],
    producer: dict[str, BrickNode],
    readers: Mapping[str, Sequence[BrickNode]],
) -> dict[Key, _Item]:
    line = text_size("Hg")[1]
    items: dict[Key, _Item] = {}
    for node in nodes:
        brick = bricks[node.path]
        describe = getattr(brick, "describe_model", lambda: "")()
        lines = [
            node.path,
            *wrap(f"{type(brick).__name__}: {describe}" if describe else type(brick).__name__, _MAX_TEXT),
        ]
        width = max(text_size(text)[0] for text in lines) + 2 * _PAD
        inputs = list(dict.fromkeys(node.data_inputs))
        outputs = list(node.output_names)
        ports = max(len(inputs), len(outputs))
        height = max(len(lines) * line + 2 * _PAD, (ports + 1) * (line + 4))
        items[("brick", node.path)] = _Item(("brick", node.path), lines, width, height, inputs, outputs)
        for name in inputs:
            if name not in producer and ("input", name) not in items:
                items[("input", name)] = _pill(("input", name), line)
        for name in outputs:
            if name not in readers:
                items[("output", name)] = _pill(("output", name), line)
    return items


def _pill(key: Key, line: int) -> _Item:
    name = key[1]
    return _Item(key, [name], text_size(name)[0] + 28, line + 12, inputs=[name], outputs=[name])


def _columns(
    nodes: list[BrickNode], producer: dict[str, BrickNode], readers: Mapping[str, Sequence[BrickNode]]
) -> dict[Key, int]:
    """Each item's column: a brick's longest path from the inputs; an input just left of its first reader, an
    output just right of its producer."""
    column: dict[Key, int] = {("brick", node.path): 1 for node in nodes}
    for _ in range(len(nodes)):  # a stage plan is ordered, the union of stages is not
        changed = False
        for node in nodes:
            depth = 1 + max((column[("brick", producer[n].path)] for n in node.data_inputs if n in producer), default=0)
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
            if name not in readers:
                column[("output", name)] = column[("brick", node.path)] + 1
    return column


def _stacks(items: dict[Key, _Item], column: dict[Key, int], producer: dict[str, BrickNode]) -> list[list[Key]]:
    """The items of each column, top to bottom: each column after the first in the order of the mean row of what
    feeds its items (fewer crossing arrows)."""
    count = max(column.values(), default=-1) + 1
    stacks: list[list[Key]] = [[key for key in items if column[key] == index] for index in range(count)]
    stacks = [stack for stack in stacks if stack]
    row: dict[Key, float] = {}
    for stack in stacks:
        order = {key: _mean_source_row(key, items, producer, row, default=index) for index, key in enumerate(stack)}
        stack.sort(key=order.__getitem__)
        row.update((key, float(index)) for index, key in enumerate(stack))
    return stacks


def _mean_source_row(
    key: Key, items: dict[Key, _Item], producer: dict[str, BrickNode], row: dict[Key, float], default: int
) -> float:
    if key[0] == "output":
        sources = [("brick", producer[key[1]].path)]
    else:
        sources = [
            ("brick", producer[name].path) if name in producer else ("input", name) for name in items[key].inputs
        ]
    known = [row[source] for source in sources if source in row]
    return sum(known) / len(known) if known else float(default)


def _draw_edges(
    canvas: Canvas,
    items: dict[Key, _Item],
    producer: dict[str, BrickNode],
    readers: Mapping[str, Sequence[BrickNode]],
    line: int,
) -> None:
    for key, item in items.items():
        if key[0] == "output":
            continue
        for name in item.outputs:
            start = item.port(name, "out")
            if key[0] == "brick" and name in readers:
                stub_end = (start[0] + text_size(name)[0] + 10, start[1])
                targets = [items[("brick", reader.path)].port(name, "in") for reader in readers[name]]
            elif key[0] == "input":
                stub_end = start
                targets = [items[("brick", reader.path)].port(name, "in") for reader in readers.get(name, [])]
            else:
                stub_end = start
                targets = [items[("output", name)].port(name, "in")]
            for end in targets:
                canvas.shape("line", [start, stub_end, end], fill=EDGE_COLOR, width=2, joint="curve")
                _arrow_head(canvas, end)
            if key[0] == "brick" and name in readers:
                canvas.text((start[0] + 5, start[1] - 2), name, fill=(60, 60, 60), background="white", anchor="ld")


def _arrow_head(canvas: Canvas, end: tuple[int, int]) -> None:
    x, y = end
    canvas.shape("polygon", [(x, y), (x - 8, y - 5), (x - 8, y + 5)], fill=EDGE_COLOR)


def _draw_items(canvas: Canvas, items: dict[Key, _Item], bricks: Mapping[str, object]) -> None:
    line = text_size("Hg")[1]
    for (kind, name), item in items.items():
        box = [item.left, item.top, item.left + item.width, item.top + item.height]
        if kind == "brick":
            fill = BRICK_COLORS.get(type(bricks[name]).__name__, OTHER_BRICK_COLOR)
            canvas.shape("rounded_rectangle", box, radius=8, fill=fill)
            top = item.top + (item.height - len(item.lines) * line) // 2
            for index, text in enumerate(item.lines):
                canvas.text((item.left + _PAD, top + index * line), text, fill="white")
        else:
            fill = INPUT_COLOR if kind == "input" else OUTPUT_COLOR
            canvas.shape("rounded_rectangle", box, radius=item.height // 2, fill=fill)
            canvas.text((item.left + item.width // 2, item.top + item.height // 2), name, fill="black", anchor="mm")
