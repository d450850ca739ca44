"""The Lightning layer: a generic LightningModule for brick collections, and safe checkpoint loading."""

from torchbricks_lightning.lightning.checkpoints import (
    CheckpointError,
    UntrustedCheckpointError,
    load_brick_collection_weights,
)
from torchbricks_lightning.lightning.module import LightningBrickCollection, LossNotFiniteError
from torchbricks_lightning.lightning.resume import ResumeStateError

__all__ = [
    "CheckpointError",
    "LightningBrickCollection",
    "LossNotFiniteError",
    "ResumeStateError",
    "UntrustedCheckpointError",
    "load_brick_collection_weights",
]
