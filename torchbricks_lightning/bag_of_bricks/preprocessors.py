"""Preprocessing modules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchbricks_lightning.errors import ConfigError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessor(nn.Module):
    """Normalise images channel by channel: ``(raw - mean) / std`` on ``(batch, channels, height, width)``.

    Args:
        mean: the per-channel mean (ImageNet's by default).
        std: the per-channel standard deviation (ImageNet's by default).

    Example:
        >>> import torch
        >>> Preprocessor(mean=[0.5], std=[0.5])(torch.ones(2, 1, 3, 3)).unique()
        tensor([1.])
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ConfigError(f"Expected mean and std of equal length, but got {len(mean)} and {len(std)}.")
        if any(value <= 0 for value in std):
            raise ConfigError(f"Expected every std to be positive, but got {list(std)}.")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std
