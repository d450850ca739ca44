"""Data loading that survives a crash: a resumable training loader and an unpadded evaluation sampler.

:class:`ResumableDataLoader` draws each epoch's order from ``(seed, epoch)`` alone and counts the batches it has
handed out, and Lightning saves and restores that count with the training loop (``FitLoop`` checkpoints the
``state_dict()`` of every loader that has one). Resuming with ``trainer.fit(..., ckpt_path="last")`` then continues
the interrupted epoch at the next batch, in the same order, without loading the batches already trained on.

:class:`EvaluationSampler` hands every sample to exactly one process. Lightning's default ``DistributedSampler``
pads the evaluation set with repeated samples so that every process gets as many; torchmetrics would count those
twice. Both samplers are ``DistributedSampler`` subclasses, so Lightning (``use_distributed_sampler=True``) keeps
them instead of putting its own in their place, and they shard by the process group's rank themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, NamedTuple, cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, LoaderStateError
from torchbricks_lightning.random_state import seeded

__all__ = ["EvaluationSampler", "LoaderStateError", "ResumableDataLoader", "ResumableSampler", "SeededIndex"]

_MASK64 = (1 << 64) - 1
_STATE_VERSION = 1


def _mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (splitmix64), so ``(seed, epoch)`` pairs never collide.

    Example:
        >>> _mix_seed(0, 1) == _mix_seed(0, 1), _mix_seed(0, 1) == _mix_seed(1, 0)
        (True, False)
    """
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
        state ^= state >> 31
    return state >> 1


