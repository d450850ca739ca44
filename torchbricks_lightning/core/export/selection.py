"""What an artefact holds: the outputs asked for (by default the stage's terminal outputs), and only the bricks
they need (the pruned graph), with no loss or metric brick slipping in unasked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.graph import BrickNode, needed_nodes
from torchbricks_lightning.core.metric_bricks import BrickMetrics
from torchbricks_lightning.core.outputs import check_output_names, terminal_output_names
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ExportError

__all__ = ["ExportGraph", "select_export_graph"]


@dataclass(frozen=True)
class ExportGraph:
    """The pruned graph of an artefact.

    Attributes:
        collection: the bricks the outputs need (shared with the full collection: same modules, same weights).
        stage: the exported stage.
        input_names: the inputs those bricks read, in first-use order.
        output_names: the artefact's outputs, in the order given (or in execution order by default).
        nodes: the bricks inside, in execution order.
    """

    collection: BrickCollection
    stage: Stage
    input_names: list[str]
    output_names: list[str]
    nodes: tuple[BrickNode, ...]


def _kind(node: BrickNode, bricks: dict[str, BrickInterface]) -> str | None:
    if node.loss_names:
        return "loss"
    if isinstance(bricks.get(node.path), BrickMetrics):
        return "metric"
    return None


def select_export_graph(
    collection: BrickCollection, stage: Stage, output_names: Sequence[str] | None = None
) -> ExportGraph:
    """The pruned graph of an artefact of ``stage`` with ``output_names`` (default: the stage's terminal outputs).

    Raises:
        ConfigError: a requested name is not produced in ``stage`` (with a close match).
        ExportError: a loss or metric brick is alive in ``stage`` and would be exported without being asked for by
            name (the message names the brick and the fix), or the stage produces nothing.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickLoss, BrickTrainable
        >>> collection = BrickCollection({
        ...     "backbone": BrickTrainable(nn.Identity(), input_names=["raw"], output_names=["features"]),
        ...     "head0": BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits0"]),
        ...     "head1": BrickTrainable(nn.Linear(4, 3), input_names=["features"], output_names=["logits1"]),
        ...     "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits0", "targets"], output_names=["ce"]),
        ... })
        >>> graph = select_export_graph(collection, Stage.EXPORT)
        >>> graph.input_names, graph.output_names
        (['raw'], ['logits0', 'logits1'])
        >>> [node.path for node in select_export_graph(collection, Stage.EXPORT, ["logits1"]).nodes]
        ['backbone', 'head1']
        >>> select_export_graph(collection, Stage.VALIDATION)
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ExportError: Could not export stage 'validation': brick 'loss' is a loss brick ...
    """
    plan = collection.plan(stage)
    requested = output_names is not None
    names = check_output_names(plan, output_names) if output_names is not None else terminal_output_names(plan)
    nodes = needed_nodes(plan, names) if names else ()
    bricks = dict(collection.named_bricks())
    unasked = [
        (node, kind)
        for node in (nodes if requested else plan.nodes)
        if (kind := _kind(node, bricks)) is not None and not (requested and set(node.output_names) & set(names))
    ]
    if unasked:
        raise ExportError(_unasked_message(stage, unasked, names if requested else None))
    if not names:
        raise ExportError(
            f"Stage {stage.value!r} produces nothing to export: no brick is alive in it (or no alive brick has "
            "outputs). Make the model's bricks alive in it (alive_stages), or export another stage."
        )
    pruned = collection.select(names, stage)
    return ExportGraph(
        collection=pruned, stage=stage, input_names=pruned.input_names(stage), output_names=names, nodes=nodes
    )


def _unasked_message(stage: Stage, unasked: Sequence[tuple[BrickNode, str]], asked: Sequence[str] | None) -> str:
    """Which loss and metric bricks would be exported unasked, and the ways out."""
    inputs = list(dict.fromkeys(name for node, _ in unasked for name in node.data_inputs))
    outputs = [name for node, _ in unasked for name in node.output_names]
    one = len(unasked) == 1
    described = (
        f"brick {unasked[0][0].path!r} is a {unasked[0][1]} brick alive in it"
        if one
        else f"{len(unasked)} loss and metric bricks are alive in it, "
        + ", ".join(f"{node.path!r} ({kind})" for node, kind in unasked)
    )
    message = (
        f"Could not export stage {stage.value!r}: {described}, so the artefact would take "
        f"{'its' if one else 'their'} inputs ({inputs}) and compute {'the ' + unasked[0][1] if one else 'them'}."
        + (f" Asked for: {list(asked)}." if asked is not None else "")
        + f" Losses and metrics belong to training, not to an exported model: make {'it' if one else 'them'} dead "
        f"in {stage.value!r} with alive_stages=['train', 'validation', 'test'] (the default of loss and metric "
        "bricks), or pass output_names with the outputs to export"
        + (f", including {outputs} to export {'it' if one else 'them'} on purpose." if outputs else ".")
    )
    if stage is not Stage.EXPORT:
        message += (
            f" Or export stage {Stage.EXPORT.value!r} (--stage export on the command line), where loss and metric "
            "bricks are dead by default."
        )
    return message
