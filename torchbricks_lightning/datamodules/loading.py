"""Data loading that survives a crash: :class:`ResumableDataLoader`, a training loader that resumes mid-epoch.

It draws each epoch's order from ``(seed, epoch)`` alone (a :class:`~torchbricks_lightning.datamodules.samplers.
ResumableSampler`) and counts the batches it has handed out, and Lightning saves and restores that count with the
training loop (``FitLoop`` checkpoints the ``state_dict()`` of every loader that has one). Resuming with
``trainer.fit(..., ckpt_path="last")`` then continues the interrupted epoch at the next batch, in the same order,
without loading the batches already trained on. The samplers are re-exported here for the imports that name them
from this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from torchbricks_lightning.datamodules.samplers import (
    EvaluationSampler,
    ResumableSampler,
    SeededIndex,
    dataset_length,
    mix_seed,
)
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, LoaderStateError
from torchbricks_lightning.random_state import seeded

__all__ = ["EvaluationSampler", "ResumableDataLoader", "ResumableSampler", "SeededIndex"]

_STATE_VERSION = 2  # 2: with the sampler's order parameters (the mixture of MultiTaskDataModule)


class _SeededSamples(Dataset[Any]):
    """Loads each sample with the random number generators seeded by the :class:`SeededIndex` it is asked for."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return dataset_length(self.dataset)

    def __getitem__(self, key: SeededIndex) -> Any:
        with seeded(key.seed):
            return self.dataset[key.item]


