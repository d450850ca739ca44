"""Metric bricks: torchmetrics metrics that travel with the model, one independent copy per stage."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection

from torchbricks_lightning.core.bricks import LOSS_STAGES, BrickInterface
from torchbricks_lightning.core.names import InputNames
from torchbricks_lightning.core.stages import AliveStages, Stage, StageLike, parse_stage
from torchbricks_lightning.errors import BrickDefinitionError, BrickOutputError, ConfigError, InvalidNameError

__all__ = ["BrickMetricSingle", "BrickMetrics"]


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

    receives_stage: ClassVar[bool] = True
    metrics_per_stage: nn.ModuleDict
    _stage_metrics: dict[Stage, tuple[Metric, ...]]

    def __init__(
        self,
        metric_collection: MetricCollection | Mapping[str, Metric],
        input_names: InputNames,
        alive_stages: AliveStages = LOSS_STAGES,
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
        self.__dict__["_spec"] = dataclasses.replace(self._spec, return_metrics=bool(return_metrics))
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
        self.metrics_per_stage = nn.ModuleDict(
            {_stage_key(stage): self._fresh_copy(metric_collection) for stage in self.alive_stages}
        )
        if not self.alive_stages:
            # Keep one copy so that the brick can be made alive later.
            self.metrics_per_stage[_stage_key(Stage.INFERENCE)] = self._fresh_copy(metric_collection)
        self._index_stage_metrics()

    @staticmethod
    def _fresh_copy(metrics: MetricCollection) -> MetricCollection:
        clone = copy.deepcopy(metrics)
        clone.reset()
        return clone

    def _index_stage_metrics(self) -> None:
        """Each stage's metrics in name order, looked up once here rather than on every update."""
        self.__dict__["_stage_metrics"] = {
            stage: tuple(cast(MetricCollection, self.metrics_per_stage[_stage_key(stage)]).values(copy_state=False))
            for stage in Stage
            if _stage_key(stage) in self.metrics_per_stage
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._index_stage_metrics()

    # ----------------------------------------------------------------------------------------- names
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

    def _resolved_outputs(self, path: str, directory: str) -> tuple[str, ...]:
        return tuple(self.metric_keys(path)) if self._spec.return_metrics else ()

    @property
    def return_metrics(self) -> bool:
        """Whether the brick also outputs each batch's metric values (under its metric keys)."""
        return self._spec.return_metrics

    @return_metrics.setter
    def return_metrics(self, value: bool) -> None:
        self._replace_spec(return_metrics=bool(value))

    @BrickInterface.alive_stages.setter  # type: ignore[attr-defined]
    def alive_stages(self, value: AliveStages) -> None:
        template = next(iter(self.metrics_per_stage.values()))
        BrickInterface.alive_stages.fset(self, value)  # type: ignore[attr-defined]
        for stage in self.alive_stages:
            if _stage_key(stage) not in self.metrics_per_stage:
                self.metrics_per_stage[_stage_key(stage)] = self._fresh_copy(template)  # type: ignore[arg-type]
        self._index_stage_metrics()

    # ----------------------------------------------------------------------------------------- metrics
    def metrics_for(self, stage: StageLike) -> MetricCollection:
        """The metric copy that accumulates ``stage``.

        Raises:
            UnknownStageError: ``stage`` is not a stage.
            ConfigError: the brick is not alive in ``stage``, so it keeps no metrics for it.
        """
        parsed = parse_stage(stage, where=type(self).__name__)
        key = _stage_key(parsed)
        if key not in self.metrics_per_stage:
            raise self._not_alive_error(parsed)
        return cast(MetricCollection, self.metrics_per_stage[key])

    def _not_alive_error(self, stage: Stage) -> ConfigError:
        alive = [s.value for s in self.alive_stages]
        return ConfigError(
            f"{type(self).__name__} {self.describe_model()} keeps no metrics for stage {stage.value!r}: it is alive "
            f"in {alive}. Add {stage.value!r} to its alive_stages, or call it for one of {alive} (a BrickCollection "
            "runs it only in the stages where it is alive)."
        )

    def forward(self, *args: Any, stage: Stage, **kwargs: Any) -> Any:
        # Each metric's own update, not MetricCollection.update (whose bookkeeping this brick does not need).
        metrics = self._stage_metrics.get(stage)
        if metrics is None:  # a stage given as a string, or one the brick is not alive in
            parsed = parse_stage(stage, where=type(self).__name__)
            metrics = self._stage_metrics.get(parsed) if parsed in self.alive_stages else None
            if metrics is None:
                raise self._not_alive_error(parsed)
        if not self._spec.return_metrics:
            for metric in metrics:
                metric.update(*args, **kwargs)
            return None
        outputs: list[Any] = []
        for name, values, metric in zip(self._metric_names, self._value_names, metrics, strict=True):
            outputs.extend(self._flatten(name, values, metric(*args, **kwargs)).values())
        return tuple(outputs)

    def compute(self, stage: Stage) -> dict[str, torch.Tensor]:
        """Compute the accumulated values of ``stage`` (of the metrics that saw at least one update)."""
        if stage not in self.alive_stages or stage not in self._stage_metrics:
            return {}
        result: dict[str, torch.Tensor] = {}
        for name, values, metric in zip(self._metric_names, self._value_names, self._stage_metrics[stage], strict=True):
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
        for each, metrics in self._stage_metrics.items():
            if stage is None or each == stage:
                for metric in metrics:
                    metric.reset()

    def describe_model(self) -> str:
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
        alive_stages: AliveStages = LOSS_STAGES,
        return_metrics: bool = False,
        metric_name: str | None = None,
    ) -> None:
        if not isinstance(metric, Metric):
            raise BrickDefinitionError(
                "Expected the metric of BrickMetricSingle to be a torchmetrics Metric, but got "
                f"{type(metric).__name__}. "
                "Use BrickMetrics for a MetricCollection or a dict of metrics."
            )
        super().__init__(
            MetricCollection({type(metric).__name__: metric}),
            input_names=input_names,
            alive_stages=alive_stages,
            return_metrics=return_metrics,
        )
        self.metric_name = metric_name

    @property
    def metric_name(self) -> str | None:
        """The name reported instead of the brick's own (``None``: the brick path is the key)."""
        name: str | None = self.__dict__["_metric_name"]
        return name

    @metric_name.setter
    def metric_name(self, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value or "/" in value):
            raise InvalidNameError(
                f"Expected metric_name of BrickMetricSingle to be a name without '/', got {value!r}."
            )
        self.__dict__["_metric_name"] = value
        self.structure_changed()  # the metric's key, and so a returned metric's output name, changed

    def metric_keys(self, brick_path: str) -> list[str]:
        directory = brick_path.rpartition("/")[0]
        if self._value_names[0] is not None:
            # A dict-valued metric reports its values beside the brick, like a brick's relative outputs.
            return [f"{directory}/{value}" if directory else value for value in self._report_names]
        if self.metric_name is None:
            return [brick_path]
        return [f"{directory}/{self.metric_name}" if directory else self.metric_name]
