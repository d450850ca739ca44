"""The multi-task recipe in pure Python: one backbone, two heads (the digit, and whether it is odd).

Trains on scikit-learn's bundled handwritten digits (offline) with Lightning, no CLI and no LightningModule of
your own: ``python examples/digits_multitask.py --max-epochs 15``.
"""

from __future__ import annotations

import argparse
from functools import partial

import pytorch_lightning as pl
import torch

from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.bag_of_bricks import Preprocessor, SmallConvNet, create_image_classification_head
from torchbricks_lightning.callbacks import BrickGraphLogger, OnnxExportCallback
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.lightning import LightningBrickCollection


def build_bricks() -> BrickCollection:
    """Preprocessor, backbone, and one head per task, each with its loss and metrics."""
    backbone = SmallConvNet(in_channels=1, widths=(32, 64, 128))
    features = backbone.n_backbone_features
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(
                Preprocessor(mean=[0.5], std=[0.5]), input_names=["raw"], output_names=["normalized"]
            ),
            "backbone": BrickTrainable(backbone, input_names=["normalized"], output_names=["features"]),
            "digit": create_image_classification_head(
                num_classes=10,
                in_channels=features,
                features_name="features",
                targets_name="targets",
                with_confusion_matrix=True,
            ),
            "parity": create_image_classification_head(
                num_classes=2, in_channels=features, features_name="features", targets_name="parity", loss_weight=0.5
            ),
        }
    )


def build_module(max_epochs: int) -> LightningBrickCollection:
    """The generic Lightning module with the bricks, an optimizer and a scheduler injected."""
    return LightningBrickCollection(
        build_bricks(),
        optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=1e-4),
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max_epochs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--root", default="runs/digits_multitask", help="folder for logs and checkpoints")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: one thread avoids OpenMP spin-waiting on small CPUs
    pl.seed_everything(0, verbose=False)
    datamodule = DigitsDataModule(batch_size=64)
    module = build_module(args.max_epochs)
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        default_root_dir=args.root,
        callbacks=[BrickGraphLogger(), OnnxExportCallback()],
        log_every_n_steps=5,
    )
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, ckpt_path="best")


if __name__ == "__main__":
    main()
