"""Shared machinery: interleaved timing with medians, the figures of the report, and the machine description.

The method, used by every benchmark:

* candidate and baseline run in the same process, one after the other, in **interleaved repeats**: each repeat
  takes one sample of each, and the order flips every repeat (A B, B A, ...), so slow drifts (another process,
  CPU frequency, caches) hit both alike;
* a sample of a fast call is ``n`` calls timed with ``time.perf_counter_ns`` (``n`` calibrated once per function
  so that a sample lasts at least ``min_sample_s``), with the garbage collector off;
* a figure is the **median** over the repeats: the median of the paired ratios (candidate / baseline of the same
  repeat) or of the paired differences, and the medians of each side as "value" and "baseline".
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Literal

import torch

__all__ = [
    "BenchmarkResult",
    "Figure",
    "Samples",
    "Settings",
    "calibrate",
    "environment",
    "interleaved",
    "pin_threads",
    "time_calls",
]

ComparisonKind = Literal["ratio", "difference", "none"]


@dataclass(frozen=True)
class Settings:
    """How hard to measure: the full run, or ``quick`` for the tests (tiny sizes and iterations).

    Attributes:
        quick: tiny models, few iterations: checks the code paths, not the speed.
        repeats: interleaved repeats of fast calls (each a sample of ``min_sample_s``).
        slow_repeats: interleaved repeats of slow one-shot measurements (a compile, an export, a subprocess).
        fit_repeats: interleaved repeats of training runs (Lightning parity).
        min_sample_s: the least duration of one sample of fast calls.
        device: ``"cpu"`` or ``"cuda"``.
    """

    quick: bool = False
    repeats: int = 31
    slow_repeats: int = 7
    fit_repeats: int = 11
    min_sample_s: float = 0.02
    device: str = "cpu"

    @classmethod
    def full(cls, device: str = "cpu") -> Settings:
        return cls(quick=False, repeats=31, slow_repeats=7, fit_repeats=11, min_sample_s=0.02, device=device)

    @classmethod
    def fast(cls, device: str = "cpu") -> Settings:
        """For tests: every code path, minimal work."""
        return cls(quick=True, repeats=2, slow_repeats=2, fit_repeats=2, min_sample_s=0.0005, device=device)

    def sync(self) -> Callable[[], None] | None:
        """What to call before stopping a clock: wait for the GPU, nothing on CPU."""
        if self.device.startswith("cuda"):
            return torch.cuda.synchronize
        return None


def pin_threads(threads: int = 1) -> int:
    """Pin torch's intra-op (and inter-op, where still allowed) thread count; returns the count in use."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only allowed before any inter-op work started
        torch.set_num_interop_threads(threads)
    return torch.get_num_threads()


