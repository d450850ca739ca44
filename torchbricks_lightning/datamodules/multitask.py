"""Several datasets, each labelling some of the tasks, as one training stream: :class:`MultiTaskDataModule`.

Every sample is a dict of named tensors. A dataset that lacks a label another dataset has gets it filled with the
missing-label value: ``ignore_index`` (default -100) for an integer label, NaN for a float one, in the shape the
other dataset gives it. The losses and metrics of the bag of bricks skip those (see
:mod:`torchbricks_lightning.multitask.labels`), so one forward pass trains every task on the samples that label it.

How a training epoch is drawn (:class:`MixtureSampler`), from ``(seed, epoch)`` only:

- ``"proportional"``: every sample of every dataset once, in one shuffled order (each dataset in proportion to
  its size);
- ``"temperature"``: each draw picks dataset ``k`` with probability ``n_k^(1/T) / sum_j n_j^(1/T)``, then the next
  sample of that dataset's own shuffled order (reshuffled when it runs out). ``T = 1`` is proportional on average,
  large ``T`` tends to uniform over datasets, so small datasets are seen more often;
- ``"round_robin"``: the datasets take turns, one sample each.

An epoch has ``samples_per_epoch`` samples (default: all the datasets' samples). The sampler is a
:class:`~torchbricks_lightning.datamodules.ResumableSampler` subclass inside a
:class:`~torchbricks_lightning.datamodules.ResumableDataLoader`, so an interrupted epoch resumes at the next batch
and, under DDP, each process takes its share of the same order. The mixture (the mode, the temperature and the
datasets' sizes) is saved with the loader's state: resuming an epoch with another mixture, whose order differs, is
refused with a :class:`~torchbricks_lightning.errors.LoaderStateError` naming what changed.

Validation and test run over each dataset's split in turn, every sample once
(:class:`~torchbricks_lightning.datamodules.EvaluationSampler`); each task's metrics count the datasets that label
it.

Compared with Lightning's ``CombinedLoader``: a ``CombinedLoader`` yields, at every step, one batch *from each*
loader (a dict or tuple of batches, each with its own batch size), and its modes decide when an epoch ends
(``max_size_cycle``, ``min_size``, ...). Here a step gets *one* batch whose samples come from the mixture, collated
together with the missing labels filled, so the model runs one forward pass per step, the sampling ratio is a
parameter, and the stream resumes mid-epoch. Lightning's own ``"sequential"`` combination is what evaluating a list
of loaders does; here the evaluation datasets are concatenated into one loader instead, so the module's steps need
no ``dataloader_idx``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Any, Literal

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.datamodules.base import Split, SplitDataModule
from torchbricks_lightning.datamodules.loading import ResumableDataLoader, ResumableSampler
from torchbricks_lightning.datamodules.samplers import mix_seed
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError
from torchbricks_lightning.multitask.labels import IGNORE_INDEX

__all__ = ["SAMPLING_MODES", "MixtureSampler", "MultiTaskDataModule"]

Sampling = Literal["proportional", "temperature", "round_robin"]
SAMPLING_MODES = ("proportional", "temperature", "round_robin")


class _Sized:
    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class MixtureSampler(ResumableSampler):
    """A :class:`ResumableSampler` over concatenated datasets that draws each epoch from a mixture of them.

    Indices are positions in the concatenation (dataset ``k`` starts at ``sum(sizes[:k])``).

    Args:
        sizes: the number of samples of each dataset.
        sampling: ``"proportional"``, ``"temperature"`` or ``"round_robin"`` (see the module's docstring).
        temperature: ``T`` of ``"temperature"`` sampling.
        samples_per_epoch: the length of an epoch (default: the sum of the sizes).
        seed: the seed of the orders.
        num_replicas: the number of processes (default: the process group's).
        rank: this process's rank (default: the process group's).

    Example:
        >>> sampler = MixtureSampler([6, 2], sampling="round_robin", seed=0)
        >>> order = sampler.order(0)
        >>> len(order), [index >= 6 for index in order[:4]]
        (8, [False, True, False, True])
        >>> [round(p, 3) for p in MixtureSampler([90, 10], sampling="temperature", temperature=2.0).probabilities()]
        [0.75, 0.25]
    """

    def __init__(
        self,
        sizes: Sequence[int],
        sampling: Sampling = "proportional",
        temperature: float = 2.0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if sampling not in SAMPLING_MODES:
            raise ConfigError(f"Expected sampling to be one of {list(SAMPLING_MODES)}, but got {sampling!r}.")
        if not sizes or any(size < 1 for size in sizes):
            raise ConfigError(f"Expected every dataset to hold samples, but got the sizes {list(sizes)}.")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"Expected a temperature > 0, but got {temperature!r}.")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ConfigError(f"Expected samples_per_epoch >= 1, but got {samples_per_epoch!r}.")
        self.sizes = [int(size) for size in sizes]
        self.offsets = [sum(self.sizes[:index]) for index in range(len(self.sizes))]
        self.sampling = sampling
        self.temperature = float(temperature)
        self.samples_per_epoch = samples_per_epoch
        super().__init__(_Sized(sum(self.sizes)), shuffle=True, seed=seed, num_replicas=num_replicas, rank=rank)

    def epoch_length(self) -> int:
        return self.samples_per_epoch or sum(self.sizes)

    def order_parameters(self) -> dict[str, Any]:
        """The mixture: the sampling mode, its temperature (None unless ``"temperature"``) and the dataset sizes."""
        temperature = self.temperature if self.sampling == "temperature" else None
        return {"sampling": self.sampling, "temperature": temperature, "dataset_sizes": list(self.sizes)}

    def probabilities(self) -> list[float]:
        """The probability of drawing from each dataset (on average, for ``"round_robin"`` too)."""
        if self.sampling == "round_robin":
            return [1.0 / len(self.sizes)] * len(self.sizes)
        power = 1.0 if self.sampling == "proportional" else 1.0 / self.temperature
        weights = [size**power for size in self.sizes]
        return [weight / sum(weights) for weight in weights]

    def draw(self, epoch: int) -> list[int]:
        length = self.epoch_length()
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        if self.sampling == "proportional":
            return self._permutations(sum(self.sizes), length, generator)
        if self.sampling == "round_robin":
            sources = [draw % len(self.sizes) for draw in range(length)]
        else:
            probabilities = torch.tensor(self.probabilities(), dtype=torch.float64)
            sources = torch.multinomial(probabilities, length, replacement=True, generator=generator).tolist()
        streams = [self._stream(index, epoch) for index in range(len(self.sizes))]
        return [self.offsets[source] + next(streams[source]) for source in sources]

    @staticmethod
    def _permutations(size: int, length: int, generator: torch.Generator) -> list[int]:
        order: list[int] = []
        while len(order) < length:
            order += torch.randperm(size, generator=generator).tolist()
        return order[:length]

    def _stream(self, source: int, epoch: int) -> Iterator[int]:
        """Dataset ``source``'s samples in shuffled orders, a new one each time it runs out."""
        cycle = 0
        while True:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, source, cycle))
            yield from torch.randperm(self.sizes[source], generator=generator).tolist()
            cycle += 1


