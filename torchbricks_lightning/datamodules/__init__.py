"""Lightning datamodules whose batches a LightningBrickCollection maps to named inputs."""

from torchbricks_lightning.datamodules.arrays import ArrayDataModule, NamedColumns
from torchbricks_lightning.datamodules.base import Split, SplitDataModule
from torchbricks_lightning.datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from torchbricks_lightning.datamodules.digits import DigitsDataModule
from torchbricks_lightning.datamodules.loading import (
    EvaluationSampler,
    ResumableDataLoader,
    ResumableSampler,
    SeededIndex,
)
from torchbricks_lightning.datamodules.multitask import SAMPLING_MODES, MixtureSampler, MultiTaskDataModule
from torchbricks_lightning.datamodules.synthetic import SyntheticImageDataModule

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "SAMPLING_MODES",
    "ArrayDataModule",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "EvaluationSampler",
    "MixtureSampler",
    "MultiTaskDataModule",
    "NamedColumns",
    "ResumableDataLoader",
    "ResumableSampler",
    "SeededIndex",
    "Split",
    "SplitDataModule",
    "SyntheticImageDataModule",
]
