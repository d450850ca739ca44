"""BrickPredictionWriter: stream ``predict_step``'s named outputs to disk, one ``.npz`` file per batch and process.

What it writes in ``output_dir``::

    rank0/dl0-batch000000.npz   one file per batch, per process (rank) and dataloader
    rank0/dl0-batch000001.npz
    rank0/index.json            this process's files
    index.json                  every process's files (written by rank 0 once all have finished)

Each ``.npz`` holds one array per output name (``np.load(path)["digit/probabilities"]``), with the batch as its
first dimension; floating outputs are float32 unless asked otherwise. NumPy reads them, nothing from this library is
needed. ``index.json`` maps samples to files::

    {"format": "torchbricks_lightning.predictions", "version": 1, "file_format": "npz",
     "output_names": ["digit/probabilities", ...], "world_size": 1,
     "files": [{"file": "rank0/dl0-batch000000.npz", "rank": 0, "dataloader": 0, "batch": 0, "rows": 64,
                "samples": [0, 1, ..., 63]}, ...]}

Row ``i`` of a file is the sample ``samples[i]`` of its dataloader's dataset (``samples`` is ``null`` when Lightning
cannot tell, e.g. for an iterable dataset). Under DDP, Lightning's distributed sampler may give a sample to two
processes to even out the batches: the index then lists it twice, with the same values.

Why ``.npz``: NumPy is installed wherever torch is and reads it with ``allow_pickle=False`` (no code runs); names
with ``/`` are kept; each file is a zip of ``.npy`` arrays any language can read. safetensors would add a
dependency for the same result (and neither stores bfloat16 in NumPy, hence the float32 default).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from typing_extensions import override

from torchbricks_lightning.core.atomic_files import write_atomically, write_json_atomically
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError

__all__ = ["INDEX_FORMAT", "INDEX_NAME", "BrickPredictionWriter", "merge_rank_indexes", "rank_folder"]

INDEX_NAME = "index.json"
INDEX_FORMAT = "torchbricks_lightning.predictions"

FloatDtype = Literal["float32", "float16", "float64", "keep"]
_FLOATS = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}


class BrickPredictionWriter(BasePredictionWriter):
    """Write the named outputs of every prediction batch to ``output_dir`` as it comes, so memory stays flat.

    Built on Lightning's ``BasePredictionWriter`` (``write_interval="batch"``). Pair it with
    ``trainer.predict(..., return_predictions=False)`` so that Lightning keeps nothing in memory either. Every file
    is written atomically; each process writes its own files, and rank 0 writes the index once all are done. A new
    prediction into the same folder replaces the previous one's files.

    Args:
        output_dir: the folder to write to (created if needed).
        output_names: the outputs to write; default: all that ``predict_step`` returns (for a
            ``LightningBrickCollection``, its ``predict_output_names``).
        float_dtype: the dtype of floating outputs: ``"float32"`` (the default, also for bfloat16 and float16
            outputs of mixed precision), ``"float16"``, ``"float64"``, or ``"keep"`` (bfloat16, which NumPy cannot
            hold, is still written as float32).

    Attributes:
        written: the files this process wrote in the latest prediction, relative to ``output_dir``.
    """

    def __init__(
        self,
        output_dir: str,
        output_names: Sequence[str] | None = None,
        float_dtype: FloatDtype = "float32",
    ) -> None:
        super().__init__(write_interval="batch")
        if float_dtype not in (*_FLOATS, "keep"):
            raise ConfigError(f"Expected float_dtype to be one of {[*_FLOATS, 'keep']}, but got {float_dtype!r}.")
        if output_names is not None and (isinstance(output_names, str) or not output_names):
            raise BrickDefinitionError(f"Expected output_names to be a non-empty list of names, got {output_names!r}.")
        self.output_dir = Path(output_dir)
        self.output_names = None if output_names is None else list(output_names)
        self.float_dtype = float_dtype
        self.written: list[str] = []
        self._entries: list[dict[str, Any]] = []
        self._dtypes: dict[str, str] = {}

    @property
    def dtypes(self) -> dict[str, str]:
        """The NumPy dtype of each written output, by name."""
        return dict(self._dtypes)

    @property
    def index_path(self) -> Path:
        """Where the index of every process's files goes."""
        return self.output_dir / INDEX_NAME

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = rank_folder(self.output_dir, trainer.global_rank)
        if trainer.is_global_zero:
            self.index_path.unlink(missing_ok=True)
            for stale in self.output_dir.glob("rank*"):  # folders of processes this run does not have
                suffix = stale.name.removeprefix("rank")
                if stale.is_dir() and suffix.isdigit() and int(suffix) >= trainer.world_size:
                    shutil.rmtree(stale, ignore_errors=True)
        if folder.is_dir():
            for old in [*folder.glob("dl*-batch*.npz"), folder / INDEX_NAME]:
                old.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.written, self._entries, self._dtypes = [], [], {}

    def _arrays(self, prediction: Any) -> dict[str, np.ndarray]:
        if not isinstance(prediction, Mapping):
            raise BrickDefinitionError(
                f"BrickPredictionWriter writes named outputs, but predict_step returned a {type(prediction).__name__}. "
                "Return a dict of tensors (LightningBrickCollection does)."
            )
        names = self.output_names if self.output_names is not None else list(prediction)
        missing = [name for name in names if name not in prediction]
        if missing:
            raise ConfigError(
                f"BrickPredictionWriter output_names {missing} are not in the predictions, which hold "
                f"{list(prediction)}. Set the module's predict_output_names to include them, or leave output_names out."
            )
        reserved = [name for name in names if name in ("file", "allow_pickle")]
        if reserved:
            raise ConfigError(f"Outputs named {reserved} cannot be stored in .npz files (numpy.savez's own arguments).")
        arrays = {}
        for name in names:
            value = prediction[name]
            if not isinstance(value, torch.Tensor):
                raise ConfigError(
                    f"Prediction {name!r} is a {type(value).__name__}, not a tensor, so it cannot be written. Leave it "
                    "out of the module's predict_output_names or of the writer's output_names."
                )
            value = value.detach()
            if value.is_floating_point():
                if self.float_dtype != "keep":
                    value = value.to(_FLOATS[self.float_dtype])
                elif value.dtype == torch.bfloat16:
                    value = value.float()
            arrays[name] = value.cpu().numpy()
        return arrays

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        arrays = self._arrays(prediction)
        relative = f"{rank_folder(Path(), trainer.global_rank).as_posix()}/dl{dataloader_idx}-batch{batch_idx:06d}.npz"
        write_atomically(
            self.output_dir / relative, lambda f: np.savez(f, allow_pickle=False, **arrays), what="prediction file"
        )
        rows = {len(array) for array in arrays.values() if array.ndim}
        self._entries.append(
            {
                "file": relative,
                "rank": trainer.global_rank,
                "dataloader": dataloader_idx,
                "batch": batch_idx,
                "rows": len(batch_indices) if batch_indices else (rows.pop() if len(rows) == 1 else None),
                "samples": [int(index) for index in batch_indices] if batch_indices else None,
            }
        )
        self._dtypes.update({name: str(array.dtype) for name, array in arrays.items()})
        self.written.append(relative)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        part = {
            "rank": trainer.global_rank,
            "output_names": list(self._dtypes),
            "dtypes": dict(self._dtypes),
            "files": self._entries,
        }
        write_json_atomically(rank_folder(self.output_dir, trainer.global_rank) / INDEX_NAME, part, what="index")
        trainer.strategy.barrier("BrickPredictionWriter.on_predict_end")
        if trainer.is_global_zero:
            write_json_atomically(
                self.index_path, merge_rank_indexes(self.output_dir, trainer.world_size), what="prediction index"
            )
        trainer.strategy.barrier("BrickPredictionWriter.index")


