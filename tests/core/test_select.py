"""BrickCollection.select: the bricks some outputs need, as a collection of its own (a pruned graph)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import create_image_classification_head
from torchbricks_lightning.errors import ConfigError


def _two_heads() -> BrickCollection:
    return BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["normalized"]),
            "backbone": BrickTrainable(nn.Conv2d(3, 4, 1), input_names=["normalized"], output_names=["features"]),
            "digit": create_image_classification_head(5, 4, "features", "targets"),
            "parity": create_image_classification_head(2, 4, "features", "parity"),
            "side": BrickTrainable(nn.Linear(3, 1), input_names=["extra"], output_names=["side_out"]),
        }
    )


def _count_calls(collection: BrickCollection) -> list[str]:
    calls: list[str] = []
    for path, brick in collection.named_bricks():
        brick.register_forward_hook(lambda module, args, output, path=path: calls.append(path))
    return calls


def test_a_selected_head_needs_only_its_inputs_runs_fewer_bricks_and_matches_the_full_run() -> None:
    full = _two_heads()
    selected = full.select(["digit/probabilities"], stage=Stage.EXPORT)
    assert [path for path, _ in selected.named_bricks()] == ["pre", "backbone", "digit/classify"]
    assert selected.input_names(Stage.EXPORT) == ["raw"]  # 'extra' is not an input any more
    assert "parity/probabilities" not in selected.output_names(Stage.EXPORT)

    inputs = {"raw": torch.rand(2, 3, 4, 4), "extra": torch.rand(2, 3)}
    full_calls, selected_calls = _count_calls(full), _count_calls(selected)
    with torch.no_grad():
        expected = full(inputs, Stage.EXPORT)
        got = selected({"raw": inputs["raw"]}, Stage.EXPORT)
    assert len(set(selected_calls)) < len(set(full_calls))  # hooks fire once per brick each: fewer bricks ran
    torch.testing.assert_close(got["digit/probabilities"], expected["digit/probabilities"])


def test_selected_bricks_are_shared_not_copied() -> None:
    full = _two_heads()
    selected = full.select(["parity/logits"])
    assert selected["parity"]["classify"] is full["parity"]["classify"]
    with torch.no_grad():
        full["parity"]["classify"].model.fc.weight.fill_(0.5)
    assert float(selected["parity"]["classify"].model.fc.weight[0, 0]) == 0.5


def test_a_loss_can_be_selected_in_a_stage_where_it_is_alive() -> None:
    selected = _two_heads().select(["digit/loss_ce"], stage=Stage.TRAIN)
    assert selected.input_names(Stage.TRAIN) == ["raw", "targets"]
    assert selected.loss_names(Stage.TRAIN) == ["digit/loss_ce"]


def test_selecting_a_name_the_stage_does_not_produce_is_a_clear_error() -> None:
    with pytest.raises(
        ConfigError, match=r"Cannot select \['digit/probabilites'\].*Did you mean 'digit/probabilities'"
    ):
        _two_heads().select(["digit/probabilites"])
    with pytest.raises(ConfigError, match=r"no brick alive in stage 'export' produces it.*alive_stages"):
        _two_heads().select(["digit/loss_ce"], stage=Stage.EXPORT)
    with pytest.raises(ConfigError, match="at least one output name"):
        _two_heads().select([])


class Summary(nn.Module):
    def forward(self, everything: dict[str, Any]) -> torch.Tensor:
        return torch.tensor(float(len(everything)))


def test_a_brick_reading_all_keeps_every_brick_before_it() -> None:
    collection = BrickCollection(
        {
            "a": BrickTrainable(nn.Identity(), input_names=["raw"], output_names=["x"]),
            "b": BrickTrainable(nn.Identity(), input_names=["raw"], output_names=["y"]),
            "summary": BrickTrainable(Summary(), input_names=["__all__"], output_names=["count"]),
            "c": BrickLoss(nn.L1Loss(), input_names=["x", "raw"], output_names=["l1"], alive_stages="all"),
        }
    )
    selected = collection.select(["count"], stage=Stage.INFERENCE)
    # 'summary' runs after every brick it does not feed, so it needs them all, the loss 'c' included.
    assert [path for path, _ in selected.named_bricks()] == ["a", "b", "summary", "c"]
    torch.testing.assert_close(
        selected({"raw": torch.ones(2)}, Stage.INFERENCE)["count"],
        collection({"raw": torch.ones(2)}, Stage.INFERENCE)["count"],
    )
    independent = collection.select(["y"], stage=Stage.INFERENCE)
    assert [path for path, _ in independent.named_bricks()] == ["b"]