class _Filled(Dataset[dict[str, Any]]):
    """A dataset of dict samples with the labels it lacks filled with their missing values.

    ``declared`` are the names every sample must have (those of the split's first sample): a sample that lacks one
    is refused, since the batch would lose that name (or take the missing value) without a word.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        missing: Mapping[str, torch.Tensor],
        name: str,
        declared: Sequence[str] = (),
        split: str = "train",
    ) -> None:
        self.dataset, self.missing, self.name = dataset, dict(missing), name
        self.declared, self.split = tuple(declared), split

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        if not isinstance(sample, Mapping):
            raise BrickDefinitionError(
                f"MultiTaskDataModule: dataset {self.name!r} yields {type(sample).__name__} samples; it needs dicts of "
                "named tensors, e.g. {'raw': image, 'targets': label}."
            )
        lacking = [name for name in self.declared if name not in sample]
        if lacking:
            raise ConfigError(
                f"MultiTaskDataModule: sample {index} of dataset {self.name!r} ({self.split} split) lacks {lacking}, "
                f"which its first sample has (its names: {list(self.declared)}). The samples of a batch need the same "
                "names: give an unlabelled sample the missing-label value instead of leaving the key out "
                "(ignore_index for a class label, NaN for a float target)."
            )
        return {**sample, **{name: value for name, value in self.missing.items() if name not in sample}}


def _first_names(dataset: Dataset[Any], name: str) -> list[str]:
    """The names of ``dataset``'s first sample (none for an empty dataset)."""
    if isinstance(dataset, Sized) and not len(dataset):
        return []
    return list(_Filled(dataset, {}, name)[0])


