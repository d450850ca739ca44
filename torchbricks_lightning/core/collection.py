"""BrickCollection: an ``nn.ModuleDict`` of bricks that runs them as a DAG, one plan per stage."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Union

import torch
from torch import nn

from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.dispatch import CompiledStage, compile_stage
from torchbricks_lightning.core.graph import (
    BrickNode,
    DataFlow,
    StagePlan,
    needed_nodes,
    plan_stage,
)
from torchbricks_lightning.core.missing_inputs import check_input_names
from torchbricks_lightning.core.names import check_brick_name
from torchbricks_lightning.core.results import LossesAndMetrics
from torchbricks_lightning.core.stages import ALL_STAGES, Stage, StageLike, parse_stage
from torchbricks_lightning.core.structure import MAX_NESTING, StructureNode, check_nesting, nesting_error
from torchbricks_lightning.core.visualization import Visualizations
from torchbricks_lightning.errors import (
    BrickDefinitionError,
    InvalidNameError,
    TorchBricksError,
)

__all__ = ["BrickCollection", "BrickTree"]

BrickTree = Mapping[str, Union[BrickInterface, "BrickCollection", "BrickTree"]]
"""A (nested) mapping of names to bricks, collections or further mappings."""

_CACHES = ("_compiled", "_plans", "_nodes", "_loss_weights")


_ATTRIBUTE_NAMES: dict[type, frozenset[str]] = {}


def _attribute_names(cls: type) -> frozenset[str]:
    """The attribute names of a collection class, which brick names must not shadow (looked up once per class)."""
    names = _ATTRIBUTE_NAMES.get(cls)
    if names is None:
        names = _ATTRIBUTE_NAMES[cls] = frozenset(dir(cls))
    return names


class BrickCollection(LossesAndMetrics, Visualizations, StructureNode, nn.ModuleDict):
    """Bricks wired by their names into a DAG, and run one stage at a time.

    Nested dicts become nested collections; a relative name such as ``./logits`` inside ``head0`` means
    ``head0/logits``, and ``../features`` climbs one level. For each stage the collection keeps only the
    alive bricks, orders them by their names (not by dict order), checks the graph, and generates one
    straight-line function that it reuses for every call. Plans are rebuilt only when the bricks change
    (a brick's names, alive stages, losses or returned metrics, or the collection's members).

    Args:
        bricks: a dict of bricks, collections or nested dicts of them, at most ``MAX_NESTING`` (64) levels deep.

    Raises:
        BrickDefinitionError: a value is not a brick (or a dict of bricks), or the dicts are nested more than
            ``MAX_NESTING`` (64) levels deep (the message names the path where the limit is passed).
        InvalidNameError: a brick name contains '/' or '.', or a relative name climbs above the root.
        DuplicateOutputError: two bricks alive in the same stage produce the same name.
        CycleError: the bricks alive in a stage form a cycle.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickNotTrainable, BrickTrainable
        >>> collection = BrickCollection({
        ...     "head": BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits"]),
        ...     "scale": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["features"]),
        ... })
        >>> outputs = collection({"raw": torch.ones(3, 4)}, stage="inference")
        >>> list(outputs)
        ['raw', 'features', 'logits']
        >>> list(collection({"raw": torch.ones(3, 4)}, stage="inference", return_inputs=False))
        ['features', 'logits']
        >>> collection.input_names(Stage.INFERENCE), collection.output_names(Stage.INFERENCE)
        (['raw'], ['features', 'logits'])
    """

    _compiled: dict[StageLike, CompiledStage]
    _plans: dict[Stage, StagePlan] | None
    _nodes: tuple[BrickNode, ...] | None
    _loss_weights: dict[str, float] | None

    def __init__(self, bricks: BrickTree | None = None) -> None:
        super().__init__()
        self._drop_plans()
        if bricks is not None:
            if not isinstance(bricks, Mapping):
                raise BrickDefinitionError(
                    f"Expected BrickCollection to get a dict of bricks, but got {type(bricks).__name__}."
                )
            for name, value in bricks.items():
                self[name] = value
        self.generate_code()  # validate every stage now, not at the first call

    # ----------------------------------------------------------------------------------------- structure
    def _drop_plans(self) -> None:
        self.__dict__.update(_compiled={}, _plans=None, _nodes=None, _loss_weights=None)

    def structure_changed(self) -> None:
        """Drop the cached plans (rebuilt at the next use) and tell the collections holding this one."""
        self._drop_plans()
        super().structure_changed()

    @classmethod
    def _nested(cls, bricks: BrickTree) -> BrickCollection:
        """Build a nested collection without validating it as a root (its names may point outside)."""
        collection = cls.__new__(cls)
        nn.ModuleDict.__init__(collection)
        collection._drop_plans()
        collection.update(bricks)  # type: ignore[arg-type]  # nested dicts too: __setitem__ checks every member
        return collection

    def __setitem__(self, name: str, value: Any) -> None:
        check_brick_name(name)
        if name not in self and (name in _attribute_names(type(self)) or name in self.__dict__):
            raise InvalidNameError(
                f"Brick name {name!r} clashes with the BrickCollection attribute of that name. Rename the brick."
            )
        if isinstance(value, (Mapping, BrickCollection)):
            check_nesting(name, value)  # before building: the nested collections are built recursively
        if isinstance(value, Mapping) and not isinstance(value, BrickCollection):
            value = BrickCollection._nested(value)
        if not isinstance(value, (BrickInterface, BrickCollection)):
            hint = (
                " Wrap it in a brick, e.g. BrickTrainable(module, input_names=[...], output_names=[...])."
                if isinstance(value, nn.Module)
                else ""
            )
            raise BrickDefinitionError(
                f"Expected {name!r} to be a brick, a BrickCollection or a dict of bricks, but got "
                f"{type(value).__name__}.{hint}"
            )
        previous = self._member(name)
        super().__setitem__(name, value)
        self._member_changed(previous, value)

    def __delitem__(self, name: str) -> None:
        previous = self._member(name)
        super().__delitem__(name)
        self._member_changed(previous, None)

    def clear(self) -> None:
        previous = list(self.values())
        super().clear()
        for module in previous:
            self._member_changed(module, None)

    def _member(self, name: str) -> nn.Module | None:
        try:
            return self[name] if name in self else None  # noqa: SIM401 - ModuleDict has no get()
        except AttributeError:  # attributes set while nn.Module.__init__ runs, before there are members
            return None

    def __setattr__(self, name: str, value: Any) -> None:
        previous = self._member(name)
        super().__setattr__(name, value)
        if isinstance(value, nn.Module) or previous is not None:
            self._member_changed(previous, value if isinstance(value, nn.Module) else None)

    def __delattr__(self, name: str) -> None:
        previous = self._member(name)
        super().__delattr__(name)
        if previous is not None:
            self._member_changed(previous, None)

    def _member_changed(self, previous: nn.Module | None, new: nn.Module | None) -> None:
        if isinstance(previous, StructureNode) and previous is not new:
            previous.remove_owner(self)
        if isinstance(new, StructureNode):
            new.add_owner(self)
        self.structure_changed()

    def __getstate__(self) -> dict[str, Any]:
        state = self._without_owners(super().__getstate__())
        for attribute in _CACHES:
            state.pop(attribute, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._drop_plans()
        for module in self.values():
            if isinstance(module, StructureNode):
                module.add_owner(self)

    # ----------------------------------------------------------------------------------------- graph
    def named_bricks(self) -> Iterator[tuple[str, BrickInterface]]:
        """Every brick with its path (``'head0/classify'``), depth first in declaration order.

        Raises:
            BrickDefinitionError: members added later nest the bricks more than ``MAX_NESTING`` (64) levels deep.
        """
        stack: list[tuple[str, Iterator[tuple[str, nn.Module]]]] = [("", iter(self.items()))]
        while stack:
            prefix, members = stack[-1]
            for name, module in members:
                if isinstance(module, BrickCollection):
                    if len(stack) > MAX_NESTING:
                        raise nesting_error(f"{prefix}{name}")
                    stack.append((f"{prefix}{name}/", iter(module.items())))
                    break
                if isinstance(module, BrickInterface):
                    yield f"{prefix}{name}", module
            else:
                stack.pop()

    def brick_nodes(self) -> tuple[BrickNode, ...]:
        """The bricks as :class:`BrickNode` records, with relative names resolved to absolute ones."""
        nodes = self._nodes
        if nodes is None:
            nodes = tuple(brick.brick_node(path, index) for index, (path, brick) in enumerate(self.named_bricks()))
            self.__dict__["_nodes"] = nodes
        return nodes

    def _stage_plans(self) -> dict[Stage, StagePlan]:
        """The validated plan of every stage, built once (code is generated per stage at its first run)."""
        plans = self._plans
        if plans is None:
            self._check_metric_keys()
            nodes = self.brick_nodes()
            plans = {stage: plan_stage(nodes, stage) for stage in ALL_STAGES}
            self.__dict__["_plans"] = plans
        return plans

    def _stage(self, stage: StageLike) -> CompiledStage:
        """The generated function of ``stage`` (see :meth:`generate_code`)."""
        compiled = self._compiled
        try:
            return compiled[stage]
        except (KeyError, TypeError):
            pass
        parsed = parse_stage(stage, where="BrickCollection")
        if not compiled:
            self.generate_code()
        return compiled[parsed]

    @torch.compiler.disable
    def generate_code(self) -> None:
        """Generate the function of every stage now (if the bricks changed since the last time).

        The collection does this when it is built and, after its bricks change, at its next call. Call it yourself
        after changing the bricks of a collection that ``torch.compile(..., fullgraph=True)`` will run next:
        generating code cannot happen inside a compiled graph.
        """
        compiled = self._compiled
        if compiled:
            return
        bricks = dict(self.named_bricks())
        for stage, plan in self._stage_plans().items():
            # Every stage at once, so the cache does not change between calls (torch.compile guards on it). Keyed
            # by the Stage and by its value (they hash alike on some Python versions only).
            compiled[stage] = compiled[stage.value] = compile_stage(plan, [bricks[node.path] for node in plan.nodes])

    def select(self, output_names: Iterable[str], stage: StageLike = Stage.EXPORT) -> BrickCollection:
        """A new collection of only the bricks that ``output_names`` need in ``stage``: a pruned graph.

        The bricks are shared (same modules, same weights) and keep their paths, so relative names and metric keys
        are unchanged. The new collection needs only the inputs those bricks read, and runs fewer bricks.

        Raises:
            ConfigError: a name is not produced in ``stage`` (with a close match, if any), or no name is given.

        Example:
            >>> from torch import nn
            >>> from torchbricks_lightning import BrickTrainable
            >>> collection = BrickCollection({
            ...     "backbone": BrickTrainable(nn.Identity(), input_names=["raw"], output_names=["features"]),
            ...     "head0": BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits0"]),
            ...     "head1": BrickTrainable(nn.Linear(4, 3), input_names=["features"], output_names=["logits1"]),
            ... })
            >>> head1 = collection.select(["logits1"])
            >>> list(head1), head1.input_names("export"), head1.output_names("export")
            (['backbone', 'head1'], ['raw'], ['features', 'logits1'])
        """
        nodes = needed_nodes(self.plan(stage), list(output_names))
        bricks = dict(self.named_bricks())
        tree: dict[str, Any] = {}
        for node in sorted(nodes, key=lambda each: each.index):  # declaration order, paths kept
            *directories, name = node.path.split("/")
            level = tree
            for directory in directories:
                level = level.setdefault(directory, {})
            level[name] = bricks[node.path]
        return BrickCollection(tree)

    def plan(self, stage: StageLike) -> StagePlan:
        """The :class:`StagePlan` of ``stage``: its alive bricks in execution order and its interface."""
        return self._stage_plans()[parse_stage(stage, where="BrickCollection")]

    def stage_source(self, stage: StageLike) -> str:
        """The Python source generated to run ``stage`` (what a traceback through it shows)."""
        return self._stage(stage).source

    def data_flow(self, stage: StageLike | None = None) -> DataFlow:
        """Who produces and who reads each name: the plan of ``stage``, or, for ``None``, of every brick alive in any
        stage (in declaration order; a name may then have a producer per stage)."""
        if stage is not None:
            return self.plan(stage)
        return DataFlow(tuple(node for node in self.brick_nodes() if node.alive_stages and not node.visualizes))

    def input_names(self, stage: StageLike) -> list[str]:
        """The names a caller must provide to run ``stage``."""
        return list(self.plan(stage).required_inputs)

    def output_names(self, stage: StageLike) -> list[str]:
        """The names the bricks alive in ``stage`` produce, in execution order."""
        return list(self.plan(stage).output_names)

    def check_input_names(self, stage: StageLike, input_names: Iterable[str]) -> None:
        """Raise :class:`MissingInputError` if ``input_names`` lacks something ``stage`` needs.

        Use it to fail early, before any data flows (e.g. with the names a dataloader will provide).
        """
        if isinstance(input_names, str) or not isinstance(input_names, Iterable):
            raise BrickDefinitionError(
                f"Expected input_names to be a list of names, but got {type(input_names).__name__}: {input_names!r}."
                + (f" Wrap it in a list: [{input_names!r}]." if isinstance(input_names, str) else "")
            )
        check_input_names(self.plan(stage), list(input_names))

    # ----------------------------------------------------------------------------------------- running
    def forward(
        self,
        named_inputs: Mapping[str, Any],
        stage: StageLike = Stage.INFERENCE,
        return_inputs: bool = True,
        update_metrics: bool = True,
    ) -> dict[str, Any]:
        """Run the bricks alive in ``stage`` and return a new dict with the inputs and every output.

        Args:
            named_inputs: the named values the stage needs (more are passed through). The dict is never modified.
            stage: the stage to run.
            return_inputs: if False, return only what the bricks produced (as torchbricks 0.0.10 does).
            update_metrics: if False, leave out the metric bricks' updates, and pass the returned dict to
                :meth:`update_metrics` afterwards. Under ``torch.compile`` the stage is then one graph even with
                live metric bricks, whose updates (not traceable) otherwise run eagerly and break it.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from torchmetrics.classification import MulticlassAccuracy
            >>> from torchbricks_lightning import BrickMetricSingle, BrickTrainable
            >>> collection = BrickCollection({
            ...     "head": BrickTrainable(nn.Linear(4, 3), input_names=["raw"], output_names=["logits"]),
            ...     "accuracy": BrickMetricSingle(MulticlassAccuracy(num_classes=3), ["logits", "targets"]),
            ... })
            >>> compiled = torch.compile(collection, backend="eager")
            >>> outputs = compiled({"raw": torch.ones(2, 4), "targets": torch.tensor([0, 1])}, "train",
            ...                    update_metrics=False)
            >>> collection.update_metrics(outputs, "train")
            >>> list(collection.summarize("train"))
            ['accuracy']
        """
        try:
            compiled = self._compiled[stage]
        except (KeyError, TypeError):
            compiled = self._stage(stage)
        if type(named_inputs) is not dict and not isinstance(named_inputs, Mapping):
            raise BrickDefinitionError(
                f"Expected named_inputs to be a dict of named values, e.g. {{'raw': tensor}}, but got "
                f"{type(named_inputs).__name__}. Stage {compiled.plan.stage.value!r} needs "
                f"{list(compiled.plan.required_inputs)}."
            )
        try:
            named_outputs = compiled.run(named_inputs, update_metrics)
        except TorchBricksError:
            raise
        except Exception as err:
            compiled.add_context(err)
            raise
        if return_inputs:
            return named_outputs
        return {name: named_outputs[name] for name in compiled.plan.output_names}
