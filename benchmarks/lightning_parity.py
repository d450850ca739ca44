"""Lightning parity: ``LightningBrickCollection`` vs a hand-written ``LightningModule`` vs a plain PyTorch loop.

All variants train the same model (same initial weights, copied from one seeded build), with the same loss
(cross-entropy), the same metric (the head's ``ConfusionMatrixMetrics`` accuracy, summarised and reset at each
epoch end), the same optimizer (Adam, lr 1e-3) and the same data in the same order. The hand-written module logs
what the brick module logs: ``train/head/loss_ce`` and ``train/loss`` per step and per epoch with ``batch_size``
and ``sync_dist``, and ``train/head/accuracy`` at the epoch end. It does so the usual way, letting Lightning average
the logged tensors; the brick module keeps the epoch means in torchmetrics metrics of its own (so that a mid-epoch
checkpoint carries them) and logs those at the epoch end. Two models: a tiny MLP and a small CNN.

Figures per model:

* per-step losses identical to 5 decimals (recorded by a callback; the final weights are compared too);
* time per training step over the hand-written LightningModule, with the default ``check_finite_loss=True`` and
  with ``check_finite_loss=False`` (target <= 1%). To compare steps taken milliseconds apart, the four variants
  train **in lockstep**: one thread each, taking turns step by step (a callback hands the turn on at each batch
  end; only the thread holding the turn runs). A variant's step period runs from getting the turn to its next
  batch end: one whole loop iteration (batch fetch, hooks, training step, backward, optimizer step, logging). The
  figure is the median step period after the first epoch (the warm-up), then the median over the runs of the
  paired ratios; the order of the variants flips every run, and the garbage collector is off during a run;
* the time per epoch over plain PyTorch (the time each variant held the turn after its first epoch, epoch ends
  included), against Lightning's own reference of 0.05 s per epoch;
* peak memory: each variant trains in a fresh subprocess (the same imports), which reports its peak resident set
  size (VmHWM) and the growth of that peak during ``fit`` (peak - resident size just before ``fit``). Target: the
  peaks within 1%. On CUDA, ``torch.cuda.max_memory_allocated`` in-process instead.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import operator
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import BenchmarkResult, Figure, Samples, Settings, interleaved, pin_threads, ratio_figure
from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.bag_of_bricks import ConfusionMatrixMetrics, SmallConvNet, create_image_classification_head
from torchbricks_lightning.lightning import LightningBrickCollection

__all__ = ["VARIANTS", "FitRecord", "HandWrittenLightningModule", "fit_variant", "memory_worker", "run"]

NUM_CLASSES = 10
LEARNING_RATE = 1e-3
MAX_STEP_RATIO = 1.01
MAX_MEMORY_RATIO = 1.01
LIGHTNING_REFERENCE_S_PER_EPOCH = 0.05
LOSS_DECIMALS = 5
MEMORY_REPEATS = 5  # peak RSS varies by well under 1% between fresh processes; each one imports torch (seconds)
VARIANTS = ("bricks", "bricks_no_finite_check", "handwritten", "plain")


@dataclass(frozen=True)
class ModelSpec:
    """The data and model of one parity case."""

    name: str
    n_samples: int
    batch_size: int
    epochs: int
    input_shape: tuple[int, ...]

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_samples // self.batch_size)


def model_specs(settings: Settings) -> dict[str, ModelSpec]:
    if settings.quick:
        return {
            "mlp": ModelSpec("mlp", n_samples=32, batch_size=8, epochs=2, input_shape=(16,)),
            "cnn": ModelSpec("cnn", n_samples=16, batch_size=8, epochs=2, input_shape=(3, 8, 8)),
        }
    return {
        "mlp": ModelSpec("mlp", n_samples=1024, batch_size=32, epochs=3, input_shape=(32,)),
        "cnn": ModelSpec("cnn", n_samples=512, batch_size=32, epochs=3, input_shape=(3, 16, 16)),
    }


def backbone_of(spec: ModelSpec) -> tuple[nn.Module, int]:
    """The backbone of a case and its number of output features."""
    if spec.name == "mlp":
        width = 64
        layers = [nn.Linear(spec.input_shape[0], width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers), width
    backbone = SmallConvNet(in_channels=spec.input_shape[0], widths=(8, 16))
    return backbone, backbone.n_backbone_features


def dataset_of(spec: ModelSpec) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    raw = torch.randn(spec.n_samples, *spec.input_shape, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (spec.n_samples,), generator=generator)
    return TensorDataset(raw, targets)


def bricks_of(spec: ModelSpec) -> BrickCollection:
    """The brick model, built from seed 0: a backbone brick and a classification head (classifier, loss, accuracy)."""
    torch.manual_seed(0)
    backbone, n_features = backbone_of(spec)
    return BrickCollection(
        {
            "backbone": BrickTrainable(backbone, input_names=["raw"], output_names=["features"]),
            "head": create_image_classification_head(NUM_CLASSES, n_features, "features", "targets"),
        }
    )


def modules_of(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    """The backbone and classifier of a fresh brick model: the same initial weights for every variant."""
    bricks = bricks_of(spec)
    return bricks["backbone"].model, bricks["head"]["classify"].model  # type: ignore[index,return-value]


class HandWrittenLightningModule(pl.LightningModule):
    """What one writes by hand: the same model, loss, metric and logging as the brick module."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.loss = nn.CrossEntropyLoss()
        # The head's metric, with missing labels (-100) left out as the head's are (nn.CrossEntropyLoss ignores
        # them by default); the brick loss also counts the labelled samples and weights the epoch mean by them.
        self.accuracy = ConfusionMatrixMetrics(NUM_CLASSES, validate_args=False, ignore_index=-100)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        raw, targets = batch
        features = self.backbone(raw)
        logits, _probabilities, class_prediction = self.classifier(features)
        loss = self.loss(logits, targets)
        self.accuracy.update(class_prediction, targets)
        batch_size = raw.shape[0]
        self.log("train/head/loss_ce", loss, batch_size=batch_size, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/loss", loss, batch_size=batch_size, on_step=True, on_epoch=True, sync_dist=True, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict({"train/head/accuracy": self.accuracy.compute()["accuracy"].float()}, sync_dist=False)
        self.accuracy.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LEARNING_RATE)


