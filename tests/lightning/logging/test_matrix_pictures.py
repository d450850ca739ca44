"""The confusion matrices a fit logs to TensorBoard are titled with their key and epoch, with axis titles and the
class names of the metric that has them (read back from the event file)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from torchbricks_lightning import BrickCollection, BrickLoss, BrickMetricSingle, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.datamodules import SyntheticImageDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.pictures import draw_confusion_matrix

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
    expected = draw_confusion_matrix(counts, title="test/shape/confusion, epoch 1", class_names=SHAPES)
    assert expected.texts()[:7] == ["test/shape/confusion, epoch 1", "predicted class", "true class", *SHAPES]
    expected_pixels = torch.from_numpy(np.asarray(expected.image).copy())
    assert picture.shape == expected_pixels.shape
    assert int((picture.int() - expected_pixels.int()).abs().max()) <= 1
    assert "test/loss" in result
