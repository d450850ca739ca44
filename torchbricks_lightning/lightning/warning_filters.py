"""The warnings of other libraries that a user of this one cannot act on, silenced by exact message and module.

Lightning 2.6 builds its dataloader trees with torch's ``LeafSpec``, which torch 2.14 deprecates: every ``fit``,
``validate``, ``test`` and ``predict`` warns "``isinstance(treespec, LeafSpec)`` is deprecated" from inside
Lightning. Nothing in a user's code causes it and nothing in it can avoid it, so it is hidden: only this message,
only from that Lightning module. Remove the filter once Lightning stops warning (its test then fails: see
tests/lightning/test_newcomer_warnings.py).

Example:
    >>> [f"{action} {category.__name__}" for action, _, category, module, _ in FILTERS]
    ['ignore FutureWarning']
"""

from __future__ import annotations

import re
import warnings

__all__ = ["FILTERS", "install"]

FILTERS = [
    (
        "ignore",
        re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
        FutureWarning,
        r"pytorch_lightning\.utilities\._pytree",
        0,
    ),
]
"""``warnings.filterwarnings`` arguments: action, message, category, module, line."""


def install() -> None:
    """Add the filters (once each: ``warnings.filterwarnings`` itself drops an exact duplicate)."""
    for action, message, category, module, line in FILTERS:
        warnings.filterwarnings(action, message=message, category=category, module=module, lineno=line)  # type: ignore[arg-type]
