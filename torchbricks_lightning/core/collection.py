"""BrickCollection: an ``nn.ModuleDict`` of bricks that runs them as a DAG, one plan per stage."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Union

import torch
from torch import nn

from torchbricks_lightning.core.bricks import BrickInterface, BrickMetrics, _StructureVersion
from torchbricks_lightning.core.dispatch import CompiledStage, compile_stage
from torchbricks_lightning.core.graph import (
    BrickNode,
    StagePlan,
    check_input_names,
    plan_stage,
    resolve_name,
)
from torchbricks_lightning.core.stages import ALL_STAGES, Stage, StageLike, parse_stage
from torchbricks_lightning.errors import (
    BrickDefinitionError,
    BrickGraphError,
    ConfigError,
    DuplicateOutputError,
    InvalidNameError,
    TorchBricksError,
)

__all__ = ["BrickCollection", "BrickTree"]

BrickTree = Mapping[str, Union[BrickInterface, "BrickCollection", "BrickTree"]]
"""A (nested) mapping of names to bricks, collections or further mappings."""

_CACHE_ATTRIBUTES = ("_stage_cache", "_cache_version", "_nodes_cache", "_loss_weights_cache")


class BrickCollection(nn.ModuleDict):
    """Bricks wired by their names into a DAG, and run one stage at a time.

    Nested dicts become nested collections; a relative name such as ``./logits`` inside ``head0`` means
    ``head0/logits``, and ``../features`` climbs one level. For each stage the collection keeps only the
    alive bricks, orders them by their names (not by dict order), checks the graph, and generates one
    straight-line function that it reuses for every call.

    Args:
        bricks: a dict of bricks, collections or nested dicts of them.

    Raises:
        BrickDefinitionError: a value is not a brick (or a dict of bricks).
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
        >>> collection.input_names(Stage.INFERENCE), collection.output_names(Stage.INFERENCE)
        (['raw'], ['features', 'logits'])
    """

    _stage_cache: dict[StageLike, CompiledStage]
    _cache_version: int
    _nodes_cache: tuple[BrickNode, ...] | None
    _loss_weights_cache: dict[str, float] | None

    def __init__(self, bricks: BrickTree | None = None) -> None:
        super().__init__()
        self._reset_cache()
        if bricks is not None:
            if not isinstance(bricks, Mapping):
                raise BrickDefinitionError(
                    f"Expected BrickCollection to get a dict of bricks, but got {type(bricks).__name__}."
                )
            for name, value in bricks.items():
                self[name] = value
        self._stages()  # validate every stage now, not at the first call

    # ----------------------------------------------------------------------------------------- building
    def _reset_cache(self) -> None:
        self.__dict__["_stage_cache"] = {}
        self.__dict__["_cache_version"] = -1
        self.__dict__["_nodes_cache"] = None
        self.__dict__["_loss_weights_cache"] = None

    @classmethod
    def _nested(cls, bricks: BrickTree) -> BrickCollection:
        """Build a nested collection without validating it as a root (its names may point outside)."""
        collection = cls.__new__(cls)
        nn.ModuleDict.__init__(collection)
        collection._reset_cache()
        for name, value in bricks.items():
            collection[name] = value
        return collection

    def __setitem__(self, name: str, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidNameError(f"Expected brick names to be non-empty strings, but got {name!r}.")
        if "/" in name or "." in name:
            raise InvalidNameError(
                f"Brick name {name!r} contains {'/' if '/' in name else '.'!r}, which separates nested names. "
                f"Use a nested dict instead, e.g. {{{name.split('/')[0].split('.')[0]!r}: {{...}}}}, or rename it."
            )
        if name not in self._modules and (name in dir(BrickCollection) or hasattr(self, name)):
            raise InvalidNameError(
                f"Brick name {name!r} clashes with the BrickCollection attribute of that name. Rename the brick."
            )
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
        super().__setitem__(name, value)
        _StructureVersion.bump()

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        _StructureVersion.bump()

    def clear(self) -> None:
        super().clear()
        _StructureVersion.bump()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if isinstance(value, nn.Module):
            _StructureVersion.bump()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        for attribute in _CACHE_ATTRIBUTES:
            state.pop(attribute, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._reset_cache()

    # ----------------------------------------------------------------------------------------- graph
    def named_bricks(self) -> Iterator[tuple[str, BrickInterface]]:
        """Every brick with its path (``'head0/classify'``), depth first in declaration order."""
        for name, module in self._modules.items():
            if isinstance(module, BrickCollection):
                for sub_path, brick in module.named_bricks():
                    yield f"{name}/{sub_path}", brick
            elif isinstance(module, BrickInterface):
                yield name, module

    def brick_nodes(self) -> tuple[BrickNode, ...]:
        """The bricks as :class:`BrickNode` records, with relative names resolved to absolute ones."""
        self._check_cache()
        nodes = self._nodes_cache
        if nodes is None:
            nodes = tuple(_node(index, path, brick) for index, (path, brick) in enumerate(self.named_bricks()))
            self.__dict__["_nodes_cache"] = nodes
        return nodes

    def _check_cache(self) -> None:
        if self._cache_version != _StructureVersion.value:
            self._stage_cache.clear()
            self.__dict__["_nodes_cache"] = None
            self.__dict__["_loss_weights_cache"] = None
            self.__dict__["_cache_version"] = _StructureVersion.value

    def _stages(self) -> dict[StageLike, CompiledStage]:
        """Build (once) and return the compiled plan of every stage."""
        self._check_cache()
        cache = self._stage_cache
        if not cache:
            self._check_metric_keys()
            nodes = self.brick_nodes()
            modules = dict(self.named_bricks())
            plans = {stage: plan_stage(nodes, stage) for stage in ALL_STAGES}
            for stage, plan in plans.items():
                cache[stage] = compile_stage(plan, [modules[node.path] for node in plan.nodes])
        return cache

    def _check_metric_keys(self) -> None:
        owner: dict[str, str] = {}
        for path, brick in self._metric_bricks():
            for key in brick.metric_keys(path):
                if key in owner:
                    raise DuplicateOutputError(
                        f"Metric bricks {owner[key]!r} and {path!r} both report the metric key {key!r}, so one would "
                        "overwrite the other in summarize(). Give one a different metric_name or brick name."
                    )
                owner[key] = path

    def _stage(self, stage: StageLike) -> CompiledStage:
        cache = self._stages()
        try:
            return cache[stage]
        except (KeyError, TypeError):
            return cache[parse_stage(stage, where="BrickCollection")]

    def plan(self, stage: StageLike) -> StagePlan:
        """The :class:`StagePlan` of ``stage``: its alive bricks in execution order and its interface."""
        return self._stage(stage).plan

    def input_names(self, stage: StageLike) -> list[str]:
        """The names a caller must provide to run ``stage``."""
        return list(self._stage(stage).plan.required_inputs)

    def output_names(self, stage: StageLike) -> list[str]:
        """The names the bricks alive in ``stage`` produce, in execution order."""
        return list(self._stage(stage).plan.output_names)

    def check_input_names(self, stage: StageLike, input_names: Iterable[str]) -> None:
        """Raise :class:`MissingInputError` if ``input_names`` lacks something ``stage`` needs.

        Use it to fail early, before any data flows (e.g. with the names a dataloader will provide).
        """
        if isinstance(input_names, str) or not isinstance(input_names, Iterable):
            raise BrickDefinitionError(
                f"Expected input_names to be a list of names, but got {type(input_names).__name__}: {input_names!r}."
                + (f" Wrap it in a list: [{input_names!r}]." if isinstance(input_names, str) else "")
            )
        check_input_names(self._stage(stage).plan, list(input_names))

    # ----------------------------------------------------------------------------------------- running
    def forward(self, named_inputs: Mapping[str, Any], stage: StageLike = Stage.INFERENCE) -> dict[str, Any]:
        """Run the bricks alive in ``stage`` and return a new dict with the inputs and every output.

        The caller's dict is never modified.
        """
        if self._cache_version != _StructureVersion.value:
            self._check_cache()
        cache = self._stage_cache
        try:
            compiled = cache[stage]
        except (KeyError, TypeError):
            compiled = self._stage(stage)
            cache[stage] = compiled
        if type(named_inputs) is not dict and not isinstance(named_inputs, Mapping):
            raise BrickDefinitionError(
                f"Expected named_inputs to be a dict of named values, e.g. {{'raw': tensor}}, but got "
                f"{type(named_inputs).__name__}. Stage {compiled.plan.stage.value!r} needs "
                f"{list(compiled.plan.required_inputs)}."
            )
        try:
            return compiled.run(named_inputs)
        except TorchBricksError:
            raise
        except Exception as err:
            compiled.add_context(err)
            raise

    # ----------------------------------------------------------------------------------------- losses
    def loss_names(self, stage: StageLike | None = None) -> list[str]:
        """The names of the losses produced in ``stage`` (or in any stage)."""
        stages = ALL_STAGES if stage is None else (self._stage(stage).plan.stage,)
        names: list[str] = []
        for each in stages:
            names += [name for name, _ in self._stage(each).plan.loss_weights if name not in names]
        return names

    def loss_weights(self) -> dict[str, float]:
        """The weight of every loss name, as set on its loss brick."""
        self._check_cache()
        weights = self._loss_weights_cache
        if weights is None:
            weights = {name: node.loss_weight for node in self.brick_nodes() for name in node.loss_names}
            self.__dict__["_loss_weights_cache"] = weights
        return dict(weights)

    def extract_losses(self, named_outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The (unweighted) losses found in ``named_outputs``, by name."""
        self._check_cache()
        names = self._loss_weights_cache if self._loss_weights_cache is not None else self.loss_weights()
        return {name: named_outputs[name] for name in names if name in named_outputs}

    def total_loss(
        self, named_outputs: Mapping[str, Any], loss_weights: Mapping[str, float] | None = None
    ) -> torch.Tensor:
        """The weighted sum of the losses in ``named_outputs``.

        Args:
            named_outputs: the outputs of a forward pass.
            loss_weights: weights that override the bricks' own, by loss name.

        Raises:
            BrickGraphError: ``named_outputs`` holds no loss.
        """
        self._check_cache()
        weights = self._loss_weights_cache if self._loss_weights_cache is not None else self.loss_weights()
        if loss_weights:
            unknown = [name for name in loss_weights if name not in weights]
            if unknown:
                raise ConfigError(f"loss_weights names unknown losses {unknown}; the losses are {list(weights)}.")
            weights = {**weights, **loss_weights}
        terms = [
            named_outputs[name] if weights[name] == 1.0 else weights[name] * named_outputs[name]
            for name in weights
            if name in named_outputs
        ]
        if not terms:
            raise BrickGraphError(
                f"No loss found in the outputs (keys: {list(named_outputs)}). Losses come from BrickLoss bricks "
                f"alive in the stage; this collection declares {list(weights) or 'none'}."
            )
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    # ----------------------------------------------------------------------------------------- metrics
    def _metric_bricks(self) -> Iterator[tuple[str, BrickMetrics]]:
        for path, brick in self.named_bricks():
            if isinstance(brick, BrickMetrics):
                yield path, brick

    def summarize(self, stage: StageLike, reset: bool = False) -> dict[str, torch.Tensor]:
        """Compute the metrics accumulated in ``stage``, keyed ``'{brick path}/{metric name}'``.

        Args:
            stage: the stage whose metrics to compute.
            reset: reset those metrics afterwards.

        Returns:
            The metric values; ``{}`` when no metric is alive (or updated) in ``stage``.
        """
        stage = parse_stage(stage, where="summarize")
        values: dict[str, torch.Tensor] = {}
        for path, brick in self._metric_bricks():
            keys = dict(zip(brick.report_names, brick.metric_keys(path), strict=True))
            for name, value in brick.compute(stage).items():
                values[keys[name]] = value
            if reset:
                brick.reset(stage)
        return values

    def reset_metrics(self, stage: StageLike | None = None) -> None:
        """Reset the metrics of ``stage``, or of every stage."""
        parsed = None if stage is None else parse_stage(stage, where="reset_metrics")
        for _, brick in self._metric_bricks():
            brick.reset(parsed)

    def metric_keys(self) -> list[str]:
        """Every key that ``summarize`` can report."""
        return [key for path, brick in self._metric_bricks() for key in brick.metric_keys(path)]


def _node(index: int, path: str, brick: BrickInterface) -> BrickNode:
    directory = path.rpartition("/")[0]

    def resolve(name: str, role: str) -> str:
        return resolve_name(name, directory, brick_path=path, role=role)

    declared = brick._input_names
    if isinstance(declared, dict):
        positional: tuple[str, ...] = ()
        keyword = tuple((argument, resolve(name, "input")) for argument, name in declared.items())
    else:
        positional = tuple(resolve(name, "input") for name in declared)
        keyword = ()
    if isinstance(brick, BrickMetrics):
        outputs = tuple(brick.metric_keys(path)) if brick.return_metrics else ()
        losses: tuple[str, ...] = ()
    else:
        outputs = tuple(resolve(name, "output") for name in brick._output_names)
        by_declared = dict(zip(brick._output_names, outputs, strict=True))
        losses = tuple(by_declared[name] for name in brick.loss_output_names)
    return BrickNode(
        path=path,
        positional_inputs=positional,
        keyword_inputs=keyword,
        output_names=outputs,
        loss_names=losses,
        loss_weight=brick.loss_weight,
        alive_stages=frozenset(brick.alive_stages),
        receives_stage=brick._receives_stage,
        index=index,
    )
