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

How a new prediction replaces the previous one: ``index.json`` is the file a reader starts from, and it only ever
lists complete files of one prediction. A run writes its files into a staging folder inside ``output_dir``
(``.predictions.{host}.{pid}.{token}.tmp/rank{R}/...``) and leaves the previous prediction alone while it runs.
Once every process has finished, the prediction is published in four steps:

1. ``index.json`` is replaced (atomically) by the new index, which lists the files in the staging folder;
2. each process puts its files at their final names (hard links, or copies where the filesystem has none) and
   removes the previous prediction's files that the new one does not have;
3. ``index.json`` is replaced by the new index with the final names;
4. the staging folder is removed.

A run that raises or is killed before step 1 (a bug at batch 3, a full disk) leaves the previous prediction as it
was; a run killed at any later step leaves the new one readable through ``index.json``. Either way a reader of
``index.json`` finds one complete prediction, never a mix. What a failed run leaves besides (its staging folder after
a kill, old files after a kill in step 2) is not listed in the index, and the next run into the folder removes it:
read the files that the index lists, not a folder listing. Under DDP every process writes its own files and rank 0
the index, with a barrier between the steps.

Why ``.npz``: NumPy is installed wherever torch is and reads it with ``allow_pickle=False`` (no code runs); names
with ``/`` are kept; each file is a zip of ``.npy`` arrays any language can read. safetensors would add a
dependency for the same result (and neither stores bfloat16 in NumPy, hence the float32 default).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from typing_extensions import override

from torchbricks_lightning.core.atomic_files import (
    atomic_path,
    remove_stale_temporaries,
    remove_stale_temporary_folders,
    temporary_name,
    write_atomically,
    write_json_atomically,
)
from torchbricks_lightning.core.names import first_control_character
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, FileWriteError

__all__ = ["INDEX_FORMAT", "INDEX_NAME", "BrickPredictionWriter", "merge_rank_indexes", "rank_folder"]

INDEX_NAME = "index.json"
INDEX_FORMAT = "torchbricks_lightning.predictions"

FloatDtype = Literal["float32", "float16", "float64", "keep"]
_FLOATS = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}
_STAGING = "predictions"  # staging folders are named after it: .predictions.{host}.{pid}.{token}.tmp
_ZIP_NAME_LIMIT = 0xFFFF  # a zip member name's length is a 16-bit field


