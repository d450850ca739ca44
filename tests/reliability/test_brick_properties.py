"""Property-based tests of the brick graph: random DAGs against a reference evaluator written here.

A hypothesis strategy draws a DAG spec: external input names, then bricks that each read a random subset of the
names available so far (sometimes also the special ``'stage'`` input, and in at most one brick ``'__all__'``) and
write 1-3 fresh names. Each brick's module computes ``(sum of its inputs) * scale + offset_j`` for its output ``j``,
with integer constants, in float64, so the reference evaluation below computes the very same numbers (exactly).
Each drawn DAG is then built in a random way:

- bricks sit in randomly nested groups (plain nested dicts, or ``BrickCollection`` instances when that is valid);
- every dict is filled in a random insertion order, or the root is filled item by item, or every brick is assigned
  into its (already nested) group one by one, in random order, with the plans queried half-way;
- every name is written in a random equivalent form: absolute (``g0/v3``), ``./rest`` or ``../``-climbing;
- every brick gets random alive stages (default, ``'all'``, ``'none'`` or a list of stages as enums or strings);
- a name may be produced by two bricks alive in disjoint stages.

The reference is independent of the library: it works on the absolute names of the spec and encodes the documented
rules (README "Bricks are alive in some stages only" / "Clear errors, early" and ``core/graph.py``):

- in a stage, every alive brick runs and every dead brick is skipped; nothing is pruned for reachability, so an
  alive brick that reads an output of a dead brick makes that name a required input of the stage;
- the required inputs of a stage are the names alive bricks read that no alive brick produces, in first-use order;
  the outputs are the names alive bricks produce, in execution order; ``forward`` returns the inputs then the
  outputs and raises ``MissingInputError`` (naming a brick that needs the name, the name and the stage) if a
  required input is absent; bricks that do not calculate gradients give outputs without gradients;
- a brick reading ``'__all__'`` gets every named value: the inputs and the outputs of every other alive brick
  except those that need its own outputs;
- at construction the stages are checked in ``Stage`` order, duplicates before cycles, and only among the bricks
  alive in each stage; relative names climbing above the root and malformed names raise ``InvalidNameError``.

Invalid DAGs are valid ones mutated in one place, and must fail with the specific error and a message naming the
brick(s) and the name.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from torchbricks_lightning import BrickCollection, BrickModule, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.errors import (
    CycleError,
    DuplicateOutputError,
    InvalidNameError,
    MissingInputError,
    TorchBricksError,
)

STAGES: tuple[Stage, ...] = tuple(Stage)
SPECIAL = ("stage", "__all__")
STAGE_TERM = {stage: 1000.0 * (index + 1) for index, stage in enumerate(STAGES)}
"""What a module adds to its sum for the special ``'stage'`` input, so the stage passed is checked too."""

# Deterministic for CI: no example database, derandomized generation, no deadline (first calls warm up torch).
# No explain phase: on a failure it re-runs variations of the failing example for minutes here, and shrinking
# already gives a minimal DAG.
PROPERTIES = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow],
)
MUTATIONS = settings(PROPERTIES, max_examples=120)


# ----------------------------------------------------------------------------------------------- the DAG spec
@dataclasses.dataclass(frozen=True)
class BrickSpec:
    """One brick of a drawn DAG.

    ``inputs``/``outputs`` are absolute data names (what the reference uses); ``declared_inputs``/
    ``declared_outputs`` are the same names as written in the brick (absolute or relative).
    """

    name: str
    directory: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    declared_inputs: tuple[str, ...]
    declared_outputs: tuple[str, ...]
    keyword_inputs: bool
    alive: frozenset[Stage]
    alive_argument: Any  # None: the class default (all stages for these classes)
    kind: str  # "trainable", "frozen", "frozen_no_grad" or "module"
    scale: float
    offsets: tuple[float, ...]
    returns_list: bool

    @property
    def path(self) -> str:
        return join(self.directory, self.name)

    @property
    def calculates_gradients(self) -> bool:
        return self.kind != "frozen_no_grad"


@dataclasses.dataclass(frozen=True)
class DagSpec:
    """A drawn DAG and the way to build it.

    ``groups`` are the nested collection paths ('' is the root); ``order`` gives, for each group, its children
    (brick names and sub-group names) in dict insertion order; ``as_collection`` are the groups built as
    ``BrickCollection`` instances rather than plain dicts. ``build`` is how the root is made: ``"constructor"``
    (``BrickCollection(nested dict)``), ``"assign_root"`` (an empty root, then one item per top-level child) or
    ``"assign_all"`` (an empty root, empty nested groups, then every brick assigned into its group in
    ``assignment_order``, with the plans queried half-way so that cached plans must be rebuilt).
    """

    external: tuple[str, ...]
    bricks: tuple[BrickSpec, ...]
    groups: tuple[str, ...]
    order: tuple[tuple[str, tuple[str, ...]], ...]
    as_collection: frozenset[str]
    build: str
    assignment_order: tuple[int, ...]  # indices into bricks


def join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def parent(group: str) -> str:
    return group.rpartition("/")[0]


def depth(group: str) -> int:
    return group.count("/") + 1 if group else 0


def ancestors(directory: str) -> list[str]:
    """``directory`` and every collection above it, innermost first, ending with the root ''."""
    found = [directory]
    while found[-1]:
        found.append(parent(found[-1]))
    return found


def name_forms(absolute: str, directory: str) -> list[str]:
    """Every way (per the README) a brick in ``directory`` can write the data name ``absolute``.

    Absolute as is, ``./rest`` when it lies under ``directory``, and ``../`` climbing to any enclosing collection
    that holds it (the root holds everything).
    """
    forms = [absolute]
    for up, holder in enumerate(ancestors(directory)):
        if holder and not absolute.startswith(holder + "/"):
            continue
        rest = absolute[len(holder) + 1 :] if holder else absolute
        forms.append(("./" if up == 0 else "../" * up) + rest)
    return forms


def reference_resolve(declared: str, directory: str) -> str | None:
    """The test's own reading of a declared name seen from ``directory``; None if it climbs above the root."""
    if declared.startswith("./"):
        return join(directory, declared[2:])
    if not declared.startswith("../"):
        return declared
    parts = directory.split("/") if directory else []
    while declared.startswith("../"):
        if not parts:
            return None
        parts.pop()
        declared = declared[3:]
    return "/".join([*parts, declared])


