"""DigitsDataModule (scikit-learn's bundled digits, offline) and SyntheticImageDataModule (generated images)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from torchbricks_lightning.datamodules import DigitsDataModule, SyntheticImageDataModule
from torchbricks_lightning.datamodules.digits import load_digits_tensors
from torchbricks_lightning.datamodules.synthetic import make_images
from torchbricks_lightning.errors import ConfigError

N_DIGITS = 1797
SPLITS = ("train", "val", "test")


def _digits(**kwargs: object) -> DigitsDataModule:
    datamodule = DigitsDataModule(**kwargs)  # type: ignore[arg-type]
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _keys(images: torch.Tensor, targets: torch.Tensor) -> Counter[tuple[object, ...]]:
    """A multiset of (pixels..., digit): splits partition the data exactly when their multisets add up to it."""
    return Counter((*image.flatten().tolist(), int(target)) for image, target in zip(images, targets, strict=True))


# ------------------------------------------------------------------------------------------------ digits
def test_load_digits_tensors() -> None:
    images, digits = load_digits_tensors()
    assert images.shape == (N_DIGITS, 1, 8, 8)
    assert images.dtype == torch.float32
    assert float(images.min()) == 0.0
    assert float(images.max()) == 1.0
    assert digits.dtype == torch.int64
    assert sorted(set(digits.tolist())) == list(range(10))


def test_digits_split_covers_every_image_once() -> None:
    datamodule = _digits()
    images, digits = load_digits_tensors()
    sizes = {split: len(datamodule.splits[split]["targets"]) for split in SPLITS}
    assert sum(sizes.values()) == N_DIGITS
    assert all(size > 0 for size in sizes.values())
    together: Counter[tuple[object, ...]] = Counter()
    for split in SPLITS:
        together += _keys(datamodule.splits[split]["raw"], datamodule.splits[split]["targets"])
    assert together == _keys(images, digits)


@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(0.15, 0.2), (0.1, 0.5), (0.0, 0.3)])
def test_digits_split_is_stratified(val_fraction: float, test_fraction: float) -> None:
    datamodule = _digits(val_fraction=val_fraction, test_fraction=test_fraction)
    _, digits = load_digits_tensors()
    per_digit = Counter(digits.tolist())
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        counts = Counter(datamodule.splits[split]["targets"].tolist())
        for digit in range(10):
            assert abs(counts[digit] - per_digit[digit] * fraction) <= 1, (split, digit, counts[digit])
    if val_fraction == 0:
        assert len(datamodule.splits["val"]["targets"]) == 0


def test_digits_split_is_deterministic_for_a_seed() -> None:
    first, again, other = _digits(seed=5), _digits(seed=5), _digits(seed=6)
    for split in SPLITS:
        for name in ("raw", "targets", "parity"):
            assert torch.equal(first.splits[split][name], again.splits[split][name])
    assert not torch.equal(first.splits["test"]["raw"], other.splits["test"]["raw"])
    assert _keys(first.splits["test"]["raw"], first.splits["test"]["targets"]) != _keys(
        other.splits["test"]["raw"], other.splits["test"]["targets"]
    )


def test_digits_batches_are_dicts_with_parity() -> None:
    datamodule = DigitsDataModule(batch_size=32)
    loaders = {
        "train": datamodule.train_dataloader(),
        "val": datamodule.val_dataloader(),
        "test": datamodule.test_dataloader(),
        "predict": datamodule.predict_dataloader(),
    }
    for name, loader in loaders.items():
        batch = next(iter(loader))
        assert set(batch) == {"raw", "targets", "parity"}, name
        assert batch["raw"].shape == (32, 1, 8, 8)
        assert batch["raw"].dtype == torch.float32
        assert float(batch["raw"].min()) >= 0
        assert float(batch["raw"].max()) <= 1
        assert batch["targets"].shape == (32,)
        assert torch.equal(batch["parity"], batch["targets"] % 2)
    # Every training image comes once per epoch, shuffled.
    seen = torch.cat([batch["targets"] for batch in loaders["train"]])
    assert len(seen) == len(datamodule.splits["train"]["targets"])
    assert Counter(seen.tolist()) == Counter(datamodule.splits["train"]["targets"].tolist())
    assert set(torch.cat([batch["parity"] for batch in loaders["test"]]).tolist()) == {0, 1}


def test_digits_test_loader_matches_the_split_in_order() -> None:
    datamodule = DigitsDataModule(batch_size=100)
    raw = torch.cat([batch["raw"] for batch in datamodule.test_dataloader()])
    assert torch.equal(raw, datamodule.splits["test"]["raw"])


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction"), [(-0.1, 0.2), (0.15, 0.0), (0.15, 1.0), (1.0, 0.2), (0.5, 0.5), (0.6, 0.5)]
)
def test_digits_invalid_fractions_raise(val_fraction: float, test_fraction: float) -> None:
    with pytest.raises(ConfigError, match="val_fraction and test_fraction"):
        DigitsDataModule(val_fraction=val_fraction, test_fraction=test_fraction)


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_shapes_and_sizes() -> None:
    datamodule = SyntheticImageDataModule(num_classes=5, image_size=12, n_train=40, n_val=20, n_test=10, batch_size=8)
    datamodule.setup("fit")
    sizes = {"train": 40, "val": 20, "test": 10}
    for split, size in sizes.items():
        assert len(datamodule.datasets[split]) == size
    loaders = {
        "train": datamodule.train_dataloader(),
        "val": datamodule.val_dataloader(),
        "test": datamodule.test_dataloader(),
        "predict": datamodule.predict_dataloader(),
    }
    for loader in loaders.values():
        raw, targets = next(iter(loader))
        assert raw.shape == (8, 3, 12, 12)
        assert raw.dtype == torch.float32
        assert targets.dtype == torch.int64
        assert int(targets.min()) >= 0
        assert int(targets.max()) < 5
        assert float(raw.min()) >= 0
        assert float(raw.max()) <= 1
    assert sum(len(batch[1]) for batch in loaders["val"]) == 20


def test_synthetic_data_is_deterministic_and_splits_differ() -> None:
    def tensors(seed: int) -> dict[str, torch.Tensor]:
        datamodule = SyntheticImageDataModule(n_train=16, n_val=16, n_test=16, seed=seed)
        datamodule.setup()
        return {split: datamodule.datasets[split].tensors[0] for split in SPLITS}

    first, again, other = tensors(0), tensors(0), tensors(1)
    for split in SPLITS:
        assert torch.equal(first[split], again[split])
        assert not torch.equal(first[split], other[split])
    assert not torch.equal(first["train"], first["val"])
    assert not torch.equal(first["val"], first["test"])


def test_synthetic_images_carry_a_bright_square_per_class() -> None:
    images, targets = make_images(240, num_classes=12, image_size=8, seed=0)
    assert sorted(set(targets.tolist())) == list(range(12))
    for image, target in zip(images, targets, strict=True):
        channel, corner = int(target) % 3, (int(target) // 3) % 4
        top, left = (corner // 2) * 4, (corner % 2) * 4
        square = image[channel, top : top + 4, left : left + 4]
        assert float(square.min()) >= 0.5
        others = image.clone()
        others[channel, top : top + 4, left : left + 4] = 0
        assert float(others.max()) < 0.5


@pytest.mark.parametrize("num_classes", [1, 12])
def test_synthetic_num_classes_bounds_accepted(num_classes: int) -> None:
    datamodule = SyntheticImageDataModule(num_classes=num_classes, n_train=32, n_val=4, n_test=4)
    datamodule.setup()
    assert int(datamodule.datasets["train"].tensors[1].max()) < num_classes


@pytest.mark.parametrize("num_classes", [0, -1, 13])
def test_synthetic_num_classes_out_of_bounds_raise(num_classes: int) -> None:
    with pytest.raises(ConfigError, match=rf"num_classes in \[1, 12\], but got {num_classes}"):
        SyntheticImageDataModule(num_classes=num_classes)
