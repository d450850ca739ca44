"""The keys the module logs are known before training: a monitored key with a typo, a checkpoint file name that would
make folders, and names that would be logged twice all fail before the first step, with the key and the fix."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from torchbricks_lightning import BrickLoss, BrickMetrics, BrickMetricSingle, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection, check_one_batch
from torchbricks_lightning.lightning.logging.keys import logged_keys

NUM_CLASSES = 3


class ArgMax(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)


def _bricks() -> dict[str, Any]:
    """A classifier with a loss 'ce', a number 'accuracy', a per-class vector and a confusion matrix."""
    return {
        "head": BrickTrainable(nn.Linear(4, NUM_CLASSES), input_names=["raw"], output_names=["logits"]),
        "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        "accuracy": BrickMetricSingle(MulticlassAccuracy(NUM_CLASSES), input_names=["class_prediction", "targets"]),
        "classwise": BrickMetrics(
            {
                "recall": MulticlassAccuracy(NUM_CLASSES, average=None),
                "confusion": MulticlassConfusionMatrix(NUM_CLASSES),
            },
            input_names=["class_prediction", "targets"],
        ),
    }


class Data(pl.LightningDataModule):
    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(24, 4, generator=generator), torch.arange(24) % NUM_CLASSES)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.data, batch_size=8)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.data, batch_size=8)


def _trainer(tmp_path: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def _fit_fails(tmp_path: Path, callbacks: list[pl.Callback], **module_kwargs: Any) -> str:
    """Fit, expecting a ConfigError before the first training step; return its message."""
    module = LightningBrickCollection(_bricks(), **module_kwargs)
    trainer = _trainer(tmp_path, callbacks)
    with pytest.raises(ConfigError) as raised:
        trainer.fit(module, datamodule=Data())
    assert trainer.global_step == 0
    assert not list(tmp_path.rglob("*.ckpt"))
    return str(raised.value)


# ------------------------------------------------------------------------------------------------ what is logged
def test_the_keys_logged_during_fit_are_known_before_training() -> None:
    keys = logged_keys(LightningBrickCollection(_bricks()).brick_collection)
    assert set(keys.keys) == {
        *("train/ce", "train/ce_step", "train/ce_epoch", "train/loss", "train/loss_step", "train/loss_epoch"),
        *("validation/ce", "validation/loss"),
    }
    # Without computed values a metric may be a number or a vector (one key per class).
    for key in ("validation/accuracy", "train/classwise/recall/class_2", "validation/classwise/confusion"):
        assert key in keys
    assert "validation/acuracy" not in keys
    assert "test/accuracy" not in keys


def test_the_keys_the_trainer_would_find_are_the_keys_logged(tmp_path: Path) -> None:
    """What logged_keys says (with the metric values of a batch) is what Lightning has after an epoch."""
    module = LightningBrickCollection(_bricks())
    trainer = _trainer(tmp_path, [])
    trainer.fit(module, datamodule=Data())
    collection = module.brick_collection
    values: dict[Any, Any] = {}
    for stage in ("train", "validation"):
        collection({"raw": torch.randn(6, 4), "targets": torch.arange(6) % NUM_CLASSES}, stage)
        values[stage] = collection.summarize(stage, reset=True)
    keys = logged_keys(collection, metric_values={Stage(stage): value for stage, value in values.items()})
    assert set(keys.keys) == set(trainer.callback_metrics)
    assert not keys.vectors_or_numbers


# ------------------------------------------------------------------------------------------------ monitored keys
@pytest.mark.parametrize(
    ("callback", "watcher"),
    [
        (lambda: ModelCheckpoint(monitor="validation/acuracy"), "ModelCheckpoint(monitor='validation/acuracy')"),
        (lambda: EarlyStopping(monitor="validation/acuracy"), "EarlyStopping(monitor='validation/acuracy')"),
    ],
)
def test_a_typo_in_a_monitored_key_fails_before_training(tmp_path: Path, callback: Any, watcher: str) -> None:
    message = _fit_fails(tmp_path, [callback()])
    assert message.startswith(f"{watcher} watches a key that fit does not log: ")
    assert "Did you mean 'validation/accuracy'?" in message
    assert "'validation/loss'" in message  # the keys that are logged are listed


def test_a_typo_in_the_scheduler_monitor_fails_before_training(tmp_path: Path) -> None:
    message = _fit_fails(
        tmp_path,
        [],
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=1),
        lr_scheduler_monitor="validation/los",
    )
    assert message.startswith("lr_scheduler_monitor='validation/los' watches a key that fit does not log")
    assert "Did you mean 'validation/loss'?" in message


def test_a_test_key_is_not_logged_during_fit(tmp_path: Path) -> None:
    message = _fit_fails(tmp_path, [ModelCheckpoint(monitor="test/accuracy")])
    assert "'test/accuracy' is logged in the test stage only, never during fit" in message


def test_correct_and_foreign_keys_train(tmp_path: Path) -> None:
    """Keys the module logs train; so do keys it cannot know about (another callback may log them), and keys that
    EarlyStopping(strict=False) may miss."""
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(monitor="validation/accuracy", mode="max", filename="{epoch}-{step}"),
        ModelCheckpoint(monitor="train/classwise/recall/class_2", mode="max"),
        EarlyStopping(monitor="my_own_score", strict=False),
        ModelCheckpoint(monitor="val_loss", save_top_k=0),  # close to 'validation/loss', but perhaps another callback's
    ]
    module = LightningBrickCollection(_bricks())
    trainer = _trainer(tmp_path, callbacks)
    trainer.fit(module, datamodule=Data())
    assert trainer.global_step == 3


def test_the_pre_check_knows_vectors_and_matrices_from_their_values(tmp_path: Path) -> None:
    """check_one_batch computes the metrics, so it knows how many classes a vector has and that a matrix is a
    picture; the module alone (at setup) cannot, and lets such keys through."""
    module = LightningBrickCollection(_bricks())
    good = _trainer(tmp_path, [ModelCheckpoint(monitor="validation/classwise/recall/class_2")])
    assert check_one_batch(module, Data(), trainer=good)

    for monitor, reason in [
        ("validation/classwise/recall/class_3", "never logs 'validation/classwise/recall/class_3'"),
        ("validation/classwise/confusion", "'validation/classwise/confusion' is a (3, 3) matrix, drawn as a picture"),
    ]:
        trainer = _trainer(tmp_path, [ModelCheckpoint(monitor=monitor)])
        with pytest.raises(ConfigError, match=r"ModelCheckpoint\(monitor=") as raised:
            check_one_batch(module, Data(), trainer=trainer)
        assert reason in str(raised.value)


# ------------------------------------------------------------------------------------------------ checkpoint names
def test_a_checkpoint_filename_naming_a_key_with_a_slash_asks_for_keyed_model_checkpoint(tmp_path: Path) -> None:
    message = _fit_fails(tmp_path, [ModelCheckpoint(filename="{epoch}-{validation/accuracy:.4f}")])
    assert message.startswith(
        "ModelCheckpoint(filename='{epoch}-{validation/accuracy:.4f}') names 'validation/accuracy'"
    )
    assert "Use torchbricks_lightning.callbacks.KeyedModelCheckpoint" in message
    assert not [path for path in tmp_path.rglob("*") if path.is_dir() and path.name.startswith("epoch=")]


def test_a_typo_in_a_checkpoint_filename_fails_instead_of_writing_zero(tmp_path: Path) -> None:
    from torchbricks_lightning.callbacks import KeyedModelCheckpoint

    message = _fit_fails(tmp_path, [KeyedModelCheckpoint(filename="{epoch}-{validation/acuracy:.4f}")])
    assert "Did you mean 'validation/accuracy'?" in message


# ------------------------------------------------------------------------------------------------ names logged twice
def test_a_loss_named_loss_names_its_brick_and_the_fix() -> None:
    bricks = _bricks()
    bricks["loss"] = BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss"])
    with pytest.raises(ConfigError) as raised:
        LightningBrickCollection(bricks)
    message = str(raised.value)
    assert "A loss is named 'loss' (an output of brick 'loss')" in message
    assert "'validation/loss'" in message
    assert "Give the loss brick another output name" in message


def test_a_metric_named_like_a_loss_is_refused() -> None:
    bricks = _bricks()
    bricks["ce"] = BrickMetricSingle(MulticlassAccuracy(NUM_CLASSES), input_names=["class_prediction", "targets"])
    with pytest.raises(ConfigError, match=r"Metric brick 'ce' reports 'ce', which is also the name of a loss"):
        LightningBrickCollection(bricks)


def test_keys_of_the_balancer_and_the_multitask_score_count_as_logged() -> None:
    from torchbricks_lightning.lightning.logging.keys import check_monitored_keys
    from torchbricks_lightning.multitask import DeltaM, UncertaintyWeighting

    bricks = {
        "head": BrickTrainable(nn.Linear(4, 3), input_names=["raw"], output_names=["logits"]),
        "a": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        "b": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce2"]),
        "accuracy": BrickMetricSingle(MulticlassAccuracy(3), input_names=["logits", "targets"]),
    }
    plain = LightningBrickCollection(dict(bricks))
    watched = [("ModelCheckpoint(monitor='validation/delta_m')", "validation/delta_m")]
    with pytest.raises(ConfigError, match="never logs 'validation/delta_m'"):
        check_monitored_keys(plain.brick_collection, watched, also_logged=plain.also_logged_keys())
    multitask = LightningBrickCollection(
        dict(bricks),
        loss_balancer=UncertaintyWeighting(),
        delta_m=DeltaM({"accuracy": 0.5}, higher_is_better={"accuracy": True}),
    )
    assert multitask.also_logged_keys() == ["train/balance/ce", "train/balance/ce2", "validation/delta_m"]
    watched += [("EarlyStopping(monitor='train/balance/ce')", "train/balance/ce")]
    check_monitored_keys(multitask.brick_collection, watched, also_logged=multitask.also_logged_keys())


def test_a_mistyped_monitor_lists_the_balancer_keys_that_are_logged_not_a_prefix() -> None:
    """The list of logged keys held 'train/balance/', which is not a key (issue 22)."""
    from torchbricks_lightning.lightning.logging.keys import check_monitored_keys
    from torchbricks_lightning.multitask import PCGrad, UncertaintyWeighting

    def bricks() -> dict[str, Any]:
        return {
            "backbone": BrickTrainable(nn.Linear(4, 4), input_names=["raw"], output_names=["features"]),
            "a": BrickTrainable(nn.Linear(4, 3), input_names=["features"], output_names=["logits_a"]),
            "b": BrickTrainable(nn.Linear(4, 3), input_names=["features"], output_names=["logits_b"]),
            "loss_a": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits_a", "targets"], output_names=["ce_a"]),
            "loss_b": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits_b", "targets"], output_names=["ce_b"]),
        }

    typo = [("ModelCheckpoint(monitor='train/balance/ce')", "train/balance/ce")]
    for balancer, balance_keys in [
        (UncertaintyWeighting(), ["train/balance/ce_a", "train/balance/ce_b"]),
        (PCGrad("features"), ["train/balance/ce_a", "train/balance/ce_b", "train/balance/conflicts"]),
    ]:
        module = LightningBrickCollection(bricks(), loss_balancer=balancer)
        assert module.also_logged_keys() == balance_keys
        with pytest.raises(ConfigError) as raised:
            check_monitored_keys(module.brick_collection, typo, also_logged=module.also_logged_keys())
        message = str(raised.value)
        assert "never logs 'train/balance/ce'" in message
        assert "Did you mean" in message
        assert all(f"'{key}'" in message for key in balance_keys), message
        assert "'train/balance/'" not in message
        check_monitored_keys(  # every listed key is accepted
            module.brick_collection,
            [(f"EarlyStopping(monitor={key!r})", key) for key in balance_keys],
            also_logged=module.also_logged_keys(),
        )
