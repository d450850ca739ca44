"""How a collection learns that its cached stage plans are stale: owners are told, nothing is polled.

A collection builds one plan per stage and reuses it for every call. What shapes a plan is each brick's
:class:`~torchbricks_lightning.core.bricks.BrickSpec` (names, alive stages, losses, returned metrics) and which
bricks the collection holds. Both change only through code that calls :meth:`StructureNode.structure_changed`: a
brick when its spec is replaced, a collection when a member is added or removed. The change travels up to every
collection holding the node (a brick may sit in several), each drops its plans, and the next call builds new ones.
A call therefore pays nothing to find out whether its plan is still valid.

Owners are held weakly and are not pickled or deep-copied; a collection re-registers itself with its members when
it is unpickled or copied.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["StructureNode"]

_OWNERS = "_structure_owners"


class StructureNode:
    """Mixin for bricks and collections: remembers the collections holding it and tells them about changes."""

    def _owners(self) -> weakref.WeakSet[Any]:
        owners = self.__dict__.get(_OWNERS)
        if owners is None:
            owners = weakref.WeakSet()
            self.__dict__[_OWNERS] = owners
        return owners

    def add_owner(self, owner: StructureNode) -> None:
        """Register a collection that holds this node and must hear of its changes."""
        self._owners().add(owner)

    def remove_owner(self, owner: StructureNode) -> None:
        """Forget a collection that no longer holds this node."""
        self._owners().discard(owner)

    def structure_changed(self) -> None:
        """Called after anything that shapes a plan changed: tell every collection holding this node."""
        owners = self.__dict__.get(_OWNERS)
        if owners:
            for owner in list(owners):
                owner.structure_changed()

    @staticmethod
    def _without_owners(state: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``state`` (a module's ``__dict__``) without the owners, for pickling and copying."""
        state = dict(state)
        state.pop(_OWNERS, None)
        return state
