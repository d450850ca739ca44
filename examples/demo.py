"""The main job: a three-task model on real handwritten digits, offline, with partial labels and task balancing.

1. Trains each task alone (the single-task baselines): the digit (10 classes, with its label kept for only 10% of
   the training images), its parity, and a per-pixel foreground mask of the ink (a dense task).
2. Trains the three tasks together on one backbone (``digits_multitask.py``), balanced by uncertainty weighting,
   with a progress bar and TensorBoard and CSV logs (losses, metrics, the per-task weights, the multi-task score
   Δm against the baselines at every validation, the brick graph, a confusion matrix).
3. Tests the best checkpoint (by validation Δm) on the held-out split and draws the per-task weights over training.
4. Exports it to ONNX, runs it in onnxruntime on the test split and compares every task's predictions with PyTorch.

Run: ``python examples/demo.py`` (or ``python3 -m nox -s demo``). Everything goes to ``runs/demo`` (``--output``),
which a rerun replaces whole once it has written everything (``run_folder.py``); the figures printed are also in
``runs/demo/figures.json``. ``--seed`` draws the split, the digit labels kept and the training (``demo_seeds.py``
runs several seeds for the README's figures). Exits non-zero if a task misses its required figure or onnxruntime
and PyTorch disagree.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytorch_lightning as pl
import torch
import torchvision
from digits_multitask import (
    DIGIT_NAMES,
    LABELLED_FRACTION,
    TASKS,
    TEST_METRICS,
    build_bricks,
    build_datamodule,
    build_module,
)
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from run_folder import replaced_folder
from weight_curves import read_curves

from torchbricks_lightning import Stage, create_mermaid_dag_graph
from torchbricks_lightning.callbacks import BrickGraphLogger
from torchbricks_lightning.lightning import LightningBrickCollection, SafeCheckpointIO
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx
from torchbricks_lightning.multitask import DeltaM
from torchbricks_lightning.pictures import (
    render_brick_graph,
    render_confusion_matrix,
    render_line_chart,
    render_prediction_grid,
)

REQUIRED = {"digit": 0.90, "parity": 0.95, "foreground": 0.80}
"""The least test figure of each task (digit and parity accuracy, foreground mean IoU): below the least of five
seeds (``docs/demo_figures.json``) by a margin."""
LABELS = {"digit": "macro accuracy", "parity": "macro accuracy", "foreground": "mean IoU"}
FIGURES_FILE = "figures.json"
"""The file, in the output folder, of the figures the demo prints (read back by ``demo_seeds.py`` and the tests)."""


@dataclass
class Comparison:
    """Each task alone against the three together, for one seed: the test figures and the best multi-task model."""

    seed: int
    max_epochs: int
    labelled_fraction: float
    alone: dict[str, float]
    """The test figure of each task trained alone (its :data:`TEST_METRICS` value)."""
    together: dict[str, float]
    """The test figure of each task in the three-task model (its best checkpoint by validation Δm)."""
    delta_m: float
    """The multi-task score Δm (%) on the test split, against the single-task models' test figures."""
    trainer: pl.Trainer
    best: Path
    """The three-task model's best checkpoint."""
    restored: LightningBrickCollection
    """The three-task model restored from ``best``, in eval mode."""
    test: dict[str, torch.Tensor]
    """The test split."""
    outputs: dict[str, torch.Tensor]
    """The restored model's outputs on the test split."""

    @property
    def digit_accuracy(self) -> float:
        """The share of test images whose digit the restored model predicts (plain, not macro, accuracy)."""
        return float((self.outputs["digit/class_prediction"] == self.test["targets"]).float().mean())

    def figures(self) -> dict[str, Any]:
        """What the demo prints, as JSON data."""
        return {
            "seed": self.seed,
            "max_epochs": self.max_epochs,
            "labelled_fraction": self.labelled_fraction,
            "test_images": len(self.test["targets"]),
            "alone": self.alone,
            "together": self.together,
            "delta_m": self.delta_m,
            "digit_accuracy": self.digit_accuracy,
        }


