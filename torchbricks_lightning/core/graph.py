"""Pure graph logic: resolve relative names, validate, and order the bricks of each stage.

Everything here works on plain :class:`BrickNode` records, with no module state, so it is cheap to test
and runs once per stage when a collection builds its plans (never per call). :class:`DataFlow` is the one place
that says who produces and who reads each data name; a :class:`StagePlan` is the data flow of one stage.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from torchbricks_lightning.core.names import ALL_INPUTS, RESERVED_INPUT_NAMES
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import (
    ConfigError,
    CycleError,
    DuplicateOutputError,
    InvalidNameError,
    did_you_mean,
)

__all__ = [
    "BrickNode",
    "DataFlow",
    "StagePlan",
    "join_path",
    "needed_nodes",
    "plan_stage",
    "resolve_name",
]


@dataclass(frozen=True)
class BrickNode:
    """One brick of a collection, flattened: its path and its names resolved to absolute data names.

    Attributes:
        path: the brick's place in the collection, e.g. ``'head0/classify'``.
        positional_inputs: data names passed positionally.
        keyword_inputs: ``(argument_name, data_name)`` pairs passed as keyword arguments.
        output_names: absolute data names of the outputs.
        loss_names: the outputs that are losses.
        loss_weight: the weight of those losses in the total loss.
        alive_stages: the stages in which the brick runs.
        receives_stage: whether the brick gets the stage as the keyword argument ``stage``.
        index: the brick's position in declaration order (ties in the topological order keep it).
        visualizes: whether the brick draws pictures (a ``BrickVisualization``): no stage's plan holds it.
    """

    path: str
    positional_inputs: tuple[str, ...]
    keyword_inputs: tuple[tuple[str, str], ...]
    output_names: tuple[str, ...]
    loss_names: tuple[str, ...]
    loss_weight: float
    alive_stages: frozenset[Stage]
    receives_stage: bool
    index: int
    visualizes: bool = False

    @functools.cached_property
    def input_names(self) -> tuple[str, ...]:
        """Every data name the brick reads, positional first."""
        return self.positional_inputs + tuple(name for _, name in self.keyword_inputs)

    @functools.cached_property
    def data_inputs(self) -> tuple[str, ...]:
        """The input names that must come from data (not ``'stage'`` or ``'__all__'``)."""
        return tuple(name for name in self.input_names if name not in RESERVED_INPUT_NAMES)

    @functools.cached_property
    def reads_all(self) -> bool:
        """Whether the brick reads every named value through ``'__all__'``."""
        return ALL_INPUTS in self.input_names

    @functools.cached_property
    def updates_only(self) -> bool:
        """Whether the brick gets the stage and returns nothing: a metric brick updating its metrics.

        No other brick can depend on it, so a compiled call may leave it out and let its eager caller run it
        afterwards (``BrickCollection.update_metrics``).
        """
        return self.receives_stage and not self.output_names


@dataclass(frozen=True)
class DataFlow:
    """Who produces and who reads each data name among ``nodes``: the one place these facts are worked out.

    Reading ``'stage'`` or ``'__all__'`` is not reading a data name (see :attr:`BrickNode.data_inputs`), so a brick
    that reads every value does not make the values it sees intermediate.

    Attributes:
        nodes: the bricks, in the order the answers follow.

    Example:
        >>> def node(path, inputs, outputs, index):
        ...     return BrickNode(path, inputs, (), outputs, (), 1.0, frozenset(Stage), False, index)
        >>> flow = DataFlow((node("backbone", ("raw",), ("features",), 0), node("head", ("features",), ("logits",), 1)))
        >>> flow.input_names, flow.terminal_output_names
        (('raw',), ('logits',))
        >>> [node.path for node in flow.readers["features"]], [node.path for node in flow.producers["features"]]
        (['head'], ['backbone'])
    """

    nodes: tuple[BrickNode, ...]

    @functools.cached_property
    def producers(self) -> dict[str, tuple[BrickNode, ...]]:
        """The bricks producing each name, in node order (one per name within a stage)."""
        producers: dict[str, list[BrickNode]] = {}
        for node in self.nodes:
            for name in node.output_names:
                producers.setdefault(name, []).append(node)
        return {name: tuple(nodes) for name, nodes in producers.items()}

    @functools.cached_property
    def readers(self) -> dict[str, tuple[BrickNode, ...]]:
        """The bricks reading each data name, in node order."""
        readers: dict[str, list[BrickNode]] = {}
        for node in self.nodes:
            for name in dict.fromkeys(node.data_inputs):
                readers.setdefault(name, []).append(node)
        return {name: tuple(nodes) for name, nodes in readers.items()}

    @functools.cached_property
    def input_names(self) -> tuple[str, ...]:
        """The names read that no brick produces (what a caller must provide), in first-use order."""
        producers = self.producers
        return tuple(name for name in self.readers if name not in producers)

    @functools.cached_property
    def terminal_output_names(self) -> tuple[str, ...]:
        """The names produced that no brick reads (the results), in node order."""
        readers = self.readers
        return tuple(name for node in self.nodes for name in node.output_names if name not in readers)


@dataclass(frozen=True)
class StagePlan(DataFlow):
    """The bricks alive in one stage, in execution order, with the stage's interface.

    As a :class:`DataFlow` it also answers ``producers`` (one brick per name), ``readers``, ``input_names`` (the
    same as ``required_inputs``) and ``terminal_output_names``, all in execution order.

    Attributes:
        nodes: the alive bricks in a topological order (producers before consumers).
        stage: the stage.
        required_inputs: names the caller must provide, in first-use order.
        output_names: every name the stage produces, in execution order.
        loss_weights: ``(name, weight)`` of each produced name that is a loss, in execution order.
    """

    stage: Stage
    required_inputs: tuple[str, ...]
    output_names: tuple[str, ...]
    loss_weights: tuple[tuple[str, float], ...]


def join_path(directory: str, name: str) -> str:
    """Join a collection path and a name: ``join_path('head0', 'loss') == 'head0/loss'``."""
    return f"{directory}/{name}" if directory else name


def resolve_name(name: str, directory: str, *, brick_path: str, role: str) -> str:
    """Turn a relative data name (``./x``, ``../x``) into an absolute one, seen from ``directory``.

    Args:
        name: the declared name.
        directory: the path of the collection holding the brick ('' at the root).
        brick_path: the brick's path, for error messages.
        role: ``'input'`` or ``'output'``, for error messages.

    Raises:
        InvalidNameError: the name climbs above the root collection.

    Example:
        >>> resolve_name("./logits", "head0", brick_path="head0/classify", role="output")
        'head0/logits'
        >>> resolve_name("../features", "heads/head0", brick_path="heads/head0/classify", role="input")
        'heads/features'
        >>> resolve_name("features", "head0", brick_path="head0/classify", role="input")
        'features'
    """
    if not (name.startswith("./") or name.startswith("../")):
        return name
    parts = directory.split("/") if directory else []
    segments = name.split("/")
    while segments and segments[0] in (".", ".."):
        segment = segments.pop(0)
        if segment == "..":
            if not parts:
                raise InvalidNameError(
                    f"Brick {brick_path!r} has the {role} name {name!r}, which climbs above the root collection "
                    f"(the brick sits at depth {directory.count('/') + 1 if directory else 0}). "
                    "Remove a '../' or use an absolute name."
                )
            parts.pop()
    if not segments:
        raise InvalidNameError(f"Brick {brick_path!r} has the {role} name {name!r}, which names no value.")
    return "/".join(parts + segments)


def _check_duplicates(flow: DataFlow, stage: Stage) -> None:
    for name, nodes in flow.producers.items():
        if len(nodes) > 1:
            raise DuplicateOutputError(
                f"Bricks {nodes[0].path!r} and {nodes[1].path!r} both produce {name!r} in stage {stage.value!r}. "
                "Rename one output, or make the bricks alive in different stages."
            )


def _topological_order(flow: DataFlow, stage: Stage) -> tuple[BrickNode, ...]:
    """Order ``flow.nodes`` so producers run before consumers; ties keep declaration order.

    A brick reading ``'__all__'`` runs after every brick it does not itself feed (directly or not). The order is
    Kahn's algorithm with a heap of ready bricks: O((bricks + edges) log bricks), plus O(bricks) per ``'__all__'``
    brick.
    """
    nodes = flow.nodes
    position = {node.path: i for i, node in enumerate(nodes)}
    producer = {name: position[each[0].path] for name, each in flow.producers.items()}
    depends_on: list[set[int]] = [set() for _ in nodes]
    for i, node in enumerate(nodes):
        for name in node.data_inputs:
            j = producer.get(name)
            if j == i:
                raise CycleError(f"Brick {node.path!r} reads its own output {name!r} in stage {stage.value!r}.")
            if j is not None:
                depends_on[i].add(j)
    reads_all = [i for i, node in enumerate(nodes) if node.reads_all]
    if reads_all:
        # Work out what every '__all__' brick feeds from the declared edges first, then add its edges.
        consumers = _consumers(depends_on)
        fed = {i: _descendants(i, consumers) for i in reads_all}
        for i in reads_all:
            for j in range(len(nodes)):
                if j == i:
                    continue
                if j in fed[i]:
                    depends_on[j].add(i)
                elif j not in fed or (j < i and i not in fed[j]):
                    depends_on[i].add(j)
    consumers = _consumers(depends_on)
    waiting = [len(deps) for deps in depends_on]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):
        done = set(order)
        stuck = [nodes[i] for i in range(len(nodes)) if i not in done]
        raise CycleError(
            f"Bricks {_describe_cycle(stuck, producer, nodes)} form a cycle in stage {stage.value!r}: each needs an "
            "output of another. Break the cycle by renaming an input or making a brick dead in this stage."
        )
    return tuple(nodes[i] for i in order)


def _consumers(depends_on: Sequence[set[int]]) -> list[list[int]]:
    """The reverse edges: for each brick, the bricks that depend on it directly."""
    consumers: list[list[int]] = [[] for _ in depends_on]
    for i, deps in enumerate(depends_on):
        for j in deps:
            consumers[j].append(i)
    return consumers


def _descendants(start: int, consumers: Sequence[Sequence[int]]) -> set[int]:
    """Every brick that depends on ``start``, directly or not (a depth-first walk of the reverse edges)."""
    found: set[int] = set()
    stack = list(consumers[start])
    while stack:
        j = stack.pop()
        if j not in found and j != start:
            found.add(j)
            stack.extend(consumers[j])
    return found


def _describe_cycle(stuck: Sequence[BrickNode], producer: dict[str, int], nodes: Sequence[BrickNode]) -> str:
    stuck_paths = {node.path for node in stuck}
    edges = [
        f"{nodes[producer[name]].path!r} -({name})-> {node.path!r}"
        for node in stuck
        for name in node.data_inputs
        if name in producer and nodes[producer[name]].path in stuck_paths
    ]
    return ", ".join(edges) if edges else ", ".join(repr(node.path) for node in stuck)


def plan_stage(nodes: Sequence[BrickNode], stage: Stage) -> StagePlan:
    """Build the plan of ``stage``: keep the alive bricks, check them, and order them by their names.

    Raises:
        DuplicateOutputError: two alive bricks produce the same name.
        CycleError: the alive bricks depend on each other in a cycle.
    """
    alive = DataFlow(tuple(node for node in nodes if stage in node.alive_stages and not node.visualizes))
    _check_duplicates(alive, stage)
    ordered = DataFlow(_topological_order(alive, stage))
    # No brick reads its own output (a CycleError above), so what is read and not produced is what the caller gives.
    return StagePlan(
        nodes=ordered.nodes,
        stage=stage,
        required_inputs=ordered.input_names,
        output_names=tuple(name for node in ordered.nodes for name in node.output_names),
        loss_weights=tuple((name, node.loss_weight) for node in ordered.nodes for name in node.loss_names),
    )


def needed_nodes(plan: StagePlan, output_names: Sequence[str]) -> tuple[BrickNode, ...]:
    """The bricks of ``plan`` that ``output_names`` depend on, directly or not, in execution order.

    This is tensordict's ``select_subsequence(out_keys=...)`` for a brick graph: walk back from the requested names
    through their producers. A brick reading ``'__all__'`` depends on every brick that runs before it.

    Raises:
        ConfigError: a name is not produced in the plan's stage, or no name is given.

    Example:
        >>> from torchbricks_lightning.core.stages import Stage
        >>> def node(path, inputs, outputs, index):
        ...     return BrickNode(path, inputs, (), outputs, (), 1.0, frozenset(Stage), False, index)
        >>> nodes = [node("pre", ("raw",), ("x",), 0), node("a", ("x",), ("a",), 1), node("b", ("raw",), ("b",), 2)]
        >>> [n.path for n in needed_nodes(plan_stage(nodes, Stage.EXPORT), ["a"])]
        ['pre', 'a']
    """
    if isinstance(output_names, str):
        output_names = [output_names]
    if not output_names:
        raise ConfigError(
            f"Expected at least one output name to select in stage {plan.stage.value!r}; it produces "
            f"{list(plan.output_names)}."
        )
    position = {node.path: i for i, node in enumerate(plan.nodes)}
    producer = {name: nodes[0] for name, nodes in plan.producers.items()}
    unknown = [name for name in output_names if name not in producer]
    if unknown:
        raise ConfigError(
            f"Cannot select {unknown}: no brick alive in stage {plan.stage.value!r} produces "
            f"{'it' if len(unknown) == 1 else 'them'}. It produces {list(plan.output_names)}."
            f"{did_you_mean(unknown[0], plan.output_names)} Make the brick alive in {plan.stage.value!r} "
            "(alive_stages), or pick another stage."
        )
    needed: set[str] = set()
    stack = [producer[name] for name in output_names]
    while stack:
        node = stack.pop()
        if node.path in needed:
            continue
        needed.add(node.path)
        if node.reads_all:
            stack.extend(plan.nodes[: position[node.path]])
        stack.extend(producer[name] for name in node.data_inputs if name in producer)
    return tuple(node for node in plan.nodes if node.path in needed)
