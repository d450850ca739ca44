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
from typing import Protocol, cast, runtime_checkable

from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.collection import BrickCollection, BrickTree
from torchbricks_lightning.core.graph import BrickNode
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError

__all__ = ["BrickCollectionLike", "BrickValue", "BricksArgument", "as_collection", "checked_loss_weights"]


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


def as_collection(brick_collection: BricksArgument) -> BrickCollection:
    """The ``brick_collection`` argument as a :class:`~torchbricks_lightning.core.collection.BrickCollection`.

    Raises:
        BrickDefinitionError: it is neither a collection nor a dict of bricks.

    Example:
        >>> type(as_collection({})).__name__
        'BrickCollection'
    """
    if isinstance(brick_collection, Mapping) and not isinstance(brick_collection, BrickCollection):
        brick_collection = BrickCollection(cast(BrickTree, brick_collection))  # it checks each value itself
    if not isinstance(brick_collection, BrickCollection):
        raise BrickDefinitionError(
            "Expected brick_collection to be a BrickCollection or a dict of bricks, but got "
            f"{type(brick_collection).__name__}."
        )
    return brick_collection


def checked_loss_weights(
    collection: BrickCollection, loss_weights: Mapping[str, float] | None
) -> dict[str, float] | None:
    """The ``loss_weights`` argument as a dict (None when empty), each name a loss of ``collection``.

    Raises:
        ConfigError: a name is not a loss of the collection.
    """
    weights = dict(loss_weights) if loss_weights else None
    if weights:
        known = collection.loss_weights()
        unknown = [name for name in weights if name not in known]
        if unknown:
            raise ConfigError(
                f"loss_weights names unknown losses {unknown}; the collection's losses are {list(known)}."
            )
    return weights