# ----------------------------------------------------------------------------------------------- the modules
class SumAffine(nn.Module):
    """Output ``j`` is ``(sum of the inputs) * scale + offsets[j]``.

    A ``Stage`` input adds ``STAGE_TERM``; an ``'__all__'`` dict adds the sum of all its tensors (and its keys are
    recorded in ``seen``).
    """

    def __init__(self, scale: float, offsets: Sequence[float], returns_list: bool) -> None:
        super().__init__()
        self.scale = scale
        self.offsets = tuple(offsets)
        self.returns_list = returns_list
        self.seen: list[list[str]] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        total = torch.zeros((), dtype=torch.float64)
        for value in (*args, *kwargs.values()):
            if isinstance(value, dict):
                self.seen.append(list(value))
                for tensor in value.values():
                    total = total + tensor.sum()
            else:
                total = total + (STAGE_TERM[value] if isinstance(value, Stage) else value)
        outputs = [total * self.scale + offset for offset in self.offsets]
        if len(outputs) == 1:
            return outputs[0]
        return outputs if self.returns_list else tuple(outputs)


def make_brick(spec: BrickSpec) -> BrickModule:
    module = SumAffine(spec.scale, spec.offsets, spec.returns_list)
    if spec.keyword_inputs:
        input_names: Any = {f"arg{k}": name for k, name in enumerate(spec.declared_inputs)}
    else:
        input_names = list(spec.declared_inputs)
    kwargs: dict[str, Any] = {"input_names": input_names, "output_names": list(spec.declared_outputs)}
    if spec.alive_argument is not None:
        kwargs["alive_stages"] = spec.alive_argument
    if spec.kind == "trainable":
        return BrickTrainable(module, **kwargs)
    if spec.kind == "module":
        return BrickModule(module, **kwargs)
    return BrickNotTrainable(module, calculate_gradients=spec.kind == "frozen", **kwargs)


