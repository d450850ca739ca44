"""The multi-task score Δm (Maninis, Radosavovic and Kokkinos, CVPR 2019): the mean relative gain over baselines.

``delta_m = 100 / T * sum_t (-1)^{l_t} (M_t - B_t) / |B_t|`` over the ``T`` metrics named by the baselines, with
``M_t`` the model's value, ``B_t`` the baseline's (usually a single-task model's) and ``l_t = 1`` when lower is
better (an error), 0 when higher is better (an accuracy). Positive: better than the baselines on average, in
percent.

A metric that is NaN is missing (the metrics of the bag of bricks report NaN for a task without a labelled element
in the epoch): Δm leaves it out, so ``T`` counts the metrics that have a value, and warns once per metric, naming it.
Counting such a task as an accuracy of 0 would add -100% for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import torch

from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, did_you_mean

__all__ = ["DeltaM"]


class DeltaM:
    """Δm of metric values against per-metric baselines, for ``LightningBrickCollection(delta_m=...)``.

    The module logs it as ``validation/delta_m`` at each validation epoch end, from the metric keys of the
    collection's summary (``'digit/accuracy'``, ``'age/mae'``, ...); call it on test metrics with the baselines'
    test values for a test figure.

    Args:
        baselines: the baseline value of each metric, by metric key.
        higher_is_better: the direction of each metric, by metric key (default: higher is better for every key).

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
        self.higher_is_better = {key: bool(directions.get(key, True)) for key in self.baselines}
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
