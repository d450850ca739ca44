"""What LightningBrickCollection logs, read back from disk: CSV files and TensorBoard event files."""

from __future__ import annotations

import csv
import functools
import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from torchbricks_lightning import BrickLoss, BrickMetrics, BrickMetricSingle, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.datamodules.synthetic import SyntheticImageDataModule
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.logging.metrics import (
    MetricsToLog,
    render_confusion_matrix,
    render_matrix,
    split_metrics,
)
from torchbricks_lightning.pictures import draw_confusion_matrix

pytestmark = [
    pytest.mark.filterwarnings("ignore::pytorch_lightning.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]

N_FEATURES = 4
NUM_CLASSES = 3
BATCH_SIZE = 16
CELL = 48  # render_matrix's default cell size in pixels


# --------------------------------------------------------------------------------------------------- helpers
def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (deterministic for a seed) and classes given by one fixed linear rule, every class present."""
    features = torch.randn(n, N_FEATURES, generator=torch.Generator().manual_seed(seed))
    weights = torch.randn(N_FEATURES, NUM_CLASSES, generator=torch.Generator().manual_seed(1234))
    targets = (features @ weights).argmax(dim=1)
    assert set(targets.tolist()) == set(range(NUM_CLASSES))
    return features, targets


def make_loader(features: torch.Tensor, targets: torch.Tensor, shuffle: bool = False) -> DataLoader[Any]:
    return DataLoader(TensorDataset(features, targets), batch_size=BATCH_SIZE, shuffle=shuffle)


def make_trainer(tmp_path: Path, logger: Any, max_epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
        **kwargs,
    )


class ArgMax(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)


def classifier_bricks(confusion: bool = False) -> dict[str, Any]:
    """A linear classifier with a loss 'ce', a scalar metric 'accuracy' and per-class metrics under 'classwise'."""
    classwise: dict[str, Any] = {"per_class": MulticlassAccuracy(num_classes=NUM_CLASSES, average=None)}
    if confusion:
        classwise["confusion"] = MulticlassConfusionMatrix(num_classes=NUM_CLASSES)
    return {
        "head": BrickTrainable(nn.Linear(N_FEATURES, NUM_CLASSES), input_names=["raw"], output_names=["logits"]),
        "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        "accuracy": BrickMetricSingle(
            MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"), input_names=["class_prediction", "targets"]
        ),
        "classwise": BrickMetrics(classwise, input_names=["class_prediction", "targets"]),
    }


def read_csv(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def hand_metrics(module: LightningBrickCollection, features: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Loss, accuracy, per-class recall and confusion matrix computed by hand from the model's predictions."""
    with torch.no_grad():
        logits = module.brick_collection({"raw": features}, Stage.INFERENCE)["logits"]
    predictions = logits.argmax(dim=1)
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for target, prediction in zip(targets.tolist(), predictions.tolist(), strict=True):
        confusion[target, prediction] += 1
    return {
        "loss": float(nn.functional.cross_entropy(logits, targets)),
        "accuracy": float((predictions == targets).float().mean()),
        "per_class": [float(confusion[c, c]) / float(confusion[c].sum()) for c in range(NUM_CLASSES)],
        "confusion": confusion,
    }


def fit_and_test(tmp_path: Path, logger: Any, confusion: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    train, validation, test = make_data(64, seed=0), make_data(48, seed=1), make_data(48, seed=2)
    module = LightningBrickCollection(
        classifier_bricks(confusion), optimizer=functools.partial(torch.optim.SGD, lr=0.3)
    )
    trainer = make_trainer(tmp_path, logger)
    trainer.fit(module, make_loader(*train, shuffle=True), make_loader(*validation))
    trainer.test(module, make_loader(*test))
    return {
        "module": module,
        "trainer": trainer,
        "validation": hand_metrics(module, *validation),
        "test": hand_metrics(module, *test),
    }


def matrix_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning) and "TensorBoard" in str(w.message)]


# --------------------------------------------------------------------------------------------------- CSV
def test_csv_has_loss_and_metric_columns_for_every_stage(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    fit_and_test(tmp_path, logger)
    rows = read_csv(logger)
    columns = set(rows[0])
    expected = {
        "train/loss_step",
        "train/loss_epoch",
        "train/ce_step",
        "train/ce_epoch",
        "validation/loss",
        "validation/ce",
        "test/loss",
        "test/ce",
        "train/accuracy",
        "validation/accuracy",
        "test/accuracy",
    }
    for stage in ("train", "validation", "test"):
        expected |= {f"{stage}/classwise/per_class/class_{c}" for c in range(NUM_CLASSES)}
    assert expected <= columns, sorted(expected - columns)
    assert not any(name.endswith("/classwise/per_class") for name in columns)  # vectors are never logged whole
    assert len(column(rows, "train/loss_step")) == 8  # 4 steps x 2 epochs
    assert len(column(rows, "train/loss_epoch")) == 2
    assert len(column(rows, "train/accuracy")) == 2
    assert len(column(rows, "validation/accuracy")) == 2  # sanity-check values are not logged
    assert len(column(rows, "test/accuracy")) == 1


def test_csv_metric_values_match_a_hand_computation(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    result = fit_and_test(tmp_path, logger)
    rows = read_csv(logger)
    for stage in ("validation", "test"):
        hand = result[stage]
        # The last validation ran after the last training step, so it saw the final weights, as test did.
        assert column(rows, f"{stage}/accuracy")[-1] == pytest.approx(hand["accuracy"], abs=1e-6), stage
        assert column(rows, f"{stage}/loss")[-1] == pytest.approx(hand["loss"], rel=1e-5), stage
        assert column(rows, f"{stage}/ce")[-1] == pytest.approx(hand["loss"], rel=1e-5), stage
        for c in range(NUM_CLASSES):
            logged = column(rows, f"{stage}/classwise/per_class/class_{c}")[-1]
            assert logged == pytest.approx(hand["per_class"][c], abs=1e-6), (stage, c)
    # Not trivially perfect or constant, so the comparison means something.
    assert 0.0 < result["test"]["accuracy"] < 1.0 or len(set(result["test"]["per_class"])) > 1


def test_epoch_losses_are_means_over_samples_of_the_logged_step_losses(tmp_path: Path) -> None:
    """Batches of 16, 16, 16, 16 and 6 samples: each epoch value is the batch-size-weighted mean of that epoch's
    step values, as read back from the CSV file; monitors and the progress bar see the same names as before."""
    torch.manual_seed(0)
    features, targets = make_data(70, seed=0)
    module = LightningBrickCollection(classifier_bricks(), optimizer=functools.partial(torch.optim.SGD, lr=0.3))
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(tmp_path, logger, max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(module, make_loader(features, targets), make_loader(*make_data(40, seed=1)))
    rows = read_csv(logger)
    sizes = [16, 16, 16, 16, 6]
    for name in ("ce", "loss"):
        steps = [(int(row["epoch"]), float(row[f"train/{name}_step"])) for row in rows if row.get(f"train/{name}_step")]
        epochs = column(rows, f"train/{name}_epoch")
        assert len(steps) == 15
        assert len(epochs) == 3
        for epoch, logged in enumerate(epochs):
            values = [value for step_epoch, value in steps if step_epoch == epoch]
            by_hand = sum(value * size for value, size in zip(values, sizes, strict=True)) / sum(sizes)
            assert logged == pytest.approx(by_hand, rel=1e-6), (name, epoch)
            assert logged != pytest.approx(sum(values) / len(values), rel=1e-6), "an unweighted mean would do"
    assert column(rows, "train/loss_epoch") == column(rows, "train/ce_epoch")  # one loss of weight 1
    assert {"train/loss", "train/loss_epoch", "train/loss_step", "validation/loss"} <= set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(column(rows, "train/loss_epoch")[-1])
    assert set(trainer.progress_bar_metrics) == {"train/loss_step", "train/loss_epoch", "validation/loss"}


def test_a_loss_named_like_the_total_is_refused() -> None:
    bricks = classifier_bricks()
    bricks["loss"] = BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss"])
    with pytest.raises(ConfigError, match=r"A loss is named 'loss'.*another output name"):
        LightningBrickCollection(bricks)


class OnesLike(nn.Module):
    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(raw))


class MeanSquare(nn.Module):
    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value.pow(2).mean()


def frozen_sign_classifier() -> nn.Linear:
    """Predicts class 0 when the first feature is positive, class 1 otherwise."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        linear.bias.zero_()
    return linear


def sign_data(n: int, n_correct: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets that the frozen sign classifier gets right for exactly the first ``n_correct`` samples."""
    features = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    correct = (features[:, 0] <= 0).long()
    targets = correct.clone()
    targets[n_correct:] = 1 - targets[n_correct:]
    return features, targets


def test_validation_inside_a_training_epoch_does_not_touch_train_metrics(tmp_path: Path) -> None:
    bricks = {
        "head": BrickNotTrainable(frozen_sign_classifier(), input_names=["raw"], output_names=["logits"]),
        "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
        "ones": BrickNotTrainable(OnesLike(), input_names=["raw"], output_names=["ones"]),
        # Something to optimise that cannot change the frozen predictions.
        "aux": BrickTrainable(nn.Linear(2, 1), input_names=["raw"], output_names=["aux"]),
        "aux_loss": BrickLoss(MeanSquare(), input_names=["aux"], output_names=["aux_loss"]),
        "accuracy": BrickMetricSingle(
            MulticlassAccuracy(num_classes=2, average="micro"), input_names=["class_prediction", "targets"]
        ),
        "count": BrickMetricSingle(SumMetric(), input_names=["ones"]),
    }
    module = LightningBrickCollection(bricks, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    train, validation = sign_data(64, n_correct=48, seed=0), sign_data(32, n_correct=8, seed=1)
    hand_train = hand_metrics_for_sign(module, *train)
    hand_validation = hand_metrics_for_sign(module, *validation)
    assert (hand_train, hand_validation) == (0.75, 0.25)

    logger = CSVLogger(tmp_path, name="csv")
    # Validation twice per training epoch (after batches 2 and 4), and the default 2-batch sanity check first.
    trainer = make_trainer(tmp_path, logger, val_check_interval=0.5)
    trainer.fit(module, make_loader(*train, shuffle=True), make_loader(*validation))
    rows = read_csv(logger)

    assert column(rows, "train/accuracy") == pytest.approx([hand_train] * 2)
    assert column(rows, "validation/accuracy") == pytest.approx([hand_validation] * 4)
    # Each summary counts exactly one pass over its data: reset per epoch, sanity check not carried over.
    assert column(rows, "train/count") == [64.0, 64.0]
    assert column(rows, "validation/count") == [32.0] * 4


def hand_metrics_for_sign(module: LightningBrickCollection, features: torch.Tensor, targets: torch.Tensor) -> float:
    predictions = module.brick_collection({"raw": features}, Stage.INFERENCE)["class_prediction"]
    return float((predictions == targets).float().mean())


# --------------------------------------------------------------------------------------------------- TensorBoard
def read_events(log_dir: str) -> EventAccumulator:
    accumulator = EventAccumulator(log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def decode_png(encoded: bytes) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def test_tensorboard_scalars_and_confusion_images(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit_and_test(tmp_path, logger, confusion=True)
    assert matrix_warnings(caught) == []  # TensorBoard shows pictures: nothing to warn about

    events = read_events(logger.log_dir)
    scalars = set(events.Tags()["scalars"])
    expected = {
        "train/loss_step",
        "train/loss_epoch",
        "train/ce_step",
        "train/ce_epoch",
        "validation/loss",
        "validation/ce",
        "test/loss",
        "test/ce",
        "train/accuracy",
        "validation/accuracy",
        "test/accuracy",
        *(f"{stage}/classwise/per_class/class_{c}" for stage in ("train", "validation", "test") for c in range(3)),
    }
    assert expected <= scalars, sorted(expected - scalars)
    assert not any("confusion" in tag for tag in scalars)
    test_accuracy = [event.value for event in events.Scalars("test/accuracy")]
    assert test_accuracy == pytest.approx([result["test"]["accuracy"]], abs=1e-6)

    images = set(events.Tags()["images"])
    assert {"train/classwise/confusion", "validation/classwise/confusion", "test/classwise/confusion"} <= images
    assert len(events.Images("validation/classwise/confusion")) == 2  # one per epoch, none from the sanity check
    assert len(events.Images("train/classwise/confusion")) == 2
    (test_image,) = events.Images("test/classwise/confusion")
    # The picture is the test confusion matrix, counted by hand, titled with its key and the epoch of the weights
    # (epochs 0 and 1 ran: epoch 1).
    expected_picture = render_confusion_matrix(result["test"]["confusion"], title="test/classwise/confusion, epoch 1")
    assert (test_image.height, test_image.width) == tuple(expected_picture.shape[1:])
    torch.testing.assert_close(decode_png(test_image.encoded_image_string), expected_picture, rtol=0, atol=1.5 / 255)
    (last_validation, *_) = events.Images("validation/classwise/confusion")[::-1]
    picture = decode_png(last_validation.encoded_image_string)
    expected_picture = render_confusion_matrix(
        result["validation"]["confusion"], title="validation/classwise/confusion, epoch 1"
    )
    torch.testing.assert_close(picture, expected_picture, rtol=0, atol=1.5 / 255)


def test_matrix_metric_without_tensorboard_warns_once_per_key(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_and_test(tmp_path, logger, confusion=True)
    messages = matrix_warnings(caught)
    keys = ["train/classwise/confusion", "validation/classwise/confusion", "test/classwise/confusion"]
    counts = Counter(key for message in messages for key in keys if f"'{key}'" in message)
    assert counts == dict.fromkeys(keys, 1), messages  # 2 epochs, but one warning per key
    assert len(messages) == len(keys)
    for message in messages:
        assert "CSVLogger" in message
        assert "(3, 3)" in message
    columns = set(read_csv(logger)[0])
    assert not any("confusion" in name for name in columns)
    assert "test/classwise/per_class/class_0" in columns  # the other metrics of the same brick still are logged


def test_matrix_metric_with_tensorboard_and_csv_does_not_warn(tmp_path: Path) -> None:
    """TensorBoard shows the matrix; that the CSV log leaves it out is expected, not worth a warning on every run
    (the demo logs to both)."""
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_and_test(tmp_path, loggers, confusion=True)
    assert not [str(w.message) for w in caught if "matrix" in str(w.message)]
    assert "test/classwise/confusion" in set(read_events(loggers[0].log_dir).Tags()["images"])
    assert not any("confusion" in name for name in read_csv(loggers[1])[0])


def test_image_datamodule_with_conv_backbone_logs_to_tensorboard(tmp_path: Path) -> None:
    bricks = {
        "backbone": BrickTrainable(
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(start_dim=1)),
            input_names=["raw"],
            output_names=["features"],
        ),
        "head": BrickTrainable(nn.Linear(4, 4), input_names=["features"], output_names=["logits"]),
        "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        "metrics": BrickMetrics(
            {"confusion": MulticlassConfusionMatrix(num_classes=4), "accuracy": MulticlassAccuracy(num_classes=4)},
            input_names=["class_prediction", "targets"],
        ),
    }
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(tmp_path, logger, max_epochs=1)
    datamodule = SyntheticImageDataModule(num_classes=4, image_size=8, n_train=64, n_val=32, n_test=32)
    module = LightningBrickCollection(bricks)
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule)
    events = read_events(logger.log_dir)
    assert {"validation/metrics/accuracy", "test/metrics/accuracy", "test/loss"} <= set(events.Tags()["scalars"])
    (image,) = events.Images("test/metrics/confusion")
    figure = draw_confusion_matrix(torch.ones(4, 4), "test/metrics/confusion, epoch 0")
    assert (image.width, image.height) == (round(figure.bbox.width), round(figure.bbox.height))


# --------------------------------------------------------------------------------------------------- split_metrics
def test_split_metrics_names_scalars_classes_and_matrices() -> None:
    split = split_metrics(
        "validation",
        {
            "head/accuracy": torch.tensor(0.5),
            "head/recall": torch.tensor([0.1, 0.2, 0.3]),
            "head/confusion": torch.eye(3),
            "plain": 2.0,
        },
    )
    assert isinstance(split, MetricsToLog)
    assert list(split.scalars) == [
        "validation/head/accuracy",
        "validation/head/recall/class_0",
        "validation/head/recall/class_1",
        "validation/head/recall/class_2",
        "validation/plain",
    ]
    assert list(split.matrices) == ["validation/head/confusion"]
    assert all(value.ndim == 0 for value in split.scalars.values())
    assert float(split.scalars["validation/head/recall/class_2"]) == pytest.approx(0.3)
    assert float(split.scalars["validation/plain"]) == 2.0
    torch.testing.assert_close(split.matrices["validation/head/confusion"], torch.eye(3))


def test_split_metrics_class_numbers_are_not_padded() -> None:
    split = split_metrics("test", {"f1": torch.arange(12, dtype=torch.float)})
    assert [name.rsplit("/", 1)[1] for name in split.scalars] == [f"class_{c}" for c in range(12)]
    assert float(split.scalars["test/f1/class_11"]) == 11.0
    assert split.matrices == {}


def test_split_metrics_of_nothing_is_empty() -> None:
    split = split_metrics("train", {})
    assert (split.scalars, split.matrices) == ({}, {})


# --------------------------------------------------------------------------------------------------- render_matrix
def cell_color(image: torch.Tensor, row: int, col: int, cell: int = CELL) -> torch.Tensor:
    """The colour of a cell's top-left corner, away from its text label."""
    return image[:, row * cell + 1, col * cell + 1]


def brightness(image: torch.Tensor, row: int, col: int, cell: int = CELL) -> float:
    return float(cell_color(image, row, col, cell).mean())


def test_render_matrix_shape_and_range() -> None:
    confusion = torch.tensor([[5, 0, 1], [0, 3, 0], [2, 0, 7]])
    image = render_matrix(confusion)
    assert image.shape == (3, 3 * CELL, 3 * CELL)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0
    assert float(image.max()) <= 1.0
    assert render_matrix(torch.ones(2, 5), cell=10).shape == (3, 20, 50)


def test_render_matrix_darkest_cells_are_the_largest_counts() -> None:
    # Equal row sums, so shading by row and by count agree.
    confusion = torch.tensor([[7, 1, 2], [0, 9, 1], [3, 2, 5]])
    image = render_matrix(confusion)
    cells = [(r, c) for r in range(3) for c in range(3)]
    by_count = sorted(cells, key=lambda rc: (int(confusion[rc]), rc))
    by_darkness = sorted(cells, key=lambda rc: (-brightness(image, *rc), rc))
    assert by_darkness == by_count
    assert brightness(image, 1, 1) < brightness(image, 0, 0) < brightness(image, 2, 2) < brightness(image, 1, 0)
    assert brightness(image, 1, 0) == pytest.approx(1.0)  # a zero count is white


def test_render_matrix_shades_each_row_by_its_largest_count() -> None:
    confusion = torch.tensor([[50, 0, 10], [0, 3, 0], [20, 0, 70]])
    image = render_matrix(confusion)
    for r in range(3):
        darkest = min(range(3), key=lambda c: brightness(image, r, c))
        assert darkest == int(confusion[r].argmax()), r
    # Shaded by row share (recall per class): 3 of 3 is darker than 70 of 90, and 50 of 60 sits in between.
    assert brightness(image, 1, 1) < brightness(image, 0, 0) < brightness(image, 2, 2)


def test_render_matrix_zero_row_and_negative_values() -> None:
    image = render_matrix(torch.tensor([[0, 0], [1, 3]]))
    assert bool(torch.isfinite(image).all())
    assert brightness(image, 0, 0) == pytest.approx(1.0)
    assert brightness(image, 1, 1) < brightness(image, 1, 0)
    signed = render_matrix(torch.tensor([[-1.0, 0.5], [0.25, 1.0]]))
    assert brightness(signed, 0, 0) == pytest.approx(1.0)  # the minimum is white
    assert brightness(signed, 1, 1) == min(brightness(signed, r, c) for r in range(2) for c in range(2))


def test_render_matrix_labels_cells_with_their_values() -> None:
    plain = render_matrix(torch.tensor([[1, 0], [0, 1]]))
    other = render_matrix(torch.tensor([[7, 0], [0, 7]]))
    # Same shading (row-normalised), different numbers written in the cells.
    torch.testing.assert_close(cell_color(plain, 0, 0), cell_color(other, 0, 0))
    assert not torch.equal(plain, other)
