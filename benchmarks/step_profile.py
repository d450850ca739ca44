"""Profile one training epoch of a parity variant with cProfile: call counts and the functions with most own time.

Usage::

    python -m benchmarks.step_profile --model small --variants handwritten,bricks

It prints, per variant, the epoch's total profiled time, the calls into Lightning's ``apply_to_collection`` (what
``self.log`` runs) and ``copy.deepcopy``, and the top functions by own time. Not part of ``benchmarks.run``: a
tool for finding where the brick module's extra time per step goes (the counts are exact, the times are cProfile's).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from collections.abc import Sequence
from dataclasses import replace

from benchmarks.common import Settings, pin_threads
from benchmarks.lockstep import FitRecord, Recorder, lightning_trainer, loader_of, quiet_lightning
from benchmarks.parity_models import dataset_of, lightning_module_of, model_specs

__all__ = ["main", "profile_epoch"]

COUNTED = {"apply_to_collection": "apply_to_collection", "deepcopy": "copy.deepcopy"}


def profile_epoch(variant: str, model: str, steps: int) -> pstats.Stats:
    """Train ``variant`` for one warm-up epoch, then profile one epoch of ``steps`` steps."""
    spec = replace(model_specs(Settings.full())[model], epochs=2)
    spec = replace(spec, n_samples=steps * spec.batch_size)
    module = lightning_module_of(variant, spec)
    profiler = cProfile.Profile()

    class _ProfileSecondEpoch(Recorder):
        def on_train_epoch_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 1:
                profiler.enable()

        def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            profiler.disable()

    with quiet_lightning():
        trainer = lightning_trainer(spec, [_ProfileSecondEpoch(FitRecord(), None, variant, sync=False)], "cpu")
        trainer.fit(module, train_dataloaders=loader_of(spec, dataset_of(spec)))
    return pstats.Stats(profiler)


def _counts(stats: pstats.Stats) -> dict[str, tuple[int, float]]:
    found = {label: (0, 0.0) for label in COUNTED.values()}
    for (filename, _line, function), (_cc, calls, _tt, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for name, label in COUNTED.items():
            if function == name and ("lightning" in filename or "copy.py" in filename):
                count, seconds = found[label]
                found[label] = (count + calls, seconds + cumulative)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", choices=["mlp", "cnn", "small"])
    parser.add_argument("--variants", default="handwritten,bricks")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    pin_threads(1)
    for variant in args.variants.split(","):
        stats = profile_epoch(variant, args.model, args.steps)
        total = stats.total_tt  # type: ignore[attr-defined]
        counts = ", ".join(f"{label}: {n} calls, {1e3 * s:.0f} ms" for label, (n, s) in _counts(stats).items())
        print(f"== {variant} ({args.model}, {args.steps} steps): {1e3 * total:.0f} ms profiled; {counts}")
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