@dataclass
class FitRecord:
    """What one training run measured.

    Its thread only runs while it holds the turn (see :class:`Turnstile`), so its time is the sum of the segments
    it held: each segment runs from getting the turn to the next batch end (or the end of training), which is one
    whole loop iteration (the batch fetch, the hooks, the training step, backward, the optimizer step, logging).
    """

    losses: list[float] = field(default_factory=list)
    segments: list[tuple[float, float, int, bool]] = field(default_factory=list)
    """(start, end, epoch, ends the first step of its epoch)."""
    epoch: int = -1
    first_in_epoch: bool = False
    opened: float = 0.0
    steps: int = 0
    final_parameters: list[torch.Tensor] = field(default_factory=list)
    cuda_peak_bytes: int | None = None

    @property
    def epochs(self) -> int:
        return self.epoch + 1

    def open(self) -> None:
        self.opened = time.perf_counter()

    def close(self, first_of_epoch: bool = False) -> None:
        self.segments.append((self.opened, time.perf_counter(), self.epoch, first_of_epoch))

    def start_epoch(self) -> None:
        self.epoch += 1
        self.first_in_epoch = True

    def end_step(self, loss: torch.Tensor, turnstile: Turnstile | None, name: str, sync: bool) -> None:
        if sync:
            torch.cuda.synchronize()
        self.close(self.first_in_epoch)
        self.first_in_epoch = False
        self.losses.append(float(loss.detach()))
        if turnstile is not None:
            turnstile.pass_turn(name)
            turnstile.wait_turn(name)
        self.open()

    def step_periods(self) -> list[float]:
        """The step periods after the first epoch (the warm-up), epoch boundaries left out (they are per epoch)."""
        periods = [end - start for start, end, epoch, first in self.segments if epoch >= 1 and not first]
        if not periods:  # a single epoch
            periods = [end - start for start, end, _, first in self.segments if not first]
        return periods

    def seconds_per_step(self) -> float:
        """The median step period after the first epoch."""
        return statistics.median(self.step_periods())

    def seconds_per_epoch(self) -> float:
        """The time held after the first epoch's first step, epoch ends included, per epoch after the first."""
        held = sum(end - start for start, end, epoch, first in self.segments if epoch >= 1)
        return held / max(1, self.epochs - 1)


