"""MultiTaskDataModule: mixing datasets that label different tasks, sampling modes, determinism, resume, DDP shards."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from torchbricks_lightning.datamodules import (
    MixtureSampler,
    MultiTaskDataModule,
    ResumableDataLoader,
    Split,
    SplitDataModule,
)
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, LoaderStateError


class _Samples(Dataset[Any]):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> Any:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


class Labelled(SplitDataModule):
    """``size`` samples per split: ``raw`` (the sample's id, 1000 * source + index) and the given labels."""

    def __init__(self, source: int, size: int, labels: dict[str, torch.dtype], shape: tuple[int, ...] = ()) -> None:
        super().__init__(batch_size=4, seed=0)
        self.source, self.size, self.labels, self.shape = source, size, labels, shape

    def split_dataset(self, split: Split) -> Dataset[Any]:
        ids = torch.arange(self.size, dtype=torch.float32) + 1000 * self.source
        tensors = {"raw": ids}
        for name, dtype in self.labels.items():
            tensors[name] = torch.ones(self.size, *self.shape, dtype=dtype)
        return _Samples(tensors)


def _datamodule(**kwargs: Any) -> MultiTaskDataModule:
    return MultiTaskDataModule(
        {
            "classes": Labelled(0, 12, {"digit": torch.int64}),
            "values": Labelled(1, 4, {"age": torch.float32, "mask": torch.int64}, shape=()),
        },
        batch_size=4,
        **kwargs,
    )


def _ids(loader: Any) -> list[int]:
    return [int(value) for batch in loader for value in batch["raw"]]


# ------------------------------------------------------------------------------------------------ labels
def test_missing_labels_are_filled_with_the_missing_value_of_their_type() -> None:
    data = _datamodule()
    data.setup("fit")
    assert data.label_names() == {"classes": ["raw", "digit"], "values": ["raw", "age", "mask"]}
    batches = list(data.train_dataloader())
    assert sorted(batches[0]) == ["age", "digit", "mask", "raw"]
    for batch in batches:
        from_values = batch["raw"] >= 1000
        assert (batch["digit"][from_values] == -100).all()
        assert (batch["digit"][~from_values] == 1).all()
        assert torch.isnan(batch["age"][~from_values]).all()
        assert (batch["age"][from_values] == 1.0).all()
        assert (batch["mask"][~from_values] == -100).all()
        assert batch["digit"].dtype == torch.int64
        assert batch["age"].dtype == torch.float32


def test_dense_labels_are_filled_in_their_shape_and_shapes_must_agree() -> None:
    data = MultiTaskDataModule(
        {
            "a": Labelled(0, 3, {"mask": torch.int64}, shape=(2, 2)),
            "b": Labelled(1, 3, {"depth": torch.float32}, (2, 2)),
        }
    )
    batch = next(iter(data.train_dataloader()))
    assert batch["mask"].shape == batch["depth"].shape == (3 + 3, 2, 2)
    mismatched = MultiTaskDataModule(
        {"a": Labelled(0, 3, {"mask": torch.int64}, shape=(2, 2)), "b": Labelled(1, 3, {"mask": torch.int64}, (3, 3))}
    )
    with pytest.raises(ConfigError, match=r"'mask' has shape \(3, 3\) in dataset 'b' but \(2, 2\) in 'a'"):
        mismatched.setup("fit")


def test_bad_datasets_are_refused() -> None:
    with pytest.raises(ConfigError, match="non-empty dict"):
        MultiTaskDataModule({})
    with pytest.raises(BrickDefinitionError, match=r"SplitDataModule.*\{'plain': 'list'\}"):
        MultiTaskDataModule({"plain": [1, 2, 3]})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="sampling to be one of"):
        _datamodule(sampling="uniform")
    with pytest.raises(ConfigError, match="temperature > 0"):
        MixtureSampler([3, 4], sampling="temperature", temperature=0.0)
    booleans = MultiTaskDataModule({"a": Labelled(0, 2, {"flag": torch.bool}), "b": Labelled(1, 2, {})})
    with pytest.raises(ConfigError, match="'flag' of dataset 'a' is boolean, which has no missing value"):
        booleans.setup("fit")


