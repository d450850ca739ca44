"""Data of one's own, in memory: :class:`ArrayDataModule` for named columns of tensors or NumPy arrays.

Its loaders are those of :class:`~torchbricks_lightning.datamodules.base.SplitDataModule`, so a run on it resumes
mid-epoch in the same order (the training loader's position is saved in the checkpoint) and, under DDP, every
process trains on its share of one order and evaluates each sample exactly once. Batches are dicts with one entry per
column, which a ``LightningBrickCollection`` passes to its bricks by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from torchbricks_lightning.datamodules.base import Split, SplitDataModule
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, did_you_mean

__all__ = ["ArrayDataModule", "NamedColumns"]

_SPLITS: tuple[str, ...] = get_args(Split)


class NamedColumns(Dataset[dict[str, torch.Tensor]]):
    """Rows of named columns: sample ``i`` is ``{name: column[rows[i]]}`` (every row in order without ``rows``).

    Example:
        >>> data = NamedColumns({"x": torch.arange(6.0), "y": torch.arange(6) % 2}, rows=torch.tensor([4, 1]))
        >>> len(data), data[0]
        (2, {'x': tensor(4.), 'y': tensor(0)})
    """

    def __init__(self, columns: Mapping[str, torch.Tensor], rows: torch.Tensor | None = None) -> None:
        self.columns = dict(columns)
        self.rows = rows
        self.length = len(rows) if rows is not None else len(next(iter(self.columns.values()), ()))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[index]) if self.rows is not None else index
        return {name: column[row] for name, column in self.columns.items()}


class ArrayDataModule(SplitDataModule):
    """Named columns of tensors or NumPy arrays in memory, split into ``train``, ``val`` and ``test``.

    Give either every row at once (``columns``), split at random by ``val_fraction`` and ``test_fraction`` under
    ``split_seed``, or the splits themselves (``splits={"train": {...}, "val": {...}}``; a split left out is empty and
    Lightning skips it). Row ``i`` of every column is one sample; a batch is a dict ``{column: (B, ...)}``. A missing
    label is the value its loss skips: ``-100`` in an integer label column, NaN in a floating target column.

    Floating NumPy arrays become float32 (torch's default, that of the bricks' weights), other NumPy arrays keep
    their dtype; tensors are used as they are (pass a float64 tensor to keep float64). Nothing is copied for a split
    by fractions: each split indexes the same columns.

    The loaders are those of :class:`SplitDataModule`: the training loader draws its order from ``(seed, epoch)``
    alone and a resumed run continues an interrupted epoch at its next batch (Lightning saves the loader's position in
    the checkpoint); under DDP every process trains on its share of that order, and the evaluation loaders hand every
    sample to exactly one process. ``predict`` reads ``test``.

    Args:
        columns: every row, by column name (tensors or NumPy arrays with the same first dimension).
        splits: instead of ``columns``, the columns of each split by split name (``train`` is required).
        val_fraction: with ``columns``, the share of rows held out for validation.
        test_fraction: with ``columns``, the share of rows held out for testing (and prediction).
        batch_size: the batch size of every loader.
        seed: the seed of the training order.
        split_seed: the seed of the split by fractions (default: ``seed``), so the order can vary with the split fixed.
        num_workers: dataloader workers.

    Raises:
        ConfigError: both or neither of ``columns`` and ``splits``, an unknown split, columns of different lengths,
            a split's columns differing from the training split's, a fraction out of range, or no training row.
        BrickDefinitionError: a column name that is not a string, or a column that is not a tensor or array.

    Example:
        >>> import numpy as np
        >>> data = ArrayDataModule(
        ...     {"features": np.random.default_rng(0).normal(size=(100, 3)), "label": np.arange(100) % 2},
        ...     val_fraction=0.2, test_fraction=0.1, batch_size=16,
        ... )
        >>> data.sizes
        {'train': 70, 'val': 20, 'test': 10}
        >>> batch = next(iter(data.train_dataloader()))
        >>> {name: (tuple(value.shape), str(value.dtype)) for name, value in batch.items()}
        {'features': ((16, 3), 'torch.float32'), 'label': ((16,), 'torch.int64')}
        >>> explicit = ArrayDataModule(splits={"train": {"x": torch.zeros(8, 2)}, "val": {"x": torch.ones(4, 2)}})
        >>> explicit.sizes
        {'train': 8, 'val': 4, 'test': 0}
    """

    def __init__(
        self,
        columns: Mapping[str, Any] | None = None,
        *,
        splits: Mapping[str, Mapping[str, Any]] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 32,
        seed: int = 0,
        split_seed: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.split_seed = seed if split_seed is None else int(split_seed)
        self.datasets: dict[str, NamedColumns]
        if columns is not None and splits is None:
            self.datasets = self._split_by_fractions(_checked_columns(columns, "columns"), val_fraction, test_fraction)
        elif splits is not None and columns is None:
            self.datasets = self._given_splits(splits)
        else:
            raise ConfigError(
                "ArrayDataModule takes either columns (every row, split by val_fraction and test_fraction) or "
                f"splits (the columns of each split), but got {'both' if columns is not None else 'neither'}."
            )

    def _split_by_fractions(
        self, columns: dict[str, torch.Tensor], val_fraction: float, test_fraction: float
    ) -> dict[str, NamedColumns]:
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"Expected val_fraction and test_fraction in [0, 1) summing below 1, but got {val_fraction!r} and "
                f"{test_fraction!r}."
            )
        n = len(next(iter(columns.values())))
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(n, generator=generator)
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
        if n - n_test - n_val < 1:
            raise ConfigError(
                f"ArrayDataModule: {n} rows leave no training row with val_fraction={val_fraction} and "
                f"test_fraction={test_fraction}. Give more rows or smaller fractions."
            )
        chosen = {"train": order[n_test + n_val :], "val": order[n_test : n_test + n_val], "test": order[:n_test]}
        # Each split keeps the columns' row order (evaluation and prediction files then follow it).
        return {split: NamedColumns(columns, rows.sort().values) for split, rows in chosen.items()}

    def _given_splits(self, splits: Mapping[str, Mapping[str, Any]]) -> dict[str, NamedColumns]:
        if not isinstance(splits, Mapping):
            raise BrickDefinitionError(
                f"Expected splits to be a dict of splits ({list(_SPLITS)}) to columns, but got {type(splits).__name__}."
            )
        unknown = [name for name in splits if name not in _SPLITS]
        if unknown:
            raise ConfigError(
                f"ArrayDataModule got the split {unknown[0]!r}, but the splits are {list(_SPLITS)}."
                f"{did_you_mean(str(unknown[0]), _SPLITS)}"
            )
        if "train" not in splits:
            raise ConfigError(f"ArrayDataModule needs a 'train' split, but splits has only {list(splits)}.")
        train = _checked_columns(splits["train"], "splits['train']")
        if not len(next(iter(train.values()))):
            raise ConfigError("ArrayDataModule: splits['train'] has no rows; training needs at least one.")
        datasets = {"train": NamedColumns(train)}
        for split in _SPLITS[1:]:
            if split not in splits:
                empty = {name: column[:0] for name, column in train.items()}
                datasets[split] = NamedColumns(empty)
                continue
            columns = _checked_columns(splits[split], f"splits[{split!r}]")
            if set(columns) != set(train):
                raise ConfigError(
                    f"ArrayDataModule: splits[{split!r}] has the columns {sorted(columns)}, but splits['train'] has "
                    f"{sorted(train)}. Give every split the same columns (fill a label a split lacks with -100, or "
                    "NaN for a floating target: its loss skips those rows)."
                )
            datasets[split] = NamedColumns(columns)
        return datasets

    @property
    def sizes(self) -> dict[str, int]:
        """The number of rows of each split."""
        return {split: len(self.datasets[split]) for split in _SPLITS}

    def split_dataset(self, split: Split) -> NamedColumns:
        return self.datasets[split]


def _checked_columns(columns: object, where: str) -> dict[str, torch.Tensor]:
    """The columns as tensors (floating NumPy arrays as float32), checked to be named and of one length."""
    if not isinstance(columns, Mapping) or not columns:
        raise BrickDefinitionError(
            f"Expected {where} to be a non-empty dict of column names to tensors or NumPy arrays, but got "
            f"{type(columns).__name__ if not isinstance(columns, Mapping) else 'an empty dict'}."
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, column in columns.items():
        if not isinstance(name, str) or not name:
            raise BrickDefinitionError(f"Expected the column names of {where} to be non-empty strings, got {name!r}.")
        if isinstance(column, np.ndarray):
            try:
                tensor = torch.from_numpy(column.astype(np.float32) if column.dtype.kind == "f" else column)
            except TypeError as err:
                raise BrickDefinitionError(
                    f"Column {name!r} of {where} is a NumPy array of dtype {column.dtype}, which torch cannot hold. "
                    "Convert it to numbers first."
                ) from err
        elif isinstance(column, torch.Tensor):
            tensor = column
        else:
            raise BrickDefinitionError(
                f"Expected column {name!r} of {where} to be a tensor or a NumPy array, but got "
                f"{type(column).__name__}. Wrap it: torch.as_tensor(...) or numpy.asarray(...)."
            )
        if tensor.ndim == 0:
            raise ConfigError(f"Column {name!r} of {where} is a scalar; a column has one row per sample.")
        tensors[name] = tensor
    lengths = {name: len(tensor) for name, tensor in tensors.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(
            f"The columns of {where} have different numbers of rows: {lengths}. Row i of every column is sample i, so "
            "every column needs as many rows."
        )
    return tensors
