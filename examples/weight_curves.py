"""Read logged values over training steps back from a CSV log, for a line chart (the balancer's per-task weights).

Used by ``demo.py``: the curves go to :func:`torchbricks_lightning.pictures.render_line_chart` (matplotlib).
"""

from __future__ import annotations

import csv
from pathlib import Path


def read_curves(metrics_csv: Path, prefix: str) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(step, value), ...]}`` of every column of a CSVLogger file that starts with ``prefix``."""
    curves: dict[str, list[tuple[float, float]]] = {}
    with metrics_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if key.startswith(prefix) and value != "":
                    curves.setdefault(key[len(prefix) :], []).append((float(row["step"]), float(value)))
    return curves
