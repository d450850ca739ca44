"""The type of ``LightningBrickCollection``'s ``brick_collection`` argument, written so that recipes parse.

A recipe gives the bricks as a dict (``model.brick_collection: {backbone: {class_path: ...}, ...}``) or as one
``class_path`` (a ``BrickCollection``, or a collection class such as ``ClassificationHead``). jsonargparse tries the
alternatives of a union one after the other on the same value, and in jsonargparse 4.53 a dict's nested values are
shared between the tries. Trying a *concrete* collection class on a dict of bricks reads the dict as the class's own
arguments, fails, and on the way rewrites the dicts inside the bricks' arguments (a ``BrickMetrics`` dict of metrics,
``input_names`` given as a dict) into namespaces, which the next alternative then refuses: a 95-line error for a
valid recipe. A protocol cannot be instantiated, so jsonargparse refuses a dict for it before reading anything, while
a ``class_path`` naming a real collection class still matches it.

Example:
    >>> from torchbricks_lightning import BrickCollection
    >>> isinstance(BrickCollection({}), BrickCollectionLike)
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.graph import BrickNode

__all__ = ["BrickCollectionLike", "BrickValue", "BricksArgument"]


@runtime_checkable
class BrickCollectionLike(Protocol):
    """What a brick collection offers: its bricks as resolved nodes (``BrickCollection`` and its subclasses)."""

    def brick_nodes(self) -> tuple[BrickNode, ...]:
        """The bricks as :class:`~torchbricks_lightning.core.graph.BrickNode` records."""
        ...


BrickValue = BrickInterface | BrickCollectionLike | Mapping[str, BrickInterface | BrickCollectionLike]
"""What a dict of bricks holds: a brick, a collection, or a nested dict of bricks."""

BricksArgument = BrickCollectionLike | Mapping[str, BrickValue]
"""A collection, or a (nested) dict of bricks."""