def build_collection(spec: DagSpec, query_midway: bool = True) -> BrickCollection:
    """Build the collection the spec describes (nesting, insertion order, dicts or collections).

    ``query_midway=False`` skips the half-way query of ``"assign_all"`` (for invalid specs, whose first half may
    already fail, in another stage than the whole).
    """
    bricks = {brick.path: brick for brick in spec.bricks}
    order = dict(spec.order)

    def build(group: str) -> dict[str, Any]:
        children: dict[str, Any] = {}
        for child in order[group]:
            path = join(group, child)
            if path in bricks:
                children[child] = make_brick(bricks[path])
            elif path in spec.as_collection:
                children[child] = BrickCollection(build(path))
            else:
                children[child] = build(path)
        return children

    collection = BrickCollection()
    if spec.build == "constructor":
        return BrickCollection(build(""))
    if spec.build == "assign_root":
        for name, value in build("").items():
            collection[name] = value
        return collection

    def group_of(path: str) -> BrickCollection:
        found = collection
        for part in path.split("/") if path else []:
            found = found[part]
        return found

    for group in spec.groups[1:]:  # parents come before their sub-groups
        group_of(parent(group))[group.rpartition("/")[2]] = {}
    for count, index in enumerate(spec.assignment_order):
        if query_midway and count == len(spec.assignment_order) // 2:
            collection.input_names(Stage.TRAIN)  # builds and caches the plans of the bricks assigned so far
        brick = spec.bricks[index]
        group_of(brick.directory)[brick.name] = make_brick(brick)
    return collection


# ----------------------------------------------------------------------------------------------- the reference
def alive_bricks(bricks: Sequence[BrickSpec], stage: Stage) -> list[BrickSpec]:
    return [brick for brick in bricks if stage in brick.alive]


def data_inputs(brick: BrickSpec) -> tuple[str, ...]:
    return tuple(name for name in brick.inputs if name not in ("stage", "__all__"))


def downstream_of(start: BrickSpec, alive: Sequence[BrickSpec]) -> set[str]:
    """The paths of the alive bricks that read ``start``'s outputs, directly or not (``start`` included)."""
    found = {start.path}
    grew = True
    while grew:
        produced = {name for brick in alive if brick.path in found for name in brick.outputs}
        grew = False
        for brick in alive:
            if brick.path not in found and produced & set(data_inputs(brick)):
                found.add(brick.path)
                grew = True
    return found


def observer_of(alive: Sequence[BrickSpec]) -> BrickSpec | None:
    """The alive brick reading ``'__all__'`` (the strategy draws at most one)."""
    return next((brick for brick in alive if "__all__" in brick.inputs), None)


def reference_required(bricks: Sequence[BrickSpec], stage: Stage) -> set[str]:
    alive = alive_bricks(bricks, stage)
    produced = {name for brick in alive for name in brick.outputs}
    return {name for brick in alive for name in data_inputs(brick) if name not in produced}


def reference_produced(bricks: Sequence[BrickSpec], stage: Stage) -> list[str]:
    return [name for brick in alive_bricks(bricks, stage) for name in brick.outputs]


def reference_graph_error(bricks: Sequence[BrickSpec]) -> tuple[type[TorchBricksError], Stage, Any] | None:
    """The first problem found when the stages are checked in order (duplicates before cycles), or None.

    Returns ``(DuplicateOutputError, stage, (name, paths))`` or ``(CycleError, stage, paths in a cycle)``.
    """
    for stage in STAGES:
        alive = alive_bricks(bricks, stage)
        producers: dict[str, list[str]] = {}
        for brick in alive:
            for name in brick.outputs:
                producers.setdefault(name, []).append(brick.path)
        for name, paths in producers.items():
            if len(paths) > 1:
                return DuplicateOutputError, stage, (name, paths)
        # Peel off bricks whose produced inputs are all done; whatever is left sits on or behind a cycle.
        remaining = {brick.path: brick for brick in alive}
        while True:
            ready = [
                path
                for path, brick in remaining.items()
                if not any(producers.get(name, [None])[0] in remaining for name in data_inputs(brick))
            ]
            if not ready:
                break
            for path in ready:
                del remaining[path]
        if remaining:
            return CycleError, stage, set(remaining)
    return None


def input_value(name: str) -> torch.Tensor:
    """A distinct, deterministic, integer-valued input for ``name`` (exact in float64)."""
    h = zlib.crc32(name.encode()) % 89 + 1
    return torch.tensor([float(h), -2.0 * h, 3.0], dtype=torch.float64, requires_grad=h % 2 == 0)


