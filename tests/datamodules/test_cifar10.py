"""CIFAR10DataModule on a tiny CIFAR-10 written in the dataset's own on-disk format (nothing is downloaded).

torchvision's real loading code reads the files: ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` are
pickled dicts with ``"data"`` (uint8, N x 3072, channel-major rows) and ``"labels"``; ``batches.meta`` holds
``"label_names"``. The originals were pickled by Python 2, so their keys load as ``str`` with
``encoding="latin1"`` (what torchvision uses), and str keys are what is written here.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from torchbricks_lightning.cli import main
from torchbricks_lightning.datamodules import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from torchbricks_lightning.errors import ConfigError, DatasetNotAvailableError

TRAIN_FILES = [f"data_batch_{index}" for index in range(1, 6)]
PER_FILE = 8
N_TRAIN = PER_FILE * len(TRAIN_FILES)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECIPE = Path(__file__).resolve().parents[2] / "examples" / "configs" / "cifar10_resnet18.yaml"


def write_tiny_cifar10(root: Path, per_file: int = PER_FILE) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write a tiny CIFAR-10 under ``root/cifar-10-batches-py``; returns ``{file: (data N x 3072, labels)}``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    written: dict[str, tuple[np.ndarray, list[int]]] = {}
    for name in [*TRAIN_FILES, "test_batch"]:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=per_file)]
        with open(folder / name, "wb") as file:
            pickle.dump({"batch_label": name, "labels": labels, "data": data}, file, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_file, "num_vis": 3072}, file, protocol=2)
    return written


def as_images(data: np.ndarray) -> torch.Tensor:
    """CIFAR rows (N x 3072: 1024 R, 1024 G, 1024 B values, each row-major 32 x 32) as (N, 3, 32, 32) in [0, 1]."""
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255)


@pytest.fixture
def cifar(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    return tmp_path, write_tiny_cifar10(tmp_path)


def _datamodule(root: Path, **kwargs: object) -> CIFAR10DataModule:
    options: dict[str, object] = {
        "data_dir": str(root),
        "download": False,
        "verify_checksums": False,
        "val_size": 8,
        "batch_size": 4,
        "num_workers": 0,
    }
    options.update(kwargs)
    return CIFAR10DataModule(**options)  # type: ignore[arg-type]


def _all_train_images(written: dict[str, tuple[np.ndarray, list[int]]]) -> tuple[torch.Tensor, list[int]]:
    data = np.concatenate([written[name][0] for name in TRAIN_FILES])
    labels = [label for name in TRAIN_FILES for label in written[name][1]]
    return as_images(data), labels


# ------------------------------------------------------------------------------------------------ loading
def test_loaders_give_raw_target_batches_in_unit_range(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    datamodule = _datamodule(root)
    datamodule.setup("fit")
    datamodule.setup("test")
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.test_dataloader()):
        raw, targets = next(iter(loader))
        assert raw.shape == (4, 3, 32, 32)
        assert raw.dtype == torch.float32
        assert float(raw.min()) >= 0
        assert float(raw.max()) <= 1
        assert targets.shape == (4,)
        assert targets.dtype == torch.int64
        assert set(targets.tolist()) <= set(range(10))
    assert datamodule.datasets["test"].classes == CLASSES  # type: ignore[attr-defined]


def test_test_images_and_labels_are_the_written_ones(cifar: tuple[Path, dict]) -> None:
    root, written = cifar
    datamodule = _datamodule(root, augment=False)
    datamodule.setup("test")
    raw, targets = next(iter(datamodule.test_dataloader()))
    data, labels = written["test_batch"]
    expected = as_images(data)
    # Channel-major rows: the first 1024 values are red, row by row.
    assert torch.equal(raw[0, 0, 0, :], torch.from_numpy(data[0, :32].astype(np.float32) / 255))
    assert torch.equal(raw[0, 1, 0, 0], torch.tensor(data[0, 1024] / 255, dtype=torch.float32))
    assert torch.equal(raw[0, 2, 31, 31], torch.tensor(data[0, 3071] / 255, dtype=torch.float32))
    assert torch.allclose(raw, expected[:4], atol=1e-7)
    assert targets.tolist() == labels[:4]
    everything = torch.cat([batch[0] for batch in datamodule.test_dataloader()])
    assert torch.allclose(everything, expected, atol=1e-7)


def test_predict_loader_is_the_test_split(cifar: tuple[Path, dict]) -> None:
    root, written = cifar
    datamodule = _datamodule(root, augment=False)
    raw, targets = next(iter(datamodule.predict_dataloader()))  # sets itself up
    assert torch.allclose(raw, as_images(written["test_batch"][0])[:4], atol=1e-7)
    assert targets.tolist() == written["test_batch"][1][:4]


# ------------------------------------------------------------------------------------------------ split
def _split_indices(datamodule: CIFAR10DataModule) -> tuple[list[int], list[int]]:
    datamodule.setup("fit")
    return list(datamodule.datasets["train"].indices), list(datamodule.datasets["val"].indices)  # type: ignore[attr-defined]


def test_train_val_split_sizes_and_no_overlap(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    train, val = _split_indices(_datamodule(root))
    assert len(train) == N_TRAIN - 8
    assert len(val) == 8
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(N_TRAIN))


def test_split_is_deterministic_for_a_seed_and_changes_with_it(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    first = _split_indices(_datamodule(root, seed=3))
    again = _split_indices(_datamodule(root, seed=3))
    other = _split_indices(_datamodule(root, seed=4))
    assert first == again
    assert first[1] != other[1]
    assert set(first[1]) != set(other[1])


def test_validation_images_are_the_held_out_training_images(cifar: tuple[Path, dict]) -> None:
    root, written = cifar
    datamodule = _datamodule(root)  # augmentation on: it must not touch validation images
    _, val = _split_indices(datamodule)
    images, labels = _all_train_images(written)
    raw = torch.cat([batch[0] for batch in datamodule.val_dataloader()])
    targets = torch.cat([batch[1] for batch in datamodule.val_dataloader()])
    assert torch.allclose(raw, images[val], atol=1e-7)
    assert targets.tolist() == [labels[index] for index in val]


def test_augmentation_changes_training_images_only(cifar: tuple[Path, dict]) -> None:
    root, written = cifar
    images, labels = _all_train_images(written)
    augmented = _datamodule(root)
    train, _ = _split_indices(augmented)
    changed = 0
    for position, index in enumerate(train):
        image, label = augmented.datasets["train"][position]
        assert image.shape == (3, 32, 32)
        assert label == labels[index]
        changed += not torch.allclose(image, images[index], atol=1e-7)
    assert changed >= len(train) // 2, f"only {changed} of {len(train)} training images were augmented"

    plain = _datamodule(root, augment=False)
    train_plain, _ = _split_indices(plain)
    for position, index in enumerate(train_plain):
        image, _ = plain.datasets["train"][position]
        assert torch.allclose(image, images[index], atol=1e-7)

    augmented.setup("test")
    test_raw = torch.cat([batch[0] for batch in augmented.test_dataloader()])
    assert torch.allclose(test_raw, as_images(written["test_batch"][0]), atol=1e-7)


def test_normalize_uses_the_cifar10_statistics(cifar: tuple[Path, dict]) -> None:
    root, written = cifar
    datamodule = _datamodule(root, normalize=True)
    datamodule.setup("test")
    raw, _ = next(iter(datamodule.test_dataloader()))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = (as_images(written["test_batch"][0])[:4] - mean) / std
    assert torch.allclose(raw, expected, atol=1e-5)
    assert float(raw.min()) < 0  # no longer in [0, 1]


# ------------------------------------------------------------------------------------------------ errors
def test_checksums_reject_hand_made_files_and_say_where_the_data_goes(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    datamodule = CIFAR10DataModule(data_dir=str(root), download=False, val_size=8, num_workers=0)
    assert datamodule.verify_checksums  # the default
    with pytest.raises(DatasetNotAvailableError) as info:
        datamodule.setup("fit")
    message = str(info.value)
    assert str(root / "cifar-10-batches-py") in message
    assert "corrupted" in message
    assert "cifar-10-python.tar.gz" in message
    assert "download=False" in message
    assert isinstance(info.value, OSError)  # the environment's failure, not a bad value
    assert not isinstance(info.value, ValueError)


def test_empty_folder_without_download_names_the_folder(tmp_path: Path) -> None:
    empty = tmp_path / "nothing_here"
    datamodule = CIFAR10DataModule(data_dir=str(empty), download=False, verify_checksums=False, num_workers=0)
    datamodule.prepare_data()  # download=False: nothing to fetch, nothing raised yet
    with pytest.raises(DatasetNotAvailableError, match="nothing_here") as info:
        datamodule.setup("test")
    assert str(empty / "cifar-10-batches-py") in str(info.value)
    assert "download=False" in str(info.value)


def test_missing_file_is_not_available(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotAvailableError, match="cifar-10-batches-py"):
        _datamodule(root).setup("fit")


def test_val_size_too_large_raises(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    with pytest.raises(ConfigError, match=r"val_size=40 .*40"):
        _datamodule(root, val_size=N_TRAIN).setup("fit")
    with pytest.raises(ConfigError, match="val_size"):
        _datamodule(root, val_size=-1)
    train, val = _split_indices(_datamodule(root, val_size=N_TRAIN - 1))
    assert (len(train), len(val)) == (1, N_TRAIN - 1)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_cifar10_recipe_trains_through_the_cli_and_exports_onnx(
    cifar: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = cifar
    run = root / "run"
    run.mkdir()
    monkeypatch.chdir(run)  # anything relative lands in tmp, never in the repository
    recipe = yaml.safe_load(RECIPE.read_text())
    (checkpoint,) = [c for c in recipe["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    checkpoint["init_args"]["dirpath"] = str(run / "checkpoints")
    config = run / "cifar10_resnet18.yaml"
    config.write_text(yaml.safe_dump(recipe))
    arguments = [
        "fit",
        "--config",
        str(config),
        *("--data.init_args.data_dir", str(root)),
        *("--data.init_args.download", "false"),
        *("--data.init_args.verify_checksums", "false"),
        *("--data.init_args.val_size", "8"),
        *("--data.init_args.batch_size", "4"),
        *("--data.init_args.num_workers", "0"),
        *("--trainer.max_steps", "2"),
        # Stopping mid-epoch (max_steps) skips validation, so ModelCheckpoint (monitoring a validation metric)
        # would save nothing: end the epoch at step 2.
        *("--trainer.limit_train_batches", "2"),
        *("--trainer.limit_val_batches", "1"),
        *("--trainer.enable_progress_bar", "false"),
        *("--trainer.default_root_dir", str(run)),
        *("--trainer.accelerator", "cpu"),
    ]
    monkeypatch.setattr("sys.argv", ["torchbricks-lightning"])
    assert main(arguments) == 0
    assert (run / "checkpoints" / "best.ckpt").is_file()
    path_onnx = run / "checkpoints" / "classify.onnx"  # the recipe writes one file per head: "{head}.onnx"
    assert path_onnx.is_file()
    session = onnxruntime.InferenceSession(str(path_onnx), providers=["CPUExecutionProvider"])
    assert [model_input.name for model_input in session.get_inputs()] == ["raw"]
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    logits, probabilities, predictions = session.run(
        ["classify/logits", "classify/probabilities", "classify/class_prediction"], {"raw": images}
    )
    assert logits.shape == (2, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert predictions.tolist() == logits.argmax(axis=1).tolist()


class _Payload:
    """What a malicious pickle could build: any importable callable."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.getenv, ("HOME",))


def test_a_batch_that_builds_anything_but_plain_types_and_arrays_is_refused(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as file:
        pickle.dump({"labels": [0], "data": _Payload()}, file, protocol=2)
    with pytest.raises(DatasetNotAvailableError, match=r"'test_batch' asks to build .*getenv.*not a CIFAR-10 batch"):
        _datamodule(root).setup("test")


def test_a_batch_without_its_fields_names_them(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as file:
        pickle.dump({"data": np.zeros((1, 3072), dtype=np.uint8)}, file, protocol=2)
    with pytest.raises(DatasetNotAvailableError, match=r"'test_batch' lacks \['labels'\]"):
        _datamodule(root).setup("test")


def test_the_package_overrides_no_torchvision_dataset_internals() -> None:
    import inspect

    from torchbricks_lightning.datamodules import cifar10, cifar10_format

    for module in (cifar10, cifar10_format):
        source = inspect.getsource(module)
        assert "_check_integrity" not in source
        assert "_load_meta" not in source
