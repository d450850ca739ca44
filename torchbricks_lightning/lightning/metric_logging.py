"""Turn summarised metrics into what loggers can show: scalars, per-class scalars and pictures."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from torchbricks_lightning.pictures import render_matrix

__all__ = ["MetricsToLog", "render_matrix", "split_metrics", "warn_once"]


class MetricsToLog:
    """Metrics split by shape: ``scalars`` to log as numbers, ``matrices`` to draw as pictures."""

    def __init__(self) -> None:
        self.scalars: dict[str, torch.Tensor] = {}
        self.matrices: dict[str, torch.Tensor] = {}


def split_metrics(prefix: str, metrics: Mapping[str, torch.Tensor]) -> MetricsToLog:
    """Name every metric ``'{prefix}/{key}'``; vectors become one scalar per class (``.../class_3``).

    Example:
        >>> import torch
        >>> split = split_metrics("validation", {"acc": torch.tensor(0.5), "recall": torch.tensor([0.1, 0.9]),
        ...                                      "confusion": torch.eye(2)})
        >>> sorted(split.scalars), sorted(split.matrices)
        (['validation/acc', 'validation/recall/class_0', 'validation/recall/class_1'], ['validation/confusion'])
    """
    result = MetricsToLog()
    for key, value in metrics.items():
        name = f"{prefix}/{key}"
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if value.ndim == 0:
            result.scalars[name] = value
        elif value.ndim == 1:
            for index, element in enumerate(value):
                result.scalars[f"{name}/class_{index}"] = element
        else:
            result.matrices[name] = value
    return result


def warn_once(message: str, seen: set[str], key: str) -> None:
    """Warn with ``message`` the first time ``key`` is seen."""
    if key not in seen:
        seen.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)
