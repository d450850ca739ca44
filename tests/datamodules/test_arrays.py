"""ArrayDataModule: named columns in memory, split by fractions or given, on the package's resumable loaders; and
DigitsDataModule's splits before setup()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks, quiet_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

import torchbricks_lightning
from torchbricks_lightning import LightningBrickCollection
from torchbricks_lightning.datamodules import ArrayDataModule, DigitsDataModule, ResumableSampler
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError

SPLITS = ("train", "val", "test")


def _columns(n: int = 40) -> dict[str, Any]:
    return {"raw": np.random.default_rng(0).normal(size=(n, N_FEATURES)), "targets": np.arange(n) % NUM_CLASSES}


def _rows(data: ArrayDataModule, split: str) -> list[int]:
    """Which rows of the columns a split holds (the 'row' column is each row's own index)."""
    return data.split_dataset(split).columns["row"][data.split_dataset(split).rows].tolist()  # type: ignore[arg-type, index]


def test_fractions_split_every_row_once_by_the_split_seed() -> None:
    columns = {**_columns(), "row": np.arange(40)}
    data = ArrayDataModule(columns, val_fraction=0.25, test_fraction=0.1, seed=1)
    assert data.sizes == {"train": 26, "val": 10, "test": 4}
    rows = {split: _rows(data, split) for split in SPLITS}
    assert sorted(rows["train"] + rows["val"] + rows["test"]) == list(range(40))
    assert all(rows[split] == sorted(rows[split]) for split in SPLITS)  # each split keeps the columns' order
    # The split follows split_seed (default: seed); the training order follows seed.
    same_split = ArrayDataModule(columns, val_fraction=0.25, test_fraction=0.1, seed=2, split_seed=1)
    assert {split: _rows(same_split, split) for split in SPLITS} == rows
    assert _rows(ArrayDataModule(columns, val_fraction=0.25, test_fraction=0.1, seed=2), "val") != rows["val"]

    def first_batch(module: ArrayDataModule) -> list[int]:
        return next(iter(module.train_dataloader()))["row"].tolist()

    assert first_batch(same_split) != first_batch(data)
    assert first_batch(data) == first_batch(ArrayDataModule(columns, val_fraction=0.25, test_fraction=0.1, seed=1))


def test_numpy_floats_become_float32_and_tensors_are_kept_as_they_are() -> None:
    data = ArrayDataModule(
        {"raw": np.zeros((6, 2)), "label": np.arange(6), "weight": torch.ones(6, dtype=torch.float64)},
        val_fraction=0,
        test_fraction=0.5,
    )
    batch = next(iter(data.test_dataloader()))
    assert {name: value.dtype for name, value in batch.items()} == {
        "raw": torch.float32,
        "label": torch.int64,
        "weight": torch.float64,
    }
    assert isinstance(data.train_dataloader().sampler, ResumableSampler)


def test_given_splits_are_used_as_they_are_and_a_split_left_out_is_empty() -> None:
    train = {"raw": torch.arange(8.0), "targets": torch.zeros(8, dtype=torch.int64)}
    test = {"raw": torch.arange(3.0) + 100, "targets": torch.full((3,), -100)}  # no labels: -100
    data = ArrayDataModule(splits={"train": train, "test": test}, batch_size=2)
    assert data.sizes == {"train": 8, "val": 0, "test": 3}
    assert torch.cat([batch["raw"] for batch in data.predict_dataloader()]).tolist() == [100.0, 101.0, 102.0]
    assert list(data.val_dataloader()) == []


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({}, ConfigError, r"either columns .* or splits .*, but got neither"),
        ({"columns": {"x": np.zeros(3)}, "splits": {"train": {"x": np.zeros(3)}}}, ConfigError, r"but got both"),
        ({"columns": {"x": np.zeros(3), "y": np.zeros(4)}}, ConfigError, r"numbers of rows: \{'x': 3, 'y': 4\}"),
        ({"columns": {"x": [1, 2, 3]}}, BrickDefinitionError, r"column 'x' of columns to be a tensor .* got list"),
        ({"columns": {"x": np.array(["a", None])}}, BrickDefinitionError, r"dtype object, which torch cannot hold"),
        ({"columns": {}}, BrickDefinitionError, r"columns to be a non-empty dict .* an empty dict"),
        ({"columns": {"x": np.zeros(10)}, "val_fraction": 0.6, "test_fraction": 0.5}, ConfigError, "summing below 1"),
        ({"columns": {"x": np.zeros(2)}, "val_fraction": 0.5, "test_fraction": 0.4}, ConfigError, "no training row"),
        ({"splits": {"val": {"x": np.zeros(2)}}}, ConfigError, r"needs a 'train' split, but splits has only \['val'\]"),
        ({"splits": {"train": {"x": np.zeros(2)}, "valid": {}}}, ConfigError, r"split 'valid'.*Did you mean 'val'\?"),
        (
            {"splits": {"train": {"x": np.zeros(2), "y": np.zeros(2)}, "val": {"x": np.zeros(2)}}},
            ConfigError,
            r"splits\['val'\] has the columns \['x'\], but splits\['train'\] has \['x', 'y'\].*fill a label .* -100",
        ),
    ],
    ids=[
        "neither",
        "both",
        "lengths",
        "list",
        "object-array",
        "empty",
        "fractions",
        "no-train-row",
        "no-train-split",
        "unknown-split",
        "columns-differ",
    ],
)
def test_mistakes_are_refused_with_what_was_given(arguments: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ArrayDataModule(**arguments)


def test_a_run_resumed_mid_epoch_ends_with_the_weights_of_the_uninterrupted_run(tmp_path: Path) -> None:
    """The loader's position travels in the checkpoint: resuming after 3 of 5 batches continues at batch 4."""

    def run(ckpt_path: Path | None = None, **trainer_arguments: Any) -> LightningBrickCollection:
        torch.manual_seed(0)
        module = LightningBrickCollection(boring_bricks())
        data = ArrayDataModule(_columns(), val_fraction=0, test_fraction=0, batch_size=8, seed=3)
        trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0, **trainer_arguments)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module

    # The uninterrupted run writes a checkpoint after step 3, in the middle of its first epoch (5 batches).
    def every_third_step(folder: Path) -> ModelCheckpoint:
        return ModelCheckpoint(folder, filename="{step}", every_n_train_steps=3, save_top_k=-1)

    uninterrupted = run(enable_checkpointing=True, callbacks=[every_third_step(tmp_path)])
    resumed = run(tmp_path / "step=3.ckpt", enable_checkpointing=True, callbacks=[every_third_step(tmp_path / "again")])
    for (name, expected), actual in zip(uninterrupted.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(actual, expected, msg=name)


def test_array_data_module_is_exported_from_the_top_level() -> None:
    assert torchbricks_lightning.ArrayDataModule is ArrayDataModule
    assert "ArrayDataModule" in torchbricks_lightning.__all__


def test_digits_splits_are_there_before_setup() -> None:
    """Reading splits before setup() loaded nothing and raised a bare KeyError: now the splits load on first use."""
    data = DigitsDataModule()
    test = data.splits["test"]
    assert sorted(test) == ["parity", "raw", "targets"]
    assert len(test["targets"]) == len(data.split_dataset("test"))
