"""Lightning parity: ``LightningBrickCollection`` vs a hand-written ``LightningModule`` vs a plain PyTorch loop.

All variants train the same model (same initial weights, copied from one seeded build), with the same loss
(cross-entropy over the labelled samples: a third of the labels are missing, -100), the same metric (the head's
``ConfusionMatrixMetrics`` accuracy, ignoring -100, summarised and reset at each epoch end), the same optimizer
(Adam, lr 1e-3) and the same data in the same order. The hand-written module logs what the brick module logs:
``train/head/loss_ce`` and ``train/loss`` per step and per epoch with ``batch_size`` and ``sync_dist``, and
``train/head/accuracy`` at the epoch end. It does so the usual way, letting Lightning average the logged tensors;
the brick module keeps the epoch means in torchmetrics metrics of its own (weighted by the labelled count, so that a
mid-epoch checkpoint carries them) and logs those at the epoch end. Three models (:mod:`benchmarks.parity_models`):
a tiny MLP, a small CNN and ``small``, an MLP 64->128->128->10 of about 1 ms per step, where the fixed cost per
step shows.

Figures per model:

* per-step losses identical to 5 decimals (recorded by a callback; the final weights are compared too);
* time per training step over the hand-written LightningModule, with the default ``check_finite_loss=True`` and
  with ``check_finite_loss=False`` (target <= 1.02x), and the fixed extra cost per step in microseconds. The
  variants train **in lockstep** (:mod:`benchmarks.lockstep`): one thread each, taking turns step by step. The
  figure is the median step period after the first epoch (the warm-up), then the median over the runs of the
  paired ratios; the order of the variants flips every run, and the garbage collector is off during a run;
* the breakdown of the extra cost by component: ablation variants of the brick module with one piece taken out at
  a time (:data:`~benchmarks.parity_models.ABLATIONS`), each paired step by step with the full brick module in the
  same run; and the gain of each prototyped change (:data:`~benchmarks.parity_models.PROTOTYPES`);
* the time per epoch over plain PyTorch (the time each variant held the turn after its first epoch, epoch ends
  included), against Lightning's own reference of 0.05 s per epoch;
* peak memory: each variant trains in a fresh subprocess (the same imports), which reports its peak resident set
  size (VmHWM) and the growth of that peak during ``fit`` (peak - resident size just before ``fit``). Target: the
  peaks within 1%. On CUDA, ``torch.cuda.max_memory_allocated`` in-process instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import operator
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.utils.data import TensorDataset

from benchmarks.common import BenchmarkResult, Figure, Samples, Settings, interleaved, pin_threads, ratio_figure
from benchmarks.lockstep import (
    FitRecord,
    Recorder,
    fit_in_lockstep,
    fit_variant,
    lightning_trainer,
    loader_of,
    quiet_lightning,
)
from benchmarks.parity_models import (
    ABLATIONS,
    PROTOTYPES,
    HandWrittenLightningModule,
    ModelSpec,
    dataset_of,
    lightning_module_of,
    model_specs,
)

__all__ = ["VARIANTS", "FitRecord", "HandWrittenLightningModule", "fit_variant", "memory_worker", "run"]

MAX_STEP_RATIO = 1.02
MAX_MEMORY_RATIO = 1.01
LIGHTNING_REFERENCE_S_PER_EPOCH = 0.05
LOSS_DECIMALS = 5
MEMORY_REPEATS = 5  # peak RSS varies by well under 1% between fresh processes; each one imports torch (seconds)
VARIANTS = ("bricks", "handwritten", "plain", *ABLATIONS, *PROTOTYPES)


# ------------------------------------------------------------------------------------------------ memory
def _status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes, or None where there is none."""
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(f"{field_name}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_worker(variant: str, model: str, quick: bool = False) -> dict[str, int]:
    """Train one variant and report the process's peak resident size and its growth during ``fit``."""
    settings = Settings.fast() if quick else Settings.full()
    spec = model_specs(settings)[model]
    dataset = dataset_of(spec)
    if variant == "plain":
        raise ValueError("memory is compared between the Lightning variants")
    module = lightning_module_of(variant, spec)
    with quiet_lightning():
        trainer = lightning_trainer(spec, [Recorder(FitRecord(), None, variant, sync=False)], "cpu")
        loader = loader_of(spec, dataset)
        gc.collect()
        before = _status_bytes("VmRSS") or 0
        trainer.fit(module, train_dataloaders=loader)
    peak = _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_rss_bytes": peak, "rss_before_fit_bytes": before, "fit_growth_bytes": max(0, peak - before)}


def _memory_command(variant: str, model: str, quick: bool) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.lightning_parity", "memory", "--variant", variant, "--model", model]
    return [*command, "--quick"] if quick else command


def _measure_memory(models: list[str], settings: Settings) -> dict[str, Samples]:
    """Peak RSS of the brick and hand-written variants, each in its own subprocess, both of a repeat at once."""
    results: dict[str, Samples] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for model in models:
        values: dict[str, dict[str, list[float]]] = {
            key: {"bricks": [], "handwritten": []} for key in ("peak_rss_bytes", "fit_growth_bytes")
        }
        for repeat in range(min(settings.slow_repeats, MEMORY_REPEATS)):
            order = ["bricks", "handwritten"] if repeat % 2 == 0 else ["handwritten", "bricks"]
            if settings.quick:  # code path only: in this process (a subprocess imports torch and Lightning, seconds)
                for variant in order:
                    measured = memory_worker(variant, model, quick=True)
                    for key in values:
                        values[key][variant].append(float(measured[key]))
                continue
            processes = {
                variant: subprocess.Popen(  # noqa: S603 - our own module, run with this interpreter
                    _memory_command(variant, model, settings.quick),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                    cwd=root,
                )
                for variant in order
            }
            for variant, process in processes.items():
                stdout, stderr = process.communicate(timeout=300)
                if process.returncode != 0:
                    raise RuntimeError(f"memory worker {variant}/{model} failed:\n{stderr[-2000:]}")
                measured = json.loads(stdout.strip().splitlines()[-1])
                for key in values:
                    values[key][variant].append(float(measured[key]))
        for key, by_variant in values.items():
            results[f"{model}/{key}"] = Samples(by_variant)
    return results


# ------------------------------------------------------------------------------------------------ figures
def _runs(records: dict[str, list[FitRecord]], a: str, b: str) -> list[tuple[FitRecord, FitRecord]]:
    return list(zip(records[a], records[b], strict=True))


def _paired(a: FitRecord, b: FitRecord, combine: Callable[[float, float], float]) -> list[float]:
    """``combine`` of the step periods of two variants that ran in lockstep, step by step (after epoch 1)."""
    return [combine(x, y) for x, y in zip(a.step_periods(), b.step_periods(), strict=True)]


def _paired_us(records: dict[str, list[FitRecord]], a: str, b: str) -> float:
    """The median over the runs of the median paired step difference ``a - b``, in microseconds."""
    return 1e6 * statistics.median(statistics.median(_paired(x, y, operator.sub)) for x, y in _runs(records, a, b))


def _max_loss_difference(a: FitRecord, b: FitRecord) -> float:
    if len(a.losses) != len(b.losses):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a.losses, b.losses, strict=True)), default=0.0)


