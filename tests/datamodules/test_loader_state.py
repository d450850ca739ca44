"""A crafted or damaged loader state is refused field by field, with the field and its value named, before anything
is restored (issue 19, break 13: raw ValueError/TypeError from int(), and a negative batch count accepted)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from torchbricks_lightning.datamodules.loading import ResumableDataLoader
from torchbricks_lightning.errors import LoaderStateError


def _loader() -> ResumableDataLoader:
    return ResumableDataLoader(TensorDataset(torch.arange(12)), batch_size=5, seed=1)


def _order(loader: ResumableDataLoader) -> list[int]:
    return torch.cat([batch[0] for batch in loader]).tolist()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("batches", -1, "an integer >= 0"),
        ("batches", "x", "an integer >= 0"),
        ("batches", 1.5, "an integer >= 0"),
        ("batches", True, "an integer >= 0"),
        ("batches", torch.tensor(2), "an integer >= 0"),
        ("epoch", None, "an integer >= 0"),
        ("epoch", -2, "an integer >= 0"),
        ("batch_size", 0, "an integer >= 1"),
        ("batch_size", [5], "an integer >= 1"),
        ("seed", "1", "an integer"),
        ("num_samples", -12, "an integer >= 0"),
        ("num_replicas", 0, "an integer >= 1"),
        ("shuffle", 2, "0 or 1"),
        ("shuffle", "yes", "0 or 1"),
    ],
)
def test_a_field_of_the_wrong_type_or_range_is_refused_and_named(field: str, value: Any, expected: str) -> None:
    loader = _loader()
    before = loader.state_dict()
    with pytest.raises(LoaderStateError, match=rf"has {field}=.*but {field} must be {expected}.*another checkpoint"):
        loader.load_state_dict({**before, field: value})
    assert loader.state_dict() == before  # nothing was restored
    assert sorted(_order(loader)) == list(range(12))  # the whole epoch, from its first batch


def test_every_field_is_checked_before_anything_is_compared() -> None:
    # A bad batch count next to a changed seed: the bad value is what is reported, not a "changed loader".
    with pytest.raises(LoaderStateError, match=r"batches=-1"):
        _loader().load_state_dict({**_loader().state_dict(), "batches": -1, "seed": 7})


def test_a_long_value_is_shown_shortened() -> None:
    with pytest.raises(LoaderStateError, match=r"batches='xxxx+\.\.\., but") as raised:
        _loader().load_state_dict({**_loader().state_dict(), "batches": "x" * 100_000})
    assert len(str(raised.value)) < 400


def test_a_state_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(LoaderStateError, match=r"Expected a ResumableDataLoader state .*but got list"):
        _loader().load_state_dict([1, 2, 3])  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [0, 1, 3, "2", None])
def test_an_unknown_version_is_refused(version: object) -> None:
    with pytest.raises(LoaderStateError, match=rf"version={version!r}, but .* reads version 2"):
        _loader().load_state_dict({**_loader().state_dict(), "version": version})


def test_a_state_without_a_version_or_an_order_is_refused() -> None:
    """Version 1 (no order parameters) was never released: only this version's states are read."""
    loader = _loader()
    state = {key: value for key, value in loader.state_dict().items() if key not in ("version", "order")}
    with pytest.raises(LoaderStateError, match=r"version=None, but .* reads version 2"):
        loader.load_state_dict({**state, "batches": 2})
    with pytest.raises(LoaderStateError, match=r"'order' of a ResumableDataLoader state to be a dict"):
        loader.load_state_dict({**loader.state_dict(), "order": None})


def test_more_batches_than_an_epoch_has_are_refused() -> None:
    loader = _loader()  # 12 samples in batches of 5: 3 batches
    with pytest.raises(LoaderStateError, match=r"batches=4, but an epoch of this loader has 3 batches"):
        loader.load_state_dict({**loader.state_dict(), "batches": 4})
    loader.load_state_dict({**loader.state_dict(), "batches": 3})  # a finished epoch is a valid state
    assert list(loader) == []


@pytest.mark.parametrize(
    "order",
    [{1: "x"}, {"sampling": torch.ones(3)}, {"dataset_sizes": [4, torch.ones(2)]}, {"sampling": {"nested": 1}}],
)
def test_an_order_parameter_that_is_not_plain_data_is_refused(order: dict[Any, Any]) -> None:
    loader = _loader()
    with pytest.raises(LoaderStateError, match=r"has the order parameter .*hold numbers, strings, None or lists"):
        loader.load_state_dict({**loader.state_dict(), "batches": 1, "order": order})


def test_a_valid_state_still_resumes() -> None:
    everything = _order(_loader())
    interrupted = _loader()
    iterator = iter(interrupted)
    first = next(iterator)[0].tolist()
    resumed = _loader()
    resumed.load_state_dict(interrupted.state_dict())
    assert first + _order(resumed) == everything
