"""The multi-task recipe in pure Python: one backbone, three tasks, partial labels and a task balancer.

On scikit-learn's bundled handwritten digits (offline), one small convolutional backbone feeds three heads:

- ``digit``: the digit (10 classes), whose label is kept for only 10% of the training images (the others carry
  the missing label -100, so the head learns from the labelled 10% and the epoch losses count labelled images only);
- ``parity``: whether the digit is odd (every image labelled);
- ``foreground``: a per-pixel mask of the ink (a dense task), through ``create_segmentation_head``.

The tasks are balanced by uncertainty weighting (Kendall et al. 2018): one learned weight per task, logged as
``train/balance/{loss}``. Trains with Lightning, no CLI and no LightningModule of your own:
``python examples/digits_multitask.py --max-epochs 15``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from functools import partial

import pytorch_lightning as pl
import torch

from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.bag_of_bricks import (
    Preprocessor,
    SmallConvNet,
    create_image_classification_head,
    create_segmentation_head,
)
from torchbricks_lightning.callbacks import BrickGraphLogger, OnnxExportCallback
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.lightning import LightningBrickCollection, SafeCheckpointIO
from torchbricks_lightning.multitask import DeltaM, LossBalancer, UncertaintyWeighting

TASKS = ("digit", "parity", "foreground")
LABELLED_FRACTION = 0.1
"""The share of training images that keep their digit label: few, so that the tasks labelled on every image (parity
and the mask) help the digit through the shared backbone (``demo_seeds.py`` measures by how much)."""
TEST_METRICS = {"digit": "digit/accuracy", "parity": "parity/accuracy", "foreground": "foreground/mean_iou"}
"""The metric that measures each task (all higher-is-better)."""


DIGIT_NAMES = [str(digit) for digit in range(10)]
PARITY_NAMES = ["even", "odd"]
"""The class names the heads record (pictures and export manifests name the classes with them)."""


def build_bricks(tasks: Sequence[str] = TASKS) -> BrickCollection:
    """Preprocessor, backbone, and one head per task, each with its loss (over labelled elements) and metrics."""
    backbone = SmallConvNet(in_channels=1, widths=(32, 64, 128))
    features = backbone.n_backbone_features
    heads = {
        "digit": create_image_classification_head(
            num_classes=10,
            in_channels=features,
            features_name="features",
            targets_name="targets",
            with_confusion_matrix=True,
            class_names=DIGIT_NAMES,
        ),
        "parity": create_image_classification_head(
            num_classes=2,
            in_channels=features,
            features_name="features",
            targets_name="parity",
            class_names=PARITY_NAMES,
        ),
        # The features are 2x2 maps of the 8x8 image: a 3x3 convolution, then upsampling by 4.
        "foreground": create_segmentation_head(
            num_classes=2,
            in_channels=features,
            features_name="features",
            targets_name="foreground",
            upsample=4,
            hidden_channels=32,
        ),
    }
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(
                Preprocessor(mean=[0.5], std=[0.5]), input_names=["raw"], output_names=["normalized"]
            ),
            "backbone": BrickTrainable(backbone, input_names=["normalized"], output_names=["features"]),
            **{task: heads[task] for task in tasks},
        }
    )


def build_balancer() -> LossBalancer:
    """The task balancer: learned uncertainty weights, one per task's loss."""
    return UncertaintyWeighting()


def build_module(
    max_epochs: int,
    tasks: Sequence[str] = TASKS,
    baselines: Mapping[str, float] | None = None,
) -> LightningBrickCollection:
    """The generic Lightning module with the bricks, an optimizer, a scheduler, the balancer and (given single-task
    baselines of the metrics) the multi-task score Δm injected."""
    return LightningBrickCollection(
        build_bricks(tasks),
        optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=1e-4),
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max_epochs),
        loss_balancer=build_balancer() if len(tasks) > 1 else None,
        delta_m=DeltaM(baselines) if baselines else None,
    )


def build_datamodule(seed: int = 0, labelled_fraction: float = LABELLED_FRACTION) -> DigitsDataModule:
    """The digits with the foreground masks, and the digit labels of a share of the training images (``seed``
    draws the split, which images keep their digit label, and the training order)."""
    return DigitsDataModule(batch_size=64, seed=seed, labelled_fraction=labelled_fraction, with_foreground=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--root", default="runs/digits_multitask", help="folder for logs and checkpoints")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: one thread avoids OpenMP spin-waiting on small CPUs
    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule()
    module = build_module(args.max_epochs)
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        default_root_dir=args.root,
        callbacks=[BrickGraphLogger(), OnnxExportCallback(filename="{head}.onnx", on_best=True)],  # a file per head
        plugins=[SafeCheckpointIO()],  # checkpoints written atomically: a killed save never leaves a broken file
        log_every_n_steps=5,
    )
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, ckpt_path="best")


if __name__ == "__main__":
    main()