class Turnstile:
    """Lets several training threads run one step each in turn (round robin), so their steps interleave.

    Only the thread holding the turn runs; the others wait on a condition. Paired steps are thus
    milliseconds apart, and whatever else the machine does hits every variant alike.
    """

    def __init__(self, names: list[str]) -> None:
        self.order = list(names)
        self.turn = 0
        self.finished: set[str] = set()
        self.condition = threading.Condition()

    def wait_turn(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.order[self.turn] == name)

    def pass_turn(self, name: str) -> None:
        with self.condition:
            for step in range(1, len(self.order) + 1):
                candidate = (self.turn + step) % len(self.order)
                if self.order[candidate] not in self.finished:
                    self.turn = candidate
                    break
            self.condition.notify_all()

    def finish(self, name: str) -> None:
        with self.condition:
            self.finished.add(name)
        self.pass_turn(name)


class Recorder(pl.Callback):
    """Records each step's loss and time, and hands the turn to the next variant after each step."""

    def __init__(self, record: FitRecord, turnstile: Turnstile | None, name: str, sync: bool) -> None:
        self.record = record
        self.turnstile = turnstile
        self.name = name
        self.sync = sync

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.start_epoch()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.record.end_step(loss, self.turnstile, self.name, self.sync)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.close()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's banners and its advice about dataloader workers are noise here."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _loader(spec: ModelSpec, dataset: TensorDataset) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=spec.batch_size, shuffle=False, num_workers=0)


def lightning_module_of(variant: str, spec: ModelSpec) -> pl.LightningModule:
    if variant == "handwritten":
        backbone, classifier = modules_of(spec)
        return HandWrittenLightningModule(backbone, classifier)
    return LightningBrickCollection(
        bricks_of(spec),
        optimizer=partial(torch.optim.Adam, lr=LEARNING_RATE),
        check_finite_loss=variant != "bricks_no_finite_check",
    )


