"""The warnings of other libraries that a user of this one cannot act on, silenced by exact message and module.

Nothing is filtered at import: :class:`~torchbricks_lightning.lightning.LightningBrickCollection` calls
:func:`install` when a Trainer sets it up (its ``setup`` hook), with the keys it logs itself.

Lightning 2.6 builds its dataloader trees with torch's ``LeafSpec``, which torch 2.14 deprecates: every ``fit``,
``validate``, ``test`` and ``predict`` warns "``isinstance(treespec, LeafSpec)`` is deprecated" from inside
Lightning. Nothing in a user's code causes it and nothing in it can avoid it, so it is hidden: only this message,
only from that Lightning module. Remove the filter once Lightning stops warning (its test then fails: see
tests/lightning/logging/test_newcomer_warnings.py).

Under DDP, Lightning recommends ``sync_dist=True`` for every tensor logged on epoch level without it. The epoch
values that the module logs that way (its metrics, the total of counted losses, Δm, a balancer's weights) are
computed from states that torchmetrics has already synchronised across the processes, so the advice is wrong for
them and is hidden for those exact keys only (tested in tests/reliability/test_distributed_multitask.py). The same
advice for any other key, such as a user's own ``self.log("train/mine", ...)``, still shows.

Example:
    >>> [f"{action} {category.__name__}" for action, _, category, _, _ in filters(["validation/acc"])]
    ['ignore FutureWarning', 'ignore PossibleUserWarning']
    >>> _, message, *_ = filters(["validation/acc"], per_class=["validation/recall"])[1]
    >>> import re
    >>> [bool(re.match(message, f"It is recommended to use `self.log('{key}', ..., sync_dist=True)`"))
    ...  for key in ("validation/acc", "validation/recall/class_3", "validation/accuracy", "train/mine")]
    [True, True, False, False]
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from pytorch_lightning.utilities.warnings import PossibleUserWarning

__all__ = ["LEAFSPEC_FILTER", "filters", "install"]

Filter = tuple[str, str, type[Warning], str, int]
"""``warnings.filterwarnings`` arguments: action, message, category, module, line."""

LEAFSPEC_FILTER: Filter = (
    "ignore",
    re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
    FutureWarning,
    r"pytorch_lightning\.utilities\._pytree",
    0,
)
_SYNC_ADVICE_MODULE = r"pytorch_lightning\.trainer\.connectors\.logger_connector\.result"


def filters(keys: Iterable[str] = (), per_class: Iterable[str] = ()) -> list[Filter]:
    """The filters for the module's own ``keys``, and the per-class keys (``{key}/class_{i}``) of ``per_class``."""
    patterns = sorted({re.escape(key) for key in keys} | {rf"{re.escape(key)}(?:/class_\d+)?" for key in per_class})
    if not patterns:
        return [LEAFSPEC_FILTER]
    advice = rf"It is recommended to use `self\.log\('(?:{'|'.join(patterns)})', \.\.\., sync_dist=True\)`"
    return [LEAFSPEC_FILTER, ("ignore", advice, PossibleUserWarning, _SYNC_ADVICE_MODULE, 0)]


def install(keys: Iterable[str] = (), per_class: Iterable[str] = ()) -> None:
    """Add the :func:`filters` (once each: ``warnings.filterwarnings`` itself drops an exact duplicate)."""
    for action, message, category, module, line in filters(keys, per_class):
        warnings.filterwarnings(action, message=message, category=category, module=module, lineno=line)  # type: ignore[arg-type]