def reference_forward(
    bricks: Sequence[BrickSpec], stage: Stage, inputs: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], set[str] | None]:
    """Run the alive bricks of ``stage`` in a topological order of their absolute names, in plain torch.

    A brick reading ``'__all__'`` gets every named value (README), so it runs once every other alive brick has run,
    except those that need its own outputs. Returns ``{name: (value, requires_grad)}`` for every produced name, and
    the names that brick gets (None without one).
    """
    values: dict[str, torch.Tensor] = {name: value.detach() for name, value in inputs.items()}
    grads = {name: value.requires_grad for name, value in inputs.items()}
    pending = alive_bricks(bricks, stage)
    observer = observer_of(pending)
    after_observer = downstream_of(observer, pending) if observer else set()
    observed: set[str] | None = None
    results: dict[str, Any] = {}
    while pending:
        ready = [
            brick
            for brick in pending
            if all(name in values for name in data_inputs(brick))
            and (brick is not observer or all(other.path in after_observer for other in pending))
        ]
        assert ready, f"reference: no alive brick can run in {stage.value}, the drawn DAG is not a DAG"
        brick = ready[0]
        pending.remove(brick)
        total = torch.zeros((), dtype=torch.float64)
        read = set(data_inputs(brick))
        for name in brick.inputs:
            if name == "__all__":
                observed = set(values)
                read |= observed
                for value in values.values():
                    total = total + value.sum()
            else:
                total = total + (STAGE_TERM[stage] if name == "stage" else values[name])
        needs_grad = brick.calculates_gradients and any(grads[name] for name in read)
        for name, offset in zip(brick.outputs, brick.offsets, strict=True):
            values[name] = total * brick.scale + offset
            grads[name] = needs_grad
            results[name] = (values[name], needs_grad)
    return results, observed


# ----------------------------------------------------------------------------------------------- the strategy
@st.composite
def alive_stages(draw: st.DrawFn) -> tuple[Any, frozenset[Stage]]:
    kind = draw(st.sampled_from(["default", "all", "none", "list", "list"]))
    if kind == "default":
        return None, frozenset(STAGES)
    if kind == "all":
        return "all", frozenset(STAGES)
    if kind == "none":
        return "none", frozenset()
    stages = draw(st.lists(st.sampled_from(STAGES), unique=True, max_size=4))
    written = [draw(st.sampled_from([stage, stage.value, stage.value.upper()])) for stage in stages]
    return written, frozenset(stages)


def standalone_is_valid(group: str, bricks: Sequence[BrickSpec]) -> bool:
    """Whether ``BrickCollection(...)`` of ``group`` on its own (validated as a root, its relative names resolved
    against itself) builds; only then may the test nest it as a collection instance rather than a dict."""
    inside: list[BrickSpec] = []
    for brick in bricks:
        if brick.directory != group and not brick.directory.startswith(group + "/"):
            continue
        relative_directory = brick.directory[len(group) + 1 :] if brick.directory != group else ""
        names = []
        for declared in (*brick.declared_inputs, *brick.declared_outputs):
            resolved = reference_resolve(declared, relative_directory)
            if resolved is None:
                return False
            names.append(resolved)
        n_inputs = len(brick.declared_inputs)
        inside.append(
            dataclasses.replace(
                brick, directory=relative_directory, inputs=tuple(names[:n_inputs]), outputs=tuple(names[n_inputs:])
            )
        )
    return reference_graph_error(inside) is None


@st.composite
def dags(draw: st.DrawFn, max_bricks: int = 8) -> DagSpec:
    groups = [""]
    for _ in range(draw(st.integers(0, 4))):
        holder = draw(st.sampled_from([group for group in groups if depth(group) < 3]))
        groups.append(join(holder, f"g{len(groups)}"))

    external = tuple(
        join(draw(st.sampled_from(groups)), f"x{k}") for k in range(draw(st.integers(min_value=1, max_value=3)))
    )
    available = list(external)
    producers: dict[str, list[BrickSpec]] = {}
    consumed: set[str] = set()
    bricks: list[BrickSpec] = []
    fresh = iter(range(1000))
    observer_index = draw(st.integers(0, 2 * max_bricks))  # the one brick reading '__all__', if below the count
    for index in range(draw(st.integers(min_value=1, max_value=max_bricks))):
        directory = draw(st.sampled_from(groups))
        inputs = draw(st.lists(st.sampled_from(available), min_size=1, max_size=3, unique=True))
        if index == observer_index:  # every named value, with or without named inputs
            inputs = [*inputs[: draw(st.integers(0, 1))], "__all__"]
        consumed.update(inputs)
        if draw(st.integers(0, 5)) == 0:  # the special input: the current stage
            inputs.insert(draw(st.integers(0, len(inputs))), "stage")
        alive_argument, alive = draw(alive_stages())
        outputs = [join(draw(st.sampled_from(groups)), f"v{next(fresh)}") for _ in range(draw(st.integers(1, 3)))]
        # Sometimes reuse a name that no brick reads yet, produced by bricks alive in other stages only: valid, and
        # acyclic because every later reader comes after both producers.
        reusable = [
            name
            for name, makers in producers.items()
            if name not in consumed and all(not (maker.alive & alive) for maker in makers)
        ]
        if reusable and draw(st.booleans()):
            outputs[draw(st.integers(0, len(outputs) - 1))] = draw(st.sampled_from(reusable))
        brick = BrickSpec(
            name=f"b{index}",
            directory=directory,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            declared_inputs=tuple(
                name if name in SPECIAL else draw(st.sampled_from(name_forms(name, directory))) for name in inputs
            ),
            declared_outputs=tuple(draw(st.sampled_from(name_forms(name, directory))) for name in outputs),
            keyword_inputs=draw(st.booleans()),
            alive=alive,
            alive_argument=alive_argument,
            kind=draw(st.sampled_from(["trainable", "frozen", "frozen_no_grad", "module"])),
            scale=float(draw(st.sampled_from([-2, -1, 2, 3]))),
            offsets=tuple(float(100 * index + j + 1) for j in range(len(outputs))),
            returns_list=draw(st.booleans()),
        )
        bricks.append(brick)
        for name in outputs:
            producers.setdefault(name, []).append(brick)
            if name not in available:
                available.append(name)
    return draw(layouts(external, bricks, groups))


