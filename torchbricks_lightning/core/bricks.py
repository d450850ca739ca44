"""Bricks: modules that name their inputs and outputs and know in which stages they are alive."""

from __future__ import annotations

import copy
import keyword
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, cast

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection

from torchbricks_lightning.core.stages import ALL_STAGES, AliveStages, Stage, StageLike, parse_alive_stages, parse_stage
from torchbricks_lightning.errors import BrickDefinitionError, BrickOutputError, ConfigError, InvalidNameError

__all__ = [
    "ALL_INPUTS",
    "STAGE_INPUT",
    "BrickInterface",
    "BrickLoss",
    "BrickMetricSingle",
    "BrickMetrics",
    "BrickModule",
    "BrickNotTrainable",
    "BrickTrainable",
    "InputNames",
]

ALL_INPUTS = "__all__"
"""Input name that passes every named value (a dict) to the brick."""
STAGE_INPUT = "stage"
"""Input name that passes the current :class:`Stage` to the brick."""

_RESERVED_NAMES = (ALL_INPUTS, STAGE_INPUT)
_LOSS_STAGES = (Stage.TRAIN, Stage.VALIDATION, Stage.TEST)

InputNames = Sequence[str] | Mapping[str, str]


class _StructureVersion:
    """A counter bumped whenever a brick's names or a collection's members change.

    Collections compare it with the version their cached stage plans were built for, so a change
    anywhere invalidates every cached plan. Reading it costs one attribute access per call.
    """

    value = 0

    @classmethod
    def bump(cls) -> None:
        cls.value += 1


def _check_data_name(name: object, *, role: str, where: str) -> str:
    if not isinstance(name, str):
        raise BrickDefinitionError(f"Expected every name in {role} of {where} to be a str, but got {name!r}.")
    if not name or name.endswith("/") or "//" in name:
        raise InvalidNameError(
            f"{role} of {where} has a malformed name {name!r}: names must be non-empty and "
            "use single '/' separators, e.g. 'head0/logits'."
        )
    return name


def _normalize_input_names(input_names: object, *, where: str) -> list[str] | dict[str, str]:
    if isinstance(input_names, str):
        raise BrickDefinitionError(
            f"Expected input_names of {where} to be a list of names or a dict {{argument_name: data_name}}, but "
            f"got the string {input_names!r}. Wrap it in a list: input_names=[{input_names!r}]."
        )
    if isinstance(input_names, Mapping):
        normalized: dict[str, str] = {}
        for argument, name in input_names.items():
            if not isinstance(argument, str) or not argument.isidentifier() or keyword.iskeyword(argument):
                raise BrickDefinitionError(
                    f"Expected the keys of input_names of {where} to be argument names, but got {argument!r}."
                )
            normalized[argument] = _check_data_name(name, role="input_names", where=where)
        return normalized
    if isinstance(input_names, Iterable):
        return [_check_data_name(name, role="input_names", where=where) for name in input_names]
    raise BrickDefinitionError(
        f"Expected input_names of {where} to be a list of names or a dict {{argument_name: data_name}}, but got "
        f"{type(input_names).__name__}: {input_names!r}."
    )


def _normalize_output_names(output_names: object, *, where: str) -> list[str]:
    if isinstance(output_names, str):
        output_names = [output_names]
    if isinstance(output_names, Mapping) or not isinstance(output_names, Iterable):
        raise BrickDefinitionError(
            f"Expected output_names of {where} to be a list of names, but got "
            f"{type(output_names).__name__}: {output_names!r}."
        )
    names = [_check_data_name(name, role="output_names", where=where) for name in output_names]
    for name in names:
        if name in _RESERVED_NAMES:
            raise InvalidNameError(
                f"{where} declares the output name {name!r}, which is reserved for inputs. Choose another name."
            )
    return names