# --------------------------------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], n: int, sync: Callable[[], None] | None = None) -> float:
    """Seconds per call of ``fn`` over ``n`` calls, timed with ``perf_counter_ns``, garbage collector off."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        if sync is not None:
            sync()
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / n / 1e9


def calibrate(
    fn: Callable[[], Any], min_sample_s: float, sync: Callable[[], None] | None = None, max_n: int = 1_000_000
) -> int:
    """The number of calls that makes one sample of ``fn`` last at least ``min_sample_s``."""
    n = 1
    while True:
        per_call = time_calls(fn, n, sync)
        if per_call * n >= min_sample_s or n >= max_n:
            return n
        needed = int(min_sample_s / max(per_call, 1e-9) * 1.1) + 1
        n = min(max_n, max(2 * n, needed))


@dataclass
class Samples:
    """Interleaved samples by name (seconds per call, or whatever each measurement returns)."""

    values: dict[str, list[float]]
    inner_iterations: dict[str, int] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def ratio(self, candidate: str, baseline: str) -> float:
        """The median of the paired ratios candidate / baseline (one pair per repeat)."""
        pairs = zip(self.values[candidate], self.values[baseline], strict=True)
        return statistics.median(c / b for c, b in pairs)

    def difference(self, candidate: str, baseline: str) -> float:
        """The median of the paired differences candidate - baseline (one pair per repeat)."""
        pairs = zip(self.values[candidate], self.values[baseline], strict=True)
        return statistics.median(c - b for c, b in pairs)

    @property
    def repeats(self) -> int:
        return min(len(v) for v in self.values.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "inner_iterations": self.inner_iterations,
            "repeats": self.repeats,
            "median": {name: self.median(name) for name in self.values},
            "samples": self.values,
        }


def interleaved(
    measurements: Mapping[str, Callable[[], float]], repeats: int, before_each: Callable[[], None] | None = None
) -> Samples:
    """Run each measurement once per repeat, alternating the order every repeat; collect what each returns."""
    names = list(measurements)
    values: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            if before_each is not None:
                before_each()
            values[name].append(float(measurements[name]()))
    return Samples(values)


def time_interleaved(
    functions: Mapping[str, Callable[[], Any]],
    settings: Settings,
    warmup_calls: int = 3,
    repeats: int | None = None,
) -> Samples:
    """Seconds per call of each function, sampled in interleaved repeats, ``n`` calibrated per function."""
    sync = settings.sync()
    for fn in functions.values():
        for _ in range(warmup_calls):
            fn()
    if sync is not None:
        sync()
    n = {name: calibrate(fn, settings.min_sample_s, sync) for name, fn in functions.items()}
    samples = interleaved(
        {name: functools.partial(time_calls, fn, n[name], sync) for name, fn in functions.items()},
        repeats if repeats is not None else settings.repeats,
    )
    samples.inner_iterations = n
    return samples


# --------------------------------------------------------------------------------------------------- figures
@dataclass
class Figure:
    """One row of the report: a measured value against a baseline measured side by side.

    Attributes:
        name: what is measured.
        value: the candidate's figure (median), in ``unit``.
        baseline: the baseline's figure (median), in ``unit``; None when there is no baseline of that kind.
        unit: the unit of ``value`` and ``baseline`` ("s", "us", "bytes", "count", ...).
        comparison: the ratio (candidate / baseline, median of paired ratios) or the difference.
        comparison_kind: "ratio", "difference" or "none".
        comparison_unit: the unit of a difference (e.g. "us/brick").
        target: the target, in words (e.g. "<= 1.02x"); "" when the figure is informational.
        met: whether the target is met; None when there is no target.
        notes: how it was measured, what it means.
    """

    name: str
    value: float | None
    baseline: float | None
    unit: str
    comparison: float | None
    comparison_kind: ComparisonKind = "ratio"
    comparison_unit: str = ""
    target: str = ""
    met: bool | None = None
    notes: str = ""
    benchmark: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_figure(
    name: str,
    samples: Samples,
    candidate: str,
    baseline: str,
    unit: str = "s",
    max_ratio: float | None = None,
    notes: str = "",
    scale: float = 1.0,
    two_sided: bool = False,
) -> Figure:
    """A figure whose comparison is the median paired ratio; ``max_ratio`` is the target (None: informational).

    With ``two_sided``, the target is ``|ratio - 1| <= max_ratio - 1`` ("within 3%").
    """
    ratio = samples.ratio(candidate, baseline)
    met: bool | None = None
    target = ""
    if max_ratio is not None:
        if two_sided:
            met = abs(ratio - 1.0) <= max_ratio - 1.0
            target = f"within {100 * (max_ratio - 1):.0f}%"
        else:
            met = ratio <= max_ratio
            target = f"<= {max_ratio:g}x"
    return Figure(
        name=name,
        value=samples.median(candidate) * scale,
        baseline=samples.median(baseline) * scale,
        unit=unit,
        comparison=ratio,
        comparison_kind="ratio",
        target=target,
        met=met,
        notes=notes,
        extra={"repeats": samples.repeats, "inner_iterations": samples.inner_iterations},
    )


@dataclass
class BenchmarkResult:
    """What one benchmark returns: its figures, the details behind them (samples, checks) and its duration."""

    name: str
    figures: list[Figure]
    details: dict[str, Any]
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        figures = []
        for figure in self.figures:
            figure.benchmark = figure.benchmark or self.name
            figures.append(figure.as_dict())
        return {"name": self.name, "seconds": self.seconds, "figures": figures, "details": _jsonable(self.details)}


def _jsonable(value: Any) -> Any:
    """Plain JSON values from nested dicts, lists, tensors, numbers and dataclasses."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, Samples):
        return _jsonable(value.as_dict())
    if isinstance(value, float) and not math.isfinite(value):  # NaN and infinities are not JSON
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------------------------------------- machine
def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict[str, Any]:
    """Versions, CPU, cores, threads and GPU: everything a figure depends on."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 0
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "pytorch_lightning": _version("pytorch-lightning"),
        "torchmetrics": _version("torchmetrics"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "onnxscript": _version("onnxscript"),
        "torchbricks_lightning": _version("torchbricks-lightning"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = list(os.getloadavg())
    return info


def max_abs_difference(a: Sequence[Any], b: Sequence[Any]) -> float:
    """The largest absolute difference between two sequences of tensors (or arrays); inf on a shape mismatch."""
    largest = 0.0
    for x, y in zip(a, b, strict=True):
        tx, ty = torch.as_tensor(x).detach().cpu(), torch.as_tensor(y).detach().cpu()
        if tx.shape != ty.shape:
            return float("inf")
        if tx.numel():
            largest = max(largest, float((tx.double() - ty.double()).abs().max()))
    return largest


def dicts_allclose(a: Mapping[str, Any], b: Mapping[str, Any], atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """Same keys in the same order, and every tensor value close (exactly equal for non-float values)."""
    if list(a) != list(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if x.is_floating_point():
                if not torch.allclose(x, y, atol=atol, rtol=rtol):
                    return False
            elif not torch.equal(x, y):
                return False
        elif x is not y and x != y:
            return False
    return True


def dumps(data: Any) -> str:
    return json.dumps(_jsonable(data), indent=2)