@st.composite
def layouts(draw: st.DrawFn, external: Sequence[str], bricks: Sequence[BrickSpec], groups: Sequence[str]) -> DagSpec:
    """Random insertion order in every group, random dict-or-collection for nested groups."""
    order = []
    for group in groups:
        children = [brick.name for brick in bricks if brick.directory == group]
        children += [other.rpartition("/")[2] for other in groups if other and parent(other) == group]
        order.append((group, tuple(draw(st.permutations(children)))))
    as_collection = frozenset(
        group for group in groups[1:] if draw(st.booleans()) and standalone_is_valid(group, bricks)
    )
    return DagSpec(
        external=tuple(external),
        bricks=tuple(bricks),
        groups=tuple(groups),
        order=tuple(order),
        as_collection=as_collection,
        build=draw(st.sampled_from(["constructor", "assign_root", "assign_all"])),
        assignment_order=tuple(draw(st.permutations(range(len(bricks))))),
    )


def stage_argument(draw: Callable[[Any], Any], stage: Stage) -> Any:
    return draw(st.sampled_from([stage, stage.value, stage.value.upper()]))


# ----------------------------------------------------------------------------------------------- valid DAGs
def execution_order(output_names: Sequence[str], alive: Sequence[BrickSpec]) -> list[BrickSpec]:
    """Recover the order the bricks ran in from ``output_names`` (each alive brick's outputs, contiguous)."""
    remaining = list(output_names)
    order = []
    while remaining:
        brick = next((b for b in alive if b.outputs == tuple(remaining[: len(b.outputs)])), None)
        assert brick is not None, f"outputs {output_names} are not per-brick blocks"
        assert brick not in order, f"brick {brick.path} appears twice in {output_names}"
        order.append(brick)
        del remaining[: len(brick.outputs)]
    assert sorted(b.path for b in order) == sorted(b.path for b in alive)
    return order


