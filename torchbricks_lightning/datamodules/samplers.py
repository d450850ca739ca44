"""Samplers that survive a crash and evaluate without padding: :class:`ResumableSampler` and
:class:`EvaluationSampler`.

:class:`ResumableSampler` draws each epoch's order from ``(seed, epoch)`` alone and can start a pass part-way
through (the resumable training loader of :mod:`~torchbricks_lightning.datamodules.loading` builds on it).
:class:`EvaluationSampler` hands every sample to exactly one process. Lightning's default ``DistributedSampler``
pads the evaluation set with repeated samples so that every process gets as many; torchmetrics would count those
twice. Both samplers are ``DistributedSampler`` subclasses, so Lightning (``use_distributed_sampler=True``) keeps
them instead of putting its own in their place, and they shard by the process group's rank themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, NamedTuple, cast

import torch
from torch.utils.data import Dataset, DistributedSampler

from torchbricks_lightning.core.distributed import global_rank, world_size
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError

__all__ = ["EvaluationSampler", "ResumableSampler", "SeededIndex", "dataset_length", "mix_seed", "process_group"]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (splitmix64), so ``(seed, epoch)`` pairs never collide.

    Example:
        >>> mix_seed(0, 1) == mix_seed(0, 1), mix_seed(0, 1) == mix_seed(1, 0)
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


def process_group(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(world size, rank)``: the explicit values, else the initialised process group's, else ``(1, 0)``."""
    world = num_replicas if num_replicas is not None else world_size()
    this = rank if rank is not None else global_rank()
    if world < 1 or not 0 <= this < world:
        raise ConfigError(f"Expected num_replicas >= 1 and 0 <= rank < num_replicas, but got {world} and {this}.")
    return world, this


def dataset_length(data_source: object) -> int:
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
        self.refresh()

    def refresh(self) -> None:
        """Read the process group and the dataset's length again (they may change between epochs)."""
        self.num_replicas, self.rank = process_group(*self._requested)
        n = self.epoch_length()
        if self.drop_last and n % self.num_replicas:
            self.num_samples = n // self.num_replicas
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def epoch_length(self) -> int:
        """The number of indices an epoch draws, before padding: the dataset's length (subclasses may differ)."""
        return dataset_length(self.dataset)

    def order_parameters(self) -> dict[str, Any]:
        """What else decides the order, by name (a subclass's mixture of datasets; nothing here): the loader saves
        it with its state and refuses to resume mid-epoch when it changed."""
        return {}

    def draw(self, epoch: int) -> list[int]:
        """The order of ``epoch`` before padding and sharding: a permutation drawn from ``(seed, epoch)`` alone, or
        the dataset's order without shuffling. Subclasses draw other orders (a mixture of datasets)."""
        n = dataset_length(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
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
        self.refresh()
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
        return iter([SeededIndex(index, mix_seed(self.seed, self.epoch, index, 1)) for index in indices])

    def __len__(self) -> int:
        self.refresh()
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
        self.refresh()

    def refresh(self) -> None:
        """Read the process group and the dataset's length again."""
        self.num_replicas, self.rank = process_group(*self._requested)
        n = dataset_length(self.dataset)
        if 0 < n < self.num_replicas:
            raise ConfigError(
                f"EvaluationSampler: the dataset has {n} samples for {self.num_replicas} processes, so process "
                f"{n} would get none and the others would wait for it when metrics are reduced. Evaluate on at "
                "least as many samples as processes, or on fewer processes."
            )
        self.num_samples = len(range(self.rank, n, self.num_replicas))
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        self.refresh()
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        self.refresh()
        return self.num_samples
