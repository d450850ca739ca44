"""The dense regressor shared by the depth and surface-normal heads: feature maps to per-pixel values."""

from __future__ import annotations

import torch
from torch import nn

from torchbricks_lightning.errors import ConfigError

__all__ = ["DenseRegressor"]


class DenseRegressor(nn.Module):
    """Per-pixel values ``(N, out_channels, H * upsample, W * upsample)`` from feature maps ``(N, C, H, W)``.

    As :class:`~torchbricks_lightning.bag_of_bricks.PixelClassifier`: an optional ``3x3`` convolution with
    ``hidden_channels`` (and a ReLU), then a ``1x1`` convolution to ``out_channels * upsample**2`` values per feature
    position, rearranged into ``upsample x upsample`` pixels by a sub-pixel shuffle (``nn.PixelShuffle``, ONNX's
    ``DepthToSpace``), so every output pixel gets a value of its own however coarse the feature maps.

    Args:
        out_channels: the values per pixel (1 for depth, 3 for normals).
        n_features: the channels of the feature maps.
        upsample: the integer factor from the feature maps to the targets (1: same size); the backbone's stride.
        hidden_channels: the channels of the optional 3x3 convolution (0: none).

    Raises:
        ConfigError: a size that is not positive (``hidden_channels``: negative).

    Example:
        >>> tuple(DenseRegressor(3, 8, upsample=4)(torch.rand(2, 8, 2, 2)).shape)
        (2, 3, 8, 8)
    """

    def __init__(self, out_channels: int, n_features: int, upsample: int = 1, hidden_channels: int = 0) -> None:
        super().__init__()
        if out_channels < 1 or n_features < 1 or upsample < 1 or hidden_channels < 0:
            raise ConfigError(
                "Expected out_channels >= 1, in_channels >= 1, upsample >= 1 and hidden_channels >= 0, but got "
                f"{out_channels}, {n_features}, {upsample} and {hidden_channels}."
            )
        layers: list[nn.Module] = []
        channels = n_features
        if hidden_channels:
            layers += [nn.Conv2d(n_features, hidden_channels, 3, padding=1), nn.ReLU()]
            channels = hidden_channels
        layers.append(nn.Conv2d(channels, out_channels * upsample * upsample, 1))
        if upsample > 1:
            layers.append(nn.PixelShuffle(upsample))
        self.values = nn.Sequential(*layers)
        self.upsample = int(upsample)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.values(features)
