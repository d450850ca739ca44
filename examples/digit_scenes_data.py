"""Digit scenes: canvases with several of scikit-learn's handwritten digits, and three tasks' labels (offline).

Each scene is a grey canvas ``(1, size, size)`` of faint noise with 1 to ``max_digits`` digits, upscaled from
scikit-learn's 8x8 images to a random side and placed at random where they do not overlap. Its labels:

- ``boxes (max_digits, 4)`` and ``labels (max_digits,)``: each digit's ink box (``xyxy`` pixels) and its class, in
  the padded form of :func:`~torchbricks_lightning.bag_of_bricks.pad_detection_targets` (padding rows -100);
- ``ink (size, size)``: the per-pixel ink mask (1 where the upscaled digit is darker than half the scale);
- ``depth (size, size)``: a synthetic depth map. A digit is a card seen in perspective, so its depth sets its size:
  a digit drawn ``side`` pixels tall is at depth ``DEPTH_SCALE / side`` (the bigger, the nearer), its ink pixels at
  that depth; the background is far, at ``FAR``.

:class:`DigitScenesDataModule` draws the scenes from the digits of one split of
:class:`~torchbricks_lightning.datamodules.DigitsDataModule` (so test scenes show digits never seen in training),
and its training split carries only the labels it is asked for: two of them, one with ``labels=["boxes"]`` and one
with ``labels=["ink", "depth"]``, are the two partially labelled datasets that
:class:`~torchbricks_lightning.datamodules.MultiTaskDataModule` mixes. Validation and test scenes carry every
label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import Dataset

from torchbricks_lightning.bag_of_bricks import pad_detection_targets
from torchbricks_lightning.datamodules import DigitsDataModule, Split, SplitDataModule
from torchbricks_lightning.errors import ConfigError

__all__ = ["DEPTH_SCALE", "DIGIT_NAMES", "FAR", "LABEL_GROUPS", "DigitScenesDataModule", "render_scenes"]

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FAR = 10.0
"""The depth of the background."""
DEPTH_SCALE = 128.0
"""A digit ``side`` pixels tall is at depth ``DEPTH_SCALE / side``: 8 for 16 pixels, 4 for 32."""
LABEL_GROUPS = {"boxes": ("boxes", "labels"), "ink": ("ink",), "depth": ("depth",)}
"""The names each label group adds to a sample."""
_PLACEMENT_TRIES = 30


def _place(side: int, size: int, taken: list[tuple[int, int, int]], generator: torch.Generator) -> tuple[int, int]:
    """A free top-left corner for a ``side`` square (``(-1, -1)`` when none was found)."""
    for _ in range(_PLACEMENT_TRIES):
        x, y = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
        if all(x + side <= ox or ox + oside <= x or y + side <= oy or oy + oside <= y for ox, oy, oside in taken):
            return x, y
    return -1, -1


def render_scenes(
    images: torch.Tensor,
    digits: torch.Tensor,
    count: int,
    size: int = 64,
    max_digits: int = 3,
    sides: tuple[int, int] = (16, 32),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``count`` scenes drawn from ``images`` ``(N, 1, 8, 8)`` in ``[0, 1]`` with their ``digits`` ``(N,)``.

    Args:
        images: the digit images.
        digits: their classes.
        count: the number of scenes.
        size: the canvas side in pixels.
        max_digits: at most this many digits per scene (at least one each).
        sides: the smallest and largest side of a digit, in pixels.
        seed: the seed: the same arguments give the same scenes.

    Returns:
        ``{"raw", "boxes", "labels", "ink", "depth"}``: ``(count, 1, size, size)`` floats, ``(count, max_digits, 4)``,
        ``(count, max_digits)`` long, ``(count, size, size)`` long and ``(count, size, size)`` floats.

    Raises:
        ConfigError: ``sides`` that do not fit the canvas, or ``max_digits < 1``.

    Example:
        >>> scenes = render_scenes(torch.rand(5, 1, 8, 8), torch.arange(5), count=2, size=32, sides=(16, 16))
        >>> {name: tuple(value.shape) for name, value in scenes.items()}
        {'raw': (2, 1, 32, 32), 'boxes': (2, 3, 4), 'labels': (2, 3), 'ink': (2, 32, 32), 'depth': (2, 32, 32)}
        >>> sorted(scenes["depth"].unique().tolist()), bool((scenes["labels"][:, 0] >= 0).all())  # 128 / 16, far
        ([8.0, 10.0], True)
    """
    low, high = sides
    if not 8 <= low <= high <= size or max_digits < 1:
        raise ConfigError(
            f"render_scenes: expected 8 <= sides[0] <= sides[1] <= size and max_digits >= 1, but got sides {sides}, "
            f"size {size} and max_digits {max_digits}. Give digit sides that fit the canvas."
        )
    generator = torch.Generator().manual_seed(seed)
    raw = torch.rand(count, 1, size, size, generator=generator) * 0.15
    ink = torch.zeros(count, size, size, dtype=torch.long)
    depth = torch.full((count, size, size), FAR)
    annotations: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for scene in range(count):
        wanted = int(torch.randint(1, max_digits + 1, (), generator=generator))
        taken: list[tuple[int, int, int]] = []
        boxes, labels = [], []
        for _ in range(wanted):
            side = int(torch.randint(low, high + 1, (), generator=generator))
            x, y = _place(side, size, taken, generator)
            if x < 0:
                continue
            index = int(torch.randint(0, len(images), (), generator=generator))
            patch = F.interpolate(images[index : index + 1], size=(side, side), mode="bilinear", align_corners=False)
            patch = patch[0, 0].clamp(0.0, 1.0)
            mask = patch > 0.5
            if not mask.any():
                continue
            taken.append((x, y, side))
            window = (slice(y, y + side), slice(x, x + side))
            raw[scene, 0][window] = torch.maximum(raw[scene, 0][window], patch)
            ink[scene][window] |= mask.long()
            depth[scene][window] = torch.where(mask, DEPTH_SCALE / side, depth[scene][window])
            rows, columns = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
            boxes.append([x + int(columns[0]), y + int(rows[0]), x + int(columns[-1]) + 1, y + int(rows[-1]) + 1])
            labels.append(int(digits[index]))
        annotations.append((torch.tensor(boxes, dtype=torch.float32).view(-1, 4), torch.tensor(labels).long()))
    padded_boxes, padded_labels = pad_detection_targets(annotations, max_objects=max_digits)
    return {"raw": raw, "boxes": padded_boxes, "labels": padded_labels, "ink": ink, "depth": depth}


