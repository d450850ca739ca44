"""Deep nesting is refused at build with a clear limit, never a RecursionError (issue 19, break 14: 400 nested dicts
raised a raw RecursionError in ``BrickCollection.__init__``), and everything works at the limit."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
from torchbricks_lightning.core.mermaid import create_mermaid_dag_graph
from torchbricks_lightning.core.structure import MAX_NESTING
from torchbricks_lightning.errors import BrickDefinitionError


def _chain(depth: int, leaf: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{'d{depth-1}': {... {'d0': leaf}}}``: the leaf's bricks sit ``depth`` levels below the root."""
    tree: dict[str, Any] = leaf or {
        "head": BrickTrainable(nn.Linear(2, 2), input_names=["../" * depth + "x"], output_names=["logits"]),
        "loss": BrickLoss(nn.MSELoss(), input_names=["logits", "../" * depth + "target"], output_names=["mse"]),
    }
    for level in range(depth):
        tree = {f"d{level}": tree}
    return tree


def _innermost(collection: BrickCollection, depth: int) -> BrickCollection:
    for level in reversed(range(depth)):
        collection = collection[f"d{level}"]  # type: ignore[assignment]
    return collection


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 400, 20_000])
def test_too_deep_a_tree_is_refused_naming_the_path_where_the_limit_is_passed(depth: int) -> None:
    too_deep = "/".join(f"d{level}" for level in reversed(range(depth - MAX_NESTING - 1, depth)))
    with pytest.raises(BrickDefinitionError, match=rf"nested more than 64 levels deep: '{too_deep}' is level 65\..*"):
        BrickCollection(_chain(depth))


def test_the_message_names_the_limit_and_the_fix() -> None:
    with pytest.raises(BrickDefinitionError, match=r"at most 64 levels of dicts .*flatten the dict"):
        BrickCollection(_chain(400))


def test_a_dict_that_holds_itself_is_refused() -> None:
    looped: dict[str, Any] = {}
    looped["again"] = looped
    with pytest.raises(BrickDefinitionError, match=r"'top/again/again/.*' is level 65"):
        BrickCollection({"top": looped})


def test_collections_nested_in_one_another_past_the_limit_are_refused() -> None:
    deepest = BrickCollection(_chain(MAX_NESTING))
    with pytest.raises(BrickDefinitionError, match=r"'outer/d63/.*/d1/d0' is level 65"):
        BrickCollection({"outer": deepest})
    with pytest.raises(BrickDefinitionError, match=r"'outer/d63/.*/d1/d0' is level 65"):
        BrickCollection({"outer": {"d63": deepest["d63"]}, "other": {}})  # type: ignore[dict-item]


def test_a_member_added_later_past_the_limit_is_refused_at_the_next_call() -> None:
    collection = BrickCollection(_chain(MAX_NESTING))
    inputs = {"x": torch.ones(1, 2), "target": torch.zeros(1, 2)}
    collection(inputs, "train")
    _innermost(collection, MAX_NESTING)["deeper"] = {
        "head": BrickTrainable(nn.Identity(), input_names=["x"], output_names=["y"])
    }
    with pytest.raises(BrickDefinitionError, match=r"is level 65"):
        collection(inputs, "train")


def _at_limit_operations(collection: BrickCollection) -> dict[str, Callable[[], Any]]:
    inputs = {"x": torch.ones(3, 2), "target": torch.zeros(3, 2)}
    return {
        "forward": lambda: collection(inputs, "train"),
        "state_dict": lambda: collection.load_state_dict(copy.deepcopy(collection.state_dict())),
        "repr": lambda: repr(collection),
        "mermaid": lambda: create_mermaid_dag_graph(collection),
        "plan": lambda: collection.plan("train"),
        "select": lambda: collection.select(["logits"])(inputs, "export"),
        "to": lambda: collection.to(torch.float64).to(torch.float32),
        "deepcopy": lambda: copy.deepcopy(collection)(inputs, "train"),
        "pickle": lambda: pickle.loads(pickle.dumps(collection))(inputs, "train"),  # noqa: S301 - our own object
        "backward": lambda: collection.total_loss(collection(inputs, "train")).backward(),
    }


def _with_frames(frames: int, run: Callable[[], Any]) -> Any:
    """Run ``run`` with ``frames`` more frames on the stack, as under Lightning's loops and callbacks."""
    return run() if frames == 0 else _with_frames(frames - 1, run)


@pytest.mark.parametrize("operation", list(_at_limit_operations(BrickCollection({}))))
def test_everything_works_at_the_limit_with_room_to_spare_on_the_stack(operation: str) -> None:
    collection = BrickCollection(_chain(MAX_NESTING))
    path = "/".join(f"d{level}" for level in reversed(range(MAX_NESTING)))
    assert [name for name, _ in collection.named_bricks()] == [f"{path}/head", f"{path}/loss"]
    _with_frames(200, _at_limit_operations(collection)[operation])