@PROPERTIES
@given(spec=dags(), data=st.data())
def test_valid_dag_matches_the_reference_in_every_stage(spec: DagSpec, data: st.DataObject) -> None:
    assert reference_graph_error(spec.bricks) is None  # the strategy draws valid DAGs only
    collection = build_collection(spec)
    modules = {path: brick.model for path, brick in collection.named_bricks()}
    assert sorted(modules) == sorted(brick.path for brick in spec.bricks)

    for stage in STAGES:
        alive = alive_bricks(spec.bricks, stage)
        required = reference_required(spec.bricks, stage)
        argument = stage_argument(data.draw, stage)

        # The stage's interface is exactly what the graph implies.
        input_names = collection.input_names(argument)
        output_names = collection.output_names(argument)
        assert len(set(input_names)) == len(input_names)
        assert set(input_names) == required
        assert sorted(output_names) == sorted(reference_produced(spec.bricks, stage))
        assert sorted(node.path for node in collection.plan(argument).nodes) == sorted(b.path for b in alive)

        # output_names is in an execution order: producers first; input_names in first-use order along it.
        order = execution_order(output_names, alive)
        position = {brick.path: i for i, brick in enumerate(order)}
        producer = {name: brick.path for brick in alive for name in brick.outputs}
        first_use: list[str] = []
        for brick in order:
            for name in data_inputs(brick):
                if name in producer:
                    assert position[producer[name]] < position[brick.path], f"{brick.path} ran before its input"
                elif name not in first_use:
                    first_use.append(name)
        assert input_names == first_use
        observer = observer_of(alive)
        if observer is not None:  # '__all__': after every brick that does not need its outputs
            after = downstream_of(observer, alive)
            assert all(position[b.path] < position[observer.path] for b in alive if b.path not in after)

        # Running the stage gives the reference's values (and gradient flags), inputs first then outputs.
        inputs = {name: input_value(name) for name in data.draw(st.permutations(sorted(required)))}
        inputs["unused_extra"] = torch.ones(3)
        snapshot = dict(inputs)
        outputs = collection(inputs, stage=argument)
        assert inputs == snapshot  # the caller's dict is untouched (same keys, same tensors)
        assert list(outputs) == [*inputs, *output_names]
        expected, observed = reference_forward(spec.bricks, stage, inputs)
        assert set(expected) == set(output_names)
        if observer is not None:
            seen = modules[observer.path].seen
            assert set(seen[-1]) == observed, f"'__all__' of {observer.path} in stage {stage.value}"
            seen.clear()
        for name, (value, requires_grad) in expected.items():
            assert torch.equal(outputs[name].detach(), value), f"{name} in stage {stage.value}"
            assert outputs[name].requires_grad == requires_grad, f"gradient flag of {name} in stage {stage.value}"
        collection.check_input_names(argument, list(inputs))

        # Leaving out any required input fails before running, naming a brick that needs it.
        if required:
            missing = data.draw(st.sampled_from(sorted(required)))
            partial = {name: value for name, value in inputs.items() if name != missing}
            consumers = {brick.path for brick in alive if missing in brick.inputs}
            with pytest.raises(MissingInputError) as at_forward:
                collection(partial, stage=argument)
            with pytest.raises(MissingInputError) as early:
                collection.check_input_names(argument, list(partial))
            for info in (at_forward, early):
                found = re.search(r"Brick '(.+?)' needs input (.+?) in stage '(\w+)'", str(info.value))
                assert found is not None, str(info.value)
                assert found.group(1) in consumers
                assert found.group(2) == repr(missing)
                assert found.group(3) == stage.value


@settings(PROPERTIES, max_examples=120)
@given(spec=dags(max_bricks=6), data=st.data())
def test_insertion_order_and_name_forms_do_not_change_the_graph(spec: DagSpec, data: st.DataObject) -> None:
    """The same DAG laid out and written differently has the same interface and outputs in every stage."""
    other_layout = data.draw(layouts(spec.external, spec.bricks, spec.groups))
    rewritten = tuple(
        dataclasses.replace(
            brick,
            declared_inputs=tuple(
                n if n in SPECIAL else data.draw(st.sampled_from(name_forms(n, brick.directory))) for n in brick.inputs
            ),
            declared_outputs=tuple(data.draw(st.sampled_from(name_forms(n, brick.directory))) for n in brick.outputs),
        )
        for brick in spec.bricks
    )
    first = build_collection(spec)
    second = build_collection(dataclasses.replace(other_layout, bricks=rewritten, as_collection=frozenset()))
    for stage in STAGES:
        assert set(first.input_names(stage)) == set(second.input_names(stage))
        assert sorted(first.output_names(stage)) == sorted(second.output_names(stage))
        inputs = {name: input_value(name) for name in first.input_names(stage)}
        one, two = first(inputs, stage=stage), second(inputs, stage=stage)
        assert set(one) == set(two)
        for name in one:
            assert torch.equal(one[name], two[name])


# ----------------------------------------------------------------------------------------------- invalid DAGs
def flat(spec: DagSpec) -> DagSpec:
    """The spec with every group as a plain dict, so errors come from the root with full brick paths."""
    return dataclasses.replace(spec, as_collection=frozenset())


def build_and_plan(spec: DagSpec) -> BrickCollection:
    collection = build_collection(spec, query_midway=False)
    collection.plan(Stage.TRAIN)  # a root built by assignment validates on first use
    return collection


def replace_brick(spec: DagSpec, brick: BrickSpec) -> DagSpec:
    return dataclasses.replace(spec, bricks=tuple(brick if b.path == brick.path else b for b in spec.bricks))


def add_brick(spec: DagSpec, brick: BrickSpec, position: int) -> DagSpec:
    order = [
        (group, (*children[:position], brick.name, *children[position:]) if group == brick.directory else children)
        for group, children in spec.order
    ]
    return dataclasses.replace(
        spec,
        bricks=(*spec.bricks, brick),
        order=tuple(order),
        assignment_order=(*spec.assignment_order, len(spec.bricks)),
    )