def train(
    tasks: Sequence[str],
    max_epochs: int,
    output: Path,
    seed: int,
    labelled_fraction: float,
    baselines: dict[str, float] | None = None,
    progress: bool = False,
) -> tuple[pl.Trainer, ModelCheckpoint, dict[str, float]]:
    """Fit the recipe on ``tasks``; keep the checkpoint that is best on validation; return its test figures."""
    pl.seed_everything(seed, verbose=False)
    multi = len(tasks) > 1
    monitor = "validation/delta_m" if multi else f"validation/{TEST_METRICS[tasks[0]]}"
    checkpoints = ModelCheckpoint(
        dirpath=output / "checkpoints", filename="best" if multi else f"single_{tasks[0]}", monitor=monitor, mode="max"
    )
    loggers: list[Any] = []
    callbacks: list[Any] = [checkpoints]
    if multi:  # one folder each, named without a version: the output folder is new for every run (run_folder.py)
        loggers = [TensorBoardLogger(output, name="", version="tensorboard"), CSVLogger(output, name="", version="csv")]
        callbacks.append(BrickGraphLogger())
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],  # checkpoints written atomically: a killed save never leaves a broken file
        log_every_n_steps=5,
        enable_model_summary=False,
        enable_progress_bar=progress,
    )
    module = build_module(max_epochs, tasks, baselines)
    datamodule = build_datamodule(seed, labelled_fraction)
    trainer.fit(module, datamodule=datamodule)
    (results,) = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoints.best_model_path, verbose=False)
    return trainer, checkpoints, {task: float(results[f"test/{TEST_METRICS[task]}"]) for task in tasks}


