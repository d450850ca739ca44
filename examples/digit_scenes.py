"""Digit scenes: detection, an ink mask and depth on one backbone, from two datasets that label different tasks.

The recipe of ``examples/configs/digit_scenes.yaml`` in pure Python, offline (scikit-learn's digits drawn on 64x64
canvases by ``examples/digit_scenes_data.py``):

- ``det``: the digits' boxes and classes (``create_detection_head``, FCOS-style, NMS included in the export);
- ``ink``: a per-pixel ink mask (``create_segmentation_head``, 2 classes);
- ``depth``: a synthetic depth map, each digit at its own depth and the background far (``create_depth_head``).

The training scenes come from two datasets: ``boxes`` is annotated for detection only, ``dense`` for the ink and
the depth only. ``MultiTaskDataModule`` mixes them, so every batch holds both kinds, the labels a sample lacks being
the missing values (NaN boxes, ink -100, NaN depth): each head learns from the samples that label it. UPGrad
balances the tasks on the shared features. Validation and test scenes carry every label; the detection, ink and
depth pictures go to TensorBoard, and each head is exported to its own ONNX file.

Run from the repository's root: ``python examples/digit_scenes.py`` trains, tests on the test split, exports and
prints mAP@0.5, mIoU and AbsRel (under 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.` importable when run as a script

from examples.digit_scenes_data import DIGIT_NAMES, FAR, DigitScenesDataModule
from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable, BrickVisualization
from torchbricks_lightning.bag_of_bricks import (
    DepthVisualizer,
    DetectionVisualizer,
    Preprocessor,
    SegmentationVisualizer,
    SmallConvNet,
    create_depth_head,
    create_detection_head,
    create_segmentation_head,
)
from torchbricks_lightning.callbacks import OnnxExportCallback
from torchbricks_lightning.core.atomic_files import write_atomically, write_json_atomically
from torchbricks_lightning.datamodules import MultiTaskDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import UPGrad

HEADS = ("det", "ink", "depth")
TASKS = {"mAP@0.5": "detection", "mIoU": "ink mask", "AbsRel": "depth"}
"""The task of each printed figure, for the README's table."""
PICTURES = {"detection": "test/show_det/0", "depth": "test/show_depth/0"}
"""The README's pictures: the first test scene's pictures, as TensorBoard holds them."""
FIGURES = {"mAP@0.5": "test/det/map_50", "mIoU": "test/ink/mean_iou", "AbsRel": "test/depth/abs_rel"}
"""The figure printed for each task and the test metric it is."""
STRIDE = 4
"""The backbone's stride: three blocks, two 2x2 max-pools."""


def build_bricks(width: int = 64, images_per_epoch: int = 4) -> BrickCollection:
    """Preprocessor, backbone, the three heads and a visualisation brick for each."""
    backbone = SmallConvNet(in_channels=1, widths=(width // 4, width // 2, width))
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(
                Preprocessor(mean=[0.1], std=[0.25]), input_names=["raw"], output_names=["normalized"]
            ),
            "backbone": BrickTrainable(backbone, input_names=["normalized"], output_names=["features"]),
            "det": create_detection_head(
                num_classes=10,
                in_channels=width,
                features_name="features",
                boxes_name="boxes",
                labels_name="labels",
                stride=STRIDE,
                image_name="raw",
                max_detections=10,
                hidden_channels=width,
                num_convs=2,
                focal_alpha=-1.0,  # plain binary cross-entropy: the focal loss learns the digit classes far too slowly
                focal_gamma=0.0,  # in a budget this short (see create_detection_head)
                class_names=DIGIT_NAMES,
            ),
            "ink": create_segmentation_head(2, width, "features", "ink", upsample=STRIDE, hidden_channels=16),
            "depth": create_depth_head(width, "features", "depth", upsample=STRIDE, hidden_channels=16),
            "show_det": BrickVisualization(
                DetectionVisualizer(class_names=DIGIT_NAMES),
                input_names={
                    "images": "raw",
                    **{name: f"det/{name}" for name in ("boxes", "scores", "labels", "count")},
                    "target_boxes": "boxes",
                    "target_labels": "labels",
                },
                images_per_epoch=images_per_epoch,
            ),
            "show_ink": BrickVisualization(
                SegmentationVisualizer(2, class_names=["background", "ink"], background_index=0),
                input_names={"images": "raw", "predictions": "ink/class_prediction", "targets": "ink"},
                images_per_epoch=images_per_epoch,
            ),
            "show_depth": BrickVisualization(
                DepthVisualizer(min_depth=3.0, max_depth=FAR),
                input_names={"predictions": "depth/depth", "targets": "depth"},
                images_per_epoch=images_per_epoch,
            ),
        }
    )