class ResumableDataLoader(DataLoader[Any]):
    """A training ``DataLoader`` whose order comes from ``(seed, epoch)`` and that resumes mid-epoch.

    - The order of each epoch is drawn from ``(seed, epoch)`` by its own generator, never from the global random
      state, so it is the same after a restart. Lightning sets the epoch (``set_epoch``) at every epoch start;
      without Lightning, call :meth:`set_epoch` yourself, as with ``DistributedSampler``.
    - It counts the batches it has yielded in the current epoch. ``state_dict()`` returns that count, and after
      ``load_state_dict()`` the next pass over the same epoch starts at the next batch: the skipped batches are
      dropped from the index order, so they are never loaded. Lightning saves and restores this state with the
      training loop, so ``trainer.fit(..., ckpt_path="last")`` continues the interrupted epoch where it stopped.
    - Under DDP, each process gets its share of the order (padded so all processes take as many steps), and
      Lightning keeps this loader's sampler because it is a ``DistributedSampler``.
    - With ``seed_samples=True`` every sample is loaded with torch's and Python's generators seeded by ``(seed,
      epoch, index)``, so random augmentations do not depend on workers, processes or restarts either.
    - Workers are seeded from ``(seed, epoch)`` too, through the loader's own generator.

    When Lightning rebuilds the loader with a ``SequentialSampler`` (``overfit_batches``), it keeps the dataset's
    order; any other sampler is refused with a clear error.

    Args:
        dataset: a map-style dataset.
        batch_size: the batch size.
        shuffle: a new order every epoch; otherwise the dataset's order.
        seed: the seed of the orders (and of workers and samples).
        drop_last: drop the last incomplete batch.
        seed_samples: load each sample under a seed of its own (for random augmentations).
        num_replicas: the number of processes; default: the process group's size, or 1.
        rank: this process's rank; default: the process group's rank, or 0.
        resumable_sampler: a :class:`ResumableSampler` (subclass) over ``dataset`` to use instead of the default
            one, e.g. the mixture sampler of ``MultiTaskDataModule``; ``shuffle``, ``seed``, ``num_replicas`` and
            ``rank`` are then its own.
        **kwargs: other ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ``pin_memory``,
            ``persistent_workers``, ...); not ``batch_sampler``, ``generator`` or a ``sampler`` other than
            ``SequentialSampler``.

    Raises:
        ValueError: for ``batch_sampler``, ``generator`` or a sampler, or a batch size below 1.

    Example:
        >>> loader = ResumableDataLoader(list(range(10)), batch_size=3, shuffle=True, seed=0)
        >>> everything = [batch.tolist() for batch in loader]
        >>> iterator = iter(loader)
        >>> first = next(iterator).tolist()
        >>> state = loader.state_dict()  # saved with a checkpoint after one batch
        >>> resumed = ResumableDataLoader(list(range(10)), batch_size=3, shuffle=True, seed=0)
        >>> resumed.load_state_dict(state)
        >>> [first] + [batch.tolist() for batch in resumed] == everything
        True
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        seed_samples: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        resumable_sampler: ResumableSampler | None = None,
        **kwargs: Any,
    ) -> None:
        sampler = kwargs.pop("sampler", None)
        if isinstance(sampler, SequentialSampler):
            # Lightning rebuilds train loaders with a SequentialSampler for overfit_batches: the unshuffled order.
            shuffle, sampler = False, None
        others = {
            "sampler": sampler,
            "batch_sampler": kwargs.pop("batch_sampler", None),
            "generator": kwargs.pop("generator", None),
        }
        refused = sorted(name for name, value in others.items() if value is not None)
        if refused:
            raise ConfigError(
                f"ResumableDataLoader draws its own order from (seed, epoch) and cannot take {refused}. Use a plain "
                "DataLoader for a sampler of your own."
            )
        if isinstance(dataset, _SeededSamples):  # Lightning rebuilding this loader passes the wrapped dataset back
            dataset = dataset.dataset
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"Expected a batch_size >= 1, but got {batch_size!r}.")
        if resumable_sampler is None:
            resumable_sampler = ResumableSampler(
                cast(Sized, dataset),
                shuffle=shuffle,
                seed=seed,
                num_replicas=num_replicas,
                rank=rank,
                seed_samples=seed_samples,
            )
        elif not isinstance(resumable_sampler, ResumableSampler):
            raise BrickDefinitionError(
                f"Expected resumable_sampler to be a ResumableSampler, but got {type(resumable_sampler).__name__}."
            )
        else:
            seed, resumable_sampler.seed_samples = resumable_sampler.seed, seed_samples
        self.resumable_sampler = resumable_sampler
        self.seed = int(seed)
        self.seed_samples = seed_samples
        self.source_dataset = dataset
        self._batches = 0  # batches yielded in the current pass
        self._pass_epoch: int | None = None
        self._resume: dict[str, int] | None = None
        super().__init__(
            _SeededSamples(dataset) if seed_samples else dataset,
            batch_size=batch_size,
            sampler=self.resumable_sampler,
            drop_last=drop_last,
            generator=torch.Generator(),
            **kwargs,
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass (its order); Lightning does this at every epoch start."""
        self.resumable_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: nothing happens until the first batch is asked for. Lightning calls iter() before it sets
        # the epoch of a resumed run, so the epoch and the resume point are read at the first batch.
        return self._pass()

    def _pass(self) -> Iterator[Any]:
        sampler = self.resumable_sampler
        epoch = sampler.epoch
        start = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            start = self._resume["batches"]
        self._resume = None
        sampler.start_next_pass_at(start * int(self.batch_size or 1))
        if self.generator is not None:
            self.generator.manual_seed(mix_seed(self.seed, epoch, 2))
        self._pass_epoch, self._batches = epoch, start
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the current pass is: its epoch and the batches yielded so far, with what they depend on (the
        length, batch size, seed, shuffling, processes and the sampler's :meth:`~ResumableSampler.order_parameters`,
        e.g. the mixture of datasets)."""
        sampler = self.resumable_sampler
        sampler.refresh()
        epoch = sampler.epoch if self._pass_epoch is None else self._pass_epoch
        batches = self._batches if self._pass_epoch is not None else 0
        if self._resume is not None:  # loaded but not iterated yet: keep the loaded position
            epoch, batches = self._resume["epoch"], self._resume["batches"]
        return {
            "version": _STATE_VERSION,
            "epoch": epoch,
            "batches": batches,
            "batch_size": int(self.batch_size or 1),
            "seed": self.seed,
            "num_samples": sampler.epoch_length(),
            "num_replicas": sampler.num_replicas,
            "shuffle": int(sampler.shuffle),
            "order": sampler.order_parameters(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved pass: the next pass over the saved epoch starts at the batch after the saved ones.

        A pass over another epoch (Lightning moves on when the checkpoint closed its epoch) starts at the beginning.

        Every field is checked (its type and range) before anything is restored.

        Raises:
            LoaderStateError: the state is not a ResumableDataLoader state, a field has the wrong type or range (a
                negative batch count, more batches than an epoch has, a batch size that is not an integer; the
                message names the field and its value), or the saved position cannot be found in this loader's
                order because the dataset length, batch size, seed, shuffling, number of processes or
                the sampler's order parameters (a mixture's sampling mode, temperature or dataset sizes) changed..
        """
        saved = _checked_state(state_dict)
        sampler = self.resumable_sampler
        sampler.refresh()
        current = {
            "batch_size": int(self.batch_size or 1),
            "seed": self.seed,
            "num_samples": sampler.epoch_length(),
            "num_replicas": sampler.num_replicas,
            "shuffle": int(sampler.shuffle),
        }
        changed = {key: f"{saved[key]} -> {value}" for key, value in current.items() if saved[key] != value}
        changed.update(_changed_order(state_dict.get("order"), sampler.order_parameters()))
        if changed and saved["batches"] > 0:
            described = ", ".join(f"{key} {change}" for key, change in changed.items())
            raise LoaderStateError(
                f"The checkpoint stopped after batch {saved['batches']} of epoch {saved['epoch']}, "
                f"but the train loader changed since ({described}), so that position does not exist in the new "
                "order. Resume with the same data, mixture (sampling, temperature), batch size, seed and number of "
                "processes as the checkpoint (the values before '->'), or from a checkpoint written at the end of an "
                "epoch."
            )
        if not changed and saved["batches"] > len(self):
            raise LoaderStateError(
                f"The checkpoint's train loader state has batches={saved['batches']}, but an epoch of this loader has "
                f"{len(self)} batches (batch_size {saved['batch_size']}, drop_last {self.drop_last}). Resume with the "
                "drop_last the checkpoint was written with; otherwise the loader state is damaged: resume from "
                "another checkpoint."
            )
        self._resume = {"epoch": saved["epoch"], "batches": saved["batches"]}


