"""CIFAR-10's own on-disk format, read by a local ``Dataset``: the batches of ``cifar-10-python.tar.gz``.

The folder ``cifar-10-batches-py`` holds ``data_batch_1`` to ``data_batch_5``, ``test_batch`` and ``batches.meta``.
Each batch is a pickled dict with ``"data"`` (a ``uint8`` array, one channel-major 3072-value row per image) and
``"labels"``; ``batches.meta`` holds ``"label_names"``. The originals were pickled by Python 2, so they load with
``encoding="latin1"``.

Pickles can build any object, so :func:`load_batch` unpickles with a restricted unpickler: it builds plain types
(dicts, lists, strings, numbers) and NumPy arrays, and refuses any other class. Checksums are CIFAR-10's published
md5s, checked with torchvision's public ``check_integrity``; the download is torchvision's public
``download_and_extract_archive``.

Example:
    >>> import io, pickle
    >>> import numpy as np
    >>> payload = pickle.dumps({"labels": [3], "data": np.zeros((1, 3072), dtype=np.uint8)}, protocol=2)
    >>> batch = load_batch(io.BytesIO(payload), "data_batch_1")
    >>> batch["labels"], batch["data"].shape
    ([3], (1, 3072))
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from torchbricks_lightning.errors import DatasetNotAvailableError

__all__ = ["ARCHIVE", "BASE_FOLDER", "CIFAR10Batches", "download_cifar10", "load_batch", "missing_and_corrupted"]

BASE_FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
_URL = f"https://www.cs.toronto.edu/~kriz/{ARCHIVE}"
_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_FILES = (
    ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
    ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
    ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
    ("data_batch_4", "634d18415352ddfa80567beed471001a"),
    ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
)
TEST_FILES = (("test_batch", "40351d587109b95175f43aff81a1287e"),)
META_FILE = ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888")

# What a pickled NumPy array needs: its rebuild function, the array class and its dtype (NumPy 1 and 2 spellings);
# and ``_codecs.encode``, which protocol 2 pickles from Python 3 use to rebuild bytes (it encodes a string, nothing
# more).
_ALLOWED_GLOBALS = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain types and NumPy arrays only."""

    def __init__(self, file: IO[bytes], name: str) -> None:
        super().__init__(file, encoding="latin1")
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DatasetNotAvailableError(
            f"CIFAR-10 file {self.name!r} asks to build {module}.{name}, which a CIFAR-10 batch never holds (only "
            "dicts, lists, strings, numbers and NumPy arrays); it is not a CIFAR-10 batch. Delete it and extract "
            f"{ARCHIVE} again."
        )


def load_batch(file: IO[bytes], name: str) -> dict[str, Any]:
    """Unpickle one CIFAR-10 file (a batch or ``batches.meta``), building plain types and NumPy arrays only.

    Raises:
        DatasetNotAvailableError: the file holds anything else, or is not a dict.
    """
    content = _PlainUnpickler(file, name).load()
    if not isinstance(content, dict):
        raise DatasetNotAvailableError(
            f"CIFAR-10 file {name!r} holds a {type(content).__name__}, not a dict; extract {ARCHIVE} again."
        )
    return content


def _with_keys(content: dict[str, Any], name: str, *keys: str) -> dict[str, Any]:
    missing = [key for key in keys if key not in content]
    if missing:
        raise DatasetNotAvailableError(
            f"CIFAR-10 file {name!r} lacks {missing} (it has {sorted(map(str, content))}); it is not a CIFAR-10 "
            f"file. Extract {ARCHIVE} again."
        )
    return content


def missing_and_corrupted(folder: Path, verify_checksums: bool) -> tuple[list[str], list[str]]:
    """The CIFAR-10 files of ``folder`` that are missing, and those whose md5 differs (checked if
    ``verify_checksums``)."""
    names = [(name, md5) for name, md5 in (*TRAIN_FILES, *TEST_FILES, META_FILE)]
    missing = [name for name, _ in names if not (folder / name).is_file()]
    corrupted = [
        name
        for name, md5 in names
        if verify_checksums and name not in missing and not check_integrity(str(folder / name), md5)
    ]
    return missing, corrupted


def download_cifar10(root: Path) -> None:
    """Download and extract ``cifar-10-python.tar.gz`` into ``root`` unless every file is there and intact."""
    if missing_and_corrupted(root / BASE_FOLDER, verify_checksums=True) == ([], []):
        return
    download_and_extract_archive(_URL, str(root), filename=ARCHIVE, md5=_ARCHIVE_MD5)


class CIFAR10Batches(Dataset[tuple[Any, int]]):
    """The CIFAR-10 training or test images of ``root/cifar-10-batches-py``, as ``(image, label)`` pairs.

    Each image is a ``PIL.Image`` (32 x 32, RGB) passed through ``transform``, as torchvision's datasets give them.

    Args:
        root: the folder that holds ``cifar-10-batches-py``.
        train: the five training batches (50,000 images) if True, else the test batch (10,000).
        transform: applied to each image.

    Attributes:
        data: the images, ``uint8`` of shape ``(N, 32, 32, 3)``.
        targets: the labels.
        classes: the class names, by label.
    """

    def __init__(self, root: str | Path, train: bool = True, transform: Callable[[Any], Any] | None = None) -> None:
        folder = Path(root) / BASE_FOLDER
        self.transform = transform
        rows: list[np.ndarray] = []
        self.targets: list[int] = []
        for name, _ in TRAIN_FILES if train else TEST_FILES:
            with open(folder / name, "rb") as file:
                batch = _with_keys(load_batch(file, name), name, "data", "labels")
            rows.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            self.targets.extend(int(label) for label in batch["labels"])
        self.data = np.concatenate(rows).transpose(0, 2, 3, 1)  # channel-major rows to HWC images
        with open(folder / META_FILE[0], "rb") as file:
            meta = _with_keys(load_batch(file, META_FILE[0]), META_FILE[0], "label_names")
        self.classes: list[str] = [str(name) for name in meta["label_names"]]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]