class _Scenes(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, tensors: dict[str, torch.Tensor], names: Sequence[str]) -> None:
        self.tensors = {name: tensors[name] for name in names}
        self.length = len(tensors["raw"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


class DigitScenesDataModule(SplitDataModule):
    """Digit scenes whose training split carries only some of the labels (``raw`` always).

    Args:
        labels: the label groups of the training scenes, among ``"boxes"`` (``boxes`` and ``labels``), ``"ink"``
            and ``"depth"``; validation and test scenes carry all three.
        train_scenes: the number of training scenes.
        val_scenes: the number of validation scenes (0: none).
        test_scenes: the number of test scenes (0: none).
        size: the canvas side in pixels.
        max_digits: at most this many digits per scene.
        sides: the smallest and largest side of a digit, in pixels.
        batch_size: the batch size.
        seed: the seed of the scenes and of the training order (the digits' own split is fixed).
        num_workers: dataloader workers.

    Raises:
        ConfigError: an unknown label group, or no label group.

    Example:
        >>> data = DigitScenesDataModule(labels=["boxes"], train_scenes=4, val_scenes=2, test_scenes=2, size=32,
        ...                              sides=(8, 16), batch_size=4)
        >>> sorted(next(iter(data.train_dataloader()))), sorted(data.split_dataset("val")[0])
        (['boxes', 'labels', 'raw'], ['boxes', 'depth', 'ink', 'labels', 'raw'])
    """

    def __init__(
        self,
        labels: Sequence[str] = ("boxes", "ink", "depth"),
        train_scenes: int = 1000,
        val_scenes: int = 200,
        test_scenes: int = 200,
        size: int = 64,
        max_digits: int = 3,
        sides: tuple[int, int] = (16, 32),
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        unknown = [group for group in labels if group not in LABEL_GROUPS]
        if unknown or not labels:
            raise ConfigError(
                f"DigitScenesDataModule: expected labels among {list(LABEL_GROUPS)} (at least one), but got "
                f"{list(labels)}."
            )
        self.labels = list(labels)
        self.counts: dict[Split, int] = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
        self.size, self.max_digits, self.sides = size, max_digits, (int(sides[0]), int(sides[1]))
        self.scenes: dict[str, dict[str, torch.Tensor]] = {}

    def prepare_data(self) -> None:
        DigitsDataModule().prepare_data()  # fails early, with the install hint, if scikit-learn is missing

    def setup(self, stage: str | None = None) -> None:
        if self.scenes:
            return
        digits = DigitsDataModule(seed=0)  # the same digit split for every scene source: test digits stay unseen
        digits.setup()
        for offset, (split, count) in enumerate(self.counts.items()):
            source = digits.splits[split]
            seed = self.seed * 3 + offset  # one stream per split and seed
            self.scenes[split] = render_scenes(
                source["raw"], source["targets"], count, self.size, self.max_digits, self.sides, seed
            )

    def split_dataset(self, split: Split) -> _Scenes:
        self.setup()
        groups = self.labels if split == "train" else list(LABEL_GROUPS)
        names = ["raw", *(name for group in groups for name in LABEL_GROUPS[group])]
        return _Scenes(self.scenes[split], names)
