"""Multi-task training: partial labels, task balancing and the multi-task score.

Never imports Lightning: ``LightningBrickCollection`` calls into it.
"""

from torchbricks_lightning.multitask.labels import (
    IGNORE_INDEX,
    BrickLabelledLoss,
    check_ignore_index,
    labelled_count_names,
    scale_to_global_counts,
)

__all__ = [
    "IGNORE_INDEX",
    "BrickLabelledLoss",
    "check_ignore_index",
    "labelled_count_names",
    "scale_to_global_counts",
]
