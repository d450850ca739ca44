"""The split and loader wiring that every datamodule of the package shares.

A :class:`SplitDataModule` has three splits, ``train``, ``val`` and ``test`` (``predict`` reads ``test``). A
subclass only says what each split holds (:meth:`SplitDataModule.split_dataset`); the base builds the loaders:

- the training loader is a :class:`ResumableDataLoader`: its order (and, with ``seed_samples``, its augmentations)
  depends on ``(seed, epoch)`` only, not on workers or processes, and a resumed run continues an interrupted epoch
  at the next batch;
- the evaluation loaders use an :class:`EvaluationSampler`, so under DDP every sample is evaluated exactly once.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> class Ramp(SplitDataModule):
    ...     def split_dataset(self, split):
    ...         return TensorDataset(torch.arange(10.0 if split == "train" else 4.0))
    >>> data = Ramp(batch_size=4, seed=0)
    >>> type(data.train_dataloader()).__name__, [len(batch) for (batch,) in data.val_dataloader()]
    ('ResumableDataLoader', [4])
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Literal, TypeAlias

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from torchbricks_lightning.datamodules.loading import EvaluationSampler, ResumableDataLoader
from torchbricks_lightning.errors import ConfigError

__all__ = ["Split", "SplitDataModule"]

Split: TypeAlias = Literal["train", "val", "test"]


class SplitDataModule(pl.LightningDataModule, abc.ABC):
    """A datamodule with ``train``, ``val`` and ``test`` splits, and the package's loaders for them.

    Subclasses implement :meth:`split_dataset` (setting up their data on first use) and set
    :attr:`seed_samples` when loading a training sample draws random numbers (augmentations).

    Args:
        batch_size: the batch size of every loader.
        seed: the seed of the training order (and of the augmentations with ``seed_samples``).
        num_workers: dataloader workers; they persist across epochs when there are any.

    Raises:
        ConfigError: ``batch_size`` is not a positive integer, or ``num_workers`` is negative.
    """

    seed_samples: ClassVar[bool] = False
    """Whether each training sample is loaded under a seed of its own (for random augmentations)."""

    def __init__(self, batch_size: int, seed: int, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"Expected batch_size to be an integer >= 1, but got {batch_size!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"Expected num_workers to be an integer >= 0, but got {num_workers!r}.")
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    @abc.abstractmethod
    def split_dataset(self, split: Split) -> Dataset[Any]:
        """The dataset of ``split``; subclasses set up their data here when it is not set up yet."""

    def train_dataloader(self) -> DataLoader[Any]:
        return ResumableDataLoader(
            self.split_dataset("train"),
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            seed_samples=self.seed_samples,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader[Any]:
        return self.evaluation_loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        return self.evaluation_loader("test")

    def predict_dataloader(self) -> DataLoader[Any]:
        return self.evaluation_loader("test")

    def evaluation_loader(self, split: Split) -> DataLoader[Any]:
        """A loader over ``split`` in order, each sample on exactly one process (:class:`EvaluationSampler`)."""
        dataset = self.split_dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EvaluationSampler(dataset),  # type: ignore[arg-type]
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
