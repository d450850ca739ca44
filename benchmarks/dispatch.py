"""Dispatch overhead: a ``BrickCollection`` against the hand-written module calling the same module objects.

Figures, eager (autograd on) and under ``torch.no_grad()``:

* chains of 3, 10 and 50 ``nn.Identity`` bricks: the extra microseconds per brick (target <= 1 us/brick);
* a small CNN of 3 bricks: the time ratio (target <= 1.02);
* ResNet-18 split into 18 bricks on a 2x3x64x64 input: the time ratio (informational);
* what the extra time is made of: one brick wrapper's call against a direct call of the module it wraps, and the
  fixed cost per collection call (the intercept of the extra time against the chain length).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmarks.common import BenchmarkResult, Figure, Settings, dicts_allclose, ratio_figure, time_interleaved
from benchmarks.models import Pair, resnet18_split, small_cnn, trivial_chain
from torchbricks_lightning import BrickTrainable

__all__ = ["MAX_EXTRA_US_PER_BRICK", "MAX_SMALL_CNN_RATIO", "pairs", "run"]

MAX_EXTRA_US_PER_BRICK = 1.0
MAX_SMALL_CNN_RATIO = 1.02
CHAIN_LENGTHS = (3, 10, 50)


@contextlib.contextmanager
def grad_mode(mode: str) -> Iterator[None]:
    """``"eager"``: autograd on (the default); ``"no_grad"``: under ``torch.no_grad()``."""
    if mode == "no_grad":
        with torch.no_grad():
            yield
    else:
        with torch.enable_grad():
            yield


def pairs(settings: Settings) -> list[Pair]:
    """The models compared: the chains, the small CNN and ResNet-18 (smaller inputs in quick mode)."""
    image = 16 if settings.quick else 64
    return [
        *(trivial_chain(n) for n in CHAIN_LENGTHS),
        small_cnn(batch_size=2 if settings.quick else 8, image_size=16 if settings.quick else 32),
        resnet18_split(batch_size=1 if settings.quick else 2, image_size=image),
    ]


def _wrapper_figures(settings: Settings, mode: str, suffix: str) -> tuple[Figure, dict[str, Any]]:
    """One brick call against one direct call of the module it wraps: the per-brick cost of the wrapper."""
    module = nn.Identity()
    brick = BrickTrainable(module, input_names=["x"], output_names=["y"])
    x = torch.zeros(1, device=settings.device)
    with grad_mode(mode):
        samples = time_interleaved({"brick": lambda: brick(x), "module": lambda: module(x)}, settings)
    difference_us = samples.difference("brick", "module") * 1e6
    figure = Figure(
        name=f"brick wrapper call, Identity ({mode}){suffix}",
        value=samples.median("brick") * 1e6,
        baseline=samples.median("module") * 1e6,
        unit="us",
        comparison=difference_us,
        comparison_kind="difference",
        comparison_unit="us/call",
        notes="informational: BrickTrainable(Identity)(x) vs Identity()(x), the brick's own nn.Module call, "
        "which the generated stage function makes for every brick (so hooks and brick.compile() apply)",
        extra={"repeats": samples.repeats, "inner_iterations": samples.inner_iterations},
    )
    return figure, {"samples": samples}


def run(settings: Settings | None = None) -> BenchmarkResult:
    settings = settings or Settings.full()
    start = time.perf_counter()
    suffix = "" if settings.device == "cpu" else f" [{settings.device}]"
    figures: list[Figure] = []
    details: dict[str, Any] = {"outputs_match": {}, "samples": {}, "n_bricks": {}, "device": settings.device}
    models = [pair.to(settings.device) for pair in pairs(settings)]
    sync = settings.sync()
    for pair in models:
        with torch.no_grad():
            details["outputs_match"][pair.name] = dicts_allclose(pair.run_bricks(), pair.run_handwritten())
            if pair.tight is not None:
                details["outputs_match"][f"{pair.name}/tight"] = dicts_allclose(
                    pair.run_bricks(), pair.tight(pair.inputs)
                )
        details["n_bricks"][pair.name] = pair.n_bricks
    fixed_costs: dict[str, list[tuple[int, float]]] = {}
    for mode in ("eager", "no_grad"):
        for pair in models:
            functions = {"bricks": pair.run_bricks, "handwritten": pair.run_handwritten}
            if pair.tight is not None:
                functions["tight"] = partial(pair.tight, pair.inputs)
            with grad_mode(mode):
                samples = time_interleaved(functions, settings)
            if sync is not None:
                sync()
            details["samples"][f"{pair.name}/{mode}"] = samples
            label = f"{pair.name} ({mode}){suffix}"
            if pair.name.startswith("chain"):
                extra_per_brick_us = samples.difference("bricks", "handwritten") / pair.n_bricks * 1e6
                tight_us = samples.difference("bricks", "tight") / pair.n_bricks * 1e6
                fixed_costs.setdefault(mode, []).append((pair.n_bricks, samples.difference("bricks", "tight") * 1e6))
                figures.append(
                    Figure(
                        name=f"dispatch {label}: extra time per brick",
                        value=samples.median("bricks") * 1e6,
                        baseline=samples.median("handwritten") * 1e6,
                        unit="us/call",
                        comparison=extra_per_brick_us,
                        comparison_kind="difference",
                        comparison_unit="us/brick",
                        target=f"<= {MAX_EXTRA_US_PER_BRICK:g} us/brick",
                        met=extra_per_brick_us <= MAX_EXTRA_US_PER_BRICK,
                        notes=f"{pair.n_bricks} nn.Identity bricks; (bricks - hand-written) / {pair.n_bricks}; "
                        "the hand-written forward calls self.<name> (nn.Module.__getattr__ per call); against the "
                        f"tight lower bound (modules bound as globals): {tight_us:+.2f} us/brick",
                        extra={"repeats": samples.repeats, "inner_iterations": samples.inner_iterations},
                    )
                )
                if pair.n_bricks == max(CHAIN_LENGTHS):
                    figures.append(
                        Figure(
                            name=f"dispatch {label}: extra time per brick over the tight lower bound",
                            value=samples.median("bricks") * 1e6,
                            baseline=samples.median("tight") * 1e6,
                            unit="us/call",
                            comparison=tight_us,
                            comparison_kind="difference",
                            comparison_unit="us/brick",
                            notes="informational: the same straight-line code with the modules bound as globals "
                            "(no self.<name> lookup): the fastest Python, not what one writes by hand",
                            extra={"repeats": samples.repeats, "inner_iterations": samples.inner_iterations},
                        )
                    )
            elif pair.name == "small_cnn":
                shape = "x".join(str(s) for s in pair.inputs["raw"].shape)
                figures.append(
                    ratio_figure(
                        f"dispatch {label}: time ratio",
                        samples,
                        "bricks",
                        "handwritten",
                        unit="ms/call",
                        scale=1e3,
                        max_ratio=MAX_SMALL_CNN_RATIO,
                        notes=f"3 bricks (preprocessor, SmallConvNet, classifier), input {shape}",
                    )
                )
            else:
                shape = "x".join(str(s) for s in pair.inputs["raw"].shape)
                figures.append(
                    ratio_figure(
                        f"dispatch {label}: time ratio",
                        samples,
                        "bricks",
                        "handwritten",
                        unit="ms/call",
                        scale=1e3,
                        notes=f"torchvision ResNet-18 (weights=None) as {pair.n_bricks} bricks, eval mode, "
                        f"input {shape}",
                    )
                )
        figure, wrapper_details = _wrapper_figures(settings, mode, suffix)
        figures.append(figure)
        details["samples"][f"brick_wrapper/{mode}"] = wrapper_details["samples"]
        points = fixed_costs.get(mode, [])
        if len(points) >= 2:
            slope, intercept = _line(points)
            details.setdefault("fit", {})[mode] = {"us_per_brick": slope, "fixed_us_per_call": intercept}
            figures.append(
                Figure(
                    name=f"dispatch ({mode}){suffix}: fixed extra time per collection call",
                    value=intercept,
                    baseline=None,
                    unit="us/call",
                    comparison=None,
                    comparison_kind="none",
                    notes=f"informational: intercept of a least-squares line through the chains' time over the tight "
                    f"lower bound (slope {slope:.2f} us/brick): forward(), the stage lookup, the input check",
                )
            )
    return BenchmarkResult("dispatch", figures, details, time.perf_counter() - start)


def _line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares slope and intercept of ``y`` against ``x``."""
    xs = [float(x) for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
    return slope, mean_y - slope * mean_x