def build_module(max_epochs: int, width: int = 64) -> LightningBrickCollection:
    """The generic Lightning module: the bricks, AdamW with a cosine schedule, and UPGrad on the shared features."""
    return LightningBrickCollection(
        build_bricks(width),
        optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=1e-4),
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max_epochs),
        loss_balancer=UPGrad(shared_name="features"),
    )


def build_datamodule(
    train_scenes: int = 800, val_scenes: int = 128, test_scenes: int = 256, size: int = 64, batch_size: int = 32
) -> MultiTaskDataModule:
    """Two training datasets, one annotated for detection, one for the ink and depth; every label in evaluation."""

    def source(labels: list[str], seed: int, evaluated: bool) -> DigitScenesDataModule:
        return DigitScenesDataModule(
            labels=labels,
            train_scenes=train_scenes,
            val_scenes=val_scenes if evaluated else 0,
            test_scenes=test_scenes if evaluated else 0,
            size=size,
            sides=(size // 4, size // 2),
            batch_size=batch_size,
            seed=seed,
        )

    return MultiTaskDataModule(
        {"boxes": source(["boxes"], 0, evaluated=True), "dense": source(["ink", "depth"], 1, evaluated=False)},
        batch_size=batch_size,
    )


def figures_table(figures: dict[str, float]) -> str:
    """The README's table of the test figures (a test checks that the README shows the recorded run's table).

    Example:
        >>> print(figures_table({"mAP@0.5": 0.9876, "mIoU": 0.5, "AbsRel": 0.04}))
        | task | metric | value |
        |---|---|---|
        | detection | mAP@0.5 | 0.988 |
        | ink mask | mIoU | 0.500 |
        | depth | AbsRel | 0.040 |
    """
    rows = [f"| {TASKS[label]} | {label} | {value:.3f} |" for label, value in figures.items()]
    return "\n".join(["| task | metric | value |", "|---|---|---|", *rows])


def save_docs(log_dir: str | Path, figures: dict[str, float], folder: Path, epochs: int) -> list[Path]:
    """Write the run's figures (``digit_scenes_figures.json``) and its README pictures, read back from TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, tag in PICTURES.items():
        path = folder / f"digit_scenes_{name}.png"
        image = events.Images(tag)[-1].encoded_image_string
        write_atomically(path, lambda file, image=image: file.write(image), what="picture")
        written.append(path)
    record = folder / "digit_scenes_figures.json"
    write_json_atomically(record, {"epochs": epochs, "figures": figures}, what="figures")
    return [*written, record]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, test and export; print the test figures and return them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=12)
    parser.add_argument("--train-scenes", type=int, default=800, help="training scenes of each of the two datasets")
    parser.add_argument("--val-scenes", type=int, default=128)
    parser.add_argument("--test-scenes", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="the canvas side in pixels")
    parser.add_argument("--width", type=int, default=64, help="the backbone's feature channels")
    parser.add_argument("--root", default="runs/digit_scenes", help="folder for logs, checkpoints and ONNX files")
    parser.add_argument("--docs", default=None, help="also write the README's figures and pictures to this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pl.seed_everything(0, verbose=False)
    start = time.perf_counter()
    datamodule = build_datamodule(args.train_scenes, args.val_scenes, args.test_scenes, size=args.size)
    module = build_module(args.max_epochs, args.width)
    root = Path(args.root)
    export = OnnxExportCallback(filename="{head}.onnx", dirpath=str(root / "onnx"))  # one file per head
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        default_root_dir=root,
        logger=TensorBoardLogger(root, name="tensorboard"),
        callbacks=[export],
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    figures = {label: float(results[key]) for label, key in FIGURES.items()}
    print(f"digit scenes, test split ({args.test_scenes} scenes), after {args.max_epochs} epochs:")
    for label, value in figures.items():
        print(f"  {label:<8} {value:.3f}")
    print(f"  ONNX     {', '.join(str(result.path) for result in export.last_results)}")
    print(f"  TensorBoard logs  {trainer.logger.log_dir if trainer.logger else root}")
    print(f"  time     {time.perf_counter() - start:.0f} s")
    if args.docs is not None and trainer.logger is not None and trainer.logger.log_dir is not None:
        for path in save_docs(trainer.logger.log_dir, figures, Path(args.docs), args.max_epochs):
            print(f"  wrote    {path}")
    return figures


if __name__ == "__main__":
    main()