class MultiTaskDataModule(SplitDataModule):
    """Train on several datasets that label different tasks as one stream; evaluate on each.

    Args:
        datasets: the datasets by name, each a :class:`SplitDataModule` (``train``, ``val`` and ``test`` splits of
            dict samples), e.g. a ``DigitsDataModule``.
        batch_size: the batch size of every loader.
        sampling: ``"proportional"``, ``"temperature"`` or ``"round_robin"``.
        temperature: ``T`` of ``"temperature"`` sampling.
        samples_per_epoch: the length of a training epoch (default: every dataset's training samples).
        seed: the seed of the training order.
        num_workers: dataloader workers.
        ignore_index: the missing value of integer labels (floats get NaN).

    Raises:
        ConfigError: no dataset, a bad sampling mode; when set up, a label that is a bool (no missing value) or whose
            shape or dtype differs between datasets (int64 class labels would be promoted to the float targets of
            another dataset); with a Trainer, a name a dataset yields that no brick reads; when loading, a sample
            that lacks a name the first sample of its dataset's split has.

    Example:
        >>> from torchbricks_lightning.datamodules import DigitsDataModule
        >>> data = MultiTaskDataModule(
        ...     {"digits": DigitsDataModule(), "masks": DigitsDataModule(with_foreground=True)}, batch_size=8
        ... )
        >>> data.setup("fit")
        >>> data.label_names()
        {'digits': ['raw', 'targets', 'parity'], 'masks': ['raw', 'targets', 'parity', 'foreground']}
        >>> batch = next(iter(data.train_dataloader()))
        >>> sorted(batch), batch["foreground"].shape
        (['foreground', 'parity', 'raw', 'targets'], torch.Size([8, 8, 8]))
    """

    def __init__(
        self,
        datasets: Mapping[str, SplitDataModule],
        batch_size: int = 64,
        sampling: Sampling = "proportional",
        temperature: float = 2.0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)  # checks batch_size, num_workers
        if not isinstance(datasets, Mapping) or not datasets:
            raise ConfigError(f"Expected datasets to be a non-empty dict of datamodules by name, but got {datasets!r}.")
        wrong = {
            name: type(value).__name__ for name, value in datasets.items() if not isinstance(value, SplitDataModule)
        }
        if wrong:
            raise BrickDefinitionError(
                f"Expected every dataset of MultiTaskDataModule to be a SplitDataModule (with train, val and test "
                f"splits), but got {wrong}."
            )
        if sampling not in SAMPLING_MODES:
            raise ConfigError(f"Expected sampling to be one of {list(SAMPLING_MODES)}, but got {sampling!r}.")
        self.datasets = dict(datasets)
        self.sampling: Sampling = sampling
        self.temperature = temperature
        self.samples_per_epoch = samples_per_epoch
        self.ignore_index = ignore_index
        self._missing: dict[str, torch.Tensor] | None = None
        self._names: dict[str, list[str]] = {}

    # ------------------------------------------------------------------------------------------ labels
    def setup(self, stage: str | None = None) -> None:
        """Find every dataset's names and the missing values, and check them against the trainer's bricks."""
        if self._missing is None:
            self._find_missing_values()
        trainer = self.trainer
        collection = getattr(getattr(trainer, "lightning_module", None), "brick_collection", None)
        if isinstance(collection, BrickCollection):
            self.check_label_names(collection)

    def _find_missing_values(self) -> None:
        prototypes: dict[str, tuple[str, torch.Tensor]] = {}
        for name, datamodule in self.datasets.items():
            dataset = datamodule.split_dataset("train")
            if not isinstance(dataset, Sized) or not len(dataset):
                raise ConfigError(f"MultiTaskDataModule: dataset {name!r} has no training samples.")
            sample = _Filled(dataset, {}, name)[0]
            self._names[name] = list(sample)
            for key, value in sample.items():
                tensor = torch.as_tensor(value)
                if key in prototypes and prototypes[key][1].shape != tensor.shape:
                    other, shape = prototypes[key][0], tuple(prototypes[key][1].shape)
                    raise ConfigError(
                        f"MultiTaskDataModule: {key!r} has shape {tuple(tensor.shape)} in dataset {name!r} but {shape} "
                        f"in {other!r}; samples of all datasets are batched together, so a name needs one shape."
                    )
                if key in prototypes and prototypes[key][1].dtype != tensor.dtype:
                    other, dtype = prototypes[key][0], prototypes[key][1].dtype
                    raise ConfigError(
                        f"MultiTaskDataModule: {key!r} is {tensor.dtype} in dataset {name!r} but {dtype} in {other!r}; "
                        "samples of all datasets are batched together, so the batch would convert one to the other "
                        "(class labels to floats). Give the name one dtype in every dataset, or rename one of them "
                        "(its head's targets_name=...)."
                    )
                prototypes.setdefault(key, (name, tensor))
        missing: dict[str, torch.Tensor] = {}
        for key, (name, tensor) in prototypes.items():
            if all(key in names for names in self._names.values()):
                continue
            if tensor.dtype == torch.bool:
                raise ConfigError(
                    f"MultiTaskDataModule: label {key!r} of dataset {name!r} is boolean, which has no missing value. "
                    "Give it as an integer (0/1, the missing value is ignore_index) or a float (NaN)."
                )
            value = float("nan") if tensor.is_floating_point() else self.ignore_index
            missing[key] = torch.full_like(tensor, value)
        self._missing = missing

    def label_names(self) -> dict[str, list[str]]:
        """The names each dataset yields, by dataset (after :meth:`setup`)."""
        if self._missing is None:
            self._find_missing_values()
        return {name: list(names) for name, names in self._names.items()}

    def check_label_names(self, collection: BrickCollection) -> None:
        """Raise :class:`ConfigError` if a dataset yields a name that no brick reads in training or evaluation."""
        read = {name for stage in (Stage.TRAIN, Stage.VALIDATION, Stage.TEST) for name in collection.input_names(stage)}
        for dataset, names in self.label_names().items():
            unread = [name for name in names if name not in read]
            if unread:
                raise ConfigError(
                    f"MultiTaskDataModule: dataset {dataset!r} yields {unread}, which no brick reads in train, "
                    f"validation or test (the bricks read {sorted(read)}). Rename the label to the name its head reads "
                    "(targets_name=...), or add the head that learns it."
                )

    # ------------------------------------------------------------------------------------------ loaders
    def _split(self, split: Split) -> list[Dataset[dict[str, Any]]]:
        if self._missing is None:
            self._find_missing_values()
        missing = self._missing or {}
        parts: list[Dataset[dict[str, Any]]] = []
        for name, module in self.datasets.items():
            dataset = module.split_dataset(split)
            declared = self._names[name] if split == "train" else _first_names(dataset, name)
            parts.append(_Filled(dataset, missing, name, declared, split))
        return parts

    def train_dataloader(self) -> DataLoader[Any]:
        parts = self._split("train")
        sampler = MixtureSampler(
            [len(part) for part in parts],  # type: ignore[arg-type]
            sampling=self.sampling,
            temperature=self.temperature,
            samples_per_epoch=self.samples_per_epoch,
            seed=self.seed,
        )
        return ResumableDataLoader(
            ConcatDataset(parts),
            batch_size=self.batch_size,
            seed_samples=any(module.seed_samples for module in self.datasets.values()),
            resumable_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def split_dataset(self, split: Split) -> Dataset[dict[str, Any]]:
        """Every dataset's ``split`` in turn (the base class's loaders evaluate each sample on exactly one process)."""
        return ConcatDataset(self._split(split))
