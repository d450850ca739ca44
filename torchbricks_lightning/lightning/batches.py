"""What the module does with a raw batch before and after the bricks run on it: naming it (:func:`name_batch`), its
number of samples (:func:`samples_in`; a batch of 0 samples is skipped), and the note added to an error raised on it
(:func:`add_batch_names_note`).

**Empty batches.** A batch with no samples adds nothing to a stage's losses or metrics, and is not trained on.

The mean loss of an empty batch is NaN (a mean over no elements), and would turn the stage's epoch mean into NaN
even with a weight of zero (``NaN * 0`` is NaN). So :class:`~torchbricks_lightning.lightning.module.
LightningBrickCollection` does not run the bricks on one at all: no loss mean and no metric brick is updated, and
in training the step is skipped (``training_step`` returns None, which Lightning's automatic optimisation skips),
with a warning naming the batch.

With several processes (DDP), a step skipped on one process only does not leave the others waiting: the processes'
collectives no longer match, and Lightning (torch's DDP reducer) raises within seconds. There, give every process a
non-empty batch (e.g. ``drop_last=True``, or a sampler that never yields an empty one).

**Errors.** An error raised while the bricks run on a batch gets context: which brick failed, and how a tuple
batch was named.

A tuple batch is named by ``batch_names`` in order. When the order is wrong, the first brick to read a misnamed item
fails with torch's own words ("mat1 and mat2 must have the same dtype"), which say nothing about the names.
:func:`add_batch_names_note` adds a note that says which batch item each name took.

Example:
    >>> import torch
    >>> note = batch_names_note((torch.zeros(4, dtype=torch.long), torch.rand(4, 3)), ("raw", "targets"), ["raw"])
    >>> for sentence in note.split(". "):
    ...     print(sentence)
    The batch is a tuple, named by batch_names in order: item 0 (int64, shape (4,)) -> 'raw', item 1 (float32, shape
    (4, 3)) -> 'targets'
    The failing brick reads 'raw'
    If the order is wrong, pass batch_names in the order of the batch's items (or return a dict batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError

__all__ = [
    "EmptyBatchWarning",
    "add_batch_names_note",
    "batch_names_note",
    "failing_brick",
    "name_batch",
    "no_training_loss_error",
    "samples_in",
    "warn_empty_batch",
]

_NOTE_START = "The batch is a tuple, named by batch_names"


def failing_brick(err: BaseException, collection: BrickCollection) -> str | None:
    """The path of the innermost brick of ``collection`` whose code is in ``err``'s traceback, or None.

    It reads the traceback's frames: a brick's ``forward`` (or its module's) runs with the brick as ``self``.
    """
    paths = {id(brick): path for path, brick in collection.named_bricks()}
    found = None
    tb = err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in paths:
            found = paths[id(owner)]
        tb = tb.tb_next
    return found


def batch_names_note(batch: Any, batch_names: Sequence[str], read_names: Iterable[str] | None) -> str | None:
    """A note that says which item of a tuple batch each of ``batch_names`` took, or None for other batches.

    Args:
        batch: the batch as the dataloader gave it.
        batch_names: the names given to its items, in order.
        read_names: the data names the failing brick reads; None when not known. When known and none of them
            names a batch item, no note is needed (None).
    """
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    if isinstance(batch, Mapping) or not isinstance(batch, (tuple, list)):
        return None
    named = dict(zip(batch_names, batch, strict=False))
    read = [name for name in read_names if name in named] if read_names is not None else None
    if read is not None and not read:
        return None
    items = ", ".join(
        f"item {index} ({_describe(value)}) -> {name!r}" for index, (name, value) in enumerate(named.items())
    )
    reads = f" The failing brick reads {', '.join(repr(name) for name in read)}." if read else ""
    return (
        f"{_NOTE_START} in order: {items}.{reads} If the order is wrong, pass batch_names in the order of the "
        "batch's items (or return a dict batch)."
    )


def add_batch_names_note(
    err: BaseException, batch: Any, batch_names: Sequence[str], collection: BrickCollection
) -> str | None:
    """Add :func:`batch_names_note` to ``err`` (once) when a brick that reads a tuple batch's item failed, or a
    failure came from no brick in particular (a name the batch lacks).

    Returns:
        The note added (or already there), or None.
    """
    existing = [note for note in getattr(err, "__notes__", []) if note.startswith(_NOTE_START)]
    if existing:
        return existing[0]
    path = failing_brick(err, collection)
    nodes = {node.path: node for node in collection.brick_nodes()}
    read = nodes[path].data_inputs if path in nodes else None
    note = batch_names_note(batch, batch_names, read)
    if note is not None:
        err.add_note(note)
    return note


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}, shape {tuple(value.shape)}"
    return type(value).__name__


def name_batch(batch: Any, batch_names: Sequence[str], stage: Stage) -> dict[str, Any]:
    """Map a batch to named inputs: dicts pass through, tuples and lists are named by ``batch_names``.

    Example:
        >>> name_batch((1, 2), ("raw", "targets"), Stage.TRAIN)
        {'raw': 1, 'targets': 2}
    """
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    if isinstance(batch, (tuple, list)):
        if len(batch) > len(batch_names):
            raise ConfigError(
                f"A {stage.value} batch has {len(batch)} items, but batch_names names {len(batch_names)}: "
                f"{list(batch_names)}. Pass batch_names with one name per item, or return a dict batch."
            )
        return dict(zip(batch_names, batch, strict=False))
    raise BrickDefinitionError(
        f"Expected a {stage.value} batch to be a dict, a tuple/list or a tensor, but got {type(batch).__name__}. "
        "Return a dict of named tensors from the dataloader, or a tuple named by batch_names."
    )


def samples_in(named_inputs: dict[str, object]) -> float:
    """The number of samples of a batch: the first dimension of its first tensor with one (else 1).

    Example:
        >>> samples_in({"targets": torch.zeros(5), "raw": torch.zeros(5, 3)})
        5.0
    """
    for value in named_inputs.values():
        if isinstance(value, torch.Tensor) and value.ndim:
            return float(value.shape[0])
    return 1.0


class EmptyBatchWarning(UserWarning):
    """A batch with no samples was skipped."""


def warn_empty_batch(stage: Stage, batch_idx: int) -> None:
    """Warn that the empty batch ``batch_idx`` of ``stage`` was skipped.

    Example:
        >>> import pytest
        >>> with pytest.warns(EmptyBatchWarning, match="batch 3"):
        ...     warn_empty_batch(Stage.TRAIN, 3)
    """
    skipped = "the training step was skipped" if stage is Stage.TRAIN else "it adds nothing to the losses or metrics"
    warnings.warn(
        f"The {stage.value} batch {batch_idx} is empty (no samples): {skipped}. Check the dataloader: a sampler, a "
        "filter or a collate function can leave a batch without samples.",
        EmptyBatchWarning,
        stacklevel=2,
    )


def no_training_loss_error(collection: BrickCollection) -> ConfigError:
    """The error for a batch that gives nothing to optimise: no loss is alive in training (raised by the training
    step and by the pre-fit check)."""
    return ConfigError(
        "No loss is alive in the 'train' stage, so there is nothing to optimise. Add a BrickLoss alive in "
        f"'train' (the collection produces {collection.output_names(Stage.TRAIN)})."
    )
