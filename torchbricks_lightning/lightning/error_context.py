"""Context for an error raised while the bricks run on a batch: which brick failed, and how a tuple batch was named.

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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from torchbricks_lightning.core.collection import BrickCollection

__all__ = ["add_batch_names_note", "batch_names_note", "failing_brick"]

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
