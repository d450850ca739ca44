"""The multi-task score Δm (Maninis, Radosavovic and Kokkinos, CVPR 2019): the mean relative gain over baselines.

``delta_m = 100 / T * sum_t (-1)^{l_t} (M_t - B_t) / |B_t|`` over the ``T`` metrics named by the baselines, with
``M_t`` the model's value, ``B_t`` the baseline's (usually a single-task model's) and ``l_t = 1`` when lower is
better (an error), 0 when higher is better (an accuracy). Positive: better than the baselines on average, in
percent.

The direction of a metric the model reports comes from the metric object itself, torchmetrics' ``higher_is_better``
(:func:`metric_directions`), so an error metric is never scored as an accuracy because its direction was left out.
A direction given by the user must agree with it. A dict-valued metric whose values go different ways says so per
value name in ``value_higher_is_better`` (a ``{value name: bool or None}`` attribute, read before
``higher_is_better``).

A metric that is NaN is missing (the metrics of the bag of bricks report NaN for a task without a labelled element
in the epoch): Δm leaves it out, so ``T`` counts the metrics that have a value, and warns once per metric, naming it.
Counting such a task as an accuracy of 0 would add -100% for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import cast

import torch
from torchmetrics import MetricCollection

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetrics
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, did_you_mean

__all__ = ["DeltaM", "metric_directions"]


def metric_directions(collection: BrickCollection) -> dict[str, bool | None]:
    """Whether higher is better for each metric key the collection reports, read from its metric objects.

    A metric's torchmetrics ``higher_is_better`` gives the direction of its key; a dict-valued metric (one declaring
    ``value_names``) gives it for each of its keys, or per value name in a ``value_higher_is_better`` mapping. None:
    the metric does not say.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> from torchbricks_lightning.bag_of_bricks.metrics import RegressionMetrics
        >>> from torchbricks_lightning.core.metric_bricks import BrickMetricSingle
        >>> metric_directions(BrickCollection({
        ...     "accuracy": BrickMetricSingle(MulticlassAccuracy(3), input_names=["preds", "targets"]),
        ...     "age": BrickMetricSingle(RegressionMetrics(), input_names=["age", "age_targets"]),
        ... }))
        {'accuracy': True, 'mae': False, 'mse': False}
    """
    directions: dict[str, bool | None] = {}
    for path, brick in collection.named_bricks():
        if not isinstance(brick, BrickMetrics):
            continue
        # Every stage holds a copy of the same metrics.
        metrics = cast(MetricCollection, next(iter(brick.metrics_per_stage.values())))
        by_report_name: dict[str, bool | None] = {}
        for name, metric in metrics.items(keep_base=False, copy_state=False):
            value_names = getattr(metric, "value_names", None)
            if value_names is None:
                by_report_name[name] = _direction(getattr(metric, "higher_is_better", None))
                continue
            per_value = getattr(metric, "value_higher_is_better", None) or {}
            for value in (value_names,) if isinstance(value_names, str) else value_names:
                given = per_value.get(value, metric.higher_is_better) if isinstance(per_value, Mapping) else None
                by_report_name[value] = _direction(given)
        for report_name, key in zip(brick.report_names, brick.metric_keys(path), strict=True):
            directions[key] = by_report_name.get(report_name)
    return directions


def _direction(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


class DeltaM:
    """Δm of metric values against per-metric baselines, for ``LightningBrickCollection(delta_m=...)``.

    The module logs it as ``validation/delta_m`` at each validation epoch end and as ``test/delta_m`` at the end of
    ``trainer.test``, from the metric keys of the collection's summary (``'digit/accuracy'``, ``'age/mae'``, ...) and
    the same baselines.

    In a module, each metric's direction comes from its metric object (:func:`metric_directions`, checked when the
    module is built by :meth:`check_directions`): ``higher_is_better`` is needed only for a metric that does not say
    (torchmetrics' ``higher_is_better=None``), and must agree with the metrics that do. Called on its own, before
    any check against a model, a key without a given direction counts as higher-is-better: give every error
    metric's direction there.

    Args:
        baselines: the baseline value of each metric, by metric key.
        higher_is_better: the direction of each metric, by metric key (default: the metric object's).

    Raises:
        ConfigError: a baseline is zero or not finite, or a direction names a key without a baseline.

    Example:
        >>> score = DeltaM({"digit/accuracy": 0.9, "age/mae": 2.0}, higher_is_better={"age/mae": False})
        >>> score({"digit/accuracy": torch.tensor(0.99), "age/mae": torch.tensor(1.5), "other": torch.tensor(1.0)})
        tensor(17.5000)
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     score({"digit/accuracy": torch.tensor(float("nan")), "age/mae": torch.tensor(1.5)})
        tensor(25.)
        >>> print(caught[0].message)  # doctest: +ELLIPSIS
        Δm leaves out the metric 'digit/accuracy': it is NaN, ...
    """

    def __init__(self, baselines: Mapping[str, float], higher_is_better: Mapping[str, bool] | None = None) -> None:
        if not isinstance(baselines, Mapping) or not baselines:
            raise BrickDefinitionError(
                f"Expected baselines to be a dict {{metric key: baseline value}}, but got {baselines!r}."
            )
        for key, value in baselines.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value:
                raise ConfigError(
                    f"The baseline of {key!r} is {value!r}; Δm divides by it, so it must be a finite, non-zero number."
                )
        directions = dict(higher_is_better or {})
        unknown = [key for key in directions if key not in baselines]
        if unknown:
            raise ConfigError(
                f"higher_is_better names {unknown}, which have no baseline; the baselines are {list(baselines)}."
            )
        self.baselines = {str(key): float(value) for key, value in baselines.items()}
        self.given_higher_is_better = {str(key): bool(value) for key, value in directions.items()}
        """The directions the user gave; :attr:`higher_is_better` holds those in use."""
        self.higher_is_better = {key: self.given_higher_is_better.get(key, True) for key in self.baselines}
        self.warned: set[str] = set()  # the missing metrics already named in a warning

    def check_keys(self, metric_keys: Iterable[str]) -> None:
        """Raise :class:`ConfigError` if a baseline names a metric the collection does not report."""
        known = list(metric_keys)
        for key in self.baselines:
            if key not in known:
                hint = did_you_mean(key, known)
                raise ConfigError(
                    f"Δm has a baseline for the metric {key!r}, which the bricks do not report.{hint} Metric keys: "
                    f"{known}."
                )

    def check_directions(self, directions: Mapping[str, bool | None]) -> None:
        """Take each metric's direction from ``directions`` (:func:`metric_directions` of the model).

        Raises:
            ConfigError: a given direction disagrees with the metric's, or neither the metric nor the user says which
                way a baselined metric goes; the message names the key and the fix.
        """
        resolved = dict(self.higher_is_better)
        for key in self.baselines:
            given = self.given_higher_is_better.get(key)
            known = directions.get(key)
            if known is not None and given is not None and given != known:
                raise ConfigError(
                    f"Δm is told higher_is_better={{{key!r}: {given}}}, but the metric behind {key!r} says "
                    f"higher_is_better={known}. Drop {key!r} from DeltaM's higher_is_better: the metric's own "
                    "direction is used."
                )
            if known is None and given is None:
                raise ConfigError(
                    f"Δm cannot tell which way the metric {key!r} goes: its metric has higher_is_better=None. Give "
                    f"it, e.g. DeltaM(..., higher_is_better={{{key!r}: False}}) for an error, True for a score."
                )
            resolved[key] = bool(known if known is not None else given)
        self.higher_is_better = resolved

    def __call__(self, metrics: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """Δm in percent over the metrics named by the baselines (those present in ``metrics`` and not NaN; NaN if
        none). A NaN metric (a task without labels) is left out, with a warning the first time."""
        gains = []
        for key, baseline in self.baselines.items():
            if key not in metrics:
                continue
            value = float(metrics[key])
            if math.isnan(value):
                self._warn_missing(key)
                continue
            sign = 1.0 if self.higher_is_better[key] else -1.0
            gains.append(sign * (value - baseline) / abs(baseline))
        if not gains:
            return torch.tensor(float("nan"))
        return torch.tensor(100.0 * sum(gains) / len(gains))

    def _warn_missing(self, key: str) -> None:
        if key in self.warned:
            return
        self.warned.add(key)
        warnings.warn(
            f"Δm leaves out the metric {key!r}: it is NaN, so its task had no labelled element in the epoch (a "
            "missing value, not 0). Δm is the mean over the other metrics with a baseline. Give that task labels in "
            "the evaluation data, or drop its baseline from DeltaM. (Said once per metric.)",
            UserWarning,
            stacklevel=3,
        )

    def __repr__(self) -> str:
        return f"DeltaM(baselines={self.baselines}, higher_is_better={self.higher_is_better})"
