"""Training in lockstep: several variants train at once, one thread each, taking turns step by step.

Only the thread holding the turn runs (a callback hands it on at each batch end), so paired steps of two variants
are milliseconds apart and whatever else the machine does hits every variant alike. A variant's step period runs
from getting the turn to its next batch end: one whole loop iteration (batch fetch, hooks, training step, backward,
optimizer step, logging).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.parity_models import (
    IGNORE_INDEX,
    LEARNING_RATE,
    NUM_CLASSES,
    ModelSpec,
    lightning_module_of,
    modules_of,
)
from torchbricks_lightning.bag_of_bricks import ConfusionMatrixMetrics

__all__ = [
    "FitRecord",
    "Recorder",
    "Turnstile",
    "fit_in_lockstep",
    "fit_variant",
    "lightning_trainer",
    "loader_of",
    "quiet_lightning",
]


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


_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_QUIET_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")
_saved_levels: list[int] = []
_saved_warnings: contextlib.AbstractContextManager[Any] | None = None


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's banners and its advice about dataloader workers are noise here.

    The logger levels and warning filters are process-wide, and the lockstep threads each enter this at once: the
    first to enter saves them and the last to leave restores them (one thread saving what another set would leave
    Lightning's INFO lines, and every warning, off for the rest of the process).
    """
    global _quiet_depth, _saved_warnings
    with _QUIET_LOCK:
        if _quiet_depth == 0:
            loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
            _saved_levels[:] = [logger.level for logger in loggers]
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            _saved_warnings = warnings.catch_warnings()
            _saved_warnings.__enter__()
            warnings.simplefilter("ignore")
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                if _saved_warnings is not None:  # set by the first entrant, under this lock
                    _saved_warnings.__exit__(None, None, None)
                    _saved_warnings = None
                for name, level in zip(_QUIET_LOGGERS, _saved_levels, strict=True):
                    logging.getLogger(name).setLevel(level)


def loader_of(spec: ModelSpec, dataset: TensorDataset) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=spec.batch_size, shuffle=False, num_workers=0)


def lightning_trainer(spec: ModelSpec, callbacks: list[pl.Callback], device: str) -> pl.Trainer:
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
    loss_function = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    accuracy = ConfusionMatrixMetrics(NUM_CLASSES, validate_args=False, ignore_index=IGNORE_INDEX).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    loader = loader_of(spec, dataset)
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
                lightning_trainer(spec, [recorder], device).fit(model, train_dataloaders=loader_of(spec, dataset))
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
