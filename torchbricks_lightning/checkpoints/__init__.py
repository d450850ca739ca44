"""Checkpoints as untrusted input: what a checkpoint may ask to build (:mod:`.trust`, :mod:`.config_walk`), reading
one safely (:mod:`.reading`) and Lightning's checkpoint plugin that never leaves a half-written file (:mod:`.io`)."""

from torchbricks_lightning.checkpoints.io import SafeCheckpointIO
from torchbricks_lightning.checkpoints.reading import load_brick_collection_weights

__all__ = ["SafeCheckpointIO", "load_brick_collection_weights"]
