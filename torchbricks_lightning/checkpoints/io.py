"""``SafeCheckpointIO``: Lightning's checkpoint plugin, with saves that are never half-written and safe loads.

Lightning's own ``TorchCheckpointIO`` writes through a temporary file in ``TMPDIR`` and moves it into place. When the
checkpoint folder is on another filesystem, the move is a copy into the target, so a process killed during the copy
leaves a truncated checkpoint, possibly ``last.ckpt``, the last good one. A full disk does the same.

:class:`SafeCheckpointIO` saves through the package's one writer of whole files,
:mod:`torchbricks_lightning.core.atomic_files`: a temporary file in the target folder itself, flushed and fsynced,
renamed over the target (atomic on POSIX filesystems), then the folder fsynced. A save that fails or is killed
leaves the previous file as it was; a failed one removes its temporary file, and temporary files of killed saves of
this host are removed by the next save to the same path. Loads go through
:func:`~torchbricks_lightning.checkpoints.reading.read_checkpoint`: weights only, remote paths refused, clear
errors for broken files.

A checkpoint's callback states are untrusted data too: every path they name (``ModelCheckpoint``'s best, last and
k-best files and its ``dirpath``, ``OnnxExportCallback``'s ``best_path``) is resolved and dropped, with a
:class:`~torchbricks_lightning.checkpoints.callback_paths.CheckpointPathWarning`, unless it lies inside the run's
checkpoint folders (see :mod:`~torchbricks_lightning.checkpoints.callback_paths`): the trainer's ``ModelCheckpoint``
dirpaths once :meth:`SafeCheckpointIO.bind` has named the trainer (the CLI does), else each state's own ``dirpath``.
:meth:`SafeCheckpointIO.remove_checkpoint` deletes only a checkpoint file (one it saved in this process, or a
readable PyTorch checkpoint) inside the folders the run writes, and warns instead of deleting anything else.

Example:
    >>> import pytorch_lightning as pl
    >>> trainer = pl.Trainer(plugins=[SafeCheckpointIO()], logger=False, enable_progress_bar=False)
    >>> type(trainer.strategy.checkpoint_io).__name__
    'SafeCheckpointIO'
"""

from __future__ import annotations

import os
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from torchbricks_lightning.checkpoints.callback_paths import (
    CheckpointPathWarning,
    confine_callback_states,
    lies_inside,
)
from torchbricks_lightning.checkpoints.reading import is_remote, read_checkpoint
from torchbricks_lightning.core.atomic_files import write_atomically
from torchbricks_lightning.errors import CheckpointError, CheckpointWriteError