def _process_group(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(world size, rank)``: the explicit values, else the initialised process group's, else ``(1, 0)``."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = num_replicas if num_replicas is not None else (torch.distributed.get_world_size() if distributed else 1)
    this = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
    if world < 1 or not 0 <= this < world:
        raise ConfigError(f"Expected num_replicas >= 1 and 0 <= rank < num_replicas, but got {world} and {this}.")
    return world, this


def _length(data_source: object) -> int:
    if not isinstance(data_source, Sized):
        raise BrickDefinitionError(
            f"The samplers of torchbricks_lightning need a dataset with a length, but got "
            f"{type(data_source).__name__}. Use a map-style dataset (with __len__ and __getitem__)."
        )
    return len(data_source)


class SeededIndex(NamedTuple):
    """An index with the seed its sample is loaded under (see ``ResumableDataLoader(seed_samples=True)``)."""

    item: int
    seed: int


class ResumableSampler(DistributedSampler[Any]):
    """This process's share of an order drawn from ``(seed, epoch)``, that can start a pass part-way through.

    It is ``torch.utils.data.DistributedSampler`` with three differences: the process group is read when an epoch
    starts (not at construction), so it works with and without one; a pass can skip its first indices without
    touching the data (:meth:`start_next_pass_at`); and with ``seed_samples=True`` it yields :class:`SeededIndex`
    pairs so that random augmentations depend on ``(seed, epoch, index)`` only. Like ``DistributedSampler``, it
    pads the order with its first indices so every process gets as many (training needs equal step counts), and
    the epoch changes only through :meth:`set_epoch` (Lightning calls it at the start of every epoch).

    Args:
        data_source: the dataset (only its length is used).
        shuffle: draw a new order every epoch; otherwise the dataset's order.
        seed: the seed of the orders.
        drop_last: drop the tail of the order that does not split evenly across processes, instead of padding.
        num_replicas: the number of processes; default: the process group's size, or 1 without one.
        rank: this process's rank; default: the process group's rank, or 0 without one.
        seed_samples: yield ``SeededIndex(index, seed)`` instead of ``index``.

    Example:
        >>> sampler = ResumableSampler(range(6), seed=1, num_replicas=2, rank=0)
        >>> order = list(sampler)
        >>> sampler.start_next_pass_at(1)
        >>> list(sampler) == order[1:], len(sampler)
        (True, 3)
    """

    def __init__(
        self,
        data_source: Sized,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed_samples: bool = False,
    ) -> None:
        # DistributedSampler.__init__ asks torch.distributed for the group at construction; this resolves it later.
        self.dataset = cast(Dataset[Any], data_source)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.seed_samples = seed_samples
        self._requested = (num_replicas, rank)
        self._start = 0
        self._refresh()

    def _refresh(self) -> None:
        self.num_replicas, self.rank = _process_group(*self._requested)
        n = self.epoch_length()
        if self.drop_last and n % self.num_replicas:
            self.num_samples = n // self.num_replicas
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def epoch_length(self) -> int:
        """The number of indices an epoch draws, before padding: the dataset's length (subclasses may differ)."""
        return _length(self.dataset)

    def draw(self, epoch: int) -> list[int]:
        """The order of ``epoch`` before padding and sharding: a permutation drawn from ``(seed, epoch)`` alone, or
        the dataset's order without shuffling. Subclasses draw other orders (a mixture of datasets)."""
        n = _length(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            return torch.randperm(n, generator=generator).tolist()
        return list(range(n))

    def order(self, epoch: int | None = None) -> list[int]:
        """The whole order of ``epoch`` (default: the current one) for all processes, padded or cut."""
        epoch = self.epoch if epoch is None else epoch
        indices = self.draw(epoch)
        if len(indices) < self.total_size and indices:
            repeats = -(-(self.total_size - len(indices)) // len(indices))
            indices += (indices * repeats)[: self.total_size - len(indices)]
        return indices[: self.total_size]

    def indices(self, epoch: int | None = None) -> list[int]:
        """This process's indices of ``epoch`` (default: the current one), from the start of the epoch."""
        self._refresh()
        return self.order(epoch)[self.rank : self.total_size : self.num_replicas]

    def start_next_pass_at(self, position: int) -> None:
        """Make the next pass skip its first ``position`` indices (once); later passes start at the beginning."""
        if position < 0:
            raise ConfigError(f"Expected a position >= 0, but got {position}.")
        self._start = position

    def __iter__(self) -> Iterator[Any]:
        start, self._start = self._start, 0
        indices = self.indices()[start:]
        if not self.seed_samples:
            return iter(indices)
        return iter([SeededIndex(index, _mix_seed(self.seed, self.epoch, index, 1)) for index in indices])

    def __len__(self) -> int:
        self._refresh()
        return self.num_samples


class EvaluationSampler(DistributedSampler[int]):
    """The dataset in order, every sample on exactly one process: ``indices[rank::num_replicas]``, no padding.

    Lightning's default ``DistributedSampler`` repeats samples so that every process gets as many, and metrics
    then count those twice. Here the processes may get one sample more or less than each other, which
    evaluation allows (torchmetrics and ``self.log(..., sync_dist=True)`` reduce across processes once, at the end
    of the epoch). Each process needs at least one sample, or the others would wait for it at that reduction.

    Args:
        data_source: the dataset (only its length is used).
        num_replicas: the number of processes; default: the process group's size, or 1 without one.
        rank: this process's rank; default: the process group's rank, or 0 without one.

    Raises:
        ValueError: when iterated or measured, if the dataset has fewer samples than there are processes.

    Example:
        >>> [list(EvaluationSampler(range(5), num_replicas=2, rank=rank)) for rank in (0, 1)]
        [[0, 2, 4], [1, 3]]
    """

    def __init__(self, data_source: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.dataset = cast(Dataset[Any], data_source)
        self.shuffle = False
        self.seed = 0
        self.drop_last = False
        self.epoch = 0
        self._requested = (num_replicas, rank)
        self._refresh()

    def _refresh(self) -> None:
        self.num_replicas, self.rank = _process_group(*self._requested)
        n = _length(self.dataset)
        if 0 < n < self.num_replicas:
            raise ConfigError(
                f"EvaluationSampler: the dataset has {n} samples for {self.num_replicas} processes, so process "
                f"{n} would get none and the others would wait for it when metrics are reduced. Evaluate on at "
                "least as many samples as processes, or on fewer processes."
            )
        self.num_samples = len(range(self.rank, n, self.num_replicas))
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        self._refresh()
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        self._refresh()
        return self.num_samples


class _SeededSamples(Dataset[Any]):
    """Loads each sample with the random number generators seeded by the :class:`SeededIndex` it is asked for."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return _length(self.dataset)

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
            self.generator.manual_seed(_mix_seed(self.seed, epoch, 2))
        self._pass_epoch, self._batches = epoch, start
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the current pass is: its epoch and the batches yielded so far, with what they depend on."""
        sampler = self.resumable_sampler
        sampler._refresh()
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
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved pass: the next pass over the saved epoch starts at the batch after the saved ones.

        A pass over another epoch (Lightning moves on when the checkpoint closed its epoch) starts at the beginning.

        Raises:
            LoaderStateError: the state is not a ResumableDataLoader state, or the saved position cannot be found in
                this loader's order because the dataset length, batch size, seed, shuffling or number of processes
                changed.
        """
        required = ("epoch", "batches", "batch_size", "seed", "num_samples", "num_replicas", "shuffle")
        missing = [key for key in required if key not in state_dict]
        if missing:
            raise LoaderStateError(
                f"Expected a ResumableDataLoader state with {list(required)}, but {missing} are missing. The "
                "checkpoint was written with another train loader: resume with that loader."
            )
        sampler = self.resumable_sampler
        sampler._refresh()
        current = {
            "batch_size": int(self.batch_size or 1),
            "seed": self.seed,
            "num_samples": sampler.epoch_length(),
            "num_replicas": sampler.num_replicas,
            "shuffle": int(sampler.shuffle),
        }
        changed = {
            key: (int(state_dict[key]), value) for key, value in current.items() if int(state_dict[key]) != value
        }
        if changed and int(state_dict["batches"]) > 0:
            described = ", ".join(f"{key} {saved} -> {now}" for key, (saved, now) in changed.items())
            raise LoaderStateError(
                f"The checkpoint stopped after batch {int(state_dict['batches'])} of epoch {int(state_dict['epoch'])}, "
                f"but the train loader changed since ({described}), so that position does not exist in the new "
                "order. Resume with the same data, batch size, seed and number of processes, or from a checkpoint "
                "written at the end of an epoch."
            )
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
