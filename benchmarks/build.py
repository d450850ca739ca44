"""Build time: constructing a ``BrickCollection`` (validating and planning every stage, generating its code).

Three shapes, at 100, 1,000 and 10,000 bricks of ``nn.Identity``:

* **chain**: each brick reads the previous brick's output;
* **fan-out**: one brick feeds every other brick;
* **fan-out + fan-in**: as fan-out, plus one brick that reads every output.

The bricks are created before the clock starts; the figure is ``BrickCollection(bricks)`` alone (the median of a
few builds, each with fresh bricks and with the generated-code cache emptied first, so every build compiles its code
as a first build does). Target: 10,000 bricks in under 2 s. The time to run the built collection once is reported
beside it (informational), so a faster build that made calls slower would show.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.common import BenchmarkResult, Figure, Settings
from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.core import dispatch

__all__ = ["MAX_BUILD_S_10K", "SHAPES", "run"]

MAX_BUILD_S_10K = 2.0
SIZES = (100, 1_000, 10_000)


class Sum(nn.Module):
    """Adds every input: the fan-in brick."""

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        return torch.stack(values).sum(dim=0)


def chain(n: int) -> dict[str, Any]:
    return {f"b{i}": BrickTrainable(nn.Identity(), input_names=[f"x{i}"], output_names=[f"x{i + 1}"]) for i in range(n)}


def fan_out(n: int) -> dict[str, Any]:
    bricks: dict[str, Any] = {"root": BrickTrainable(nn.Identity(), input_names=["x0"], output_names=["x"])}
    bricks.update(
        {f"b{i}": BrickTrainable(nn.Identity(), input_names=["x"], output_names=[f"y{i}"]) for i in range(n - 1)}
    )
    return bricks


def fan_out_fan_in(n: int) -> dict[str, Any]:
    bricks = fan_out(n - 1)
    bricks["sink"] = BrickTrainable(Sum(), input_names=[f"y{i}" for i in range(n - 2)], output_names=["z"])
    return bricks


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "chain": chain,
    "fan-out": fan_out,
    "fan-out + fan-in": fan_out_fan_in,
}


def _build_once(make: Callable[[int], dict[str, Any]], n: int) -> tuple[float, float]:
    bricks = make(n)
    dispatch.clear_code_cache()
    gc.collect()
    start = time.perf_counter()
    collection = BrickCollection(bricks)
    built = time.perf_counter() - start
    start = time.perf_counter()
    collection({"x0": torch.ones(1)}, "inference")
    return built, time.perf_counter() - start


def run(settings: Settings | None = None) -> BenchmarkResult:
    settings = settings or Settings.full()
    start = time.perf_counter()
    sizes = (10, 100) if settings.quick else SIZES
    repeats = 1 if settings.quick else 3
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    for shape, make in SHAPES.items():
        for n in sizes:
            samples = [_build_once(make, n) for _ in range(repeats)]
            build_s = statistics.median(sample[0] for sample in samples)
            call_s = statistics.median(sample[1] for sample in samples)
            details[f"{shape}/{n}"] = {"build_s": [s[0] for s in samples], "first_call_s": [s[1] for s in samples]}
            target = n == max(SIZES)
            figures.append(
                Figure(
                    name=f"build {shape}, {n} bricks",
                    value=build_s,
                    baseline=None,
                    unit="s",
                    comparison=None,
                    comparison_kind="none",
                    target=f"< {MAX_BUILD_S_10K:g} s" if target else "",
                    met=build_s < MAX_BUILD_S_10K if target else None,
                    notes=f"BrickCollection(bricks): every stage planned and its code generated (median of {repeats}); "
                    f"then one inference call: {call_s * 1e3:.1f} ms",
                )
            )
    return BenchmarkResult("build", figures, details, time.perf_counter() - start)
