"""The recipe check for the metrics of metric bricks: one line, with the key, for a metric jsonargparse refuses.

A metric brick in a recipe holds its metrics as a dict, the form ``BrickMetrics`` documents::

    metrics:
      class_path: torchbricks_lightning.BrickMetrics
      init_args:
        metric_collection:
          mse: {class_path: torchmetrics.MeanSquaredError}
          mae: {class_path: torchmetrics.MeanAbsoluteError}
        input_names: [prediction, target]

jsonargparse checks each metric, but a mistake in one fails every alternative of the brick collection's union, and it
reports them all. :func:`first_metric_problem` checks each metric on its own, with jsonargparse's own parser for the
metric's class (so it refuses exactly what jsonargparse refuses: an unknown argument, a value of the wrong type), and
names the metric's key. Like the other checks of :mod:`~torchbricks_lightning.cli.recipe`, it runs only when
jsonargparse has refused the recipe.

Example:
    >>> metrics = {"mse": {"class_path": "torchmetrics.MeanSquaredError", "init_args": {"squard": True}}}
    >>> brick = {"class_path": "torchbricks_lightning.BrickMetrics", "init_args": {"metric_collection": metrics}}
    >>> print(first_metric_problem({"model": {"brick_collection": {"metrics": brick}}}))
    model.brick_collection.metrics.init_args.metric_collection.mse.init_args.squard: torchmetrics.MeanSquaredError
    takes no argument 'squard'. Did you mean 'squared'? Its arguments are ['squared', 'num_outputs', ...].
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping
from typing import Any

from jsonargparse import ArgumentParser
from torchmetrics import Metric, MetricCollection

from torchbricks_lightning.checkpoints.trust import resolve_dotted
from torchbricks_lightning.core.metric_bricks import BrickMetrics, BrickMetricSingle
from torchbricks_lightning.errors import did_you_mean

__all__ = ["first_metric_problem"]

_ENTRY = "{class_path: torchmetrics.<Metric>, init_args: {...}}"
_FORM = f"{{name: {_ENTRY}}}"
_UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_BAD_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)', re.DOTALL)


def first_metric_problem(config: Mapping[str, Any]) -> str | None:
    """A message for the first metric of a metric brick under ``model.brick_collection`` that is wrong, naming its key.

    It looks at the ``metric_collection`` of every ``BrickMetrics`` (a dict of metrics, or a ``MetricCollection``
    given by ``class_path``) and the ``metric`` of every ``BrickMetricSingle``: each metric must be a
    ``{class_path, init_args}`` entry of a torchmetrics ``Metric`` whose arguments jsonargparse accepts.

    Args:
        config: a recipe as loaded from YAML.

    Returns:
        The message, or None when every metric is fine (or none of the classes can be imported: another check
        reports that).
    """
    model = config.get("model")
    bricks = model.get("brick_collection") if isinstance(model, Mapping) else None
    return next(_metric_brick_problems(bricks, "model.brick_collection"), None)


def _metric_brick_problems(node: Any, where: str) -> Iterator[str]:
    """Problems of the metrics of every metric brick in a (nested) recipe value."""
    if isinstance(node, list):
        for index, value in enumerate(node):
            yield from _metric_brick_problems(value, f"{where}[{index}]")
        return
    if not isinstance(node, Mapping):
        return
    cls = _class_of(node)
    init_args = node.get("init_args")
    if cls is not None and issubclass(cls, BrickMetrics) and isinstance(init_args, Mapping):
        if issubclass(cls, BrickMetricSingle) and "metric" in init_args:
            yield from _metric_problems(init_args["metric"], f"{where}.init_args.metric")
        elif "metric_collection" in init_args:
            yield from _collection_problems(init_args["metric_collection"], f"{where}.init_args.metric_collection")
        return
    for key, value in node.items():
        yield from _metric_brick_problems(value, f"{where}.{key}")


def _collection_problems(value: Any, where: str) -> Iterator[str]:
    """Problems of a ``metric_collection``: a dict of metrics, or a ``MetricCollection`` class path."""
    if isinstance(value, Mapping) and "class_path" in value:
        cls = _class_of(value)
        if cls is None:
            return
        if not issubclass(cls, MetricCollection):
            yield (
                f"{where}.class_path: {value['class_path']!r} is not a MetricCollection. Give the metrics as a dict "
                f"{_FORM}, or use BrickMetricSingle for a single metric."
            )
            return
        init_args = value.get("init_args")
        metrics = init_args.get("metrics") if isinstance(init_args, Mapping) else None
        if isinstance(metrics, Mapping) and "class_path" not in metrics:
            for name, metric in metrics.items():
                yield from _metric_problems(metric, f"{where}.init_args.metrics.{name}")
        elif isinstance(metrics, list):
            for index, metric in enumerate(metrics):
                yield from _metric_problems(metric, f"{where}.init_args.metrics[{index}]")
        elif metrics is not None:
            yield from _metric_problems(metrics, f"{where}.init_args.metrics")
        return
    if not isinstance(value, Mapping) or not value:
        got = "an empty dict" if isinstance(value, Mapping) else f"{type(value).__name__} {value!r}"
        yield f"{where}: expected the metrics as a dict {_FORM}, but got {got}."
        return
    for name, metric in value.items():
        yield from _metric_problems(metric, f"{where}.{name}")


def _metric_problems(value: Any, where: str) -> Iterator[str]:
    """Problems of one metric entry: its form, its class, and its arguments as jsonargparse reads them."""
    if not (isinstance(value, Mapping) and isinstance(value.get("class_path"), str)):
        yield f"{where}: expected a metric as {_ENTRY}, but got {value!r}."
        return
    class_path = value["class_path"]
    cls = _class_of(value)
    if cls is None:
        return  # a short name LightningCLI resolves, or a class another check reports as unimportable
    if not issubclass(cls, Metric):
        yield f"{where}.class_path: {class_path!r} is not a torchmetrics Metric."
        return
    init_args = value.get("init_args", {})
    if not isinstance(init_args, Mapping):
        yield f"{where}.init_args: expected the arguments of {class_path} as a dict, but got {init_args!r}."
        return
    problem = _arguments_problem(cls, class_path, init_args)
    if problem is not None:
        key, message = problem
        yield f"{where}.init_args{'.' + key if key else ''}: {message}"


def _arguments_problem(cls: type, class_path: str, init_args: Mapping[str, Any]) -> tuple[str, str] | None:
    """The key and message of the first argument of ``cls`` that jsonargparse refuses, or None."""
    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(cls, fail_untyped=False)
        parser.parse_object(dict(init_args))
    except Exception as err:  # jsonargparse's ArgumentError, or a TypeError from its signature reading
        text = str(err).strip()
        unknown = _UNKNOWN_OPTION.search(text)
        if unknown:
            key = unknown.group(1)
            accepted = list(parser.get_defaults().keys())
            hint = did_you_mean(key, accepted)
            return key, f"{class_path} takes no argument {key!r}.{hint} Its arguments are {accepted}."
        bad = _BAD_KEY.search(text)
        if bad:
            return bad.group(1), " ".join(bad.group(2).split())
        return "", f"{class_path} refuses its arguments: {' '.join(text.split())}"
    return None


def _class_of(node: Mapping[str, Any]) -> type | None:
    class_path = node.get("class_path")
    cls = resolve_dotted(class_path) if isinstance(class_path, str) else None
    return cls if inspect.isclass(cls) else None