def rank_folder(output_dir: Path, rank: int) -> Path:
    """The folder of one process's files.

    Example:
        >>> rank_folder(Path("preds"), 1).as_posix()
        'preds/rank1'
    """
    return output_dir / f"rank{rank}"


def merge_rank_indexes(output_dir: Path, world_size: int) -> dict[str, Any]:
    """The index of every process's files, from the index each one wrote in its folder.

    A process whose index is missing (an output folder that is not shared between machines) is listed under
    ``missing_ranks``; its files stay indexed in its own folder.
    """
    files: list[dict[str, Any]] = []
    dtypes: dict[str, str] = {}
    names: dict[str, None] = {}
    missing = []
    for rank in range(world_size):
        path = rank_folder(output_dir, rank) / INDEX_NAME
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            missing.append(rank)
            continue
        files += part.get("files", [])
        dtypes.update(part.get("dtypes", {}))
        names.update(dict.fromkeys(part.get("output_names", [])))
    files.sort(key=lambda entry: (entry["dataloader"], entry["batch"], entry["rank"]))
    index: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "version": 1,
        "file_format": "npz",
        "output_names": list(names),
        "dtypes": dtypes,
        "world_size": world_size,
        "num_files": len(files),
        "num_rows": sum(entry["rows"] or 0 for entry in files),
        "files": files,
    }
    if missing:
        index["missing_ranks"] = missing
    return index
