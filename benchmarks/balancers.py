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

Each kind of balancer (loss level, representation, parameters with torchjd's) trains **in lockstep** with a static
run of its own, ``static@{kind}``: one thread per variant, each with its own module, Trainer and data (the same
batches in the same order), taking turns step by step (:class:`~benchmarks.lockstep.Turnstile`, as the Lightning
parity bench does). Paired steps are thus a few tens of milliseconds apart, and what else the shared VM does (its
CPU time per step rises in stretches of several steps) hits every variant of the group alike; measured one variant
after another instead, this VM's run-to-run noise was about 10%. A step period runs from getting the turn to the
next batch end: one whole loop iteration (batch, forward, backward, optimizer step, logging, the module's batch-end
hook where per-step balancer weights are logged, an epoch end when one falls inside). A run's figure is its median
period after the warm-up steps; the result is the median over the repeats of the paired ratios to the group's
static run. The group's turn order is a new (seeded) random permutation at every repeat, so no variant always
follows the same neighbour (with a fixed cycle that flipped every repeat, the A/A control read 0.992x: a position
effect of the size of the targets' margins), and the garbage collector is off during a run.
``static_again``, a second static run in the loss-level group, is the A/A control: its ratio to static would be
exactly 1 without noise, so how far it is from 1 is the bench's resolution.
"""

from __future__ import annotations

import gc
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks.common import BenchmarkResult, Figure, Samples, Settings, ratio_figure
from benchmarks.lockstep import Turnstile, quiet_lightning
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

__all__ = ["LOSS_LEVEL", "TARGETS", "TORCHJD", "VARIANTS", "demo_bricks", "groups_of", "lockstep_periods", "run"]

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
LOSS_LEVEL = ("uncertainty", "dwa", "famo", "rlw", "gls")
VARIANTS: dict[str, Callable[[], LossBalancer | None]] = {
    "static": lambda: None,
    "static_again": lambda: None,  # the A/A control: its ratio to static is the bench's noise
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
    "static_again": None,
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


class _TurnClock(pl.Callback):
    """Times each step of one variant of a lockstep run and hands the turn on at each batch end.

    A period runs from getting the turn to the next batch end: one whole loop iteration (batch fetch, hooks,
    forward, backward, optimizer step, logging, an epoch's end when it falls inside).
    """

    def __init__(self, name: str, turnstile: Turnstile) -> None:
        self.name, self.turnstile = name, turnstile
        self.periods: list[float] = []
        self.opened = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.opened = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.periods.append(time.perf_counter() - self.opened)
        self.turnstile.pass_turn(self.name)
        self.turnstile.wait_turn(self.name)
        self.opened = time.perf_counter()


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


def _module_of(variant: str) -> pl.LightningModule:
    if variant in TORCHJD:
        return _TorchJDModule(demo_bricks())
    return LightningBrickCollection(
        demo_bricks(),
        optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=1e-4),
        loss_balancer=VARIANTS[variant.split("@")[0]](),  # static@{group}: static weights
    )


def lockstep_periods(variants: Sequence[str], steps: int) -> dict[str, list[float]]:
    """Seconds per training step of each variant, all trained at once in lockstep (the periods after the warm-up).

    One thread per variant, each with its own module, Trainer and data (the same batches in the same order), taking
    turns step by step (:class:`~benchmarks.lockstep.Turnstile`); the garbage collector is off during the run.
    """
    turnstile = Turnstile(list(variants))
    clocks = {name: _TurnClock(name, turnstile) for name in variants}
    errors: list[BaseException] = []
    threads_per_op = torch.get_num_threads()

    def target(name: str) -> None:
        turnstile.wait_turn(name)
        try:
            torch.set_num_threads(threads_per_op)  # OpenMP settings are per thread: the same in every thread
            trainer = pl.Trainer(
                max_steps=steps + WARMUP_STEPS,
                accelerator="cpu",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                callbacks=[clocks[name]],
            )
            datamodule = DigitsDataModule(batch_size=64, labelled_fraction=0.3, with_foreground=True)
            trainer.fit(_module_of(name), datamodule=datamodule)
        except BaseException as err:  # re-raised in the caller's thread
            errors.append(err)
        finally:
            turnstile.finish(name)

    gc.collect()
    gc.disable()
    try:
        with quiet_lightning():
            threads = [threading.Thread(target=target, args=(name,), name=f"bench-{name}") for name in variants]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        gc.enable()
    if errors:
        raise errors[0]
    return {name: clock.periods[WARMUP_STEPS:] for name, clock in clocks.items()}


def groups_of(names: Sequence[str]) -> dict[str, list[str]]:
    """The lockstep groups: each kind of balancer beside its own static run (``static@{group}``)."""
    kinds = {
        "loss": [name for name in names if name in ("static_again", *LOSS_LEVEL)],
        "representation": [name for name in names if name in _GRAMIAN],
        "parameters": [name for name in names if name.endswith("_parameters") or name in TORCHJD],
    }
    return {kind: [f"static@{kind}", *members] for kind, members in kinds.items() if members}


def run(settings: Settings | None = None, variants: Sequence[str] | None = None) -> BenchmarkResult:
    """Time the variants (default: all of them, and torchjd's) against static weights, in lockstep groups."""
    settings = settings or Settings.full()
    start = time.perf_counter()
    steps = 4 if settings.quick else 57  # 3 epochs of 19 steps: DWA's epoch ends are inside the runs
    repeats = settings.fit_repeats if not settings.quick else 1
    names = [name for name in (variants or [*VARIANTS, *TORCHJD]) if name != "static"]
    groups = groups_of(names)
    periods: dict[str, list[list[float]]] = {name: [] for members in groups.values() for name in members}
    values: dict[str, list[float]] = {name: [] for name in periods}
    shuffler = random.Random(0)  # noqa: S311 - a turn order, not a secret
    for _ in range(repeats):
        for members in groups.values():
            order = shuffler.sample(members, len(members))
            for name, run_periods in lockstep_periods(order, steps).items():
                periods[name].append(run_periods)
                values[name].append(statistics.median(run_periods))
    samples = Samples(values)
    notes = (
        f"the demo's three-task model, batch 64, 1 thread; each kind of balancer trained in lockstep with static "
        f"weights (one step each in turn); median step period over {steps} steps after {WARMUP_STEPS} warm-up steps; "
        f"ratio = median over {repeats} runs of the paired ratios"
    )
    group_of = {name: kind for kind, members in groups.items() for name in members}
    figures: list[Figure] = [
        ratio_figure(
            f"balancers: {name} step vs static weights",
            samples,
            name,
            f"static@{group_of[name]}",
            unit="ms/step",
            scale=1e3,
            max_ratio=TARGETS.get(name),
            notes=notes,
        )
        for name in [*TARGETS, *TORCHJD]
        if name in group_of
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
        if name in group_of and ours in group_of
    ]
    details: dict[str, Any] = {"samples": samples, "steps": steps, "periods": periods, "groups": groups}
    return BenchmarkResult("balancers", figures, details, time.perf_counter() - start)


def _torchjd_version() -> str:
    from importlib.metadata import version

    return version("torchjd")


RECORD = "docs/balancer_figures.json"
"""Where ``python -m benchmarks.balancers`` writes the run the README's Task balancing table shows."""


def record_of(result: BenchmarkResult, threads: int) -> dict[str, Any]:
    """The README's figures of one run: each variant's ratio to static weights, and ours against torchjd's."""
    ratios: dict[str, float] = {}
    torchjd: dict[str, float] = {}
    for figure in result.figures:
        name = figure.name.removeprefix("balancers: ")
        if name.endswith(" step vs static weights"):
            ratios[name.removesuffix(" step vs static weights")] = round(float(figure.comparison or 0.0), 3)
        elif "torchjd's mtl_backward" in name:
            torchjd[name.split(" step vs ")[0]] = round(float(figure.comparison or 0.0), 3)
    return {
        "threads": threads,
        "repeats": result.details["samples"].repeats,
        "steps": result.details["steps"],
        "ratios": ratios,
        "against_torchjd": torchjd,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the full balancer bench (1 thread) and write :data:`RECORD` for the README."""
    import argparse
    from pathlib import Path

    from benchmarks.common import pin_threads
    from torchbricks_lightning.core.atomic_files import write_json_atomically

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output", type=Path, default=Path(RECORD))
    parser.add_argument("--repeats", type=int, default=Settings.full().fit_repeats)
    args = parser.parse_args(argv)
    threads = pin_threads(1)
    result = run(Settings(fit_repeats=args.repeats))
    record = record_of(result, threads)
    write_json_atomically(args.output, record, what="balancer record")  # a killed run keeps the previous record
    for name, ratio in record["ratios"].items():
        print(f"{name:24s} {ratio:.3f}x static")
    print(f"wrote {args.output} ({result.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