def _max_weight_difference(a: FitRecord, b: FitRecord) -> float:
    if len(a.final_parameters) != len(b.final_parameters):
        return float("inf")
    return max(
        (float((x - y).abs().max()) for x, y in zip(a.final_parameters, b.final_parameters, strict=True)),
        default=0.0,
    )


def _model_figures(
    model: str,
    spec: ModelSpec,
    step_samples: Samples,
    epoch_samples: Samples,
    records: dict[str, list[FitRecord]],
    suffix: str,
) -> list[Figure]:
    figures: list[Figure] = []
    # Losses: every repeat of every variant against the hand-written module's first run.
    reference = records["handwritten"][0]
    loss_diffs = {
        variant: max(_max_loss_difference(record, reference) for record in runs) for variant, runs in records.items()
    }
    weight_diffs = {
        variant: max(_max_weight_difference(record, reference) for record in runs) for variant, runs in records.items()
    }
    tolerance = 0.5 * 10**-LOSS_DECIMALS
    same_decimals = all(
        round(x, LOSS_DECIMALS) == round(y, LOSS_DECIMALS)
        for x, y in zip(records["bricks"][0].losses, reference.losses, strict=False)
    )
    figures.append(
        Figure(
            name=f"lightning {model}{suffix}: per-step losses, bricks vs hand-written",
            value=loss_diffs["bricks"],
            baseline=loss_diffs["plain"],
            unit="max abs diff",
            comparison=loss_diffs["bricks"],
            comparison_kind="difference",
            comparison_unit="max abs diff",
            target=f"identical to {LOSS_DECIMALS} decimals",
            met=all(diff <= tolerance for variant, diff in loss_diffs.items() if variant != "plain"),
            notes=f"{reference.steps} steps x {len(records['bricks'])} runs; baseline column: plain PyTorch vs "
            f"hand-written; all {reference.steps} losses equal when rounded: {'yes' if same_decimals else 'no'}; "
            f"max abs diff of the final weights: bricks {weight_diffs['bricks']:.2g}, "
            f"plain {weight_diffs['plain']:.2g}",
            extra={"loss_max_abs_diff": loss_diffs, "weight_max_abs_diff": weight_diffs},
        )
    )
    threads = torch.get_num_threads()
    step_ratio: dict[str, float] = {}
    for variant, check in (("bricks", "True (default)"), ("bricks_no_finite_check", "False")):
        ratios = [statistics.median(_paired(a, b, operator.truediv)) for a, b in _runs(records, variant, "handwritten")]
        ratio = step_ratio[variant] = statistics.median(ratios)
        extra_us = _paired_us(records, variant, "handwritten")
        figures.append(
            Figure(
                name=f"lightning {model}{suffix}: time per training step, {variant} vs hand-written LightningModule",
                value=step_samples.median(variant) * 1e3,
                baseline=step_samples.median("handwritten") * 1e3,
                unit="ms/step",
                comparison=ratio,
                target=f"<= {MAX_STEP_RATIO:g}x",
                met=ratio <= MAX_STEP_RATIO,
                notes=f"check_finite_loss={check}: {extra_us:+.0f} us/step; {threads} thread(s); the variants train "
                f"in lockstep (one step each in turn); ratio = median over {len(ratios)} runs of the median ratio of "
                f"paired steps (epochs 2-{spec.epochs}; per run: {', '.join(f'{r:.3f}' for r in ratios)}); "
                f"{spec.steps_per_epoch} steps/epoch, batch {spec.batch_size}, a third of the labels missing",
                extra={"per_run_ratios": ratios, "extra_us_per_step": extra_us, "threads": threads},
            )
        )
    extra_us = _paired_us(records, "bricks", "handwritten")
    breakdown = {ablation: _paired_us(records, "bricks", ablation) for ablation in ABLATIONS}
    remainder = extra_us - sum(breakdown.values())
    figures.append(
        Figure(
            name=f"lightning {model}{suffix}: fixed extra cost per training step, bricks vs hand-written",
            value=step_samples.median("bricks") * 1e6,
            baseline=step_samples.median("handwritten") * 1e6,
            unit="us/step",
            comparison=extra_us,
            comparison_kind="difference",
            comparison_unit="us/step",
            notes="informational: median of the paired step differences; by component (bricks - ablation, paired): "
            + ", ".join(f"{ABLATIONS[a]} {us:+.0f}" for a, us in breakdown.items())
            + f"; not explained by these: {remainder:+.0f} us",
            extra={"breakdown_us": breakdown, "remainder_us": remainder, "threads": threads},
        )
    )
    for ablation, label in ABLATIONS.items():
        ratio = statistics.median(
            statistics.median(_paired(a, b, operator.truediv)) for a, b in _runs(records, ablation, "handwritten")
        )
        points = 100 * (step_ratio["bricks"] - ratio)
        figures.append(
            Figure(
                name=f"lightning {model}{suffix}: step cost of {label}",
                value=step_samples.median("bricks") * 1e6,
                baseline=step_samples.median(ablation) * 1e6,
                unit="us/step",
                comparison=breakdown[ablation],
                comparison_kind="difference",
                comparison_unit="us/step",
                notes=f"informational: bricks - {ablation} (that piece taken out), paired steps of the same runs; "
                f"{ablation} vs hand-written {ratio:.3f}x, so {points:+.1f} points of the step ratio",
                extra={"ratio_vs_handwritten": ratio, "ratio_points": points},
            )
        )
    for prototype, label in PROTOTYPES.items():
        gain = _paired_us(records, "bricks", prototype)
        ratio = statistics.median(
            statistics.median(_paired(a, b, operator.truediv)) for a, b in _runs(records, prototype, "handwritten")
        )
        figures.append(
            Figure(
                name=f"lightning {model}{suffix}: prototype, {label}",
                value=step_samples.median(prototype) * 1e6,
                baseline=step_samples.median("bricks") * 1e6,
                unit="us/step",
                comparison=-gain,
                comparison_kind="difference",
                comparison_unit="us/step",
                notes=f"informational: {prototype} - bricks, paired steps; {prototype} vs hand-written {ratio:.3f}x",
                extra={"ratio_vs_handwritten": ratio},
            )
        )
    for variant, label in (("handwritten", "hand-written LightningModule"), ("bricks", "LightningBrickCollection")):
        per_epoch = epoch_samples.difference(variant, "plain")
        figures.append(
            Figure(
                name=f"lightning {model}{suffix}: {label} over plain PyTorch, per epoch",
                value=epoch_samples.median(variant),
                baseline=epoch_samples.median("plain"),
                unit="s/epoch",
                comparison=per_epoch,
                comparison_kind="difference",
                comparison_unit="s/epoch",
                target=f"<= {LIGHTNING_REFERENCE_S_PER_EPOCH} s/epoch",
                met=per_epoch <= LIGHTNING_REFERENCE_S_PER_EPOCH,
                notes=f"Lightning's own reference: about {LIGHTNING_REFERENCE_S_PER_EPOCH} s/epoch over plain PyTorch; "
                f"time held in epochs 2-{spec.epochs} (epoch ends included), {spec.steps_per_epoch} steps/epoch",
            )
        )
    return figures