def compare(
    output: Path,
    seed: int = 0,
    max_epochs: int = 15,
    labelled_fraction: float = LABELLED_FRACTION,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> Comparison:
    """Steps 1 to 3 of the demo, with their results written under ``output``: each task alone, the three together
    (best checkpoint by validation Δm against the single-task validation figures), tested and restored. ``say``
    prints the steps, and ``progress`` shows the three-task model's progress bar."""
    say(f"== 1. Single-task baselines: each task alone ({', '.join(TASKS)}), on scikit-learn's digits (offline)")
    baseline_validation: dict[str, float] = {}
    alone: dict[str, float] = {}
    for task in TASKS:
        _, checkpoints, figures = train([task], max_epochs, output, seed, labelled_fraction)
        baseline_validation[TEST_METRICS[task]] = float(checkpoints.best_model_score)  # type: ignore[arg-type]
        alone[task] = figures[task]
        validation = baseline_validation[TEST_METRICS[task]]
        say(f"  {task:<11} {LABELS[task]:<14} {figures[task]:7.2%} on test, {validation:7.2%} on validation")

    say("\n== 2. Train the three tasks together: one backbone, uncertainty weighting, Δm at every validation")
    trainer, checkpoints, together = train(
        TASKS, max_epochs, output, seed, labelled_fraction, baseline_validation, progress
    )
    delta_m = DeltaM({TEST_METRICS[task]: alone[task] for task in TASKS})
    test_delta_m = float(delta_m({TEST_METRICS[task]: together[task] for task in TASKS}))

    say("\n== 3. Test the best checkpoint (by validation Δm) on the held-out split")
    best = Path(checkpoints.best_model_path)
    restored = LightningBrickCollection.load_from_checkpoint(best, brick_collection=build_bricks()).eval()
    datamodule = build_datamodule(seed, labelled_fraction)
    datamodule.setup()
    test = datamodule.splits["test"]
    with torch.no_grad():
        outputs = restored({"raw": test["raw"]})
    return Comparison(
        seed, max_epochs, labelled_fraction, alone, together, test_delta_m, trainer, best, restored, test, outputs
    )


def draw(comparison: Comparison, output: Path) -> list[Path]:
    """The pictures, logged to TensorBoard and written as PNG files in ``output``, and the mermaid graph."""
    tensorboard = comparison.trainer.loggers[0]
    if not isinstance(tensorboard, TensorBoardLogger):
        raise TypeError(f"train() gives the three-task model a TensorBoardLogger first, not {tensorboard!r}")
    test, restored = comparison.test, comparison.restored
    digits = comparison.outputs["digit/class_prediction"]
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((test["targets"], digits), torch.ones_like(digits), accumulate=True)
    weights = read_curves(output / "csv" / "metrics.csv", "train/balance/")
    pictures = {
        "test/predictions": render_prediction_grid(
            test["raw"][:64], digits[:64], test["targets"][:64], class_names=DIGIT_NAMES
        ),
        "test/confusion_matrix": render_confusion_matrix(
            confusion, title="test/digit/confusion (best checkpoint)", class_names=DIGIT_NAMES
        ),
        "graph/train": render_brick_graph(restored.brick_collection, Stage.TRAIN),
        "train/balance_weights": render_line_chart(
            weights, "Uncertainty weighting: the weight of each task's loss, exp(-s)/2", y_label="weight of the loss"
        ),
    }
    files = []
    for tag, picture in pictures.items():
        tensorboard.experiment.add_image(tag, picture, global_step=comparison.trainer.global_step)
        files.append(Path(f"{tag.replace('/', '_')}.png"))
        torchvision.utils.save_image(picture, output / files[-1])
    (output / "graph_train.mermaid").write_text(create_mermaid_dag_graph(restored.brick_collection, Stage.TRAIN))
    tensorboard.experiment.flush()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the labels kept and the training")
    parser.add_argument(
        "--output", type=Path, default=Path("runs/demo"), help="the demo's folder: a rerun replaces it whole"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    # A small model on a 2-core CPU: one intra-op thread avoids OpenMP spin-waiting (measured ~40x faster).
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|Checkpoint directory).*")
    # Lightning's own lines (devices, checkpoint paths in the staging folder) stay out: the demo says what it wrote.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    with replaced_folder(args.output) as staging:
        comparison = compare(staging, args.seed, args.max_epochs)
        pictures = draw(comparison, staging)

        print("== 4. Export the best checkpoint to ONNX and run it in onnxruntime")
        export = export_checkpoint_as_onnx(
            comparison.best, staging / "digits_multitask.onnx", brick_collection=build_bricks()
        )
        session = onnxruntime.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
        names = [f"{task}/class_prediction" for task in TASKS]
        test = comparison.test
        onnx_outputs = dict(zip(names, session.run(names, {"raw": test["raw"].numpy()}), strict=True))
        differ = {name: int((onnx_outputs[name] != comparison.outputs[name].numpy()).sum()) for name in names}
        onnx_accuracy = float((onnx_outputs["digit/class_prediction"] == test["targets"].numpy()).mean())
        figures = {**comparison.figures(), "onnx_digit_accuracy": onnx_accuracy}
        (staging / FIGURES_FILE).write_text(json.dumps(figures, indent=2) + "\n")

    torch_accuracy = comparison.digit_accuracy
    alone, together = comparison.alone, comparison.together
    print(f"\nDigits predicted correctly, of the {len(test['targets'])} held-out test images:")
    print(f"  PyTorch      {torch_accuracy:.2%}")
    print(f"  onnxruntime  {onnx_accuracy:.2%}   ({differ['digit/class_prediction']} predictions differ)")
    fraction = f"{comparison.labelled_fraction:.0%} of the digits labelled"
    print(f"Test figures, single-task baseline -> three-task model ({fraction}, seed {args.seed}):")
    for task in TASKS:
        print(f"  {task:<11} {LABELS[task]:<14} {alone[task]:7.2%} -> {together[task]:7.2%}")
    print(f"Multi-task score Δm on the test split: {comparison.delta_m:+.2f}%")
    print(
        f"ONNX export: max abs diff vs PyTorch {max(export.max_abs_diff.values()):.2e} on example inputs; "
        f"predictions that differ: {differ}"
    )

    # Every path as the output folder was given (relative to the current folder by default).
    def written(name: str | Path) -> str:
        return str(args.output / name)

    print(f"\nWrote (in {time.perf_counter() - start:.0f} s), replacing any earlier run's {args.output}:")
    print(f"  best checkpoint   {written(Path('checkpoints') / comparison.best.name)}")
    print(f"  ONNX model        {written(export.path.name)}  (inputs {export.input_names})")
    print(f"  TensorBoard logs  {written('tensorboard')}  (losses, metrics, task weights, Δm, graph, pictures)")
    print(f"  CSV logs          {written('csv/metrics.csv')}")
    print(f"  pictures          {', '.join(written(name) for name in pictures[:3])}")
    print(f"  task weights      {written(pictures[3])}")
    print(f"  mermaid graph     {written('graph_train.mermaid')}")
    print(f"  figures           {written(FIGURES_FILE)}  (the figures above, as JSON)")
    print(f"Open TensorBoard:   tensorboard --logdir {args.output}")

    failed = [
        f"{task} {LABELS[task]} {together[task]:.2%} is below {REQUIRED[task]:.0%}"
        for task in TASKS
        if together[task] < REQUIRED[task]
    ]
    if torch_accuracy < REQUIRED["digit"]:
        failed.append(f"digit accuracy {torch_accuracy:.2%} (restored checkpoint) is below {REQUIRED['digit']:.0%}")
    if any(differ.values()) or not np.isclose(onnx_accuracy, torch_accuracy):
        failed.append(f"onnxruntime and PyTorch disagree: {differ}")
    for problem in failed:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
