"""The warnings of other libraries that a user of this one cannot act on, silenced by exact message and module.

Lightning 2.6 builds its dataloader trees with torch's ``LeafSpec``, which torch 2.14 deprecates: every ``fit``,
``validate``, ``test`` and ``predict`` warns "``isinstance(treespec, LeafSpec)`` is deprecated" from inside
Lightning. Nothing in a user's code causes it and nothing in it can avoid it, so it is hidden: only this message,
only from that Lightning module. Remove the filter once Lightning stops warning (its test then fails: see
tests/lightning/test_newcomer_warnings.py).

Under DDP, Lightning recommends ``sync_dist=True`` for every tensor logged on epoch level without it. The epoch
values that :class:`~torchbricks_lightning.lightning.LightningBrickCollection` logs that way (its ``train/``,
``validation/`` and ``test/`` keys) are computed from states that torchmetrics has already synchronised across the
processes, so the advice is wrong for them and is hidden for those keys only (tested in
tests/reliability/test_distributed_multitask.py).

Example:
    >>> [f"{action} {category.__name__}" for action, _, category, module, _ in FILTERS]
    ['ignore FutureWarning', 'ignore PossibleUserWarning']
"""

from __future__ import annotations

import re
import warnings

from pytorch_lightning.utilities.warnings import PossibleUserWarning

__all__ = ["FILTERS", "install"]

FILTERS = [
    (
        "ignore",
        re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
        FutureWarning,
        r"pytorch_lightning\.utilities\._pytree",
        0,
    ),
    (
        "ignore",
        r"It is recommended to use `self\.log\('(train|validation|test)/[^']*', \.\.\., sync_dist=True\)`",
        PossibleUserWarning,
        r"pytorch_lightning\.trainer\.connectors\.logger_connector\.result",
        0,
    ),
]
"""``warnings.filterwarnings`` arguments: action, message, category, module, line."""


def install() -> None:
    """Add the filters (once each: ``warnings.filterwarnings`` itself drops an exact duplicate)."""
    for action, message, category, module, line in FILTERS:
        warnings.filterwarnings(action, message=message, category=category, module=module, lineno=line)  # type: ignore[arg-type]
