"""Draw logged values over training steps as a line chart (an RGB tensor), with Pillow only (no matplotlib).

Used by ``demo.py`` for the per-task weights of the balancer (``train/balance/...`` read back from a CSV log).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def read_curves(metrics_csv: Path, prefix: str) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(step, value), ...]}`` of every column of a CSVLogger file that starts with ``prefix``."""
    curves: dict[str, list[tuple[float, float]]] = {}
    with metrics_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if key.startswith(prefix) and value != "":
                    curves.setdefault(key[len(prefix) :], []).append((float(row["step"]), float(value)))
    return curves


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * index / (count - 1) for index in range(count)]


def render_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str = "training step",
    size: tuple[int, int] = (720, 400),
) -> torch.Tensor:
    """A line chart of ``curves`` (``{label: [(x, y), ...]}``) as a ``(3, H, W)`` float tensor in ``[0, 1]``."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, bottom = 70, 20, 60
    top = 48 + 16 * ((len(curves) + 2) // 3)  # the title, then the legend in rows of three
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = [point for curve in curves.values() for point in curve]
    if not points:
        draw.text((left, height // 2), "nothing logged", fill="black")
        return _to_tensor(image)
    x_low, x_high = min(x for x, _ in points), max(x for x, _ in points)
    y_low, y_high = min(y for _, y in points), max(y for _, y in points)
    margin = 0.05 * (y_high - y_low or 1.0)
    y_low, y_high = y_low - margin, y_high + margin
    x_high = x_high if x_high > x_low else x_low + 1

    def position(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (width - left - right),
            height - bottom - (y - y_low) / (y_high - y_low) * (height - top - bottom),
        )

    draw.text((left, 12), title, fill="black")
    draw.rectangle((left, top, width - right, height - bottom), outline=(160, 160, 160))
    for y in _ticks(y_low, y_high):
        _, pixel = position(x_low, y)
        draw.line((left - 4, pixel, width - right, pixel), fill=(225, 225, 225))
        draw.text((8, pixel - 6), f"{y:.3g}", fill="black")
    for x in _ticks(x_low, x_high):
        pixel, _ = position(x, y_low)
        draw.line((pixel, height - bottom, pixel, height - bottom + 4), fill="black")
        draw.text((pixel - 10, height - bottom + 8), f"{x:.0f}", fill="black")
    draw.text(((width - len(x_label) * 6) // 2, height - 22), x_label, fill="black")
    for index, (label, curve) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        line = [position(x, y) for x, y in sorted(curve)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        legend_x, legend_y = left + 220 * (index % 3), 36 + 16 * (index // 3)
        draw.line((legend_x, legend_y + 6, legend_x + 20, legend_y + 6), fill=colour, width=3)
        draw.text((legend_x + 26, legend_y), label, fill="black")
    return _to_tensor(image)


def _to_tensor(image: object) -> torch.Tensor:
    """An RGB picture as a ``(3, H, W)`` float tensor in ``[0, 1]``, as the package's pictures are."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