def detach_outputs(outputs: Any) -> Any:
    """Detach a module's tensor outputs (a module may return its input itself, which ``no_grad`` leaves attached)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(o.detach() if isinstance(o, torch.Tensor) else o for o in outputs)
    return outputs


def _stage_key(stage: Stage) -> str:
    """The ModuleDict key of a stage's metrics ('train' itself would clash with ``nn.Module.train``)."""
    return f"stage_{stage.value}"


def _declared_value_names(metric: Metric, name: str, where: str) -> tuple[str, ...] | None:
    """The ``value_names`` a dict-valued metric declares, checked; None for a metric returning one value."""
    declared = getattr(metric, "value_names", None)
    if declared is None:
        return None
    values = (declared,) if isinstance(declared, str) else tuple(declared)
    if not values or not all(isinstance(value, str) and value and "/" not in value for value in values):
        raise ConfigError(
            f"Metric {name!r} of {where} declares value_names {declared!r}; expected a non-empty list of names "
            "without '/'."
        )
    return values


class BrickInterface(nn.Module, ABC):
    """Base class of every brick: a module with input names, output names and alive stages.

    Subclass it for a custom brick and implement ``forward``. The collection calls ``forward`` with the
    values named by ``input_names`` (positionally for a list, as keyword arguments for a dict) and stores
    what it returns under ``output_names``: one value for one name, a tuple or list for several.

    Args:
        input_names: the data names to read, a list (positional arguments) or a dict
            ``{argument_name: data_name}`` (keyword arguments). ``'__all__'`` passes every named value
            as one dict, and ``'stage'`` passes the current :class:`Stage`.
        output_names: the data names of the values that ``forward`` returns.
        alive_stages: ``"all"``, ``"none"`` or a list of stages in which the brick runs.

    Example:
        >>> import torch
        >>> class AddOne(BrickInterface):
        ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
        ...         return x + 1
        >>> AddOne(input_names=["x"], output_names=["y"])
        AddOne(input_names=['x'], output_names=['y'], alive_stages='all')
    """

    #: Whether the collection passes the current stage as the keyword argument ``stage``.
    _receives_stage: ClassVar[bool] = False

    def __init__(self, input_names: InputNames, output_names: Sequence[str], alive_stages: AliveStages = "all") -> None:
        super().__init__()
        where = f"{type(self).__name__}"
        self._input_names = _normalize_input_names(input_names, where=where)
        self._output_names = _normalize_output_names(output_names, where=where)
        self._alive_stages = parse_alive_stages(alive_stages, where=where)
        _StructureVersion.bump()

    @property
    def input_names(self) -> list[str] | dict[str, str]:
        """The data names this brick reads (a copy; assign a new value to change them)."""
        return copy.copy(self._input_names)

    @input_names.setter
    def input_names(self, value: InputNames) -> None:
        self._input_names = _normalize_input_names(value, where=type(self).__name__)
        _StructureVersion.bump()

    @property
    def output_names(self) -> list[str]:
        """The data names of this brick's outputs (a copy; assign a new value to change them)."""
        return list(self._output_names)

    @output_names.setter
    def output_names(self, value: Sequence[str]) -> None:
        self._output_names = _normalize_output_names(value, where=type(self).__name__)
        _StructureVersion.bump()

    @property
    def alive_stages(self) -> tuple[Stage, ...]:
        """The stages in which this brick runs."""
        return self._alive_stages

    @alive_stages.setter
    def alive_stages(self, value: AliveStages) -> None:
        self._alive_stages = parse_alive_stages(value, where=type(self).__name__)
        _StructureVersion.bump()

    def is_alive(self, stage: Stage) -> bool:
        """Whether the brick runs in ``stage``."""
        return stage in self._alive_stages

    @property
    def loss_output_names(self) -> list[str]:
        """The outputs that are losses (collected by ``BrickCollection.extract_losses``)."""
        return []

    @property
    def loss_weight(self) -> float:
        """The weight of this brick's losses in the total loss."""
        return 1.0

    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the outputs from the inputs named by ``input_names``."""

    def _describe_model(self) -> str:
        return ""

    def _alive_stages_repr(self) -> str:
        if self._alive_stages == ALL_STAGES:
            return "'all'"
        if not self._alive_stages:
            return "'none'"
        return repr([stage.value for stage in self._alive_stages])

    def __repr__(self) -> str:
        model = self._describe_model()
        parts = [model] if model else []
        parts += [
            f"input_names={self._input_names!r}",
            f"output_names={self._output_names!r}",
            f"alive_stages={self._alive_stages_repr()}",
        ]
        return f"{type(self).__name__}({', '.join(parts)})"


class BrickModule(BrickInterface):
    """A brick that wraps an ``nn.Module``: the general form behind the trainable, frozen and loss bricks.

    Args:
        model: the wrapped module, called with the named inputs.
        input_names: see :class:`BrickInterface`.
        output_names: see :class:`BrickInterface`.
        alive_stages: see :class:`BrickInterface`.
        loss_output_names: ``"all"`` or the subset of ``output_names`` that are losses.
        calculate_gradients: if False, the module runs under ``torch.no_grad()``: its outputs carry no
            gradient and nothing upstream gets one through it.
        trainable: if False, the module's parameters are frozen (``requires_grad=False``).
        keep_eval_mode: if True, the module stays in eval mode even when the collection is put in train
            mode, so batch norm statistics and dropout stay fixed.
        loss_weight: the weight of this brick's losses in the total loss.
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = "all",
        loss_output_names: Literal["all"] | Sequence[str] = (),
        calculate_gradients: bool = True,
        trainable: bool = True,
        keep_eval_mode: bool = False,
        loss_weight: float = 1.0,
    ) -> None:
        where = type(self).__name__
        if not isinstance(model, nn.Module):
            raise BrickDefinitionError(
                f"Expected the model of {where} to be a torch.nn.Module, but got {type(model).__name__}. "
                "Wrap plain functions in an nn.Module."
            )
        super().__init__(input_names=input_names, output_names=output_names, alive_stages=alive_stages)
        self.model = model
        self.calculate_gradients = bool(calculate_gradients)
        self.trainable = bool(trainable)
        self.keep_eval_mode = bool(keep_eval_mode)
        if not isinstance(loss_weight, (int, float)) or isinstance(loss_weight, bool):
            raise BrickDefinitionError(f"Expected loss_weight of {where} to be a number, but got {loss_weight!r}.")
        self._loss_weight = float(loss_weight)
        if loss_output_names == "all":
            self._loss_output_names = list(self._output_names)
        else:
            self._loss_output_names = _normalize_output_names(loss_output_names, where=where)
            unknown = [name for name in self._loss_output_names if name not in self._output_names]
            if unknown:
                raise ConfigError(
                    f"loss_output_names {unknown} of {where} are not among its output_names {self._output_names}."
                )
        if not self.trainable:
            self.model.requires_grad_(False)
        if self.keep_eval_mode:
            self.model.eval()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("model", "calculate_gradients"):
            _StructureVersion.bump()  # stage plans call the wrapped module directly

    @property
    def loss_output_names(self) -> list[str]:
        return [name for name in self._loss_output_names if name in self._output_names]

    @property
    def loss_weight(self) -> float:
        return self._loss_weight

    def train(self, mode: bool = True) -> BrickModule:
        super().train(mode)
        if self.keep_eval_mode:
            self.model.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.calculate_gradients:
            return self.model(*args, **kwargs)
        with torch.no_grad():
            return detach_outputs(self.model(*args, **kwargs))

    def _describe_model(self) -> str:
        return type(self.model).__name__


