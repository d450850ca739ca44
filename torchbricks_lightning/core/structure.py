"""How a collection learns that its cached stage plans are stale: owners are told, nothing is polled.

A collection builds one plan per stage and reuses it for every call. What shapes a plan is each brick's
:class:`~torchbricks_lightning.core.bricks.BrickSpec` (names, alive stages, losses, returned metrics) and which
bricks the collection holds. Both change only through code that calls :meth:`StructureNode.structure_changed`: a
brick when its spec is replaced, a collection when a member is added or removed. The change travels up to every
collection holding the node (a brick may sit in several), each drops its plans, and the next call builds new ones.
A call therefore pays nothing to find out whether its plan is still valid.

Owners are held weakly and are not pickled or deep-copied; a collection re-registers itself with its members when
it is unpickled or copied.

How deep collections may nest is part of the structure too: at most :data:`MAX_NESTING` levels, checked by
:func:`check_nesting` before a nested dict is built, so a deeper tree is refused with a clear error.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from torch import nn

from torchbricks_lightning.errors import BrickDefinitionError

__all__ = ["MAX_NESTING", "StructureNode", "check_nesting", "nesting_error"]

_OWNERS = "_structure_owners"

MAX_NESTING = 64
"""How many levels of dicts (or collections) bricks may be nested in below a collection's root. Deeper trees are
refused when they are built: torch walks modules recursively (``copy.deepcopy``, pickling, ``state_dict``), and a few
hundred levels exhaust Python's stack there; 64 leaves room for the frames of Lightning's loops and callbacks."""


def nesting_error(path: str) -> BrickDefinitionError:
    """The error of a tree nested past :data:`MAX_NESTING` levels; ``path`` is the level where the limit is passed."""
    return BrickDefinitionError(
        f"Bricks are nested more than {MAX_NESTING} levels deep: {path!r} is level {MAX_NESTING + 1}. A "
        f"BrickCollection takes at most {MAX_NESTING} levels of dicts (or collections) below its root; flatten the "
        "dict, e.g. name a brick 'block3_conv' rather than giving each part a level of its own."
    )


def check_nesting(name: str, value: Any) -> None:
    """Refuse ``value`` (a dict or collection to put at ``name``) if it nests more than :data:`MAX_NESTING` levels.

    Each dict and each ``nn.ModuleDict`` (a collection) is a level. The tree is walked with a stack, so one of any
    depth, or a dict that holds itself, is refused with a clear error, never a ``RecursionError``.

    Raises:
        BrickDefinitionError: the tree is too deep; the message names the path where the limit is passed.

    Example:
        >>> tree = {"leaf": None}
        >>> for level in range(MAX_NESTING):
        ...     tree = {f"d{level}": tree}
        >>> check_nesting("top", tree)
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.BrickDefinitionError: Bricks are nested more than 64 levels deep: 'top/d63/.../d0' is level 65. ...
    """  # noqa: E501 - a doctest's expected output is one line
    stack: list[tuple[str, Any, int]] = [(name, value, 1)]
    while stack:
        path, members, depth = stack.pop()
        if depth > MAX_NESTING:
            raise nesting_error(path)
        for member_name, member in members.items():
            if isinstance(member, (Mapping, nn.ModuleDict)):
                stack.append((f"{path}/{member_name}", member, depth + 1))


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
