"""Task balancers: time per training step with each balancer against static weights, on the demo's model.

The model is the demo's (``examples/digits_multitask.py``): preprocessor, ``SmallConvNet(32, 64, 128)``, a digit
head (30% of its labels), a parity head and a foreground segmentation head, on the digits with batches of 64,
trained by ``LightningBrickCollection`` with AdamW in a real ``Trainer`` (no logger, no validation, no checkpoints).
Each variant trains the same steps from the same initial weights:

- ``static``: ``loss_balancer=None`` (the baseline);
- ``uncertainty``, ``dwa``, ``famo``, ``rlw``, ``gls``: the loss-level balancers (target: at most 1.02x the
  static step);
- the Gramian balancers on the shared tensor ``features`` (``pcgrad``, ``mgda``, ``imtlg``, ``aligned_mtl``,
  ``cagrad``, ``nash_mtl``, ``upgrad``, ``gradnorm``; target: at most 1.15x): a branch per task in the forward pass,
  a 3x3 Gram matrix and the weighting in the backward pass;
- the same methods on the shared parameters (``*_parameters``; reported, no target): one extra pass through the
  heads and 3 through the trunk in the balancer's forward, for the Jacobian of the backbone's parameters;
- ``torchjd_mgda``: MGDA on the shared parameters by torchjd's own ``mtl_backward`` + ``jac_to_grad`` with its
  ``MGDA`` aggregator (Frank-Wolfe; torchjd's UPGrad needs quadprog, not installed), in a manual-optimization
  LightningModule over the same bricks (the same Trainer, data and clock), beside ``mgda_parameters`` (reported:
  ours against torchjd's).

A step period is the time between two successive ``on_train_batch_start`` hooks: one whole loop iteration (batch,
forward, backward, optimizer step, logging, the module's batch-end hook where per-step balancer weights are logged),
measured as the CPU time of the training thread (``time.thread_time_ns``; torch runs single-threaded here, so all of
a step's work is on that thread), so that other processes on a shared machine do not count. The figure is the median
period after the warm-up steps, then the median over the runs of the paired ratios to the static run of the same
repeat; the variants' order flips every repeat and the garbage collector is off during a run.
"""

from __future__ import annotations

import gc
import itertools
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks.common import BenchmarkResult, Figure, Samples, Settings, interleaved, ratio_figure
from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.bag_of_bricks import (
    Preprocessor,
    SmallConvNet,
    create_image_classification_head,
    create_segmentation_head,
)
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import (
    FAMO,
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    DynamicWeightAverage,
    GeometricLossStrategy,
    GradNorm,
    LossBalancer,
    NashMTL,
    PCGrad,
    RandomLossWeighting,
    UncertaintyWeighting,
    UPGrad,
)

__all__ = ["TARGETS", "TORCHJD", "VARIANTS", "demo_bricks", "run", "step_periods"]

_GRAMIAN: dict[str, Callable[..., LossBalancer]] = {
    "pcgrad": PCGrad,
    "mgda": MGDA,
    "imtlg": IMTLG,
    "aligned_mtl": AlignedMTL,
    "cagrad": CAGrad,
    "nash_mtl": NashMTL,
    "upgrad": UPGrad,
    "gradnorm": GradNorm,
}
VARIANTS: dict[str, Callable[[], LossBalancer | None]] = {
    "static": lambda: None,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "famo": FAMO,
    "rlw": RandomLossWeighting,
    "gls": GeometricLossStrategy,
    **{name: partial(make, shared_name="features") for name, make in _GRAMIAN.items()},
    **{f"{name}_parameters": partial(make, source="parameters") for name, make in _GRAMIAN.items()},
}
TORCHJD = {"torchjd_mgda": "mgda_parameters"}
"""torchjd's own implementation of a method, and our variant it is compared with."""
TARGETS: dict[str, float | None] = {
    "uncertainty": 1.02,
    "dwa": 1.02,
    "famo": 1.02,
    "rlw": 1.02,
    "gls": 1.02,
    **dict.fromkeys(_GRAMIAN, 1.15),
    **{f"{name}_parameters": None for name in _GRAMIAN},
}
WARMUP_STEPS = 5


def demo_bricks() -> BrickCollection:
    """The demo's three-task model (examples/digits_multitask.py's ``build_bricks``)."""
    torch.manual_seed(0)
    backbone = SmallConvNet(in_channels=1, widths=(32, 64, 128))
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(
                Preprocessor(mean=[0.5], std=[0.5]), input_names=["raw"], output_names=["normalized"]
            ),
            "backbone": BrickTrainable(backbone, input_names=["normalized"], output_names=["features"]),
            "digit": create_image_classification_head(10, 128, "features", "targets", with_confusion_matrix=True),
            "parity": create_image_classification_head(2, 128, "features", "parity"),
            "foreground": create_segmentation_head(2, 128, "features", "foreground", upsample=4, hidden_channels=32),
        }
    )