class BrickTrainable(BrickModule):
    """A brick whose module is trained: gradients flow and its parameters are optimised.

    Example:
        >>> from torch import nn
        >>> BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits"])
        BrickTrainable(Linear, input_names=['features'], output_names=['logits'], alive_stages='all')
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = "all",
        loss_output_names: Literal["all"] | Sequence[str] = (),
    ) -> None:
        super().__init__(
            model,
            input_names=input_names,
            output_names=output_names,
            alive_stages=alive_stages,
            loss_output_names=loss_output_names,
            calculate_gradients=True,
            trainable=True,
        )


class BrickNotTrainable(BrickModule):
    """A brick whose parameters are frozen.

    Args:
        calculate_gradients: True (the default) lets gradients flow *through* the brick to earlier
            bricks while its own parameters stay fixed. False runs it under ``torch.no_grad()``, which is
            faster and uses less memory, and its outputs carry no gradient.
        keep_eval_mode: keep the module in eval mode during training (fixed batch norm and dropout).

    Example:
        >>> from torch import nn
        >>> brick = BrickNotTrainable(nn.Linear(4, 2), input_names=["x"], output_names=["y"], calculate_gradients=False)
        >>> any(p.requires_grad for p in brick.parameters())
        False
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = "all",
        calculate_gradients: bool = True,
        keep_eval_mode: bool = False,
    ) -> None:
        super().__init__(
            model,
            input_names=input_names,
            output_names=output_names,
            alive_stages=alive_stages,
            calculate_gradients=calculate_gradients,
            trainable=False,
            keep_eval_mode=keep_eval_mode,
        )


