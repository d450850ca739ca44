"""Multi-task training through the real stack: a Trainer, a CSVLogger whose file is read back, the digits.

The model is small and free of batch norm and dropout (a linear backbone), so a reference computed here on all the
images at once sees exactly what the training steps saw.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import multiclass_accuracy

from torchbricks_lightning import BrickCollection, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import create_image_classification_head, create_segmentation_head
from torchbricks_lightning.datamodules import DigitsDataModule, MultiTaskDataModule
from torchbricks_lightning.errors import ConfigError, LoaderStateError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import DeltaM, DynamicWeightAverage, PCGrad, UncertaintyWeighting


def bricks(seed: int = 0, foreground: bool = False) -> BrickCollection:
    torch.manual_seed(seed)
    heads: dict[str, Any] = {
        "digit": create_image_classification_head(10, 16, "features", "targets"),
        "parity": create_image_classification_head(2, 16, "features", "parity"),
    }
    if foreground:
        heads["foreground"] = create_segmentation_head(2, 16, "maps", "foreground", upsample=1)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    extra = {"maps": BrickTrainable(nn.Conv2d(1, 16, 3, padding=1), input_names=["raw"], output_names=["maps"])}
    return BrickCollection(
        {
            "backbone": BrickTrainable(backbone, input_names=["raw"], output_names=["features"]),
            **(extra if foreground else {}),
            **heads,
        }
    )


def fit(
    module: LightningBrickCollection, datamodule: pl.LightningDataModule, folder: Path, epochs: int = 1, **kwargs: Any
) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=CSVLogger(folder, name="logs", version=0),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **{"enable_checkpointing": "callbacks" in kwargs, **kwargs},
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


def read_rows(folder: Path) -> list[dict[str, float]]:
    with (folder / "logs" / "version_0" / "metrics.csv").open(newline="") as file:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)]


def epoch_values(rows: list[dict[str, float]], name: str) -> list[float]:
    return [row[name] for row in rows if name in row]


# ------------------------------------------------------------------------------------------------ partial labels
def test_with_30_percent_of_the_digit_labels_removed_logged_values_are_those_of_the_labelled_images(
    tmp_path: Path,
) -> None:
    datamodule = DigitsDataModule(batch_size=50, labelled_fraction=0.7, seed=2)
    # lr=0: the weights stay as built, so the reference on all the training images at once is what each step saw.
    collection = bricks()
    with torch.no_grad():  # larger weights: losses that differ from batch to batch, so a wrong weighting shows
        for parameter in collection.parameters():
            parameter.mul_(4.0)
    module = LightningBrickCollection(collection, optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    fit(module, datamodule, tmp_path, limit_val_batches=0)
    rows = read_rows(tmp_path)

    train = datamodule.splits["train"]
    targets = train["targets"]
    labelled = targets != -100
    assert 0.29 < 1 - float(labelled.float().mean()) < 0.31, "30% of the digit labels are missing"
    with torch.no_grad():
        outputs = module.brick_collection({"raw": train["raw"]}, Stage.INFERENCE)
    logits = outputs["digit/logits"]
    reference_loss = F.cross_entropy(logits[labelled], targets[labelled])
    reference_accuracy = multiclass_accuracy(logits[labelled], targets[labelled], 10)
    (logged_loss,) = epoch_values(rows, "train/digit/loss_ce_epoch")
    (logged_accuracy,) = epoch_values(rows, "train/digit/accuracy")
    assert logged_loss == pytest.approx(float(reference_loss), rel=1e-5)
    assert logged_accuracy == pytest.approx(float(reference_accuracy), abs=1e-6)
    # The fully labelled task is the plain mean over every image.
    (parity_loss,) = epoch_values(rows, "train/parity/loss_ce_epoch")
    assert parity_loss == pytest.approx(float(F.cross_entropy(outputs["parity/logits"], train["parity"])), rel=1e-5)

    # Each logged step value is the mean over that batch's labelled images; weighting the batches by their size
    # instead of their labelled count would give another epoch mean, which the test would catch.
    loader = datamodule.train_dataloader()
    loader.set_epoch(0)
    step_means, sizes = [], []
    for batch in loader:
        keep = batch["targets"] != -100
        with torch.no_grad():
            batch_logits = module.brick_collection({"raw": batch["raw"]}, Stage.INFERENCE)["digit/logits"]
        step_means.append(float(F.cross_entropy(batch_logits[keep], batch["targets"][keep])))
        sizes.append(len(keep))
    logged_steps = epoch_values(rows, "train/digit/loss_ce_step")
    assert logged_steps == pytest.approx(step_means, rel=1e-5)
    by_batch_size = sum(mean * size for mean, size in zip(step_means, sizes, strict=True)) / sum(sizes)
    assert abs(by_batch_size - float(reference_loss)) > 10 * 1e-5 * float(reference_loss)  # 10x the tolerance


class _Unlabelled(Dataset[dict[str, torch.Tensor]]):
    """Digits whose first 16 images (the first batch, unshuffled) carry no digit label."""

    def __init__(self) -> None:
        data = DigitsDataModule()
        data.setup()
        self.split = {name: tensor[:48] for name, tensor in data.splits["train"].items()}
        self.split["targets"] = self.split["targets"].clone()
        self.split["targets"][:16] = -100

    def __len__(self) -> int:
        return 48

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.split.items()}


def test_a_batch_without_labels_for_a_task_trains_on_with_a_zero_loss(tmp_path: Path) -> None:
    module = LightningBrickCollection(bricks(), loss_balancer=PCGrad("features"))  # check_finite_loss is on
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="logs", version=0),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = module.brick_collection["digit"]["classify"].model.fc.weight.detach().clone()
    trainer.fit(module, train_dataloaders=DataLoader(_Unlabelled(), batch_size=16))
    steps = epoch_values(read_rows(tmp_path), "train/digit/loss_ce_step")
    assert steps[0] == 0.0, "no label: exactly 0, not NaN"
    assert all(math.isfinite(value) and value > 0 for value in steps[1:])
    assert not torch.equal(before, module.brick_collection["digit"]["classify"].model.fc.weight)


# ------------------------------------------------------------------------------------------------ balancers
def test_dynamic_weight_average_logs_the_papers_weights_from_the_logged_epoch_means(tmp_path: Path) -> None:
    module = LightningBrickCollection(bricks(), loss_balancer=DynamicWeightAverage(temperature=2.0))
    fit(module, DigitsDataModule(batch_size=128, labelled_fraction=0.5), tmp_path, epochs=3, limit_val_batches=0)
    rows = read_rows(tmp_path)
    names = ("digit/loss_ce", "parity/loss_ce")
    means = {name: epoch_values(rows, f"train/{name}_epoch") for name in names}
    weights = {name: epoch_values(rows, f"train/balance/{name}") for name in names}
    assert all(len(values) == 3 for values in (*means.values(), *weights.values()))
    assert [weights[name][:2] for name in names] == [[1.0, 1.0], [1.0, 1.0]]
    exps = {name: math.exp(means[name][1] / means[name][0] / 2.0) for name in names}
    for name in names:
        assert weights[name][2] == pytest.approx(2 * exps[name] / sum(exps.values()), rel=1e-5)


def test_uncertainty_weights_are_learned_checkpointed_and_restored(tmp_path: Path) -> None:
    module = LightningBrickCollection(bricks(), loss_balancer=UncertaintyWeighting())
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    fit(module, DigitsDataModule(batch_size=256), tmp_path, callbacks=[checkpoints], limit_val_batches=1)
    learned = module.loss_balancer.log_variances.detach().clone()
    assert not torch.equal(learned, torch.zeros(2)), "the optimizer trains the log-variances"
    rows = read_rows(tmp_path)
    logged = epoch_values(rows, "train/balance/digit/loss_ce")
    assert logged[-1] == pytest.approx(math.exp(-float(learned[0])) / 2, rel=1e-5)

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    torch.testing.assert_close(checkpoint["state_dict"]["loss_balancer.log_variances"], learned)
    resumed = LightningBrickCollection(bricks(), loss_balancer=UncertaintyWeighting())
    restored: list[torch.Tensor] = []

    class Capture(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            restored.append(pl_module.loss_balancer.log_variances.detach().clone())

    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Capture()], limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(resumed, datamodule=DigitsDataModule(batch_size=256), ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(restored[0], learned)
    # A module rebuilt for inference or export, without the balancer, loads the checkpoint too.
    plain = LightningBrickCollection.load_from_checkpoint(
        tmp_path / "checkpoints" / "last.ckpt", brick_collection=bricks()
    )
    assert plain.loss_balancer is None


def test_pcgrad_logs_its_scaling_and_conflicts_and_delta_m_is_logged_from_the_metrics(tmp_path: Path) -> None:
    baselines = {"digit/accuracy": 0.5, "parity/accuracy": 0.6, "foreground/mean_iou": 0.7}
    module = LightningBrickCollection(
        bricks(foreground=True),
        loss_balancer=PCGrad("features", loss_names=["digit/loss_ce", "parity/loss_ce"]),  # foreground: static
        delta_m=DeltaM(baselines),
    )
    datamodule = DigitsDataModule(batch_size=128, with_foreground=True)
    fit(module, datamodule, tmp_path, epochs=2)
    rows = read_rows(tmp_path)
    for name in ("digit/loss_ce", "parity/loss_ce", "conflicts"):
        values = epoch_values(rows, f"train/balance/{name}")
        assert len(values) == 2 * len(datamodule.train_dataloader()), name  # every step
    assert all(value >= 1.0 for value in epoch_values(rows, "train/balance/digit/loss_ce")), "projection adds"
    for row in (row for row in rows if "validation/delta_m" in row):
        gains = [(row[f"validation/{key}"] - value) / value for key, value in baselines.items()]
        assert row["validation/delta_m"] == pytest.approx(100 * sum(gains) / 3, rel=1e-5)
    assert len(epoch_values(rows, "validation/delta_m")) == 2


# ------------------------------------------------------------------------------------------------ mixed datasets
def test_mixed_datasets_train_every_task_on_the_samples_that_label_it(tmp_path: Path) -> None:
    datamodule = MultiTaskDataModule(
        {"digits": DigitsDataModule(), "masks": DigitsDataModule(with_foreground=True, labelled_fraction=0.5)},
        batch_size=128,
        sampling="temperature",
    )
    module = LightningBrickCollection(bricks(foreground=True), loss_balancer=UncertaintyWeighting())
    fit(module, datamodule, tmp_path, limit_val_batches=2)
    rows = read_rows(tmp_path)
    assert all(math.isfinite(value) for value in epoch_values(rows, "train/foreground/loss_ce_step"))
    assert epoch_values(rows, "validation/foreground/mean_iou")


def test_a_dataset_label_that_no_brick_reads_is_refused_before_training(tmp_path: Path) -> None:
    datamodule = MultiTaskDataModule({"digits": DigitsDataModule(), "masks": DigitsDataModule(with_foreground=True)})
    module = LightningBrickCollection(bricks())  # no foreground head
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"dataset 'masks' yields \['foreground'\], which no brick reads"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 0


def test_an_evaluation_without_labels_for_a_task_leaves_it_out_of_the_total(tmp_path: Path) -> None:
    data = DigitsDataModule()
    data.setup()
    unlabelled = {**data.splits["val"], "targets": torch.full_like(data.splits["val"]["targets"], -100)}
    loader = DataLoader(_Named(unlabelled), batch_size=64)
    module = LightningBrickCollection(bricks())
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (logged,) = trainer.validate(module, dataloaders=loader, verbose=False)
    assert math.isnan(logged["validation/digit/loss_ce"]), "no label in the epoch: no mean"
    with torch.no_grad():
        logits = module.brick_collection({"raw": unlabelled["raw"]}, Stage.INFERENCE)["parity/logits"]
    expected = float(F.cross_entropy(logits, unlabelled["parity"]))
    assert logged["validation/parity/loss_ce"] == pytest.approx(expected, rel=1e-5)
    assert logged["validation/loss"] == pytest.approx(expected, rel=1e-5), "the total of the tasks with labels"


class _Named(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["raw"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def test_resuming_a_mixed_epoch_with_another_temperature_is_refused_by_the_trainer(tmp_path: Path) -> None:
    def datamodule(temperature: float) -> MultiTaskDataModule:
        datasets = {"digits": DigitsDataModule(), "masks": DigitsDataModule(with_foreground=True)}
        return MultiTaskDataModule(datasets, batch_size=64, sampling="temperature", temperature=temperature)

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1, save_last=True)
    fit(LightningBrickCollection(bricks(foreground=True)), datamodule(2.0), tmp_path, max_steps=3,
        callbacks=[checkpoints], limit_val_batches=0)  # fmt: skip
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3, "stopped mid-epoch"
    trainer = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    with pytest.raises(LoaderStateError, match=r"stopped after batch 3 of epoch 0.*temperature 2.0 -> 4.0"):
        trainer.fit(LightningBrickCollection(bricks(foreground=True)), datamodule=datamodule(4.0), ckpt_path=last)
    assert trainer.global_step == 3, "no step trained on the other order"
