"""Where each box, edge and edge label of the brick graph goes: a layered (Sugiyama) layout that keeps edges out
of boxes.

grandalf ranks the bricks into columns (each brick just right of what it reads; an input just left of its first
reader, an output nobody reads just right of its producer), orders each column to reduce crossings, and places
every box and every *dummy* point (where a long edge passes a column) along the column; this module then routes
the edges on that skeleton:

- each data name leaves its brick at a port of its own on the box's right side, runs right on a horizontal stub
  (its name written once, just above the stub, beside the box), and fans out to its readers only in the gap
  between columns, where there are no boxes and no labels;
- an edge passing a column runs straight through it at its dummy point, which grandalf keeps apart from the
  column's boxes;
- it arrives at a port of its own on the reader's left side.

So no edge runs through a box it does not start or end at, and no label lies on a line or a box
(``tests/test_pictures.py`` checks the geometry).

Example:
    >>> from torch import nn
    >>> from torchbricks_lightning import BrickCollection, BrickTrainable
    >>> collection = BrickCollection({
    ...     "backbone": BrickTrainable(nn.Linear(2, 2), ["raw"], ["features"]),
    ...     "head": BrickTrainable(nn.Linear(2, 2), ["features"], ["logits"]),
    ... })
    >>> layout = layout_brick_graph(collection, "inference")
    >>> sorted((box.column, box.kind, box.name) for box in layout.boxes.values())
    [(0, 'input', 'raw'), (1, 'brick', 'backbone'), (2, 'brick', 'head'), (3, 'output', 'logits')]
    >>> sorted((edge.name, edge.target[1]) for edge in layout.edges), [label.text for label in layout.labels]
    ([('features', 'head'), ('logits', 'logits'), ('raw', 'backbone')], ['features'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.graph import BrickNode
from torchbricks_lightning.core.stages import StageLike, parse_stage
from torchbricks_lightning.pictures.figures import text_size

__all__ = ["Box", "EdgeLabel", "EdgePath", "GraphLayout", "layout_brick_graph", "wrap"]

Key = tuple[str, str]
"""``("brick", path)``, ``("input", name)`` or ``("output", name)``."""
Point = tuple[float, float]

LABEL_SIZE = 9.0
"""Points, for the data names beside the edges."""
_MARGIN, _PAD, _GAP_Y, _FAN, _MAX_TEXT = 16.0, 8.0, 18.0, 44.0, 300.0


@dataclasses.dataclass(frozen=True)
class Box:
    """A brick (its path, then ``{brick type}: {what it wraps}``) or an input or output pill, in pixels."""

    kind: str
    name: str
    lines: tuple[str, ...]
    column: int
    left: float
    top: float
    width: float
    height: float
    brick_type: str = ""

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    @property
    def key(self) -> Key:
        return (self.kind, self.name)


@dataclasses.dataclass(frozen=True)
class EdgePath:
    """The polyline of data ``name`` from ``source``'s right side to ``target``'s left side."""

    name: str
    source: Key
    target: Key
    points: tuple[Point, ...]


@dataclasses.dataclass(frozen=True)
class EdgeLabel:
    """A data name written beside its edge, just above the stub leaving ``source``; ``left, top, right, bottom``."""

    text: str
    source: Key
    box: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class GraphLayout:
    """Everything :func:`~torchbricks_lightning.pictures.draw_brick_graph` draws, in pixels (y grows downwards)."""

    boxes: dict[Key, Box]
    edges: tuple[EdgePath, ...]
    labels: tuple[EdgeLabel, ...]
    width: float
    height: float


def wrap(text: str, width: float, size: float | None = None) -> list[str]:
    """``text`` split into lines at most ``width`` pixels wide, at spaces (a word wider than ``width`` stays whole).

    Example:
        >>> wrap("BrickMetrics: ['accuracy', 'f1', 'recall']", 180)
        ["BrickMetrics: ['accuracy',", "'f1', 'recall']"]
    """
    measure = (lambda line: text_size(line)[0]) if size is None else (lambda line: text_size(line, size)[0])
    lines: list[str] = []
    for word in text.split(" "):
        if lines and measure(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


@dataclasses.dataclass
class _Item:
    kind: str
    name: str
    lines: list[str]
    width: float
    height: float
    brick_type: str = ""
    inputs: list[str] = dataclasses.field(default_factory=list)  # port order, top to bottom (left side)
    outputs: list[str] = dataclasses.field(default_factory=list)  # port order, top to bottom (right side)
    column: int = 0
    center: float = 0.0  # along the column (picture y)
    left: float = 0.0

    @property
    def top(self) -> float:
        return self.center - self.height / 2

    def port(self, name: str, side: str) -> Point:
        names = self.outputs if side == "out" else self.inputs
        if self.kind != "brick" or name not in names:
            y = self.center
        else:
            y = self.top + (names.index(name) + 1) * self.height / (len(names) + 1)
        return (self.left + self.width, y) if side == "out" else (self.left, y)


def layout_brick_graph(collection: BrickCollection, stage: StageLike | None = None) -> GraphLayout:
    """Lay out the bricks alive in ``stage`` (every brick when None), their inputs and their unread outputs.

    Raises:
        ModuleNotFoundError: grandalf is not installed (``pip install grandalf``).
    """
    from grandalf.graphs import Edge, Graph, Vertex  # type: ignore[import-untyped]
    from grandalf.layouts import SugiyamaLayout  # type: ignore[import-untyped]

    flow = collection.data_flow(None if stage is None else parse_stage(stage))
    producer = {name: each[-1] for name, each in flow.producers.items()}  # the union of stages: the last declared
    readers = flow.readers
    items = _items(list(flow.nodes), dict(collection.named_bricks()), producer, readers)
    links = _links(items, producer, readers)  # (name, source, target), one per arrow

    vertices = {key: Vertex(key) for key in items}
    for key, vertex in vertices.items():  # grandalf lays out top-down: its "w" runs along a column (picture y)
        vertex.view = _View(items[key].height, items[key].width)
    edges = {link: Edge(vertices[link[1]], vertices[link[2]]) for link in links}
    for edge in edges.values():
        edge.view = _EdgeView()
    graph = Graph(list(vertices.values()), list(edges.values()))
    dummies: dict[tuple[str, Key, Key], dict[int, Any]] = {}
    offset = _MARGIN
    for component in graph.C:  # each connected part laid out on its own, the parts one below the other
        sugiyama = SugiyamaLayout(component)
        sugiyama.xspace, sugiyama.dw, sugiyama.dh = _GAP_Y, text_size("Hg")[1] + 6, 1.0
        sugiyama.init_all(optimize=True)  # optimize: a source moves next to its first reader
        sugiyama.draw()
        placed: dict[int, list[tuple[float, float, Any]]] = {}
        for vertex in component.sV:
            item = items[vertex.data]
            item.column, item.center = sugiyama.grx[vertex].rank, vertex.view.xy[0]
            placed.setdefault(item.column, []).append((item.center, item.height, item))
        for link, edge in edges.items():
            if edge in sugiyama.ctrls:
                first, last = items[link[1]].column, items[link[2]].column
                points = {rank: dummy.view for rank, dummy in sugiyama.ctrls[edge].items() if first < rank < last}
                dummies[link] = points
                for rank, view in points.items():
                    placed.setdefault(rank, []).append((view.xy[0], sugiyama.dw, view))
        offset = _spread(placed, offset) + _GAP_Y
    return _route(items, links, dummies, producer, readers, height=offset - _GAP_Y + _MARGIN)


class _View:
    """What grandalf reads (``w``, ``h``) and writes (``xy``) for a vertex."""

    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy: Point = (0.0, 0.0)


class _EdgeView:
    def setpath(self, points: list[Point]) -> None:
        self.points = points


def _spread(placed: dict[int, list[tuple[float, float, Any]]], offset: float) -> float:
    """Move each column's boxes and dummy points apart where grandalf's placement lets two overlap, shift the part
    to start at ``offset``; return where it ends."""
    low = min((center - size / 2 for column in placed.values() for center, size, _ in column), default=0.0)
    end = offset
    for column in placed.values():
        column.sort(key=lambda entry: entry[0])
        floor = -float("inf")
        for center, size, thing in column:
            center = max(center - low + offset, floor + size / 2)
            floor = center + size / 2 + _GAP_Y
            end = max(end, center + size / 2)
            if isinstance(thing, _Item):
                thing.center = center
            else:  # a dummy point's view
                thing.xy = (center, thing.xy[1])
    return end


def _items(
    nodes: list[BrickNode],
    bricks: Mapping[str, object],
    producer: Mapping[str, BrickNode],
    readers: Mapping[str, Sequence[BrickNode]],
) -> dict[Key, _Item]:
    line = text_size("Hg")[1]
    spacing = max(line, text_size("Hg", LABEL_SIZE)[1] + 4) + 4
    items: dict[Key, _Item] = {}
    for node in nodes:
        brick = bricks[node.path]
        describe = getattr(brick, "describe_model", lambda: "")()
        kind = type(brick).__name__
        lines = [node.path, *wrap(f"{kind}: {describe}" if describe else kind, _MAX_TEXT)]
        width = max(text_size(lines[0], weight="bold")[0], *(text_size(text)[0] for text in lines[1:])) + 2 * _PAD
        inputs = list(dict.fromkeys(node.data_inputs))
        outputs = list(node.output_names)
        height = max(len(lines) * line + 2 * _PAD, (max(len(inputs), len(outputs)) + 1) * spacing)
        items[("brick", node.path)] = _Item("brick", node.path, lines, width, height, kind, inputs, outputs)
        for name in inputs:
            if name not in producer and ("input", name) not in items:
                items[("input", name)] = _pill("input", name, line)
        for name in outputs:
            if name not in readers:
                items[("output", name)] = _pill("output", name, line)
    return items


def _pill(kind: str, name: str, line: float) -> _Item:
    return _Item(kind, name, [name], text_size(name)[0] + 28, line + 12, inputs=[name], outputs=[name])


def _links(
    items: Mapping[Key, _Item], producer: Mapping[str, BrickNode], readers: Mapping[str, Sequence[BrickNode]]
) -> list[tuple[str, Key, Key]]:
    links: list[tuple[str, Key, Key]] = []
    for key, item in items.items():
        if key[0] == "output":
            continue
        for name in item.outputs:
            if name in readers:
                links += [(name, key, ("brick", reader.path)) for reader in readers[name]]
            elif key[0] == "brick":
                links.append((name, key, ("output", name)))
    return links


def _route(
    items: dict[Key, _Item],
    links: list[tuple[str, Key, Key]],
    dummies: Mapping[tuple[str, Key, Key], Mapping[int, Any]],
    producer: Mapping[str, BrickNode],
    readers: Mapping[str, Sequence[BrickNode]],
    height: float,
) -> GraphLayout:
    _order_ports(items, links, dummies)
    count = max((item.column for item in items.values()), default=-1) + 1
    widths = [max([item.width for item in items.values() if item.column == c] + [0.0]) for c in range(count)]
    lefts, fans = [0.0] * count, [0.0] * count  # a column's left side; where its edges may fan out
    labels: list[EdgeLabel] = []
    left = _MARGIN
    for column in range(count):
        lefts[column] = left
        fans[column] = left + widths[column]
        for item in (item for item in items.values() if item.column == column):
            item.left = left + (widths[column] - item.width) / 2
            for name in item.outputs if item.kind == "brick" else []:
                if name not in readers:
                    continue
                x, y = item.port(name, "out")
                width, line = text_size(name, LABEL_SIZE)
                labels.append(EdgeLabel(name, (item.kind, item.name), (x + 4, y - line - 1, x + 4 + width, y - 1)))
                fans[column] = max(fans[column], x + width + 10)
        left = fans[column] + _FAN
    edges = []
    for link in links:
        name, source, target = link
        start, end = items[source].port(name, "out"), items[target].port(name, "in")
        points = [start, (fans[items[source].column], start[1])]
        for rank, view in sorted(dummies.get(link, {}).items()):
            points += [(lefts[rank], view.xy[0]), (fans[rank], view.xy[0])]
        points += [(lefts[items[target].column], end[1]), end]
        unique = [point for index, point in enumerate(points) if index == 0 or point != points[index - 1]]
        edges.append(EdgePath(name, source, target, tuple(unique)))
    boxes = {
        key: Box(
            item.kind,
            item.name,
            tuple(item.lines),
            item.column,
            item.left,
            item.top,
            item.width,
            item.height,
            item.brick_type,
        )
        for key, item in items.items()
    }
    width = left - _FAN + _MARGIN if count else 2 * _MARGIN
    return GraphLayout(boxes, tuple(edges), tuple(labels), width, max(height, 2 * _MARGIN))


def _order_ports(
    items: dict[Key, _Item],
    links: list[tuple[str, Key, Key]],
    dummies: Mapping[tuple[str, Key, Key], Mapping[int, Any]],
) -> None:
    """Each brick's ports in the order of where their edges go (outputs) or come from (inputs): fewer crossings."""
    toward: dict[tuple[Key, str], list[float]] = {}
    come: dict[tuple[Key, str], float] = {}
    for link in links:
        name, source, target = link
        passing = sorted(dummies.get(link, {}).items())
        toward.setdefault((source, name), []).append(passing[0][1].xy[0] if passing else items[target].center)
        come[(target, name)] = passing[-1][1].xy[0] if passing else items[source].center
    for key, item in items.items():
        if item.kind != "brick":
            continue
        item.outputs.sort(key=lambda name: sum(toward.get((key, name), [0.0])) / len(toward.get((key, name), [0.0])))
        item.inputs.sort(key=lambda name: come.get((key, name), 0.0))
