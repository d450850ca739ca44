"""SplitDataModule: the split and loader wiring that CIFAR-10, digits and synthetic images share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cifar10 import write_tiny_cifar10
from torch.utils.data import Dataset, TensorDataset

from torchbricks_lightning.datamodules import (
    ArrayDataModule,
    CIFAR10DataModule,
    DigitsDataModule,
    EvaluationSampler,
    ResumableDataLoader,
    SplitDataModule,
    SyntheticImageDataModule,
)
from torchbricks_lightning.errors import ConfigError


def _cifar(root: Path, **kwargs: Any) -> CIFAR10DataModule:
    return CIFAR10DataModule(data_dir=str(root), download=False, verify_checksums=False, val_size=8, **kwargs)


DATAMODULES: dict[str, Callable[[Path, dict[str, Any]], SplitDataModule]] = {
    "cifar10": lambda root, kwargs: _cifar(root, **{"num_workers": 0, **kwargs}),
    "digits": lambda root, kwargs: DigitsDataModule(**kwargs),
    "synthetic": lambda root, kwargs: SyntheticImageDataModule(n_train=24, n_val=8, n_test=8, **kwargs),
    "arrays": lambda root, kwargs: ArrayDataModule(
        {"raw": torch.rand(40, 3), "targets": torch.arange(40) % 2}, val_fraction=0.2, test_fraction=0.2, **kwargs
    ),
}


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    write_tiny_cifar10(tmp_path)
    return tmp_path


def _first_values(batch: Any) -> torch.Tensor:
    return batch["raw"] if isinstance(batch, dict) else batch[0]


@pytest.mark.parametrize("name", list(DATAMODULES))
def test_every_datamodule_trains_on_a_resumable_loader_and_evaluates_each_sample_once(
    data_root: Path, name: str
) -> None:
    datamodule = DATAMODULES[name](data_root, {"batch_size": 4})
    assert isinstance(datamodule, SplitDataModule)
    train = datamodule.train_dataloader()
    assert isinstance(train, ResumableDataLoader)
    assert train.seed_samples is (name == "cifar10")  # CIFAR-10 augments: each sample gets its own seed

    loaders = {
        "val": datamodule.val_dataloader(),
        "test": datamodule.test_dataloader(),
        "predict": datamodule.predict_dataloader(),
    }
    for split, loader in loaders.items():
        assert isinstance(loader.sampler, EvaluationSampler), split
        assert loader.batch_size == 4
        dataset = datamodule.split_dataset("test" if split == "predict" else split)  # type: ignore[arg-type]
        assert sum(len(_first_values(batch)) for batch in loader) == len(dataset), split  # type: ignore[arg-type]
    test = torch.cat([_first_values(batch) for batch in loaders["test"]])
    predict = torch.cat([_first_values(batch) for batch in loaders["predict"]])
    assert torch.equal(test, predict)  # predict reads the test split, in the same order


BAD_LOADER_ARGUMENTS = [
    (name, argument, value)
    for name in DATAMODULES
    for argument, value in [("batch_size", 0), ("batch_size", 2.5), ("batch_size", True), ("num_workers", -1)]
    if not (name == "synthetic" and argument == "num_workers")  # synthetic images load without workers
]


@pytest.mark.parametrize(("name", "argument", "value"), BAD_LOADER_ARGUMENTS)
def test_bad_loader_arguments_raise_a_config_error(data_root: Path, name: str, argument: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"Expected {argument} to be an integer"):
        DATAMODULES[name](data_root, {argument: value})


@pytest.mark.parametrize(
    "sizes",
    [{"image_size": 0}, {"n_train": 0}, {"n_val": -1}, {"n_test": -2}],
    ids=["image_size", "n_train", "n_val", "n_test"],
)
def test_synthetic_sizes_out_of_range_raise_a_config_error(sizes: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=f"{next(iter(sizes))}={next(iter(sizes.values()))}"):
        SyntheticImageDataModule(**sizes)


def test_a_split_datamodule_only_says_what_each_split_holds() -> None:
    class Ramp(SplitDataModule):
        def split_dataset(self, split: str) -> Dataset[Any]:  # type: ignore[override]
            size = {"train": 10, "val": 3, "test": 5}[split]
            return TensorDataset(torch.arange(float(size)))

    datamodule = Ramp(batch_size=4, seed=3)
    epoch = sorted(value for (batch,) in datamodule.train_dataloader() for value in batch.tolist())
    assert epoch == [float(value) for value in range(10)]
    assert [batch.tolist() for (batch,) in datamodule.val_dataloader()] == [[0.0, 1.0, 2.0]]

    class Incomplete(SplitDataModule):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(batch_size=4, seed=0)  # type: ignore[abstract]
