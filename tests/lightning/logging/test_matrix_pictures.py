"""The confusion matrices a fit logs to TensorBoard are titled with their key and the epoch of the weights, with axis
titles and the class names of the metric that has them (read back from the event file)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from torchbricks_lightning import BrickCollection, BrickLoss, BrickMetricSingle, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.datamodules import SyntheticImageDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.logging.metrics import weights_epoch
from torchbricks_lightning.pictures import draw_confusion_matrix, render_confusion_matrix

SHAPES = ["circle", "square", "triangle", "star"]


class ArgMax(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)


def test_logged_confusion_matrix_has_title_axes_and_class_names(tmp_path: Path) -> None:
    confusion = MulticlassConfusionMatrix(num_classes=4)
    confusion.class_names = SHAPES  # what a head that knows its classes would set
    bricks = BrickCollection(
        {
            "head": BrickTrainable(
                nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), input_names=["raw"], output_names=["logits"]
            ),
            "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
            "shape": {"confusion": BrickMetricSingle(confusion, input_names=["class_prediction", "targets"])},
        }
    )
    module = LightningBrickCollection(bricks)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    data = SyntheticImageDataModule(num_classes=4, image_size=8, n_train=32, n_val=16, n_test=16)
    trainer.fit(module, datamodule=data)
    (result,) = trainer.test(module, datamodule=data)

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (logged,) = events.Images("test/shape/confusion")
    picture = torch.from_numpy(np.asarray(Image.open(io.BytesIO(logged.encoded_image_string)).convert("RGB")).copy())

    # The test set's confusion matrix, counted again from the model's predictions.
    batch = next(iter(data.test_dataloader()))
    predictions = bricks({"raw": batch[0]}, "inference")["class_prediction"]
    counts = torch.zeros(4, 4, dtype=torch.long)
    for target, predicted in zip(batch[1].tolist(), predictions.tolist(), strict=True):
        counts[target, predicted] += 1
    # One epoch ran, epoch 0: the test of its weights is titled "epoch 0" (was "epoch 1", the count of epochs).
    expected = draw_confusion_matrix(counts, title="test/shape/confusion, epoch 0", class_names=SHAPES)
    (axes,) = expected.axes
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == (
        "test/shape/confusion, epoch 0",
        "predicted class",
        "true class",
    )
    assert [label.get_text() for label in axes.get_xticklabels()] == SHAPES
    expected_pixels = render_confusion_matrix(counts, title="test/shape/confusion, epoch 0", class_names=SHAPES)
    expected_pixels = (expected_pixels.permute(1, 2, 0) * 255).round()
    assert picture.shape == expected_pixels.shape
    assert int((picture.int() - expected_pixels.int()).abs().max()) <= 1
    assert "test/loss" in result


class _SeenEpochs(pl.Callback):
    """The epoch of the weights, as the confusion matrices' titles give it, at each validation's end."""

    def __init__(self) -> None:
        self.epochs: list[int | None] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(weights_epoch(trainer))


def test_the_title_names_the_epoch_of_the_weights_in_fit_validate_and_from_a_checkpoint(tmp_path: Path) -> None:
    """Epochs 0 and 1 run: their validations are titled "epoch 0" and "epoch 1"; trainer.validate afterwards is
    "epoch 1" too (the last finished epoch; it was "epoch 2"), from the checkpoint written after epoch 0 "epoch 0",
    and still "epoch 0" for the next validate of those weights; a new trainer that never trained them, "epoch 0"
    from the loaded checkpoint."""
    bricks = BrickCollection(
        {
            "head": BrickTrainable(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), ["raw"], ["logits"]),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        }
    )
    module = LightningBrickCollection(bricks)
    seen = _SeenEpochs()
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=[every_epoch, seen],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    data = SyntheticImageDataModule(num_classes=2, image_size=4, n_train=16, n_val=8, n_test=8)
    trainer.fit(module, datamodule=data)
    trainer.validate(module, datamodule=data, verbose=False)
    first = str(tmp_path / "ckpt" / "epoch=0.ckpt")
    trainer.validate(module, datamodule=data, ckpt_path=first, verbose=False)
    trainer.validate(module, datamodule=data, verbose=False)  # the weights are still epoch 0's
    assert seen.epochs == [0, 1, 1, 0, 0]
    fresh = LightningBrickCollection.load_from_checkpoint(first, brick_collection=bricks)
    other = pl.Trainer(accelerator="cpu", logger=False, callbacks=[seen], enable_progress_bar=False)
    other.validate(fresh, datamodule=data, verbose=False)
    other.validate(LightningBrickCollection(bricks), datamodule=data, verbose=False)  # never trained nor loaded
    assert seen.epochs[-2:] == [0, None]
