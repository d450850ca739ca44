"""The detection network: an FCOS-style single-level head on one feature map of known stride.

Why FCOS rather than CenterNet: FCOS's loss is made of exactly the pieces that ``torchvision.ops`` has (a sigmoid
focal loss per location and class, a GIoU loss on the decoded boxes, a centerness binary cross-entropy) and its
decoding is a top-k plus ``nms``; one level of it fits one feature map. CenterNet needs a hand-written Gaussian
heatmap target, a penalty-reduced focal loss and a max-pool peak extraction instead, none of which torchvision has.

Each location ``(i, j)`` of the ``h x w`` feature map stands for the point ``((j + 0.5) * stride, (i + 0.5) *
stride)`` of the image. The network predicts there, from one shared tower of ``3x3`` convolutions:

- ``class_logits (B, C, h, w)``: one sigmoid logit per class (the bias starts at ``-log((1 - p) / p)``, ``p = 0.01``,
  as in FCOS, so the focal loss does not start with every location claiming every class);
- ``box_distances (B, 4, h, w)``: the distances, in pixels, from the point to the box's left, top, right and bottom
  sides (``softplus(x) * stride``: positive, smooth, and in units of the stride);
- ``centerness_logits (B, 1, h, w)``: how central the point is in its box (a logit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from torchbricks_lightning.bag_of_bricks.metrics import check_class_names
from torchbricks_lightning.errors import ConfigError

__all__ = ["DetectionNetwork", "check_positive_int", "location_centers"]


def check_positive_int(value: object, name: str, where: str) -> int:
    """``value`` if it is an int >= 1, else a :class:`ConfigError` naming ``name`` and ``where``.

    Example:
        >>> check_positive_int(4, "stride", "create_detection_head")
        4
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected {name} to be an int >= 1, but got {value!r}.")
    return value


def location_centers(height: int, width: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """The image points ``(x, y)`` of the ``height x width`` feature-map locations, row by row: ``(h * w, 2)``.

    Example:
        >>> location_centers(1, 2, 4).tolist()
        [[2.0, 2.0], [6.0, 2.0]]
    """
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


class DetectionNetwork(nn.Module):
    """FCOS-style predictions on one feature map: class logits, box side distances and centerness logits.

    Args:
        num_classes: the number of object classes (no background class: each class has its own sigmoid).
        in_channels: the channels of the feature map.
        stride: the feature map's stride, in pixels of the input image.
        hidden_channels: the channels of the shared tower.
        num_convs: the ``3x3`` convolutions (each followed by a GroupNorm-free ReLU) of the shared tower.
        prior_probability: the initial probability of every class at every location.
        class_names: a name per class, recorded for export manifests.
        where: the brick, for error messages.

    Example:
        >>> network = DetectionNetwork(num_classes=3, in_channels=8, stride=4)
        >>> logits, distances, centerness = network(torch.rand(2, 8, 6, 5))
        >>> tuple(logits.shape), tuple(distances.shape), tuple(centerness.shape)
        ((2, 3, 6, 5), (2, 4, 6, 5), (2, 1, 6, 5))
        >>> _ = network(torch.rand(2, 8, 6, 5), torch.rand(2, 3, 22, 20))
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: ... stride 4 does not divide the input image 22x20...
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        stride: int,
        hidden_channels: int = 32,
        num_convs: int = 1,
        prior_probability: float = 0.01,
        class_names: Sequence[str] | None = None,
        where: str = "DetectionNetwork",
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes", where)
        check_positive_int(in_channels, "in_channels", where)
        self.stride = check_positive_int(stride, "stride", where)
        check_positive_int(hidden_channels, "hidden_channels", where)
        if isinstance(num_convs, bool) or not isinstance(num_convs, int) or num_convs < 0:
            raise ConfigError(f"{where}: expected num_convs to be an int >= 0, but got {num_convs!r}.")
        if not 0.0 < prior_probability < 1.0:
            raise ConfigError(f"{where}: expected prior_probability in (0, 1), but got {prior_probability!r}.")
        self.class_names = check_class_names(class_names, num_classes, where)
        self.where = where
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, hidden_channels, 3, padding=1), nn.ReLU()]
            channels = hidden_channels
        self.tower = nn.Sequential(*layers)
        self.class_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_distances = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        for conv, bias in (
            (self.class_logits, -math.log((1.0 - prior_probability) / prior_probability)),
            (self.box_distances, 0.0),
            (self.centerness, 0.0),
        ):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(cast(torch.Tensor, conv.bias), bias)

    def forward(
        self, features: torch.Tensor, image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if features.ndim != 4:
            raise ConfigError(
                f"{self.where}: expected a feature map (B, C, h, w), but got a tensor of shape "
                f"{tuple(features.shape)}. The detection head reads one feature map of known stride."
            )
        if image is not None:
            self.check_stride(features, image)
        tower = self.tower(features)
        distances = F.softplus(self.box_distances(tower)) * self.stride
        return self.class_logits(tower), distances, self.centerness(tower)

    def check_stride(self, features: torch.Tensor, image: torch.Tensor) -> None:
        """Raise unless the image is exactly ``stride`` times the feature map (sizes only: no device sync)."""
        height, width = (int(size) for size in image.shape[-2:])
        h, w = (int(size) for size in features.shape[-2:])
        if height % self.stride or width % self.stride:
            raise ConfigError(
                f"{self.where}: the stride {self.stride} does not divide the input image {height}x{width}, so the "
                "feature-map locations do not map to whole image cells. Pad or resize the images to a multiple of "
                f"{self.stride} (e.g. {math.ceil(height / self.stride) * self.stride}x"
                f"{math.ceil(width / self.stride) * self.stride})."
            )
        if (h * self.stride, w * self.stride) != (height, width):
            raise ConfigError(
                f"{self.where}: a {height}x{width} image gives a {h}x{w} feature map, so its stride is not "
                f"{self.stride} (the head's stride). Give the backbone's real stride "
                f"({height // h if h else '?'}), or read the feature map that has stride {self.stride}."
            )