# ------------------------------------------------------------------------------------------------ sampling
def test_proportional_sampling_is_every_sample_once_in_an_order_from_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        sampler = MixtureSampler([12, 4], sampling="proportional", seed=seed)
        return sampler.order(epoch)

    assert sorted(order(0, 0)) == list(range(16))
    assert order(0, 0) == order(0, 0)
    assert order(0, 1) != order(0, 0)
    assert order(1, 0) != order(0, 0)
    data = _datamodule(seed=3)
    loader = data.train_dataloader()
    loader.set_epoch(2)
    assert sorted(_ids(loader)) == sorted([*range(12), *range(1000, 1004)])


def test_temperature_sampling_draws_datasets_with_probability_size_to_the_power_one_over_t() -> None:
    sizes, temperature = [90, 10], 2.0
    sampler = MixtureSampler(sizes, sampling="temperature", temperature=temperature, samples_per_epoch=20_000, seed=1)
    expected = [size ** (1 / temperature) / sum(s ** (1 / temperature) for s in sizes) for size in sizes]
    assert sampler.probabilities() == pytest.approx(expected)
    counts = Counter(index >= 90 for index in sampler.order(0))
    assert counts[True] / 20_000 == pytest.approx(expected[1], abs=0.01)
    # Within a dataset, its samples come in shuffled rounds: all 10 before any repeats.
    small = [index for index in sampler.order(0) if index >= 90]
    assert sorted(small[:10]) == list(range(90, 100))
    assert MixtureSampler(sizes, sampling="temperature", temperature=1.0).probabilities() == pytest.approx([0.9, 0.1])


def test_round_robin_takes_turns_and_samples_per_epoch_sets_the_length() -> None:
    sampler = MixtureSampler([12, 4], sampling="round_robin", samples_per_epoch=10, seed=0)
    order = sampler.order(0)
    assert len(order) == len(sampler) == 10
    assert [index >= 12 for index in order] == [False, True] * 5
    assert sorted([index for index in order if index >= 12][:4]) == [12, 13, 14, 15], "all before any repeats"