class BrickLoss(BrickModule):
    """A brick that computes one or more scalar losses, alive in train, validation and test by default.

    Args:
        loss_output_names: ``"all"`` (the default) or the subset of outputs that are losses.
        loss_weight: the weight of these losses in ``BrickCollection.total_loss``.

    Example:
        >>> from torch import nn
        >>> BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"])
        BrickLoss(CrossEntropyLoss, input_names=['logits', 'targets'], output_names=['loss_ce'], alive_stages=[...])
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = _LOSS_STAGES,
        loss_output_names: Literal["all"] | Sequence[str] = "all",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            model,
            input_names=input_names,
            output_names=output_names,
            alive_stages=alive_stages,
            loss_output_names=loss_output_names,
            loss_weight=loss_weight,
        )


class BrickMetrics(BrickInterface):
    """A brick that accumulates torchmetrics metrics, kept separately for each stage.

    Each alive stage gets its own copy of the metrics, so validation that runs inside a training epoch
    never mixes into training's values. ``BrickCollection.summarize(stage)`` computes them.

    The summarised keys are ``'{brick path}/{metric name}'``, so two heads holding the same metric class
    never clash.

    Args:
        metric_collection: a ``MetricCollection`` or a dict ``{name: Metric}``.
        input_names: the names passed to each metric's ``update`` (e.g. ``['preds', 'targets']``).
        alive_stages: the stages in which metrics are updated (default: train, validation and test).
        return_metrics: if True, the brick also computes the metrics of each batch (``Metric.forward``)
            and outputs them under their keys; this costs extra compute.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
        >>> BrickMetrics({"acc": MulticlassAccuracy(3), "f1": MulticlassF1Score(3)}, input_names=["pred", "targets"])
        BrickMetrics(['acc', 'f1'], input_names=['pred', 'targets'], output_names=[], alive_stages=[...])
    """

    _receives_stage: ClassVar[bool] = True
    metrics_per_stage: nn.ModuleDict

    def __init__(
        self,
        metric_collection: MetricCollection | Mapping[str, Metric],
        input_names: InputNames,
        alive_stages: AliveStages = _LOSS_STAGES,
        return_metrics: bool = False,
    ) -> None:
        where = type(self).__name__
        if isinstance(metric_collection, Mapping):
            bad = {name: type(m).__name__ for name, m in metric_collection.items() if not isinstance(m, Metric)}
            if bad:
                raise BrickDefinitionError(f"Expected every value of the metrics of {where} to be a Metric: {bad}.")
            metric_collection = MetricCollection(dict(metric_collection))
        if not isinstance(metric_collection, MetricCollection):
            raise BrickDefinitionError(
                f"Expected the metrics of {where} to be a torchmetrics MetricCollection or a dict of metrics, but got "
                f"{type(metric_collection).__name__}. Use BrickMetricSingle for a single Metric."
            )
        super().__init__(input_names=input_names, output_names=[], alive_stages=alive_stages)
        self.return_metrics = bool(return_metrics)
        self._metric_names = [str(name) for name in metric_collection.keys(keep_base=False)]
        # A metric whose compute() returns a dict declares the dict's keys in ``value_names``; each value is
        # reported on its own. Others report one value under the metric's name.
        self._value_names: list[tuple[str, ...] | None] = [
            _declared_value_names(metric, name, where)
            for name, metric in zip(self._metric_names, metric_collection.values(copy_state=False), strict=True)
        ]
        self._report_names = [
            reported
            for name, values in zip(self._metric_names, self._value_names, strict=True)
            for reported in (values if values is not None else (name,))
        ]
        clashes = sorted({name for name in self._report_names if self._report_names.count(name) > 1})
        if clashes:
            raise ConfigError(
                f"The metrics of {where} report {clashes} more than once. Give the metrics distinct names, or put "
                "them in separate metric bricks."
            )
        # One independent copy per alive stage (torchmetrics' own advice for train/val/test).
        template = metric_collection
        self.metrics_per_stage = nn.ModuleDict(
            {_stage_key(stage): self._fresh_copy(template) for stage in self._alive_stages}
        )
        if not self._alive_stages:
            # Keep one copy so that the brick can be made alive later.
            self.metrics_per_stage[_stage_key(Stage.INFERENCE)] = self._fresh_copy(template)

    @staticmethod
    def _fresh_copy(metrics: MetricCollection) -> MetricCollection:
        clone = copy.deepcopy(metrics)
        clone.reset()
        return clone

    @property
    def metric_names(self) -> list[str]:
        """The names of the metrics inside this brick."""
        return list(self._metric_names)

    @property
    def report_names(self) -> list[str]:
        """The names of the values that :meth:`compute` returns (a dict-valued metric gives several)."""
        return list(self._report_names)

    def metric_keys(self, brick_path: str) -> list[str]:
        """The keys under which ``summarize`` reports this brick's values when it sits at ``brick_path``.

        They follow the order of :attr:`report_names`.
        """
        return [f"{brick_path}/{name}" for name in self._report_names]

    @BrickInterface.alive_stages.setter  # type: ignore[attr-defined]
    def alive_stages(self, value: AliveStages) -> None:
        BrickInterface.alive_stages.fset(self, value)  # type: ignore[attr-defined]
        template = next(iter(self.metrics_per_stage.values()))
        for stage in self._alive_stages:
            if _stage_key(stage) not in self.metrics_per_stage:
                self.metrics_per_stage[_stage_key(stage)] = self._fresh_copy(template)  # type: ignore[arg-type]

    def metrics_for(self, stage: StageLike) -> MetricCollection:
        """The metric copy that accumulates ``stage``.

        Raises:
            UnknownStageError: ``stage`` is not a stage.
            BrickDefinitionError: the brick is not alive in ``stage``, so it keeps no metrics for it.
        """
        parsed = parse_stage(stage, where=type(self).__name__)
        key = _stage_key(parsed)
        if key not in self.metrics_per_stage:
            raise ConfigError(
                f"{type(self).__name__} keeps no metrics for stage {parsed.value!r}: it is alive in "
                f"{[s.value for s in self._alive_stages]}."
            )
        return cast(MetricCollection, self.metrics_per_stage[key])

    def _metrics_of(self, stage: Stage) -> list[Metric]:
        # The stage's metrics in name order. Updating them one by one skips MetricCollection.update's own
        # bookkeeping, which was measured at about as much again as the metrics' updates.
        collection = cast(MetricCollection, self.metrics_per_stage[_stage_key(stage)])
        return list(collection.values(copy_state=False))

    def forward(self, *args: Any, stage: Stage, **kwargs: Any) -> Any:
        if not self.return_metrics:
            for metric in self._metrics_of(stage):
                metric.update(*args, **kwargs)
            return None
        outputs: list[Any] = []
        for name, values, metric in zip(self._metric_names, self._value_names, self._metrics_of(stage), strict=True):
            outputs.extend(self._flatten(name, values, metric(*args, **kwargs)).values())
        return tuple(outputs)

    def stage_updater(self, stage: Stage) -> Callable[..., None] | None:
        """The update of ``stage``'s metrics as one callable, for generated stage code (None with return_metrics).

        It is built once per plan, so a step does not look up the stage's copy or loop over a list when the brick
        holds a single metric.
        """
        if self.return_metrics or _stage_key(stage) not in self.metrics_per_stage:
            return None
        updates = tuple(metric.update for metric in self._metrics_of(stage))
        if len(updates) == 1:
            return updates[0]

        def update_all(*args: Any, **kwargs: Any) -> None:
            for update in updates:
                update(*args, **kwargs)

        return update_all

    def compute(self, stage: Stage) -> dict[str, torch.Tensor]:
        """Compute the accumulated values of ``stage`` (of the metrics that saw at least one update)."""
        if _stage_key(stage) not in self.metrics_per_stage or stage not in self._alive_stages:
            return {}
        result: dict[str, torch.Tensor] = {}
        for name, values, metric in zip(self._metric_names, self._value_names, self._metrics_of(stage), strict=True):
            if metric.update_called:
                result.update(self._flatten(name, values, metric.compute()))
        return result

    def _flatten(self, name: str, values: tuple[str, ...] | None, computed: Any) -> dict[str, Any]:
        if values is None:
            return {name: computed}
        if not isinstance(computed, Mapping) or any(value not in computed for value in values):
            got = list(computed) if isinstance(computed, Mapping) else type(computed).__name__
            raise BrickOutputError(
                f"Metric {name!r} of {type(self).__name__} declares value_names {list(values)}, but it returned "
                f"{got}. Return a dict with those keys from compute()/forward()."
            )
        return {value: computed[value] for value in values}

    def reset(self, stage: Stage | None = None) -> None:
        """Reset the metrics of ``stage``, or of every stage."""
        for stage_name, metrics in self.metrics_per_stage.items():
            if stage is None or stage_name == _stage_key(stage):
                metrics.reset()  # type: ignore[operator]

    def _describe_model(self) -> str:
        return repr(self._metric_names)


class BrickMetricSingle(BrickMetrics):
    """A brick holding one torchmetrics ``Metric``.

    Its summarised key is the brick's own path (``'head0/accuracy'``), or ``'{directory}/{metric_name}'``
    when ``metric_name`` is given.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> BrickMetricSingle(MulticlassAccuracy(num_classes=3), input_names=["class_prediction", "targets"])
        BrickMetricSingle(['MulticlassAccuracy'], input_names=['class_prediction', 'targets'], output_names=[], ...)
    """

    def __init__(
        self,
        metric: Metric,
        input_names: InputNames,
        alive_stages: AliveStages = _LOSS_STAGES,
        return_metrics: bool = False,
        metric_name: str | None = None,
    ) -> None:
        if not isinstance(metric, Metric):
            raise BrickDefinitionError(
                "Expected the metric of BrickMetricSingle to be a torchmetrics Metric, but got "
                f"{type(metric).__name__}. "
                "Use BrickMetrics for a MetricCollection or a dict of metrics."
            )
        if metric_name is not None and (not isinstance(metric_name, str) or not metric_name or "/" in metric_name):
            raise InvalidNameError(
                f"Expected metric_name of BrickMetricSingle to be a name without '/', got {metric_name!r}."
            )
        self.metric_name = metric_name
        super().__init__(
            MetricCollection({type(metric).__name__: metric}),
            input_names=input_names,
            alive_stages=alive_stages,
            return_metrics=return_metrics,
        )

    def metric_keys(self, brick_path: str) -> list[str]:
        directory = brick_path.rpartition("/")[0]
        if self._value_names[0] is not None:
            # A dict-valued metric reports its values beside the brick, like a brick's relative outputs.
            return [f"{directory}/{value}" if directory else value for value in self._report_names]
        if self.metric_name is None:
            return [brick_path]
        return [f"{directory}/{self.metric_name}" if directory else self.metric_name]
