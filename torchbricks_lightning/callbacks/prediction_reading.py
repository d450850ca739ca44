"""Read a prediction folder back: :func:`read_predictions`, whole arrays per output name.

:class:`~torchbricks_lightning.callbacks.prediction_writer.BrickPredictionWriter` writes one ``.npz`` file per batch
and process, and an ``index.json`` that lists them with the dataset index of every row. This reads the files the
index lists (never a folder listing: a killed run may leave files the index does not list) and puts the rows back
in the dataset's order, each sample once, across processes.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from torchbricks_lightning.callbacks.prediction_writer import INDEX_FORMAT, INDEX_NAME
from torchbricks_lightning.errors import ConfigError

__all__ = ["read_predictions"]


def read_predictions(folder: str | Path, dataloader: int | None = None) -> dict[str, np.ndarray]:
    """The predictions in ``folder`` as one array per output name, row ``i`` for the ``i``-th predicted sample.

    Rows are in the order of the dataset's samples (the ``samples`` the index records for each file), each sample
    once: under DDP the processes' files interleave, and a sample that Lightning's distributed sampler gave to two
    processes (to even out the batches) comes once. When the index cannot tell the samples (an iterable dataset), the
    files are concatenated in the order of the index (by batch, then process).

    Args:
        folder: the ``output_dir`` of a :class:`~torchbricks_lightning.BrickPredictionWriter` (or of
            ``torchbricks-lightning predict --output_dir``).
        dataloader: which dataloader's predictions, when the prediction had several (default: the only one).

    Returns:
        ``{output name: array}``, the arrays' first dimension being the samples.

    Raises:
        ConfigError: ``folder`` holds no prediction index (or one this library did not write), the index lacks a
            process's files, a listed file is missing or unreadable, or ``dataloader`` is missing or unknown when the
            prediction had several dataloaders.

    Example:
        >>> import tempfile
        >>> import pytorch_lightning as pl
        >>> import torch
        >>> from torch import nn
        >>> from torchbricks_lightning import ArrayDataModule, BrickPredictionWriter, BrickTrainable
        >>> from torchbricks_lightning import LightningBrickCollection
        >>> module = LightningBrickCollection(
        ...     {"head": BrickTrainable(nn.Linear(3, 2), input_names=["x"], output_names=["logits"])}
        ... )
        >>> data = ArrayDataModule({"x": torch.rand(50, 3)}, val_fraction=0, test_fraction=0.5, batch_size=8)
        >>> folder = tempfile.mkdtemp()
        >>> trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      callbacks=[BrickPredictionWriter(folder)])
        >>> trainer.predict(module, datamodule=data, return_predictions=False)
        >>> {name: array.shape for name, array in read_predictions(folder).items()}  # 25 samples in 4 files
        {'logits': (25, 2)}
    """
    root = Path(folder)
    index = _read_index(root)
    files: list[dict[str, Any]] = index.get("files", [])
    missing_ranks = index.get("missing_ranks")
    if missing_ranks:
        raise ConfigError(
            f"The prediction in {str(root)!r} lacks the files of processes {missing_ranks}: their index was not "
            "found when it was written (an output folder that is not shared between machines). Gather each "
            f"machine's rank folders into {str(root)!r} and read them one by one, or predict into a shared folder."
        )
    loaders = sorted({int(entry["dataloader"]) for entry in files})
    if dataloader is None:
        if len(loaders) > 1:
            raise ConfigError(
                f"The prediction in {str(root)!r} has the outputs of dataloaders {loaders}: pass dataloader= one of "
                "them."
            )
    elif dataloader not in loaders:
        raise ConfigError(
            f"The prediction in {str(root)!r} has no dataloader {dataloader!r}; it has dataloaders {loaders}."
        )
    chosen = [entry for entry in files if dataloader is None or entry["dataloader"] == dataloader]
    names = list(index.get("output_names", []))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    samples: list[int] = []
    known_samples = bool(chosen) and all(entry.get("samples") is not None for entry in chosen)
    for entry in chosen:
        arrays = _read_file(root, entry["file"], names)
        for name in names:
            parts[name].append(arrays[name])
        if known_samples:
            samples += entry["samples"]
    if not chosen:
        return {name: np.zeros((0,), dtype=index.get("dtypes", {}).get(name, "float32")) for name in names}
    whole = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    if not known_samples:
        return whole
    # The first row of each sample, in the order of the dataset (np.unique sorts and keeps first occurrences).
    _, first = np.unique(np.asarray(samples), return_index=True)
    return {name: array[first] for name, array in whole.items()}


def _read_index(root: Path) -> dict[str, Any]:
    path = root / INDEX_NAME
    if not path.is_file():
        where = "does not exist" if not root.exists() else f"has no {INDEX_NAME}"
        raise ConfigError(
            f"{str(root)!r} {where}, so it holds no prediction. Give the output_dir of a BrickPredictionWriter "
            "(or of torchbricks-lightning predict --output_dir) after the prediction has finished."
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"Cannot read the prediction index {str(path)!r}: {err}. Predict into the folder again."
        ) from err
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ConfigError(
            f"{str(path)!r} is not the index of a prediction written by BrickPredictionWriter (its format is not "
            f"{INDEX_FORMAT!r}). Give the output_dir of a BrickPredictionWriter."
        )
    return index


def _read_file(root: Path, relative: str, names: list[str]) -> dict[str, np.ndarray]:
    path = root / relative
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = {name: arrays[name] for name in names if name in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"Cannot read the prediction file {str(path)!r}, which {INDEX_NAME} lists: {err}. The folder was changed "
            "after the prediction: predict again into it."
        ) from err
    absent = [name for name in names if name not in found]
    if absent:
        raise ConfigError(
            f"The prediction file {str(path)!r} lacks the outputs {absent} that {INDEX_NAME} lists. The folder was "
            "changed after the prediction: predict again into it."
        )
    return found
