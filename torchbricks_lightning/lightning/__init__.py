"""The Lightning layer: a generic LightningModule for brick collections, safe checkpoint loading and saving, and the
pre-fit check."""

from torchbricks_lightning.checkpoints.io import SafeCheckpointIO
from torchbricks_lightning.checkpoints.reading import load_brick_collection_weights
from torchbricks_lightning.lightning.logging import warning_filters as warning_filters  # installed by the module
from torchbricks_lightning.lightning.module import LightningBrickCollection
from torchbricks_lightning.lightning.preflight import check_one_batch

__all__ = [
    "LightningBrickCollection",
    "SafeCheckpointIO",
    "check_one_batch",
    "load_brick_collection_weights",
]