class _StepClock(pl.Callback):
    def __init__(self) -> None:
        self.starts: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter_ns())


class _TorchJDModule(pl.LightningModule):
    """torchjd's side: the same bricks, ``mtl_backward`` on the losses and ``features``, then ``jac_to_grad`` on the
    backbone's parameters with torchjd's aggregator, under manual optimization (what torchjd's Lightning page asks)."""

    def __init__(self, collection: BrickCollection) -> None:
        super().__init__()
        from torchjd.aggregation import MGDA as TorchJDMGDA  # noqa: N811 - beside ours

        self.automatic_optimization = False
        self.brick_collection = collection
        self.aggregator = TorchJDMGDA()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        from torchjd.autojac import jac_to_grad, mtl_backward

        optimizer = self.optimizers()
        optimizer.zero_grad()  # type: ignore[union-attr]
        outputs = self.brick_collection(batch, Stage.TRAIN)
        losses = list(self.brick_collection.extract_losses(outputs).values())
        shared = [param for param in self.brick_collection["backbone"].parameters() if param.requires_grad]
        mtl_backward(losses, features=outputs["features"], shared_params=shared)
        jac_to_grad(shared, self.aggregator)
        optimizer.step()  # type: ignore[union-attr]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.brick_collection.parameters(), lr=3e-3, weight_decay=1e-4)


def step_periods(variant: str, steps: int) -> list[float]:
    """CPU seconds per training step of one fit of ``variant`` (the periods after the warm-up)."""
    module: pl.LightningModule
    if variant in TORCHJD:
        module = _TorchJDModule(demo_bricks())
    else:
        module = LightningBrickCollection(
            demo_bricks(),
            optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=1e-4),
            loss_balancer=VARIANTS[variant](),
        )
    clock = _StepClock()
    trainer = pl.Trainer(
        max_steps=steps + WARMUP_STEPS + 1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    datamodule = DigitsDataModule(batch_size=64, labelled_fraction=0.3, with_foreground=True)
    gc.collect()
    gc.disable()
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        gc.enable()
    starts = clock.starts[WARMUP_STEPS:]
    return [(later - earlier) / 1e9 for earlier, later in itertools.pairwise(starts)]


def run(settings: Settings | None = None, variants: Sequence[str] | None = None) -> BenchmarkResult:
    """Time the variants (default: all of them, and torchjd's) against ``static``, interleaved."""
    settings = settings or Settings.full()
    start = time.perf_counter()
    steps = 4 if settings.quick else 57  # 3 epochs of 19 steps: DWA's epoch ends are inside the runs
    repeats = settings.fit_repeats if not settings.quick else 1
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    names = ["static", *(name for name in (variants or [*VARIANTS, *TORCHJD]) if name != "static")]
    periods: dict[str, list[list[float]]] = {name: [] for name in names}

    def measure(name: str) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = step_periods(name, steps)
        periods[name].append(values)
        return statistics.median(values)

    samples: Samples = interleaved({name: partial(measure, name) for name in names}, repeats)
    notes = (
        f"the demo's three-task model, batch 64, median step period (training thread CPU time) over {steps} steps "
        f"after {WARMUP_STEPS} warm-up steps, {repeats} interleaved runs"
    )
    figures: list[Figure] = [
        ratio_figure(
            f"balancers: {name} step vs static weights",
            samples,
            name,
            "static",
            unit="ms/step",
            scale=1e3,
            max_ratio=TARGETS[name],
            notes=notes,
        )
        for name in TARGETS
        if name in names
    ]
    figures += [
        ratio_figure(
            f"balancers: {ours} step vs torchjd's mtl_backward ({name})",
            samples,
            ours,
            name,
            unit="ms/step",
            scale=1e3,
            notes=f"{notes}; torchjd {_torchjd_version()} under manual optimization, the same bricks and data",
        )
        for name, ours in TORCHJD.items()
        if name in names and ours in names
    ]
    details: dict[str, Any] = {"samples": samples, "steps": steps, "periods": periods}
    figures += [
        ratio_figure(
            f"balancers: {name} step vs static weights", samples, name, "static", unit="ms/step", scale=1e3, notes=notes
        )
        for name in TORCHJD
    ]
    return BenchmarkResult("balancers", figures, details, time.perf_counter() - start)


def _torchjd_version() -> str:
    from importlib.metadata import version

    return version("torchjd")
