"""Turn summarised metrics into what loggers can show: scalars, per-class scalars and pictures."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

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


def render_matrix(matrix: torch.Tensor, cell: int = 48) -> torch.Tensor:
    """Draw a 2-D matrix (e.g. a confusion matrix) as an RGB image tensor ``(3, H, W)`` in ``[0, 1]``.

    Cells are shaded by value (row-normalised for non-negative matrices) and, when Pillow is available, labelled
    with their value.

    Example:
        >>> import torch
        >>> tuple(render_matrix(torch.tensor([[3, 1], [0, 4]]), cell=10).shape)
        (3, 20, 20)
    """
    values = matrix.detach().float().cpu()
    if values.ndim > 2:
        values = values.reshape(-1, values.shape[-1])
    rows, columns = values.shape
    if bool((values >= 0).all()):
        shade = values / values.sum(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        span = (values.max() - values.min()).clamp_min(1e-12)
        shade = (values - values.min()) / span
    # White to dark blue.
    low, high = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.03, 0.19, 0.42])
    colors = low[:, None, None] + (high - low)[:, None, None] * shade[None]
    image = colors.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    try:
        from PIL import Image, ImageDraw
    except ModuleNotFoundError:  # pragma: no cover - Pillow comes with torchvision
        return image
    pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8"))
    draw = ImageDraw.Draw(pil)
    integer = bool(torch.all(values == values.round()))
    for r in range(rows):
        for c in range(columns):
            text = f"{int(values[r, c])}" if integer else f"{float(values[r, c]):.2f}"
            color = (255, 255, 255) if shade[r, c] > 0.5 else (0, 0, 0)
            draw.text((c * cell + 4, r * cell + cell // 2 - 5), text, fill=color)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255


def warn_once(message: str, seen: set[str], key: str) -> None:
    """Warn with ``message`` the first time ``key`` is seen."""
    if key not in seen:
        seen.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)
