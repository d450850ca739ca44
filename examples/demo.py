"""The main job: a three-task model on real handwritten digits, offline, with partial labels and task balancing.

1. Trains each task alone (the single-task baselines): the digit (10 classes, with its label kept for only 30% of
   the training images), its parity, and a per-pixel foreground mask of the ink (a dense task).
2. Trains the three tasks together on one backbone (``digits_multitask.py``), balanced by uncertainty weighting,
   with a progress bar and TensorBoard and CSV logs (losses, metrics, the per-task weights, the multi-task score
   Δm against the baselines at every validation, the brick graph, a confusion matrix).
3. Tests the best checkpoint (by validation Δm) on the held-out split and draws the per-task weights over training.
4. Exports it to ONNX, runs it in onnxruntime on the test split and compares every task's predictions with PyTorch.

Run: ``python examples/demo.py`` (or ``python3 -m nox -s demo``). Exits non-zero if a task misses its required
figure or onnxruntime and PyTorch disagree.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence
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

REQUIRED = {"digit": 0.95, "parity": 0.95, "foreground": 0.80}
"""The least test figure of each task (digit and parity accuracy, foreground mean IoU)."""
LABELS = {"digit": "macro accuracy", "parity": "macro accuracy", "foreground": "mean IoU"}


def train(
    tasks: Sequence[str], max_epochs: int, output: Path, baselines: dict[str, float] | None = None
) -> tuple[LightningBrickCollection, pl.Trainer, ModelCheckpoint, dict[str, float]]:
    """Fit the recipe on ``tasks``; keep the checkpoint that is best on validation; return its test figures."""
    pl.seed_everything(0, verbose=False)
    multi = len(tasks) > 1
    monitor = "validation/delta_m" if multi else f"validation/{TEST_METRICS[tasks[0]]}"
    checkpoints = ModelCheckpoint(
        dirpath=output / "checkpoints", filename="best" if multi else f"single_{tasks[0]}", monitor=monitor, mode="max"
    )
    loggers: list[Any] = []
    callbacks: list[Any] = [checkpoints]
    if multi:
        loggers = [TensorBoardLogger(save_dir=str(output), name="tensorboard"), CSVLogger(output, name="csv")]
        callbacks.append(BrickGraphLogger())
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],  # checkpoints written atomically: a killed save never leaves a broken file
        log_every_n_steps=5,
        enable_model_summary=False,
        enable_progress_bar=multi,
    )
    module = build_module(max_epochs, tasks, baselines)
    datamodule = build_datamodule()
    trainer.fit(module, datamodule=datamodule)
    (results,) = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoints.best_model_path, verbose=False)
    return module, trainer, checkpoints, {task: float(results[f"test/{TEST_METRICS[task]}"]) for task in tasks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="folder for everything written")
    args = parser.parse_args()
    start = time.perf_counter()
    # A small model on a 2-core CPU: one intra-op thread avoids OpenMP spin-waiting (measured ~40x faster).
    torch.set_num_threads(1)
    args.output.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|Checkpoint directory).*")

    print(f"== 1. Single-task baselines: each task alone ({', '.join(TASKS)}), on scikit-learn's digits (offline)")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    baseline_validation: dict[str, float] = {}
    baseline_test: dict[str, float] = {}
    for task in TASKS:
        _, _, checkpoints, figures = train([task], args.max_epochs, args.output)
        baseline_validation[TEST_METRICS[task]] = float(checkpoints.best_model_score)  # type: ignore[arg-type]
        baseline_test[task] = figures[task]
        validation = baseline_validation[TEST_METRICS[task]]
        print(f"  {task:<11} {LABELS[task]:<14} {figures[task]:7.2%} on test, {validation:7.2%} on validation")
    logging.getLogger("pytorch_lightning").setLevel(logging.INFO)

    print("\n== 2. Train the three tasks together: one backbone, uncertainty weighting, Δm at every validation")
    _, trainer, checkpoints, multi_test = train(TASKS, args.max_epochs, args.output, baseline_validation)
    tensorboard, csv_logger = trainer.loggers

    print("\n== 3. Test the best checkpoint (by validation Δm) on the held-out split")
    best = Path(checkpoints.best_model_path)
    restored = LightningBrickCollection.load_from_checkpoint(best, brick_collection=build_bricks()).eval()
    datamodule = build_datamodule()
    datamodule.setup()
    test = datamodule.splits["test"]
    with torch.no_grad():
        outputs = restored({"raw": test["raw"]})
    torch_digits = outputs["digit/class_prediction"]
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((test["targets"], torch_digits), torch.ones_like(torch_digits), accumulate=True)
    weights = read_curves(Path(csv_logger.log_dir) / "metrics.csv", "train/balance/")
    pictures = {
        "test/predictions": render_prediction_grid(
            test["raw"][:64], torch_digits[:64], test["targets"][:64], class_names=DIGIT_NAMES
        ),
        "test/confusion_matrix": render_confusion_matrix(
            confusion, title="test/digit/confusion (best checkpoint)", class_names=DIGIT_NAMES
        ),
        "graph/train": render_brick_graph(restored.brick_collection, Stage.TRAIN),
    }
    weights_picture = render_line_chart(
        weights, "Uncertainty weighting: the weight of each task's loss, exp(-s)/2", y_label="weight of the loss"
    )
    for tag, picture in {**pictures, "train/balance_weights": weights_picture}.items():
        tensorboard.experiment.add_image(tag, picture, global_step=trainer.global_step)
        torchvision.utils.save_image(picture, args.output / f"{tag.replace('/', '_')}.png")
    (args.output / "graph_train.mermaid").write_text(create_mermaid_dag_graph(restored.brick_collection, Stage.TRAIN))
    tensorboard.experiment.flush()

    print("== 4. Export the best checkpoint to ONNX and run it in onnxruntime")
    path_onnx = args.output / "digits_multitask.onnx"
    export = export_checkpoint_as_onnx(best, path_onnx, brick_collection=build_bricks())
    session = onnxruntime.InferenceSession(str(path_onnx), providers=["CPUExecutionProvider"])
    names = [f"{task}/class_prediction" for task in TASKS]
    onnx_outputs = dict(zip(names, session.run(names, {"raw": test["raw"].numpy()}), strict=True))
    differ = {name: int((onnx_outputs[name] != outputs[name].numpy()).sum()) for name in names}
    targets = test["targets"].numpy()
    onnx_digits = onnx_outputs["digit/class_prediction"]
    torch_accuracy = float((torch_digits.numpy() == targets).mean())
    onnx_accuracy = float((onnx_digits == targets).mean())
    test_delta_m = float(
        DeltaM({TEST_METRICS[task]: baseline_test[task] for task in TASKS})(
            {TEST_METRICS[task]: multi_test[task] for task in TASKS}
        )
    )

    print(f"\nDigits predicted correctly, of the {len(targets)} held-out test images:")
    print(f"  PyTorch      {torch_accuracy:.2%}")
    print(f"  onnxruntime  {onnx_accuracy:.2%}   ({differ['digit/class_prediction']} predictions differ)")
    print(f"Test figures, single-task baseline -> three-task model ({LABELLED_FRACTION:.0%} of the digits labelled):")
    for task in TASKS:
        print(f"  {task:<11} {LABELS[task]:<14} {baseline_test[task]:7.2%} -> {multi_test[task]:7.2%}")
    print(f"Multi-task score Δm on the test split: {test_delta_m:+.2f}%")
    print(
        f"ONNX export: max abs diff vs PyTorch {max(export.max_abs_diff.values()):.2e} on example inputs; "
        f"predictions that differ: {differ}"
    )

    print(f"\nWrote (in {time.perf_counter() - start:.0f} s):")
    print(f"  best checkpoint   {best}")
    print(f"  ONNX model        {path_onnx}  (inputs {export.input_names})")
    print(f"  TensorBoard logs  {tensorboard.log_dir}  (losses, metrics, task weights, Δm, graph, pictures)")
    print(f"  CSV logs          {Path(csv_logger.log_dir) / 'metrics.csv'}")
    picture_files = [str(args.output / f"{tag.replace('/', '_')}.png") for tag in pictures]
    print(f"  pictures          {', '.join(picture_files)}")
    print(f"  task weights      {args.output / 'train_balance_weights.png'}")
    print(f"  mermaid graph     {args.output / 'graph_train.mermaid'}")
    print(f"Open TensorBoard:   tensorboard --logdir {args.output}")

    failed = [
        f"{task} {LABELS[task]} {multi_test[task]:.2%} is below {REQUIRED[task]:.0%}"
        for task in TASKS
        if multi_test[task] < REQUIRED[task]
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