def _trainer(spec: ModelSpec, callbacks: list[pl.Callback], device: str) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=spec.epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def _plain_fit(
    spec: ModelSpec, dataset: TensorDataset, record: FitRecord, device: str, turnstile: Turnstile | None
) -> nn.Module:
    """The plain PyTorch loop: same model, loss, metric (updated per step, computed and reset per epoch)."""
    backbone, classifier = modules_of(spec)
    model = nn.ModuleDict({"backbone": backbone, "classifier": classifier}).to(device)
    loss_function = nn.CrossEntropyLoss()
    accuracy = ConfusionMatrixMetrics(NUM_CLASSES, validate_args=False).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    loader = _loader(spec, dataset)
    sync = device.startswith("cuda")
    for _ in range(spec.epochs):
        record.start_epoch()
        for raw, targets in loader:
            raw, targets = raw.to(device), targets.to(device)
            logits, _probabilities, class_prediction = classifier(backbone(raw))
            loss = loss_function(logits, targets)
            accuracy.update(class_prediction, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            record.end_step(loss, turnstile, "plain", sync)
        accuracy.compute()
        accuracy.reset()
    record.close()
    return model


def fit_variant(
    variant: str,
    spec: ModelSpec,
    dataset: TensorDataset,
    device: str = "cpu",
    turnstile: Turnstile | None = None,
) -> FitRecord:
    """Train one variant from the common initial weights; returns its losses, timings and final weights.

    With a ``turnstile``, the thread waits for its turn first and hands it on after each step.
    """
    record = FitRecord()
    if turnstile is not None:
        turnstile.wait_turn(variant)
    try:
        record.open()
        if variant == "plain":
            model: nn.Module = _plain_fit(spec, dataset, record, device, turnstile)
        else:
            model = lightning_module_of(variant, spec)
            recorder = Recorder(record, turnstile, variant, device.startswith("cuda"))
            with quiet_lightning():
                _trainer(spec, [recorder], device).fit(model, train_dataloaders=_loader(spec, dataset))
        record.steps = len(record.losses)
        record.final_parameters = [parameter.detach().cpu().clone() for parameter in model.parameters()]
        if device.startswith("cuda"):
            record.cuda_peak_bytes = int(torch.cuda.max_memory_allocated())
    finally:
        if turnstile is not None:
            turnstile.finish(variant)
    return record


def fit_in_lockstep(
    variants: list[str], spec: ModelSpec, dataset: TensorDataset, device: str = "cpu"
) -> dict[str, FitRecord]:
    """Train every variant at once, one thread each, taking turns step by step (in the order given).

    The garbage collector is off during the run (collected before), as ``timeit`` does, so that no variant pays
    for the others' garbage.
    """
    turnstile = Turnstile(variants)
    records: dict[str, FitRecord] = {}
    errors: list[BaseException] = []
    threads_per_op = torch.get_num_threads()

    def target(variant: str) -> None:
        try:
            torch.set_num_threads(threads_per_op)  # OpenMP settings are per thread: the same in every thread
            records[variant] = fit_variant(variant, spec, dataset, device, turnstile)
        except BaseException as err:  # re-raised in the caller's thread
            errors.append(err)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        threads = [threading.Thread(target=target, args=(variant,), name=f"bench-{variant}") for variant in variants]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        if gc_was_enabled:
            gc.enable()
    if errors:
        raise errors[0]
    return records


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
        trainer = _trainer(spec, [Recorder(FitRecord(), None, variant, sync=False)], "cpu")
        loader = _loader(spec, dataset)
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
            met=loss_diffs["bricks"] <= tolerance and loss_diffs["bricks_no_finite_check"] <= tolerance,
            notes=f"{reference.steps} steps x {len(records['bricks'])} runs; baseline column: plain PyTorch vs "
            f"hand-written; all {reference.steps} losses equal when rounded: {'yes' if same_decimals else 'no'}; "
            f"max abs diff of the final weights: bricks {weight_diffs['bricks']:.2g}, "
            f"plain {weight_diffs['plain']:.2g}",
            extra={"loss_max_abs_diff": loss_diffs, "weight_max_abs_diff": weight_diffs},
        )
    )
    for variant, check in (("bricks", "True (default)"), ("bricks_no_finite_check", "False")):
        ratios = [statistics.median(_paired(a, b, operator.truediv)) for a, b in _runs(records, variant, "handwritten")]
        ratio = statistics.median(ratios)
        extra_us = 1e6 * statistics.median(
            statistics.median(_paired(a, b, operator.sub)) for a, b in _runs(records, variant, "handwritten")
        )
        figures.append(
            Figure(
                name=f"lightning {model}{suffix}: time per training step, {variant} vs hand-written LightningModule",
                value=step_samples.median(variant) * 1e3,
                baseline=step_samples.median("handwritten") * 1e3,
                unit="ms/step",
                comparison=ratio,
                target=f"<= {MAX_STEP_RATIO:g}x",
                met=ratio <= MAX_STEP_RATIO,
                notes=f"check_finite_loss={check}: {extra_us:+.0f} us/step; the variants train in lockstep (one "
                f"step each in turn); ratio = median over {len(ratios)} runs of the median ratio of paired steps "
                f"(epochs 2-{spec.epochs}; per run: {', '.join(f'{r:.3f}' for r in ratios)}); "
                f"{spec.steps_per_epoch} steps/epoch, batch {spec.batch_size}",
                extra={"per_run_ratios": ratios, "extra_us_per_step": extra_us},
            )
        )
    check_cost_us = 1e6 * statistics.median(
        statistics.median(_paired(a, b, operator.sub)) for a, b in _runs(records, "bricks", "bricks_no_finite_check")
    )
    figures.append(
        Figure(
            name=f"lightning {model}{suffix}: cost of check_finite_loss=True",
            value=step_samples.median("bricks") * 1e3,
            baseline=step_samples.median("bricks_no_finite_check") * 1e3,
            unit="ms/step",
            comparison=check_cost_us,
            comparison_kind="difference",
            comparison_unit="us/step",
            notes="informational: (default) - (check_finite_loss=False), paired steps: bool(torch.isfinite(loss)) "
            "per step, a device sync on GPU",
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
    parser.add_argument("--model", choices=["mlp", "cnn"], required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    pin_threads(1)
    print(json.dumps(memory_worker(args.variant, args.model, quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
