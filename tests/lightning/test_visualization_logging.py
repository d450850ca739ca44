"""The visualisation bricks' pictures under a real Trainer: a bounded number per epoch in a real TensorBoard log (read
back), drawn from the first batches only and never in the sanity check, skipped for CSV, handed to a logger's
``log_image``; and a recipe that declares one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from tests.conftest import quiet_trainer
from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable, BrickVisualization, Visualizer
from torchbricks_lightning.bag_of_bricks import ClassificationVisualizer
from torchbricks_lightning.datamodules import SyntheticImageDataModule
from torchbricks_lightning.errors import MissingInputError
from torchbricks_lightning.lightning import LightningBrickCollection

CLASSES = ["circle", "square", "triangle"]


class Counting(Visualizer):
    """A ClassificationVisualizer that counts its calls and the samples it draws."""

    def __init__(self) -> None:
        super().__init__()
        self.drawer = ClassificationVisualizer(class_names=CLASSES, min_size=32)
        self.samples: list[int] = []

    def forward(self, images: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.samples.append(len(images))
        return self.drawer(images, predictions, targets)


def module_with(validation: Counting, train: Counting) -> LightningBrickCollection:
    names = {"images": "raw", "predictions": "logits", "targets": "targets"}
    bricks = BrickCollection(
        {
            "head": BrickTrainable(
                nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)), input_names=["raw"], output_names=["logits"]
            ),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
            "show": BrickVisualization(validation, input_names=names, images_per_epoch=3),
            "train_show": BrickVisualization(train, input_names=names, alive_stages=["train"], images_per_epoch=5),
        }
    )
    return LightningBrickCollection(bricks)


def data() -> SyntheticImageDataModule:
    return SyntheticImageDataModule(num_classes=3, image_size=8, n_train=16, n_val=12, n_test=8, batch_size=4)


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[EventAccumulator, Counting, Counting]:
    folder = tmp_path_factory.mktemp("tensorboard")
    validation, train = Counting(), Counting()
    module = module_with(validation, train)
    logger = TensorBoardLogger(folder, name="tb")
    trainer = quiet_trainer(folder, logger=logger, max_epochs=2, num_sanity_val_steps=1)
    trainer.fit(module, datamodule=data())
    assert validation.samples == [1, 3, 3]  # the sanity check draws one (a check, not logged); then 3 an epoch
    assert train.samples == [4, 1, 4, 1]  # 5 a training epoch: the first batch and one sample of the second
    trainer.validate(module, datamodule=data())
    trainer.test(module, datamodule=data())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    return events, validation, train


def test_fit_validate_and_test_log_a_bounded_number_per_epoch(
    tensorboard_run: tuple[EventAccumulator, Counting, Counting],
) -> None:
    events, validation, _ = tensorboard_run
    tags = sorted(events.Tags()["images"])
    assert tags == sorted(
        [f"validation/show/{k}" for k in range(3)]
        + [f"train/train_show/{k}" for k in range(5)]
        + [f"test/show/{k}" for k in range(3)]
    )
    for k in range(3):  # the epoch as step: two fit epochs, then trainer.validate after them (epoch 2)
        assert [event.step for event in events.Images(f"validation/show/{k}")] == [0, 1, 2]
        assert [event.step for event in events.Images(f"test/show/{k}")] == [2]
    for k in range(5):
        assert [event.step for event in events.Images(f"train/train_show/{k}")] == [0, 1]
    assert validation.samples == [1, 3, 3, 3, 3]  # validate and test: one call each
    expected = validation.drawer(torch.rand(1, 3, 8, 8), torch.tensor([0]), torch.tensor([1])).shape
    for tag in tags:
        for event in events.Images(tag):
            assert (event.height, event.width) == (expected[2], expected[3])


def test_a_misnamed_input_stops_the_run_in_the_sanity_check(tmp_path: Path) -> None:
    module = module_with(Counting(), Counting())
    module.brick_collection["show"].input_names = {"images": "raw", "predictions": "logit", "targets": "targets"}
    trainer = quiet_trainer(tmp_path, logger=TensorBoardLogger(tmp_path), max_epochs=1, num_sanity_val_steps=1)
    with pytest.raises(MissingInputError, match=r"brick 'show' reads \['logit'\] in stage 'validation'.*'logits'"):
        trainer.fit(module, datamodule=data())
    assert trainer.global_step == 0  # before any training


def test_csv_logger_runs_and_nothing_is_drawn(tmp_path: Path) -> None:
    validation, train = Counting(), Counting()
    logger = CSVLogger(tmp_path, name="csv")
    trainer = quiet_trainer(tmp_path, logger=logger, max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0)
    trainer.fit(module_with(validation, train), datamodule=data())
    assert validation.samples == []
    assert train.samples == []
    assert "validation/loss" in (Path(logger.log_dir) / "metrics.csv").read_text()


class ImageRecorder(Logger):
    """A logger with Lightning's ``log_image(key, images, step)``, as WandbLogger has, recording what it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, list[torch.Tensor], int | None]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_image(self, key: str, images: list[torch.Tensor], step: int | None = None) -> None:
        self.images.append((key, images, step))


def test_a_logger_with_log_image_gets_the_pictures(tmp_path: Path) -> None:
    recorder = ImageRecorder()
    trainer = quiet_trainer(tmp_path, logger=[CSVLogger(tmp_path), recorder])
    trainer.validate(module_with(Counting(), Counting()), datamodule=data())
    ((key, images, step),) = recorder.images
    assert key == "validation/show"
    assert step == 0
    assert len(images) == 3
    assert all(image.dtype == torch.uint8 and image.shape[0] == 3 for image in images)


RECIPE = """
model:
  brick_collection:
    head:
      class_path: torchbricks_lightning.BrickTrainable
      init_args:
        model: {class_path: torch.nn.Flatten}
        input_names: [raw]
        output_names: [logits]
    show:
      class_path: torchbricks_lightning.BrickVisualization
      init_args:
        visualizer:
          class_path: torchbricks_lightning.bag_of_bricks.ClassificationVisualizer
          init_args: {class_names: [a, b], min_size: 16}
        input_names: {images: raw, predictions: logits, targets: targets}
        images_per_epoch: 2
data:
  class_path: torchbricks_lightning.datamodules.SyntheticImageDataModule
trainer: {accelerator: cpu, logger: false, enable_progress_bar: false}
"""


def test_a_recipe_declares_a_visualisation(tmp_path: Path) -> None:
    from torchbricks_lightning.cli.app import TorchBricksCLI

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    module = TorchBricksCLI(args=["--config", str(path)], run=False).model
    brick = module.brick_collection["show"]
    assert isinstance(brick, BrickVisualization)
    assert brick.images_per_epoch == 2
    assert isinstance(brick.visualizer, ClassificationVisualizer)
    assert brick.visualizer.class_names == ["a", "b"]
    named = {"raw": torch.rand(3, 1, 2, 2), "targets": torch.tensor([0, 1, 1])}
    pictures = module.brick_collection.visualize(module.brick_collection(named, "validation"), "validation", 2)
    assert pictures["show"].shape[0] == 2
