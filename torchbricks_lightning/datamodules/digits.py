"""Handwritten digits that ship with scikit-learn: a real dataset that works offline (1,797 8x8 images)."""

from __future__ import annotations

import torch

from torchbricks_lightning.datamodules.arrays import NamedColumns
from torchbricks_lightning.datamodules.base import Split, SplitDataModule
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.labels import IGNORE_INDEX

__all__ = ["DigitsDataModule", "load_digits_tensors"]


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as ``(images (N, 1, 8, 8) in [0, 1], digits (N,))`` (no download).

    Raises:
        ModuleNotFoundError: scikit-learn is missing (``pip install torchbricks-lightning[demo]``).
    """
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "The digits dataset ships with scikit-learn: pip install 'torchbricks-lightning[demo]' "
            "(or pip install scikit-learn)."
        ) from err
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.as_tensor(bunch.target, dtype=torch.int64)


class DigitsDataModule(SplitDataModule):
    """scikit-learn's handwritten digits with a deterministic, stratified train/val/test split.

    Batches are dicts: ``raw`` (images ``(B, 1, 8, 8)`` in ``[0, 1]``), ``targets`` (the digit), and ``parity``
    (0 for even digits, 1 for odd), a second label for multi-task recipes. With ``with_foreground=True`` they also
    hold ``foreground``, a per-pixel mask ``(B, 8, 8)`` (1 where the ink is darker than half the scale, else 0), a
    dense task derived from the image. With ``labelled_fraction < 1`` only that share of the training images (of
    each digit, chosen by ``seed``) keeps its digit label; the others have ``targets = -100`` (a missing label),
    while validation and test keep every label.

    The loaders are those of :class:`SplitDataModule`: a resumable training loader whose order depends on
    ``(seed, epoch)`` only, and evaluation loaders that hand every image to exactly one process under DDP.

    :attr:`splits` holds the tensors of each split, ``{"train": {"raw": ..., "targets": ...}, "val": ..., "test":
    ...}``; the digits are loaded and split on first use (by :meth:`setup`, a loader, or reading :attr:`splits`).

    Args:
        batch_size: the batch size.
        val_fraction: the share of each digit held out for validation.
        test_fraction: the share of each digit held out for testing.
        seed: the seed of the split and of the training order.
        num_workers: dataloader workers.
        labelled_fraction: the share of training images that keep their digit label, in ``(0, 1]``.
        with_foreground: add the per-pixel ``foreground`` mask.

    Example:
        >>> data = DigitsDataModule(labelled_fraction=0.3, with_foreground=True)
        >>> batch = next(iter(data.train_dataloader()))
        >>> sorted(batch), tuple(batch["foreground"].shape[1:])
        (['foreground', 'parity', 'raw', 'targets'], (8, 8))
        >>> labelled = data.splits["train"]["targets"] != -100
        >>> round(float(labelled.float().mean()), 2), bool((data.splits["val"]["targets"] != -100).all())
        (0.3, True)
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        labelled_fraction: float = 1.0,
        with_foreground: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if not 0 < labelled_fraction <= 1:
            raise ConfigError(f"Expected labelled_fraction in (0, 1], but got {labelled_fraction!r}.")
        self.labelled_fraction = float(labelled_fraction)
        self.with_foreground = bool(with_foreground)
        if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"Expected val_fraction and test_fraction in [0, 1) summing below 1, but got {val_fraction} and "
                f"{test_fraction}."
            )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self._splits: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def splits(self) -> dict[str, dict[str, torch.Tensor]]:
        """The tensors of each split by name (``train``, ``val``, ``test``), loaded and split on first use."""
        self.setup()
        return self._splits

    def prepare_data(self) -> None:
        load_digits_tensors()  # fails early, with the install hint, if scikit-learn is missing

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        images, digits = load_digits_tensors()
        generator = torch.Generator().manual_seed(self.seed)
        indices: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for digit in range(10):
            candidates = torch.nonzero(digits == digit).flatten()
            members = candidates[torch.randperm(len(candidates), generator=generator)].tolist()
            n_test = round(len(members) * self.test_fraction)
            n_val = round(len(members) * self.val_fraction)
            indices["test"] += members[:n_test]
            indices["val"] += members[n_test : n_test + n_val]
            indices["train"] += members[n_test + n_val :]
        unlabelled: set[int] = set()
        if self.labelled_fraction < 1:
            for digit in range(10):
                members = [index for index in indices["train"] if int(digits[index]) == digit]
                kept = round(len(members) * self.labelled_fraction)
                shuffled = torch.randperm(len(members), generator=generator).tolist()
                unlabelled.update(members[position] for position in shuffled[kept:])
        for split, chosen in indices.items():
            order = torch.tensor(sorted(chosen), dtype=torch.int64)
            split_images, split_digits = images[order], digits[order]
            targets = split_digits.clone()
            if split == "train" and unlabelled:
                missing = torch.tensor([int(index) in unlabelled for index in order.tolist()])
                targets[missing] = IGNORE_INDEX
            self._splits[split] = {"raw": split_images, "targets": targets, "parity": split_digits % 2}
            if self.with_foreground:
                self._splits[split]["foreground"] = (split_images[:, 0] > 0.5).long()

    def split_dataset(self, split: Split) -> NamedColumns:
        return NamedColumns(self.splits[split])
