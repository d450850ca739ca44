"""CIFAR-10: download into ``data/``, a train/val split, augmentation, ``(raw, targets)`` batches.

The files are read in CIFAR-10's own format by
:class:`~torchbricks_lightning.datamodules.cifar10_format.CIFAR10Batches`, a local ``Dataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import transforms

from torchbricks_lightning.datamodules.base import Split, SplitDataModule
from torchbricks_lightning.datamodules.cifar10_format import (
    ARCHIVE,
    BASE_FOLDER,
    CIFAR10Batches,
    download_cifar10,
    missing_and_corrupted,
)
from torchbricks_lightning.errors import ConfigError, DatasetNotAvailableError

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10DataModule"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 as ``(raw, targets)`` batches, with a deterministic train/val split.

    Images are ``float32`` in ``[0, 1]``. Training images get the standard augmentation (random crop with
    4-pixel padding and horizontal flips). Normalisation belongs in the model, in a ``Preprocessor`` brick with
    :data:`CIFAR10_MEAN` and :data:`CIFAR10_STD`, so an exported ONNX model takes raw images; set
    ``normalize=True`` for models without one.

    The loaders are those of :class:`SplitDataModule`: a resumable training loader whose order and augmentations
    depend on ``(seed, epoch)`` only (not on workers or processes), and evaluation loaders that hand every image to
    exactly one process under DDP.

    Args:
        data_dir: where the dataset lives or is downloaded to (``data/`` by default).
        batch_size: the batch size.
        num_workers: dataloader workers.
        val_size: training images held out for validation.
        seed: the seed of the split, of the training order and of the augmentations.
        download: download the dataset when it is not on disk.
        augment: augment the training images.
        normalize: normalise with the CIFAR-10 statistics in the datamodule.
        verify_checksums: check the files' md5 (turn off only for hand-made samples, e.g. in tests).
    """

    seed_samples = True  # the augmentations draw random numbers: each sample gets a seed of its own

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 2,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        augment: bool = True,
        normalize: bool = False,
        verify_checksums: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if val_size < 0:
            raise ConfigError(f"Expected val_size >= 0, but got {val_size}.")
        self.data_dir = data_dir
        self.val_size = val_size
        self.download = download
        self.verify_checksums = verify_checksums
        finish: list[Any] = [transforms.ToTensor()]
        if normalize:
            finish.append(transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD))
        augmentation: list[Any] = (
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
        )
        self.train_transform = transforms.Compose([*augmentation, *finish])
        self.eval_transform = transforms.Compose(finish)
        self.datasets: dict[str, Dataset[Any]] = {}

    def _dataset(self, train: bool, transform: Any) -> CIFAR10Batches:
        folder = Path(self.data_dir) / BASE_FOLDER
        missing, corrupted = missing_and_corrupted(folder, self.verify_checksums)
        if missing:
            raise DatasetNotAvailableError(
                f"CIFAR-10 is not in {str(folder)!r}: {missing} missing (download={self.download}). Download "
                f"{ARCHIVE} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {self.data_dir!r}, "
                "or run with download=True where the internet is reachable."
            )
        if corrupted:
            raise DatasetNotAvailableError(
                f"CIFAR-10 files are in {str(folder)!r} but {corrupted} fail the md5 check: corrupted or an "
                f"incomplete download (download={self.download}). Delete the folder and download {ARCHIVE} again, "
                "or pass verify_checksums=False for a sample you made yourself."
            )
        return CIFAR10Batches(self.data_dir, train=train, transform=transform)

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            download_cifar10(Path(self.data_dir))
        except (RuntimeError, OSError) as err:
            raise DatasetNotAvailableError(
                f"CIFAR-10 could not be downloaded into {str(Path(self.data_dir) / BASE_FOLDER)!r}: {err}. Download "
                f"{ARCHIVE} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {self.data_dir!r}, "
                "or run where the internet is reachable."
            ) from err

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.datasets:
            train_augmented = self._dataset(train=True, transform=self.train_transform)
            train_plain = self._dataset(train=True, transform=self.eval_transform)
            if self.val_size >= len(train_augmented):
                raise ConfigError(
                    f"val_size={self.val_size} leaves no training images (the training set has {len(train_augmented)})."
                )
            order = torch.randperm(len(train_augmented), generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.datasets["train"] = Subset(train_augmented, order[self.val_size :])
            self.datasets["val"] = Subset(train_plain, order[: self.val_size])
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            self.datasets["test"] = self._dataset(train=False, transform=self.eval_transform)

    def split_dataset(self, split: Split) -> Dataset[Any]:
        if split not in self.datasets:
            self.setup("fit" if split in ("train", "val") else "test")
        return self.datasets[split]