__all__ = ["SafeCheckpointIO", "atomic_torch_save", "with_safe_checkpoint_io"]


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``CheckpointIO`` that never leaves a half-written checkpoint and loads weights only.

    Pass it to the ``Trainer`` (``plugins=[SafeCheckpointIO()]``); the ``torchbricks-lightning`` command uses it
    unless the recipe sets another ``CheckpointIO``. See the module's docstring for how it saves.
    """

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: tuple[str, dict[str, Any]] | None = None
        self._trainer: weakref.ref[pl.Trainer] | None = None
        self._saved: set[str] = set()  # resolved paths of the checkpoints saved in this process
        self._written_folders: set[str] = set()  # the folders those went to, and their ModelCheckpoint dirpaths

    def bind(self, trainer: pl.Trainer) -> None:
        """Confine the paths of loaded callback states, and removals, to ``trainer``'s checkpoint folders (the
        dirpaths of its ``ModelCheckpoint`` callbacks, read when a checkpoint is loaded or removed).

        The CLI binds its trainer's ``SafeCheckpointIO``. Unbound, each ``ModelCheckpoint`` state is confined to
        its own ``dirpath``, and removals to the folders this plugin saved checkpoints to.
        """
        self._trainer = weakref.ref(trainer)

    def checkpoint_folders(self) -> list[str] | None:
        """The bound trainer's ``ModelCheckpoint`` dirpaths; None when no trainer is bound (or it is gone).

        Example:
            >>> from pytorch_lightning.callbacks import ModelCheckpoint
            >>> io = SafeCheckpointIO()
            >>> trainer = pl.Trainer(plugins=[io], callbacks=[ModelCheckpoint(dirpath="/runs/a")], logger=False)
            >>> io.checkpoint_folders(), io.bind(trainer), io.checkpoint_folders()
            (None, None, ['/runs/a'])
        """
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is None:
            return None
        folders = [getattr(callback, "dirpath", None) for callback in trainer.checkpoint_callbacks]
        return [os.fspath(folder) for folder in folders if isinstance(folder, (str, os.PathLike))]

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see :func:`atomic_torch_save`).

        Raises:
            TypeError: ``storage_options`` was given (as in Lightning's ``TorchCheckpointIO``).
            CheckpointError: ``path`` is a URL.
            CheckpointWriteError: the file could not be written; the previous one at ``path`` is intact.
        """
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by {type(self).__name__}."
            )
        if is_remote(path):
            raise CheckpointError(
                f"{type(self).__name__} writes local files only, but got {os.fspath(path)!r}. Use Lightning's "
                "TorchCheckpointIO (or an fsspec-based CheckpointIO) for remote storage."
            )
        atomic_torch_save(checkpoint, path)
        self._remember_saved(checkpoint, path)

    def _remember_saved(self, checkpoint: dict[str, Any], path: Any) -> None:
        resolved = os.path.realpath(os.fspath(path))
        self._saved.add(resolved)
        self._written_folders.add(os.path.dirname(resolved))
        # The states of a checkpoint being saved are this run's own: their dirpaths are the folders it writes.
        states = checkpoint.get("callbacks")
        for state in states.values() if isinstance(states, Mapping) else ():
            dirpath = state.get("dirpath") if isinstance(state, Mapping) else None
            if isinstance(dirpath, str) and dirpath and not is_remote(dirpath):
                self._written_folders.add(os.path.realpath(dirpath))

    @override
    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable[..., Any] | str | torch.device | None = "cpu",
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint with ``weights_only=True`` (see
        :func:`~torchbricks_lightning.checkpoints.reading.read_checkpoint`).

        Raises:
            CheckpointError: ``path`` is a URL, or the file is missing, truncated or not a checkpoint;
                ``weights_only=False`` was asked for.
            UntrustedCheckpointError: the file holds pickled objects other than tensors and plain values.
        """
        if weights_only is False:
            raise CheckpointError(
                f"{type(self).__name__} loads weights only, but weights_only=False was asked for {os.fspath(path)!r}. "
                "Use Lightning's TorchCheckpointIO for checkpoints that hold pickled objects, and only if you fully "
                "trust their source."
            )
        preloaded, self._preloaded = self._preloaded, None
        if preloaded is not None and preloaded[0] == os.path.abspath(os.fspath(path)):
            checkpoint = preloaded[1]
        else:
            checkpoint = read_checkpoint(path, map_location=map_location)
        if "callbacks" not in checkpoint:
            return checkpoint
        return {**checkpoint, "callbacks": confine_callback_states(checkpoint["callbacks"], self.checkpoint_folders())}

    @override
    def remove_checkpoint(self, path: Any) -> None:
        """Remove a checkpoint file, when it is one and lies inside the folders the run writes; else warn.

        Only a file is removed (never a folder: unlike Lightning's, the removal is not recursive), and only when it
        lies, resolved, inside the bound trainer's ``ModelCheckpoint`` folders or a folder this plugin saved a
        checkpoint to in this process, and is a checkpoint: one saved through this plugin in this process, or a
        readable PyTorch checkpoint file. Anything else is left alone, with a ``CheckpointPathWarning``: a finished
        run is never stopped by a refused removal.
        """
        text = os.fspath(path)
        target = Path(text)
        if not (target.is_file() or target.is_symlink()):
            return
        refusal = self._refusal(text)
        if refusal is not None:
            warnings.warn(
                f"SafeCheckpointIO did not delete {text!r}: {refusal}. Only checkpoint files inside the folders the "
                "run writes are deleted (a resumed checkpoint's callback state may name other files).",
                CheckpointPathWarning,
                stacklevel=2,
            )
            return
        target.unlink(missing_ok=True)
        self._saved.discard(os.path.realpath(text))

    def _refusal(self, path: str) -> str | None:
        """Why ``path`` may not be removed, or None."""
        folders = sorted({*self._written_folders, *(self.checkpoint_folders() or ())})
        # What is unlinked is the entry in its folder (a symlink itself, not its target): both must lie inside.
        entry = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
        if not (lies_inside(path, folders) and lies_inside(entry, folders)):
            shown = [os.path.realpath(folder) for folder in folders]
            return f"it does not lie inside the folders this run writes checkpoints to {shown}"
        if os.path.realpath(path) not in self._saved and not _is_torch_checkpoint(path):
            return "it is not a checkpoint (neither saved by this run nor a PyTorch checkpoint file)"
        return None

    def preload(self, path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> None:
        """Hand the next :meth:`load_checkpoint` of ``path`` a checkpoint read already, instead of reading the file
        again (the CLI reads and checks a ``--ckpt_path`` file once, then the Trainer restores from that copy)."""
        self._preloaded = (os.path.abspath(os.fspath(path)), checkpoint)


def _is_torch_checkpoint(path: str) -> bool:
    """Whether ``path`` is a file in PyTorch's checkpoint format: a zip archive holding a ``data.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name == "data.pkl" or name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def atomic_torch_save(checkpoint: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` that leaves either the whole new file at ``path`` or the previous one, never a partial file.

    It writes through :func:`~torchbricks_lightning.core.atomic_files.write_atomically`, the package's one writer
    of whole files: a temporary file named for this host and process next to ``path``, flushed and fsynced, renamed
    over ``path``, then the folder fsynced. On failure the temporary file is removed; temporary files of ``path``
    left by killed processes of this host are removed first (never another host's).

    Raises:
        CheckpointWriteError: the file could not be written (a full disk, a read-only folder, a folder at ``path``);
            the previous file at ``path`` is intact. It is an ``OSError``, not a ``ValueError``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_torch_save({"step": 1}, folder / "last.ckpt")
        >>> torch.load(folder / "last.ckpt"), sorted(item.name for item in folder.iterdir())
        ({'step': 1}, ['last.ckpt'])
    """
    write_atomically(path, lambda file: torch.save(checkpoint, file), what="checkpoint", error=CheckpointWriteError)


def with_safe_checkpoint_io(plugins: Any) -> list[Any]:
    """Trainer ``plugins`` with a :class:`SafeCheckpointIO` added, unless they hold a ``CheckpointIO`` already.

    Example:
        >>> [type(plugin).__name__ for plugin in with_safe_checkpoint_io(None)]
        ['SafeCheckpointIO']
        >>> with_safe_checkpoint_io(["bf16-mixed", TorchCheckpointIO()])[1].__class__.__name__
        'TorchCheckpointIO'
    """
    if plugins is None:
        listed: list[Any] = []
    elif isinstance(plugins, Iterable) and not isinstance(plugins, (str, bytes)):
        listed = list(plugins)
    else:
        listed = [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in listed):
        listed.append(SafeCheckpointIO())
    return listed
