"""Losses: the weighted total of the losses a stage produced, as pure functions over dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from torchbricks_lightning.errors import BrickGraphError, ConfigError

__all__ = ["merge_loss_weights", "weighted_total"]


def merge_loss_weights(weights: Mapping[str, float], overrides: Mapping[str, float] | None) -> dict[str, float]:
    """The bricks' loss weights with ``overrides`` applied.

    Raises:
        ConfigError: ``overrides`` names a loss that ``weights`` does not have.

    Example:
        >>> merge_loss_weights({"ce": 1.0, "l1": 2.0}, {"l1": 0.5})
        {'ce': 1.0, 'l1': 0.5}
    """
    if not overrides:
        return dict(weights)
    unknown = [name for name in overrides if name not in weights]
    if unknown:
        raise ConfigError(f"loss_weights names unknown losses {unknown}; the losses are {list(weights)}.")
    return {**weights, **overrides}


def weighted_total(named_outputs: Mapping[str, Any], weights: Mapping[str, float]) -> torch.Tensor:
    """The sum of the losses in ``named_outputs``, each times its weight (a weight of 1 adds no multiplication).

    Raises:
        BrickGraphError: ``named_outputs`` holds none of the losses.

    Example:
        >>> weighted_total({"ce": torch.tensor(2.0), "l1": torch.tensor(1.0)}, {"ce": 1.0, "l1": 0.5})
        tensor(2.5000)
    """
    terms = [
        named_outputs[name] if weight == 1.0 else weight * named_outputs[name]
        for name, weight in weights.items()
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
