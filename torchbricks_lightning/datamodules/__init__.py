"""Lightning datamodules that yield ``(raw, targets)`` batches for brick collections."""

from torchbricks_lightning.datamodules.synthetic import SyntheticImageDataModule

__all__ = ["SyntheticImageDataModule"]
