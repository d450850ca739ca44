"""Paths in a checkpoint's callback states: untrusted data, confined to the run's checkpoint folders.

Resuming restores each callback's state, and Lightning's ``ModelCheckpoint`` acts on the paths its state names: when
it saves a new checkpoint it deletes the previous ``last_model_path``, the previous ``best_model_path`` (no monitor,
``save_top_k=1``) and the k-th best (``kth_best_model_path``, a key of ``best_k_models``); ``ckpt_path="best"``
loads ``best_model_path``. Its own check that a file lies in its folder is lexical, so
``<dirpath>/../../victim.txt`` passes it. :func:`confine_callback_states` resolves each such path (``..`` and
symlinks) and drops every one that does not lie inside the given folders, with a :class:`CheckpointPathWarning`
naming the callback, the key and the value. The library's own :class:`~torchbricks_lightning.callbacks.
OnnxExportCallback` keeps one path (``best_path``), checked the same way.

Example:
    >>> import tempfile, warnings
    >>> folder = os.path.realpath(tempfile.mkdtemp())
    >>> states = {"ModelCheckpoint": {"dirpath": folder, "best_model_path": os.path.join(folder, "best.ckpt"),
    ...     "last_model_path": os.path.join(folder, "..", "victim.txt"), "best_k_models": {}}}
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     kept = confine_callback_states(states, [folder])["ModelCheckpoint"]
    >>> kept["last_model_path"], os.path.basename(kept["best_model_path"])
    ('', 'best.ckpt')
    >>> [str(warning.message).split(" = ")[0] for warning in caught]
    ["Checkpoint callback state 'ModelCheckpoint': 'last_model_path'"]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from torchbricks_lightning.checkpoints.reading import is_remote

__all__ = [
    "MODEL_CHECKPOINT_PATH_KEYS",
    "OWN_CALLBACK_PATH_KEYS",
    "CheckpointPathWarning",
    "confine_callback_states",
    "confine_model_checkpoint_state",
    "is_clean_folder",
    "lies_inside",
]

MODEL_CHECKPOINT_PATH_KEYS: tuple[str, ...] = ("best_model_path", "kth_best_model_path", "last_model_path")
"""The file paths of a ``ModelCheckpoint`` state (besides the keys of ``best_k_models``, and ``dirpath``)."""

_DIRPATH = "dirpath"
_K_BEST = "best_k_models"
_KTH = "kth_best_model_path"
_MODEL_CHECKPOINT_KEYS = frozenset({_DIRPATH, _K_BEST, *MODEL_CHECKPOINT_PATH_KEYS})

OWN_CALLBACK_PATH_KEYS: dict[str, tuple[str, ...]] = {"OnnxExportCallback": ("best_path",)}
"""The paths that the library's own callbacks keep in their state, by their state key."""


class CheckpointPathWarning(UserWarning):
    """A path that a checkpoint's callback state names was dropped (it lies outside the run's checkpoint folders),
    or ``SafeCheckpointIO`` refused to delete a file."""