def _memory_figures(model: str, samples: dict[str, Samples]) -> list[Figure]:
    peak = samples[f"{model}/peak_rss_bytes"]
    growth = samples[f"{model}/fit_growth_bytes"]
    mib = 1.0 / 2**20
    return [
        ratio_figure(
            f"lightning {model}: peak memory (process peak RSS), bricks vs hand-written",
            peak,
            "bricks",
            "handwritten",
            unit="MiB",
            scale=mib,
            max_ratio=MAX_MEMORY_RATIO,
            notes=f"VmHWM of a fresh subprocess per variant and repeat (same imports), {peak.repeats} repeats",
        ),
        Figure(
            name=f"lightning {model}: growth of peak RSS during fit, bricks vs hand-written",
            value=growth.median("bricks") * mib,
            baseline=growth.median("handwritten") * mib,
            unit="MiB",
            comparison=growth.difference("bricks", "handwritten") * mib,
            comparison_kind="difference",
            comparison_unit="MiB",
            notes="informational: peak RSS minus RSS just before fit (model, Trainer and data already built); "
            "allocator noise is a few MiB",
        ),
    ]


def _cuda_memory_figure(model: str, spec: ModelSpec, dataset: TensorDataset, settings: Settings, suffix: str) -> Figure:
    """CUDA only: peak ``torch.cuda.max_memory_allocated`` of one fit at a time, bricks vs hand-written."""

    def peak(variant: str) -> float:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return float(fit_variant(variant, spec, dataset, settings.device).cuda_peak_bytes or 0)

    samples = interleaved({"bricks": partial(peak, "bricks"), "handwritten": partial(peak, "handwritten")}, 3)
    return ratio_figure(
        f"lightning {model}{suffix}: peak memory (torch.cuda.max_memory_allocated)",
        samples,
        "bricks",
        "handwritten",
        unit="MiB",
        scale=1 / 2**20,
        max_ratio=MAX_MEMORY_RATIO,
        notes="peak allocated by the CUDA caching allocator during one fit (fits run one at a time)",
    )


