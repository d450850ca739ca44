"""Benchmarks of torchbricks_lightning against hand-written baselines measured side by side in the same run.

Run them all with ``python -m benchmarks.run --output build/benchmarks`` (or ``nox -s bench``). Every figure is a
ratio (or difference) against a baseline measured in the same process, in interleaved repeats, as the median of
the repeats, with the torch thread count pinned (one thread by default) and reported.

Modules:
    common: timing (interleaved samples, medians), figures and the machine description.
    models: the bricks and the equivalent hand-written modules that every benchmark compares.
    dispatch: the cost of running a ``BrickCollection`` instead of a hand-written ``nn.Module``.
    compile: ``torch.compile`` graphs, graph breaks, recompiles, steady-state and compile time.
    lightning_parity: ``LightningBrickCollection`` vs a hand-written LightningModule vs a plain PyTorch loop, with
        the per-component breakdown (cases in ``parity_models``, lockstep training in ``lockstep``; ``step_profile``
        profiles one epoch).
    metrics: the per-step cost of a classification head's metric bricks vs a ``torch.bincount`` lower bound.
    onnx_export: ``export_bricks_as_onnx`` vs ``torch.onnx.export`` of the hand-written module, and onnxruntime.
    report: the JSON and markdown writers.
    run: the entry point.
"""

from __future__ import annotations

import os

# One intra-op thread unless told otherwise, set before torch is imported by any benchmark module: on small
# (2-core) machines OpenMP spin-waiting makes tiny ops tens of times slower with more threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