def lies_inside(path: Any, folders: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether ``path`` is a local path that lies inside (or is) one of ``folders``, both as written and resolved.

    Resolved means ``..`` and symlinks followed (``os.path.realpath``); as written means ``os.path.abspath``, which
    Lightning's own checks compare. A path with a ``..`` part, a URL, or anything but a string, is never inside.

    Example:
        >>> lies_inside("/runs/a/checkpoints/last.ckpt", ["/runs/a/checkpoints"])
        True
        >>> lies_inside("/runs/a/checkpoints/../../victim.txt", ["/runs/a/checkpoints"])
        False
    """
    if not isinstance(path, str) or not path or "\0" in path or is_remote(path) or ".." in PurePath(path).parts:
        return False
    written, resolved = os.path.abspath(path), os.path.realpath(path)
    for folder in folders:
        text = os.fspath(folder)
        if not text or "\0" in text or is_remote(text):
            continue
        folder_written, folder_resolved = os.path.abspath(text), os.path.realpath(text)
        if _within(resolved, folder_resolved) and (
            _within(written, folder_written) or _within(written, folder_resolved)
        ):
            return True
    return False


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_clean_folder(path: Any) -> bool:
    """Whether ``path`` is a local folder path without ``..`` or symlinks: written and resolved, it is the same.

    Example:
        >>> is_clean_folder("/"), is_clean_folder("/tmp/../etc"), is_clean_folder(None)
        (True, False, False)
    """
    if not isinstance(path, str) or not path or "\0" in path or is_remote(path) or ".." in PurePath(path).parts:
        return False
    return os.path.abspath(path) == os.path.realpath(path)


def confine_callback_states(callbacks: Any, folders: Sequence[str | os.PathLike[str]] | None) -> Any:
    """The callback states of a checkpoint, with every path outside ``folders`` dropped (and a warning for each).

    Args:
        callbacks: a checkpoint's ``"callbacks"`` entry (state key -> state); anything but a mapping is returned as is.
        folders: the checkpoint folders the current run writes (its ``ModelCheckpoint`` dirpaths). None when they are
            unknown: each ``ModelCheckpoint`` state is then confined to its own ``dirpath``, which must be a clean
            folder (see :func:`confine_model_checkpoint_state`), and the library's callbacks to those dirpaths.

    Returns:
        A new mapping; the states it changed are new dicts, the others are the same objects.
    """
    if not isinstance(callbacks, Mapping):
        return callbacks
    confined = dict(callbacks)
    for key, state in callbacks.items():
        if _is_model_checkpoint_state(state):
            confined[key] = confine_model_checkpoint_state(state, folders, name=str(key))
    reference = folders
    if reference is None:
        reference = [
            state[_DIRPATH]
            for state in confined.values()
            if _is_model_checkpoint_state(state) and isinstance(state.get(_DIRPATH), str) and state[_DIRPATH]
        ]
    for key, state in callbacks.items():
        paths = OWN_CALLBACK_PATH_KEYS.get(str(key), ())
        if paths and isinstance(state, Mapping):
            confined[key] = _confine_paths(dict(state), paths, reference, str(key))
    return confined


def confine_model_checkpoint_state(
    state: Mapping[str, Any], folders: Sequence[str | os.PathLike[str]] | None, name: str = "ModelCheckpoint"
) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state with every path outside ``folders`` dropped, with a warning naming each.

    A dropped file path becomes ``""`` (Lightning's "none"), a dropped key of ``best_k_models`` leaves the dict; when
    the k-th best is dropped, the whole k-best record is (Lightning could not replace it). A dropped ``dirpath``
    becomes None, which Lightning reads as "another folder": it then restores ``best_model_path`` only.

    With ``folders`` None, the state's own ``dirpath`` is the folder; it must be a clean one (:func:`is_clean_folder`:
    Lightning resolves the dirpaths it is given), else every path is dropped.
    """
    confined = dict(state)
    if folders is None:
        dirpath = confined.get(_DIRPATH)
        if isinstance(dirpath, str) and is_clean_folder(dirpath):
            reference: Sequence[str | os.PathLike[str]] = [dirpath]
        else:
            reference = []
            if dirpath is not None:
                _warn(name, _DIRPATH, dirpath, "is not a clean folder (it has '..' or symlinks in it, or is no path)")
                confined[_DIRPATH] = None
    else:
        reference = folders
        dirpath = confined.get(_DIRPATH)
        if dirpath is not None and not lies_inside(dirpath, folders):
            _warn(name, _DIRPATH, dirpath, _outside(folders))
            confined[_DIRPATH] = None
    had_kth = bool(confined.get(_KTH))
    confined = _confine_paths(confined, MODEL_CHECKPOINT_PATH_KEYS, reference, name, dropped="")
    best_k = confined.get(_K_BEST)
    if best_k is None:
        return confined
    if not isinstance(best_k, Mapping):
        _warn(name, _K_BEST, best_k, "is not a dict of paths to scores")
        confined[_K_BEST] = {}
        return confined
    kept = {}
    for path, score in best_k.items():
        if lies_inside(path, reference):
            kept[path] = score
        else:
            _warn(name, f"{_K_BEST} key {path!r}", path, _outside(reference))
    kth = confined.get(_KTH)
    if kept and ((had_kth and not kth) or (kth and kth not in kept)):
        warnings.warn(
            f"Checkpoint callback state {name!r}: {_K_BEST!r} was reset, because its k-th best "
            f"({_KTH!r}) was dropped or is not one of them; the resumed run starts its top-k anew and deletes none "
            "of the files it names.",
            CheckpointPathWarning,
            stacklevel=2,
        )
        kept, confined[_KTH] = {}, ""
    confined[_K_BEST] = kept
    return confined


def _is_model_checkpoint_state(state: Any) -> bool:
    return isinstance(state, Mapping) and any(key in state for key in _MODEL_CHECKPOINT_KEYS)


def _confine_paths(
    state: dict[str, Any],
    keys: Iterable[str],
    folders: Sequence[str | os.PathLike[str]],
    name: str,
    dropped: str | None = None,
) -> dict[str, Any]:
    for key in keys:
        value = state.get(key)
        if value in (None, "") or lies_inside(value, folders):
            continue
        _warn(name, key, value, _outside(folders))
        if dropped is None:
            del state[key]
        else:
            state[key] = dropped
    return state


def _outside(folders: Sequence[str | os.PathLike[str]]) -> str:
    if not folders:
        return "cannot be checked: this run has no checkpoint folder to hold it"
    shown = sorted(os.path.realpath(os.fspath(folder)) for folder in folders)
    return f"does not lie inside this run's checkpoint folders {shown} once '..' and symlinks are resolved"


def _warn(name: str, key: str, value: Any, why: str) -> None:
    named = key if key.startswith(f"{_K_BEST} key") else f"{key!r} = {value!r}"
    warnings.warn(
        f"Checkpoint callback state {name!r}: {named} {why}, so it was dropped. A resumed callback "
        "deletes and loads the files its state names; a checkpoint's state may only name files in the folder the "
        "current run writes its checkpoints to.",
        CheckpointPathWarning,
        stacklevel=3,
    )