@MUTATIONS
@given(spec=dags(), data=st.data())
def test_reading_a_name_nobody_produces_is_a_missing_input(spec: DagSpec, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(spec.bricks))
    ghost = join(data.draw(st.sampled_from(spec.groups)), "ghost")
    position = data.draw(st.integers(0, len(target.inputs)))
    mutated = dataclasses.replace(
        target,
        inputs=(*target.inputs[:position], ghost, *target.inputs[position:]),
        declared_inputs=(
            *target.declared_inputs[:position],
            data.draw(st.sampled_from(name_forms(ghost, target.directory))),
            *target.declared_inputs[position:],
        ),
    )
    spec = replace_brick(spec, mutated)
    collection = build_and_plan(spec)  # not a construction error: inputs are checked when a stage runs
    for stage in STAGES:
        required = reference_required(spec.bricks, stage)
        assert set(collection.input_names(stage)) == required
        assert (ghost in required) == (stage in target.alive)
        if ghost not in required:
            continue
        inputs = {name: input_value(name) for name in required if name != ghost}
        with pytest.raises(MissingInputError) as info:
            collection(inputs, stage=stage)
        message = str(info.value)
        assert f"Brick {target.path!r} needs input {ghost!r} in stage {stage.value!r}" in message


@MUTATIONS
@given(spec=dags(), data=st.data())
def test_two_alive_bricks_producing_one_name_are_rejected(spec: DagSpec, data: st.DataObject) -> None:
    spec = flat(spec)
    candidates = [brick for brick in spec.bricks if brick.alive]
    if data.draw(st.booleans()) and candidates:
        # A new brick shares an output with an existing brick in some of that brick's stages.
        original = data.draw(st.sampled_from(candidates))
        shared = data.draw(st.sampled_from(original.outputs))
        stages = data.draw(st.lists(st.sampled_from(sorted(original.alive)), min_size=1, unique=True))
        directory = data.draw(st.sampled_from(spec.groups))
        outputs = data.draw(st.permutations([shared, join(directory, "fresh")]))[: data.draw(st.integers(1, 2))]
        if shared not in outputs:
            outputs = [shared, *outputs]
        duplicate = BrickSpec(
            name="dup",
            directory=directory,
            inputs=(spec.external[0],),
            outputs=tuple(outputs),
            declared_inputs=(data.draw(st.sampled_from(name_forms(spec.external[0], directory))),),
            declared_outputs=tuple(data.draw(st.sampled_from(name_forms(n, directory))) for n in outputs),
            keyword_inputs=False,
            alive=frozenset(stages),
            alive_argument=stages,
            kind="frozen",
            scale=1.0,
            offsets=tuple(float(j) for j in range(len(outputs))),
            returns_list=False,
        )
        children = dict(spec.order)[directory]
        spec = add_brick(spec, duplicate, data.draw(st.integers(0, len(children))))
        paths = {original.path, duplicate.path}
    else:
        # One alive brick declares the same name twice, in two (possibly different) forms.
        alive = [brick for brick in spec.bricks if brick.alive]
        if not alive:
            return
        target = data.draw(st.sampled_from(alive))
        shared = data.draw(st.sampled_from(target.outputs))
        spec = replace_brick(
            spec,
            dataclasses.replace(
                target,
                outputs=(*target.outputs, shared),
                declared_outputs=(
                    *target.declared_outputs,
                    data.draw(st.sampled_from(name_forms(shared, target.directory))),
                ),
                offsets=(*target.offsets, -1.0),
            ),
        )
        paths = {target.path}

    error = reference_graph_error(spec.bricks)
    assert error is not None
    assert error[0] is DuplicateOutputError
    _, stage, (name, _) = error
    assert name == shared
    with pytest.raises(DuplicateOutputError) as info:
        build_and_plan(spec)
    message = str(info.value)
    assert f"both produce {shared!r} in stage {stage.value!r}" in message
    for path in paths:
        assert repr(path) in message