def test_processes_take_interleaved_shares_of_one_order() -> None:
    samplers = [MixtureSampler([12, 5], sampling="temperature", seed=4, num_replicas=2, rank=rank) for rank in (0, 1)]
    shards = [list(sampler) for sampler in samplers]
    assert len(shards[0]) == len(shards[1]) == math.ceil(17 / 2)
    interleaved = [shards[i % 2][i // 2] for i in range(18)]
    assert interleaved == samplers[0].order()


@pytest.mark.parametrize("stop_after", [1, 2])
def test_an_interrupted_epoch_resumes_at_the_next_batch(stop_after: int) -> None:
    def loader() -> ResumableDataLoader:
        made = _datamodule(sampling="temperature", seed=5).train_dataloader()
        assert isinstance(made, ResumableDataLoader)
        made.set_epoch(1)
        return made

    everything = [batch["raw"].tolist() for batch in loader()]
    interrupted = loader()
    iterator = iter(interrupted)
    seen = [next(iterator)["raw"].tolist() for _ in range(stop_after)]
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert seen + [batch["raw"].tolist() for batch in resumed] == everything


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluation_covers_each_dataset_once_and_splits_across_processes() -> None:
    data = _datamodule()
    assert sorted(_ids(data.val_dataloader())) == [*range(12), *range(1000, 1004)]
    assert _ids(data.test_dataloader()) == [*range(12), *range(1000, 1004)], "each dataset in turn, in order"
    sampler = data.val_dataloader().sampler
    assert [len(sampler)] == [16]


@pytest.mark.parametrize(
    ("saved", "resumed", "message"),
    [
        (
            {"sampling": "temperature", "temperature": 2.0},
            {"sampling": "temperature", "temperature": 4.0},
            r"temperature 2.0 -> 4.0",
        ),
        ({"sampling": "temperature"}, {"sampling": "round_robin"}, r"sampling 'temperature' -> 'round_robin', "),
        ({"sampling": "round_robin"}, {"sampling": "proportional"}, r"sampling 'round_robin' -> 'proportional'"),
    ],
)
def test_resuming_an_epoch_with_another_mixture_is_refused(
    saved: dict[str, Any], resumed: dict[str, Any], message: str
) -> None:
    def loader(**kwargs: Any) -> ResumableDataLoader:
        made = _datamodule(seed=5, **kwargs).train_dataloader()
        assert isinstance(made, ResumableDataLoader)
        made.set_epoch(1)
        return made

    interrupted = loader(**saved)
    next(iter(interrupted))
    state = interrupted.state_dict()
    changed = loader(**resumed)
    with pytest.raises(LoaderStateError, match=message + r".*Resume with the same data, mixture"):
        changed.load_state_dict(state)
    assert state["order"]["sampling"] == saved["sampling"]
    loader(**saved).load_state_dict(state)  # the same mixture resumes
    changed.load_state_dict({**state, "batches": 0})  # nothing to skip: a new epoch may use another mixture


def test_resuming_an_epoch_with_other_dataset_sizes_is_refused() -> None:
    # Swapped sizes: the same number of samples, another order.
    def loader(sizes: tuple[int, int]) -> ResumableDataLoader:
        datasets = {
            "a": Labelled(0, sizes[0], {"digit": torch.int64}),
            "b": Labelled(1, sizes[1], {"age": torch.float32}),
        }
        made = MultiTaskDataModule(datasets, batch_size=4, sampling="round_robin").train_dataloader()
        assert isinstance(made, ResumableDataLoader)
        return made

    interrupted = loader((12, 4))
    next(iter(interrupted))
    with pytest.raises(LoaderStateError, match=r"dataset_sizes \[12, 4\] -> \[4, 12\]"):
        loader((4, 12)).load_state_dict(interrupted.state_dict())


# ------------------------------------------------------------------------------------------------ label checks
def test_a_label_name_with_another_dtype_in_another_dataset_is_refused_at_setup() -> None:
    # int64 class labels in one dataset, float targets under the same name in the other: the batch made them floats.
    data = MultiTaskDataModule(
        {"classes": Labelled(0, 8, {"targets": torch.int64}), "scores": Labelled(1, 8, {"targets": torch.float32})},
        batch_size=4,
    )
    with pytest.raises(
        ConfigError, match=r"'targets' is torch.float32 in dataset 'scores' but torch.int64 in 'classes'.*one dtype"
    ):
        data.setup("fit")


class _LosesAge(Dataset[Any]):
    """Samples with ``raw`` and ``age``, except sample 5, which has no ``age``."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> Any:
        sample = {"raw": torch.tensor(float(1000 + index)), "age": torch.tensor(float(index))}
        if index == 5:
            del sample["age"]
        return sample


class _AgeModule(SplitDataModule):
    def split_dataset(self, split: Split) -> Dataset[Any]:
        return _LosesAge()


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_sample_that_lacks_a_name_its_dataset_declared_is_refused(split: str) -> None:
    data = MultiTaskDataModule(
        {"classes": Labelled(0, 8, {"digit": torch.int64}), "ages": _AgeModule(batch_size=4, seed=0)},
        batch_size=4,
        sampling="round_robin",
    )
    data.setup("fit")
    loader = data.train_dataloader() if split == "train" else data.val_dataloader()
    with pytest.raises(ConfigError, match=rf"sample 5 of dataset 'ages' \({split} split\) lacks \['age'\]"):
        _ids(loader)
