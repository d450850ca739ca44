"""A datamodule of generated, learnable images: for smoke tests and recipes that must run offline in seconds."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from torchbricks_lightning.datamodules.base import Split, SplitDataModule
from torchbricks_lightning.errors import ConfigError

__all__ = ["SyntheticImageDataModule"]


def make_images(n: int, num_classes: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images with a class-dependent bright square, and their classes (deterministic for a seed).

    Example:
        >>> images, targets = make_images(4, num_classes=3, image_size=8, seed=0)
        >>> tuple(images.shape), targets.tolist()
        ((4, 3, 8, 8), [2, 0, 2, 0])
    """
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (n,), generator=generator)
    images = torch.rand(n, 3, image_size, image_size, generator=generator) * 0.5
    side = max(1, image_size // 2)
    for index in range(num_classes):
        rows = targets == index
        channel, corner = index % 3, (index // 3) % 4
        top, left = (corner // 2) * (image_size - side), (corner % 2) * (image_size - side)
        images[rows, channel, top : top + side, left : left + side] += 0.5
    return images, targets


class SyntheticImageDataModule(SplitDataModule):
    """Train/val/test splits of generated RGB images; batches are ``(raw, targets)`` tuples.

    The loaders are those of :class:`SplitDataModule`: a resumable training loader whose order depends on
    ``(seed, epoch)`` only, and evaluation loaders that hand every image to exactly one process under DDP.

    Args:
        num_classes: the number of classes (at most 12 distinct patterns).
        image_size: the height and width.
        n_train: training images.
        n_val: validation images.
        n_test: test (and predict) images.
        batch_size: the batch size of every loader.
        seed: the seed of the generated data and of the training order.
    """

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 16,
        n_train: int = 256,
        n_val: int = 64,
        n_test: int = 64,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if not 1 <= num_classes <= 12:
            raise ConfigError(f"Expected num_classes in [1, 12], but got {num_classes}.")
        if image_size < 1 or n_train < 1 or n_val < 0 or n_test < 0:
            raise ConfigError(
                f"Expected image_size >= 1, n_train >= 1 and n_val, n_test >= 0, but got image_size={image_size}, "
                f"n_train={n_train}, n_val={n_val} and n_test={n_test}."
            )
        self.num_classes = num_classes
        self.image_size = image_size
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for offset, (split, size) in enumerate(self.sizes.items()):
            if split not in self.datasets:
                images, targets = make_images(size, self.num_classes, self.image_size, self.seed + offset)
                self.datasets[split] = TensorDataset(images, targets)

    def split_dataset(self, split: Split) -> TensorDataset:
        self.setup()
        return self.datasets[split]