@MUTATIONS
@given(spec=dags(), data=st.data())
def test_a_cycle_among_alive_bricks_is_rejected(spec: DagSpec, data: st.DataObject) -> None:
    spec = flat(spec)
    options = [(brick, stage) for brick in spec.bricks for stage in sorted(brick.alive)]
    if not options:
        return
    target, stage = data.draw(st.sampled_from(options))
    # Bricks downstream of the target in that stage (itself included): reading one of their outputs closes a cycle.
    alive = alive_bricks(spec.bricks, stage)
    downstream = downstream_of(target, alive)
    source = data.draw(st.sampled_from([brick for brick in alive if brick.path in downstream]))
    name = data.draw(st.sampled_from(source.outputs))
    position = data.draw(st.integers(0, len(target.inputs)))
    spec = replace_brick(
        spec,
        dataclasses.replace(
            target,
            inputs=(*target.inputs[:position], name, *target.inputs[position:]),
            declared_inputs=(
                *target.declared_inputs[:position],
                data.draw(st.sampled_from(name_forms(name, target.directory))),
                *target.declared_inputs[position:],
            ),
        ),
    )
    error = reference_graph_error(spec.bricks)
    assert error is not None
    assert error[0] is CycleError
    _, first_stage, stuck = error
    assert {target.path, source.path} <= stuck
    with pytest.raises(CycleError) as info:
        build_and_plan(spec)
    message = str(info.value)
    assert f"in stage {first_stage.value!r}" in message
    if source.path == target.path:
        assert f"Brick {target.path!r} reads its own output {name!r}" in message
    else:
        assert f"{source.path!r} -({name})-> {target.path!r}" in message


@MUTATIONS
@given(spec=dags(), data=st.data())
def test_a_relative_name_above_the_root_is_rejected_even_in_a_dead_brick(spec: DagSpec, data: st.DataObject) -> None:
    spec = flat(spec)
    target = data.draw(st.sampled_from(spec.bricks))
    climbing = "../" * (depth(target.directory) + data.draw(st.integers(1, 2))) + "v"
    if data.draw(st.booleans()):
        k = data.draw(st.integers(0, len(target.inputs) - 1))
        mutated = dataclasses.replace(
            target, declared_inputs=(*target.declared_inputs[:k], climbing, *target.declared_inputs[k + 1 :])
        )
        role = "input"
    else:
        k = data.draw(st.integers(0, len(target.outputs) - 1))
        mutated = dataclasses.replace(
            target, declared_outputs=(*target.declared_outputs[:k], climbing, *target.declared_outputs[k + 1 :])
        )
        role = "output"
    with pytest.raises(InvalidNameError) as info:
        build_and_plan(replace_brick(spec, mutated))
    message = str(info.value)
    assert f"Brick {target.path!r} has the {role} name {climbing!r}, which climbs above the root" in message


BAD_BRICK_NAMES = ["a/b", "a.b", ".", "", "forward", "train", "plan", "input_names", "to", "parameters"]


@MUTATIONS
@given(spec=dags(max_bricks=5), data=st.data())
def test_a_malformed_or_clashing_brick_name_is_rejected(spec: DagSpec, data: st.DataObject) -> None:
    spec = flat(spec)
    target = data.draw(st.sampled_from(spec.bricks))
    bad = data.draw(st.sampled_from(BAD_BRICK_NAMES))
    renamed = dataclasses.replace(target, name=bad)
    order = tuple(
        (group, tuple(bad if group == target.directory and child == target.name else child for child in children))
        for group, children in spec.order
    )
    spec = dataclasses.replace(spec, bricks=tuple(renamed if b is target else b for b in spec.bricks), order=order)
    with pytest.raises(InvalidNameError, match=re.escape(repr(bad))):
        build_and_plan(spec)


BAD_DATA_NAMES = ["", "a//b", "a/", "./", "../", "//"]


@MUTATIONS
@given(spec=dags(max_bricks=5), data=st.data())
def test_a_malformed_or_reserved_data_name_is_rejected(spec: DagSpec, data: st.DataObject) -> None:
    spec = flat(spec)
    target = data.draw(st.sampled_from(spec.bricks))
    if data.draw(st.booleans()):
        bad = data.draw(st.sampled_from(BAD_DATA_NAMES))
        mutated = dataclasses.replace(
            target, declared_inputs=(*target.declared_inputs, bad), inputs=(*target.inputs, bad)
        )
    else:
        bad = data.draw(st.sampled_from([*BAD_DATA_NAMES, "stage", "__all__"]))
        mutated = dataclasses.replace(
            target, declared_outputs=(*target.declared_outputs, bad), outputs=(*target.outputs, bad)
        )
    # The brick itself refuses the name when it is built (before it has a place, so its class is named).
    with pytest.raises(InvalidNameError) as info:
        build_and_plan(replace_brick(spec, mutated))
    message = str(info.value)
    assert repr(bad) in message
    assert any(cls in message for cls in ("BrickTrainable", "BrickNotTrainable", "BrickModule"))