_DAMAGED = (
    "The loader state in the checkpoint is damaged or was not written by ResumableDataLoader: resume from another "
    "checkpoint."
)
_FIELDS: dict[str, tuple[int | None, str]] = {
    "epoch": (0, "an integer >= 0"),
    "batches": (0, "an integer >= 0 (the batches already trained on in that epoch)"),
    "batch_size": (1, "an integer >= 1"),
    "seed": (None, "an integer"),
    "num_samples": (0, "an integer >= 0"),
    "num_replicas": (1, "an integer >= 1"),
    "shuffle": (0, "0 or 1"),
}
"""The integer fields of a loader state: the smallest value each may take (None: any) and how that is said."""


def _shown_value(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _checked_state(state: object) -> dict[str, int]:
    """The integer fields of a saved loader state, each checked for its type and range before anything is restored.

    Raises:
        LoaderStateError: the state is not a dict, lacks a field, or a field has the wrong type or range (the message
            names the field and its value).

    Example:
        >>> _checked_state({"epoch": 0, "batches": -1, "batch_size": 2, "seed": 0, "num_samples": 4,
        ...                 "num_replicas": 1, "shuffle": 1, "version": 2})
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.LoaderStateError: The checkpoint's train loader state has batches=-1, but ...
    """
    if not isinstance(state, Mapping):
        raise LoaderStateError(
            f"Expected a ResumableDataLoader state (a dict of {list(_FIELDS)}), but got {type(state).__name__}. "
            + _DAMAGED
        )
    missing = [key for key in _FIELDS if key not in state]
    if missing:
        raise LoaderStateError(
            f"Expected a ResumableDataLoader state with {list(_FIELDS)}, but {missing} are missing. The "
            "checkpoint was written with another train loader: resume with that loader."
        )
    version = state.get("version")
    if type(version) is not int or version != _STATE_VERSION:
        raise LoaderStateError(
            f"The checkpoint's train loader state has version={_shown_value(version)}, but this ResumableDataLoader "
            f"reads version {_STATE_VERSION}. Another torchbricks-lightning version wrote it, or it is damaged: "
            "resume with the version that wrote the checkpoint, or from another checkpoint."
        )
    checked: dict[str, int] = {}
    for key, (lowest, expected) in _FIELDS.items():
        value = state[key]
        integer = type(value) is int or (key == "shuffle" and type(value) is bool)
        if not integer or (lowest is not None and value < lowest) or (key == "shuffle" and value > 1):
            raise LoaderStateError(
                f"The checkpoint's train loader state has {key}={_shown_value(value)}, but {key} must be {expected}. "
                + _DAMAGED
            )
        checked[key] = int(value)
    return checked


def _changed_order(saved: object, current: dict[str, Any]) -> dict[str, str]:
    """``{name: 'saved -> current'}`` for each order parameter that differs."""
    if not isinstance(saved, dict):
        raise LoaderStateError(
            f"Expected the 'order' of a ResumableDataLoader state to be a dict of order parameters, but got "
            f"{type(saved).__name__}. The checkpoint's loader state is damaged: resume from another checkpoint."
        )
    for name, value in saved.items():
        if not isinstance(name, str) or not _plain(value):
            raise LoaderStateError(
                f"The checkpoint's train loader state has the order parameter {_shown_value(name)} = "
                f"{_shown_value(value)}, but order parameters are named by strings and hold numbers, strings, None or "
                f"lists of them. {_DAMAGED}"
            )
    names = [*current, *(name for name in saved if name not in current)]
    return {
        str(name): f"{_shown(saved, name)} -> {_shown(current, name)}"
        for name in names
        if name not in saved or name not in current or saved[name] != current[name]
    }


def _plain(value: object) -> bool:
    """Whether ``value`` is what an order parameter holds: a number, a string, None, or a list or tuple of them."""
    scalars = value if isinstance(value, (list, tuple)) else [value]
    return all(each is None or isinstance(each, (bool, int, float, str)) for each in scalars)


def _shown(values: dict[Any, Any], name: object) -> str:
    return repr(values[name]) if name in values else "(none)"