class BrickPredictionWriter(BasePredictionWriter):
    """Write the named outputs of every prediction batch to ``output_dir`` as it comes, so memory stays flat.

    Built on Lightning's ``BasePredictionWriter`` (``write_interval="batch"``). Pair it with
    ``trainer.predict(..., return_predictions=False)`` so that Lightning keeps nothing in memory either. Every file
    is written atomically; each process writes its own files, and rank 0 writes the index once all are done. A new
    prediction into the same folder replaces the previous one only once it is complete (see the module's docstring):
    a run that fails or is killed leaves the previous prediction readable.

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
        self._checked_names: set[str] = set()
        self._staging: Path | None = None  # this run's staging folder, until it is published or removed
        self._published = False  # whether index.json lists this run's files (then a failure keeps them)

    @property
    def dtypes(self) -> dict[str, str]:
        """The NumPy dtype of each written output, by name."""
        return dict(self._dtypes)

    @property
    def index_path(self) -> Path:
        """Where the index of every process's files goes."""
        return self.output_dir / INDEX_NAME

    def check_output_dir(self) -> Path:
        """Create ``output_dir`` if needed and check that predictions can be written there; called before any work.

        Raises:
            ConfigError: ``output_dir``, or a folder above it, is a file.
            FileWriteError: the folder cannot be created or is not writable (a read-only filesystem, no permission).
        """
        folder = self.output_dir
        in_the_way = next((path for path in (folder, *folder.parents) if path.exists() and not path.is_dir()), None)
        if in_the_way is not None:
            raise _file_in_the_way(folder, in_the_way)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:  # a file took the place meanwhile
            raise _file_in_the_way(folder, Path(err.filename or folder)) from err
        except OSError as err:
            raise _unwritable(folder, err) from err
        if not os.access(folder, os.W_OK | os.X_OK):
            raise _unwritable(folder, PermissionError(errno.EACCES, "read-only filesystem or no write permission"))
        return folder

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "predict":
            self.check_output_dir()

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        name = trainer.strategy.broadcast(temporary_name(self.output_dir / _STAGING))  # one folder for all ranks
        self._staging = self.output_dir / name
        self._published = False
        try:
            rank_folder(self._staging, trainer.global_rank).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _unwritable(self.output_dir, err) from err
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
        for name in names:
            if name not in self._checked_names:
                _check_output_name(name)
                self._checked_names.add(name)
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

    def _staging_folder(self) -> Path:
        if self._staging is None:
            raise RuntimeError("BrickPredictionWriter wrote a batch outside of a prediction (before on_predict_start).")
        return self._staging

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
            self._staging_folder() / relative,
            lambda f: np.savez(f, allow_pickle=False, **arrays),
            what="prediction file",
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
        """Publish the prediction in the four steps of the module's docstring, with a barrier after each."""
        staging, rank, strategy = self._staging_folder(), trainer.global_rank, trainer.strategy
        part = {"rank": rank, "output_names": list(self._dtypes), "dtypes": dict(self._dtypes), "files": self._entries}
        write_json_atomically(rank_folder(staging, rank) / INDEX_NAME, part, what="index")
        strategy.barrier("BrickPredictionWriter.on_predict_end")
        index = merge_rank_indexes(staging, trainer.world_size) if trainer.is_global_zero else {}
        if trainer.is_global_zero:  # 1. the new prediction is readable from its staging folder
            staged = [{**entry, "file": f"{staging.name}/{entry['file']}"} for entry in index["files"]]
            write_json_atomically(self.index_path, {**index, "files": staged}, what="prediction index")
            self._published = True  # from here on, a failure must keep the staging folder: the index lists it
        strategy.barrier("BrickPredictionWriter.staged")
        self._published = True
        self._put_files_in_place(rank, part)  # 2.
        if trainer.is_global_zero:
            self._remove_leftovers(trainer.world_size, staging)
        strategy.barrier("BrickPredictionWriter.in_place")
        if trainer.is_global_zero:  # 3. the new prediction is readable at its final names
            write_json_atomically(self.index_path, index, what="prediction index")
        strategy.barrier("BrickPredictionWriter.index")
        shutil.rmtree(staging, ignore_errors=True)  # 4. (every process: the folder may not be shared)
        self._staging = None

    def _put_files_in_place(self, rank: int, part: dict[str, Any]) -> None:
        """Step 2 for this process: its files at their final names, its index, and no file of an older prediction."""
        staging = self._staging_folder()
        for entry in self._entries:
            _put_in_place(staging / entry["file"], self.output_dir / entry["file"])
        folder = rank_folder(self.output_dir, rank)
        write_json_atomically(folder / INDEX_NAME, part, what="index")
        kept = {Path(entry["file"]).name for entry in self._entries}
        for old in folder.glob("dl*-batch*.npz"):
            if old.name not in kept:
                old.unlink(missing_ok=True)
        for temporary in folder.glob(".dl*-batch*.tmp.npz"):  # of a run killed in step 2, if its process is gone
            remove_stale_temporaries(folder / f"{temporary.name[1:].partition('.')[0]}.npz")

    def _remove_leftovers(self, world_size: int, staging: Path) -> None:
        """Rank 0, after step 1: the folders of processes this run does not have, and killed runs' staging folders."""
        for stale in self.output_dir.glob("rank*"):
            suffix = stale.name.removeprefix("rank")
            if stale.is_dir() and suffix.isdigit() and int(suffix) >= world_size:
                shutil.rmtree(stale, ignore_errors=True)
        remove_stale_temporary_folders(self.output_dir / _STAGING, keep=staging.name)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A run that fails before its index is written removes its staging folder: the previous prediction stays."""
        if self._staging is not None and not self._published:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None


def _put_in_place(staged: Path, final: Path) -> None:
    """Put the content of ``staged`` at ``final`` atomically: a hard link where the filesystem has them, else a copy."""
    with atomic_path(final, what="prediction file") as temporary:
        temporary.unlink()
        try:
            os.link(staged, temporary)
        except OSError:  # no hard links here (some network and FAT filesystems)
            shutil.copyfile(staged, temporary)


def _check_output_name(name: object) -> None:
    """Refuse a name that a ``.npz`` file cannot hold as it is (zip member names are ``name + '.npy'``)."""
    if not isinstance(name, str):
        raise ConfigError(f"Prediction names must be strings to be written to .npz files, but got {name!r}.")
    if name in ("file", "allow_pickle"):
        raise ConfigError(f"An output named {name!r} cannot be stored in .npz files (numpy.savez's own argument).")
    control = first_control_character(name)
    if control is not None:
        raise ConfigError(
            f"Output {_shortened(name)!r} holds the control character {control[1]!r} at position {control[0]}, which "
            "zip member names cannot keep (a NUL cuts the name, so two outputs would merge). Rename the output."
        )
    size = len((name + ".npy").encode("utf-8", errors="surrogatepass"))
    if size > _ZIP_NAME_LIMIT:
        raise ConfigError(
            f"Output {_shortened(name)!r} ({len(name):,} characters) is too long for a .npz file: zip member names "
            f"hold at most {_ZIP_NAME_LIMIT:,} bytes, the name in UTF-8 plus '.npy' ({size:,} here). Rename the "
            f"output to at most {_ZIP_NAME_LIMIT - 4:,} bytes, or leave it out of output_names."
        )


def _shortened(name: str) -> str:
    return name if len(name) <= 40 else f"{name[:40]}..."


def _file_in_the_way(folder: Path, file: Path) -> ConfigError:
    if file == folder:
        return ConfigError(
            f"The prediction output_dir {str(folder)!r} is a file, not a folder. Give the path of a folder (it is "
            "created if needed), or move the file away."
        )
    return ConfigError(
        f"The prediction output_dir {str(folder)!r} cannot be created: {str(file)!r} is a file, not a folder. Give "
        "another output_dir, or move the file away."
    )


def _unwritable(folder: Path, err: OSError) -> FileWriteError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space, or choose another output_dir"
    else:
        fix = "choose an output_dir you can write to, or make this one writable"
    error = FileWriteError(
        f"Cannot write predictions to {str(folder)!r}: {err.strerror or err}. Nothing was written; a previous "
        f"prediction there is intact. To fix it, {fix}."
    )
    error.errno = err.errno
    return error


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
