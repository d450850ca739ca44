"""KeyedModelCheckpoint: checkpoints named after a logged key with '/' are files in dirpath, not nested folders."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_image_classification_head
from torchbricks_lightning.callbacks import KeyedModelCheckpoint
from torchbricks_lightning.datamodules import SyntheticImageDataModule
from torchbricks_lightning.lightning import LightningBrickCollection


def test_checkpoints_named_after_a_nested_key_are_flat_files(tmp_path: Path) -> None:
    module = LightningBrickCollection(
        BrickCollection(
            {
                "backbone": BrickTrainable(
                    nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16)),
                    input_names=["raw"],
                    output_names=["features"],
                ),
                "digit": create_image_classification_head(4, 16, features_name="features", targets_name="targets"),
            }
        )
    )
    checkpoint = KeyedModelCheckpoint(
        dirpath=tmp_path / "checkpoints",
        monitor="validation/digit/accuracy",
        mode="max",
        filename="{epoch}-{validation/digit/accuracy:.4f}",
        save_top_k=2,
        save_last=True,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=SyntheticImageDataModule(num_classes=4, image_size=8, n_train=32, n_val=16))

    files = sorted(path.relative_to(tmp_path / "checkpoints").as_posix() for path in tmp_path.rglob("*.ckpt"))
    named = {Path(path).name: float(score) for path, score in checkpoint.best_k_models.items()}
    assert files == sorted(["last.ckpt", *named])  # no folders: every checkpoint sits in dirpath
    assert sorted(named) == [
        f"epoch={epoch}-validation_digit_accuracy={named[name]:.4f}.ckpt" for epoch, name in enumerate(sorted(named))
    ]
    assert Path(checkpoint.best_model_path).parent == tmp_path / "checkpoints"
    best = torch.load(checkpoint.best_model_path, weights_only=True)
    assert float(best["callbacks"][checkpoint.state_key]["best_model_score"]) == max(named.values())
