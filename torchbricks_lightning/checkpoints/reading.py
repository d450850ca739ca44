"""Load checkpoints safely: each file read once, weights only, and only classes the trust model allows (see
:mod:`.trust`)."""

from __future__ import annotations

import builtins
import importlib.util
import io
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from torchbricks_lightning.checkpoints.trust import (
    TRUSTED_CLASS_PREFIXES,
    check_checkpoint,
    check_class_paths,
    importable_paths,
)
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.errors import (
    BrickDefinitionError,
    BricksNotStoredError,
    CheckpointError,
    ConfigError,
    UntrustedCheckpointError,
)

__all__ = [
    "TRUSTED_CLASS_PREFIXES",
    "check_checkpoint",
    "check_class_paths",
    "check_state_fits",
    "importable_paths",
    "is_remote",
    "load_brick_collection_weights",
    "load_module_checkpoint",
    "load_state_into",
    "read_checkpoint",
    "read_checkpoint_bytes",
    "read_checkpoint_file",
]

_BRICKS_PREFIX = "brick_collection."

ModuleT = TypeVar("ModuleT")

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether a checkpoint path is a URL (``http://``, ``s3://``, ``file://``, ...) rather than a local file.

    Example:
        >>> is_remote("https://example.com/run.ckpt"), is_remote("s3://bucket/run.ckpt"), is_remote("runs/last.ckpt")
        (True, True, False)
    """
    return bool(_REMOTE.match(os.fspath(path)))


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``: tensors and plain values only, never arbitrary code.

    Raises:
        CheckpointError: the path is a URL, or the file is missing, truncated or not a checkpoint.
        UntrustedCheckpointError: the file holds pickled objects other than tensors and plain values.
    """
    return read_checkpoint_bytes(path, map_location)[0]


def read_checkpoint_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a local checkpoint file, read once (nothing is unpickled).

    Raises:
        CheckpointError: the path is a URL, or the file is missing or unreadable.
    """
    if is_remote(path):
        raise CheckpointError(
            f"Checkpoint {os.fspath(path)!r} is a URL; remote checkpoints are not loaded. Download it, make sure you "
            "trust its source, and pass the local file."
        )
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} is not a file.")
    try:
        return path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"Could not read checkpoint {str(path)!r}: {err}.") from err


def read_checkpoint_bytes(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, data: bytes | None = None
) -> tuple[dict[str, Any], bytes]:
    """Read a checkpoint file once, and load it from those bytes with ``weights_only=True``.

    Whoever needs the file again (Lightning, to rebuild a module) gets the same bytes, so the file cannot change
    between the check and the load.

    Args:
        path: the checkpoint file (named in messages).
        map_location: where to load the tensors.
        data: the file's bytes, read already (:func:`read_checkpoint_file`); then the file is not read again.

    Returns:
        ``(checkpoint, data)``: the checkpoint dict, and the bytes it was loaded from.

    Raises:
        CheckpointError: the path is a URL, or the file is missing, truncated or not a checkpoint.
        UntrustedCheckpointError: the file holds pickled objects other than tensors and plain values.
    """
    if data is None:
        data = read_checkpoint_file(path)
    path = Path(path)
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        offending = [line.strip() for line in str(err).splitlines() if "unsupported global" in line.lower()]
        if offending and _names_real_global(offending[0]):
            raise UntrustedCheckpointError(
                f"Checkpoint {str(path)!r} holds objects that are not tensors or plain values, so it was not "
                f"loaded: loading it could run arbitrary code ({offending[0]}). Only load it with weights_only=False "
                "if you fully trust its source."
            ) from None
        raise CheckpointError(_unreadable(path, err)) from err
    except Exception as err:  # torch raises many types for files that are not (whole) checkpoints
        raise CheckpointError(_unreadable(path, err)) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"Checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
    return checkpoint, data


def _names_real_global(message: str) -> bool:
    """Whether torch's 'unsupported GLOBAL x.y' names something that exists (code) rather than a cut-off name (a
    truncated file). Nothing is imported to decide: a module that is not imported yet counts as real."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    if match is None:
        return True
    module_name, _, attribute = match.group(1).rpartition(".")
    if not attribute:
        return False
    if not module_name:
        return hasattr(builtins, attribute)
    module = sys.modules.get(module_name)
    if module is not None:
        return hasattr(module, attribute)
    try:
        return importlib.util.find_spec(module_name.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _unreadable(path: Path, err: BaseException) -> str:
    return (
        f"Could not read checkpoint {str(path)!r} ({type(err).__name__}). The file is truncated (an interrupted "
        "save?) or is not a PyTorch checkpoint."
    )


def brick_state_dict(checkpoint: Mapping[str, Any], source: str | None = None) -> dict[str, torch.Tensor]:
    """The brick collection's weights inside a Lightning checkpoint, without the ``brick_collection.`` prefix.

    Args:
        checkpoint: the loaded checkpoint dict.
        source: the checkpoint's path, named in the error.

    Raises:
        CheckpointError: the checkpoint holds no ``state_dict``.
    """
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        which = f"Checkpoint {source!r}" if source is not None else "The checkpoint"
        raise CheckpointError(
            f"{which} holds no 'state_dict' (its keys: {sorted(map(str, checkpoint))}); is it a Lightning "
            "checkpoint? Pass a .ckpt file written by a Trainer that trained a LightningBrickCollection."
        )
    return {key[len(_BRICKS_PREFIX) :]: value for key, value in state.items() if key.startswith(_BRICKS_PREFIX)}


def load_brick_collection_weights(
    brick_collection: BrickCollection, checkpoint_path: str | os.PathLike[str], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load the weights of a ``LightningBrickCollection`` checkpoint into a plain :class:`BrickCollection`.

    The file is read with ``weights_only=True``. Use it to run a trained model without Lightning.

    Args:
        brick_collection: a collection built like the trained one.
        checkpoint_path: the ``.ckpt`` file.
        strict: raise when names are missing or unexpected.

    Returns:
        ``(missing, unexpected)``: sorted parameter names missing from the checkpoint, and sorted names in the
        checkpoint that the collection lacks.

    Raises:
        BrickDefinitionError: ``brick_collection`` is not a :class:`BrickCollection` (wrap a dict of bricks in one).
        CheckpointError: the file is unreadable or not a Lightning checkpoint, or, with ``strict``, the checkpoint
            and the collection do not hold the same names, or shapes differ.
    """
    if not isinstance(brick_collection, BrickCollection):
        wrap = (
            " Wrap the bricks first: load_brick_collection_weights(BrickCollection(bricks), path), and run that "
            "collection."
            if isinstance(brick_collection, Mapping)
            else ""
        )
        raise BrickDefinitionError(
            f"Expected brick_collection to be a BrickCollection, but got {type(brick_collection).__name__}.{wrap}"
        )
    source = str(checkpoint_path)
    state = brick_state_dict(read_checkpoint(checkpoint_path), source=source)
    return load_state_into(brick_collection, state, strict=strict, source=source)


def load_state_into(
    brick_collection: BrickCollection, state: Mapping[str, torch.Tensor], strict: bool, source: str
) -> tuple[list[str], list[str]]:
    """Load brick weights (``state``, without the ``brick_collection.`` prefix) after :func:`check_state_fits`.

    Returns:
        ``(missing, unexpected)`` names, as :func:`load_brick_collection_weights`.
    """
    if not isinstance(brick_collection, BrickCollection):
        # LightningBrickCollection.load_from_checkpoint has turned a dict of bricks into a collection already.
        raise BrickDefinitionError(
            "Expected brick_collection to be a BrickCollection or a dict of bricks, but got "
            f"{type(brick_collection).__name__}. Pass the bricks by name: {{'backbone': brick, ...}}."
        )
    missing, unexpected = check_state_fits(brick_collection, state, strict, source)
    brick_collection.load_state_dict(state, strict=False)
    return missing, unexpected


def check_state_fits(
    brick_collection: BrickCollection, state: Mapping[str, Any], strict: bool, source: str
) -> tuple[list[str], list[str]]:
    """Check that checkpoint weights fit a collection, before anything is loaded.

    Returns:
        The names missing in the checkpoint and the names the collection does not have.

    Raises:
        CheckpointError: a shape differs, or (with ``strict``) names are missing or unexpected; the message lists
            them and names ``source``.
    """
    expected = brick_collection.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in set(state) & set(expected)
        if isinstance(state[name], torch.Tensor) and state[name].shape != expected[name].shape
    )
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"Checkpoint {source!r} does not fit this brick collection. Missing in the checkpoint: {_short(missing)}; "
            f"unexpected in the checkpoint: {_short(unexpected)}; shape mismatches: {_short(mismatched)}. Build the "
            "collection as it was when trained, or pass strict=False to load the matching names only."
        )
    return missing, unexpected


def _short(names: Sequence[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... ({len(names) - limit} more)' if len(names) > limit else ''}]"


def load_module_checkpoint(
    lightning_load: Callable[..., ModuleT],
    checkpoint_path: str | os.PathLike[str],
    map_location: Any = None,
    strict: bool | None = None,
    trusted_class_prefixes: Sequence[str] = (),
    owner: type | None = None,
    checkpoint_bytes: bytes | None = None,
    **kwargs: Any,
) -> ModuleT:
    """The body of ``LightningBrickCollection.load_from_checkpoint``: read and check the file, then let Lightning
    rebuild the module from the bytes that were checked.

    The file is read once, with ``weights_only=True``; every hyperparameter location Lightning reads is checked
    against the trust model (:func:`~torchbricks_lightning.checkpoints.trust.check_checkpoint`), and the weights
    against ``brick_collection`` (when given). Lightning then loads the same bytes from memory, never the path, so
    a file swapped in the meantime is not read.

    Args:
        lightning_load: Lightning's own ``load_from_checkpoint`` of the module class.
        checkpoint_path: the ``.ckpt`` file.
        map_location: where to load the tensors (as in Lightning).
        strict: check that the checkpoint and the bricks hold the same names (default: yes).
        trusted_class_prefixes: packages, beyond torch and friends, whose classes the checkpoint may use.
        owner: the module class, whose signature types the hyperparameters.
        checkpoint_bytes: the file's bytes, read already (:func:`read_checkpoint_file`) by a caller that must know
            what was loaded (the export hashes them); then the file is not read again.
        kwargs: constructor arguments that override the saved ones, such as ``brick_collection``.

    Raises:
        CheckpointError: the path is a URL, the file is unreadable or truncated, it holds no bricks and none are
            given, or it does not fit the bricks.
        UntrustedCheckpointError: the checkpoint holds code or asks for something the trust model refuses.
        ConfigError: ``hparams_file`` was passed (the checkpoint's own hyperparameters are the ones checked).
    """
    if "hparams_file" in kwargs:
        raise ConfigError(
            "load_from_checkpoint(hparams_file=...) is not supported: the hyperparameters are read from the "
            "checkpoint itself, where they are checked. Pass the values to change as keyword arguments instead."
        )
    checkpoint, data = read_checkpoint_bytes(checkpoint_path, data=checkpoint_bytes)
    source = str(checkpoint_path)
    if owner is not None:
        hyper_parameters = check_checkpoint(checkpoint, owner, trusted_class_prefixes)
    else:
        hyper_parameters = checkpoint.get("hyper_parameters") or {}
        check_class_paths(hyper_parameters, trusted_class_prefixes)
    if "brick_collection" not in kwargs and "brick_collection" not in hyper_parameters:
        raise BricksNotStoredError(
            f"Checkpoint {source!r} was written by a LightningBrickCollection built in Python, so it holds the "
            "weights but not the bricks. Pass them: LightningBrickCollection.load_from_checkpoint(path, "
            "brick_collection=...).",
            checkpoint_path=source,
        )
    if "brick_collection" in kwargs:
        bricks = kwargs["brick_collection"]
        if isinstance(bricks, Mapping) and not isinstance(bricks, BrickCollection):
            bricks = BrickCollection(bricks)
        kwargs["brick_collection"] = bricks
        load_state_into(bricks, brick_state_dict(checkpoint, source=source), strict=strict is not False, source=source)
    del checkpoint  # Lightning loads its own copy from the same bytes
    try:
        return lightning_load(io.BytesIO(data), map_location=map_location, strict=strict, weights_only=True, **kwargs)
    except CheckpointError:
        raise
    except Exception as err:  # a value of the wrong type for jsonargparse, an argument the constructor refuses, ...
        raise CheckpointError(f"Could not load checkpoint {source!r}: {err}") from err