def run(settings: Settings | None = None) -> BenchmarkResult:
    settings = settings or Settings.full()
    # Every fit starts with gc.collect() so that earlier fits' garbage is not collected on its time; freezing what
    # exists now (torch, Lightning, compiled code...) keeps each of those collections short.
    gc.collect()
    gc.freeze()
    try:
        return _run(settings)
    finally:
        gc.unfreeze()


def _run(settings: Settings) -> BenchmarkResult:
    start = time.perf_counter()
    suffix = "" if settings.device == "cpu" else f" [{settings.device}]"
    figures: list[Figure] = []
    details: dict[str, Any] = {"device": settings.device, "models": {}}
    specs = model_specs(settings)
    for model, spec in specs.items():
        dataset = dataset_of(spec)
        records: dict[str, list[FitRecord]] = {variant: [] for variant in VARIANTS}
        fit_in_lockstep(list(VARIANTS), spec, dataset, settings.device)  # warm-up: lazy imports, caches
        for repeat in range(settings.fit_repeats):
            order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
            for variant, record in fit_in_lockstep(order, spec, dataset, settings.device).items():
                records[variant].append(record)
        step_samples = Samples({variant: [r.seconds_per_step() for r in runs] for variant, runs in records.items()})
        epoch_samples = Samples({variant: [r.seconds_per_epoch() for r in runs] for variant, runs in records.items()})
        figures += _model_figures(model, spec, step_samples, epoch_samples, records, suffix)
        if settings.device.startswith("cuda"):
            figures.append(_cuda_memory_figure(model, spec, dataset, settings, suffix))
        details["models"][model] = {
            "spec": spec.__dict__,
            "seconds_per_step": step_samples,
            "seconds_per_epoch": epoch_samples,
            "losses_first_run": {variant: runs[0].losses for variant, runs in records.items()},
        }
    if settings.device == "cpu":
        memory = _measure_memory(list(specs), settings)
        for model in specs:
            if f"{model}/peak_rss_bytes" in memory:
                figures += _memory_figures(model, memory)
        details["memory"] = memory
    return BenchmarkResult("lightning_parity", figures, details, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.lightning_parity memory --variant bricks --model mlp``: one memory measurement."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["memory"])
    parser.add_argument("--variant", choices=[v for v in VARIANTS if v != "plain"], required=True)
    parser.add_argument("--model", choices=["mlp", "cnn", "small"], required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    pin_threads(1)
    print(json.dumps(memory_worker(args.variant, args.model, quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
