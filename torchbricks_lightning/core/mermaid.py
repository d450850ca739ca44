"""Draw a brick collection as a mermaid flowchart."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.graph import BrickNode
from torchbricks_lightning.core.stages import StageLike, parse_stage

__all__ = ["create_mermaid_dag_graph"]

_COLORS = {
    "BrickNotTrainable": "#B56576",
    "BrickTrainable": "#6D597A",
    "BrickLoss": "#5C677D",
    "BrickMetrics": "#1450A3",
    "BrickMetricSingle": "#1450A3",
}
_DEFAULT_COLOR = "#355070"


def _node_id(kind: str, name: str) -> str:
    """A mermaid id that is unique per name: '_' is doubled, '/' becomes '_s', other symbols '_xHH'."""
    escaped = re.sub(r"[^0-9A-Za-z]", lambda m: {"_": "__", "/": "_s"}.get(m.group(), f"_x{ord(m.group()):02x}"), name)
    return f"{kind}_{escaped}"


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


def create_mermaid_dag_graph(
    brick_collection: BrickCollection,
    stage: StageLike | None = None,
    add_legends: bool = True,
) -> str:
    """Return mermaid flowchart text of the collection's graph.

    Inputs (names no drawn brick produces) are drawn as input nodes, outputs (names no drawn brick
    reads) as output nodes, edges carry the data names, and nested collections become subgraphs.

    Args:
        brick_collection: the collection to draw.
        stage: draw only the bricks alive in this stage; ``None`` draws every brick that is alive in
            any stage.
        add_legends: add a small legend for inputs and outputs.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning.core import BrickCollection, BrickLoss, BrickTrainable
        >>> collection = BrickCollection({
        ...     "head": BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits"]),
        ...     "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss"]),
        ... })
        >>> print(create_mermaid_dag_graph(collection, stage="inference", add_legends=False))
        flowchart LR
            %% Bricks
            brick_head("<strong>BrickTrainable</strong><br><strong>head</strong>: Linear"):::BrickTrainable
            %% Inputs and outputs
            input_features(["features"]):::input --> brick_head
            brick_head --> output_logits(["logits"]):::output
            %% Data flow between bricks
            %% Styles
            classDef input stroke-width:0px,fill-opacity:0.3,fill:#22A699
            classDef output stroke-width:0px,fill-opacity:0.3,fill:#F2BE22
            classDef BrickTrainable stroke-width:0px,color:#fff,fill:#6D597A
    """
    parsed = None if stage is None else parse_stage(stage, where="create_mermaid_dag_graph")
    bricks = dict(brick_collection.named_bricks())
    flow = brick_collection.data_flow(parsed)
    nodes = sorted(flow.nodes, key=lambda node: node.index)  # declaration order
    producers, consumed = flow.producers, flow.readers

    lines = ["flowchart LR", "    %% Bricks"]
    lines += _brick_lines(nodes, bricks)
    lines.append("    %% Inputs and outputs")
    for node in nodes:
        for name in node.data_inputs:
            if name not in producers:
                lines.append(
                    f'    {_node_id("input", name)}(["{_label(name)}"]):::input --> {_node_id("brick", node.path)}'
                )
    for node in nodes:
        for name in node.output_names:
            if name not in consumed:
                lines.append(
                    f'    {_node_id("brick", node.path)} --> {_node_id("output", name)}(["{_label(name)}"]):::output'
                )
    lines.append("    %% Data flow between bricks")
    for node in nodes:
        for name in node.data_inputs:
            for producer in producers.get(name, []):
                lines.append(
                    f'    {_node_id("brick", producer.path)} --> |"{_label(name)}"| {_node_id("brick", node.path)}'
                )
    lines.append("    %% Styles")
    lines.append("    classDef input stroke-width:0px,fill-opacity:0.3,fill:#22A699")
    lines.append("    classDef output stroke-width:0px,fill-opacity:0.3,fill:#F2BE22")
    for kind in dict.fromkeys(type(bricks[node.path]).__name__ for node in nodes):
        lines.append(f"    classDef {kind} stroke-width:0px,color:#fff,fill:{_COLORS.get(kind, _DEFAULT_COLOR)}")
    if add_legends:
        lines += [
            "    subgraph Legends",
            '        legend_input(["input"]):::input',
            '        legend_output(["output"]):::output',
            "    end",
        ]
    return "\n".join(lines)


def _brick_lines(nodes: Sequence[BrickNode], bricks: dict[str, BrickInterface]) -> list[str]:
    """Brick declarations, nested in one mermaid subgraph per nested collection."""
    lines: list[str] = []
    open_path: list[str] = []
    for node in nodes:
        directory = node.path.split("/")[:-1]
        common = 0
        while common < min(len(open_path), len(directory)) and open_path[common] == directory[common]:
            common += 1
        while len(open_path) > common:
            open_path.pop()
            lines.append("    " * (len(open_path) + 1) + "end")
        while len(open_path) < len(directory):
            open_path.append(directory[len(open_path)])
            path = "/".join(open_path)
            lines.append("    " * len(open_path) + f'subgraph {_node_id("group", path)}["{_label(path)}"]')
        brick = bricks[node.path]
        kind = type(brick).__name__
        description = brick.describe_model()
        label = f"<strong>{kind}</strong><br><strong>{node.path}</strong>" + (f": {description}" if description else "")
        lines.append("    " * (len(open_path) + 1) + f'{_node_id("brick", node.path)}("{_label(label)}"):::{kind}')
    while open_path:
        open_path.pop()
        lines.append("    " * (len(open_path) + 1) + "end")
    return lines
