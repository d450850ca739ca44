"""BrickCollection as a module: forward's contract, copying, pickling, dtypes, state dicts, printing, access."""

from __future__ import annotations

import copy
import pickle
from types import MappingProxyType
from typing import Any

import pytest
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.errors import MissingInputError

LOSS_STAGES = (Stage.TRAIN, Stage.VALIDATION, Stage.TEST)
TENSOR_OUTPUTS = ("processed", "features", "logits", "probabilities", "class_prediction")


def make_head(num_classes: int) -> dict[str, Any]:
    """A classifier and its loss, with relative names (the spec's create_image_classification_head)."""
    return {
        "classify": BrickTrainable(
            nn.Linear(N_FEATURES, num_classes), input_names=["features"], output_names=["./logits"]
        ),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["./logits", "targets"], output_names=["./loss_ce"]),
    }


def two_head_collection() -> BrickCollection:
    """A backbone and two nested heads, each with a classifier and a loss."""
    return BrickCollection(
        {
            "backbone": BrickTrainable(
                nn.Linear(N_FEATURES, N_FEATURES), input_names=["raw"], output_names=["features"]
            ),
            "head0": make_head(3),
            "head1": make_head(NUM_CLASSES),
        }
    )


def assert_same_outputs(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert list(first) == list(second)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)


def nudge_parameters(collection: nn.Module) -> None:
    with torch.no_grad():
        for parameter in collection.parameters():
            parameter.add_(0.5)


# ----------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("stage", list(Stage))
def test_forward_returns_a_new_dict_and_leaves_the_callers_dict_alone(
    boring_collection: BrickCollection, batch: dict, stage: Stage
) -> None:
    original = dict(batch)
    outputs = boring_collection(batch, stage=stage)
    assert outputs is not batch
    assert type(outputs) is dict
    assert batch == original  # same keys, same objects
    assert all(batch[name] is original[name] for name in original)
    assert set(outputs) == set(batch) | set(boring_collection.output_names(stage))
    assert all(outputs[name] is batch[name] for name in batch)  # inputs passed through untouched
    outputs["extra"] = 1
    assert "extra" not in batch


def test_forward_leaves_the_callers_dict_alone_when_it_fails(boring_collection: BrickCollection) -> None:
    named_inputs = {"raw": torch.randn(4, N_FEATURES)}
    with pytest.raises(MissingInputError):
        boring_collection(named_inputs, stage=Stage.TRAIN)
    assert list(named_inputs) == ["raw"]


def test_forward_accepts_a_read_only_mapping(boring_collection: BrickCollection, batch: dict) -> None:
    outputs = boring_collection(MappingProxyType(batch), stage=Stage.TRAIN)
    assert_same_outputs(outputs, boring_collection(batch, stage=Stage.TRAIN))


def test_default_stage_is_inference(boring_collection: BrickCollection, batch: dict) -> None:
    assert list(boring_collection(batch)) == list(boring_collection(batch, stage=Stage.INFERENCE))
    assert "loss_ce" not in boring_collection(batch)


def test_outputs_keep_gradients_for_training(boring_collection: BrickCollection, batch: dict) -> None:
    outputs = boring_collection(batch, stage=Stage.TRAIN)
    outputs["loss_ce"].backward()
    assert boring_collection["backbone"].model.weight.grad is not None
    assert boring_collection["head"].model.fc.weight.grad is not None


@pytest.mark.parametrize("collection", [BrickCollection(), BrickCollection({})])
def test_empty_collection_returns_a_copy_of_the_inputs(collection: BrickCollection, batch: dict) -> None:
    outputs = collection(batch, stage=Stage.TRAIN)
    assert outputs == batch
    assert outputs is not batch
    assert collection.input_names(Stage.TRAIN) == []
    assert collection.output_names(Stage.TRAIN) == []


# ----------------------------------------------------------------------------------------------- copying
def test_deepcopy_is_independent_and_runs(boring_collection: BrickCollection, batch: dict) -> None:
    before = boring_collection(batch, stage=Stage.TRAIN)  # the original's plans are built and used
    clone = copy.deepcopy(boring_collection)
    assert clone is not boring_collection
    assert clone["backbone"].model is not boring_collection["backbone"].model
    assert_same_outputs(clone(batch, stage=Stage.TRAIN), before)

    nudge_parameters(clone)
    # The clone's generated plan must call the clone's modules, not the original's.
    changed = clone(batch, stage=Stage.TRAIN)
    assert not torch.allclose(changed["features"], before["features"])
    torch.testing.assert_close(changed["features"], clone["backbone"].model(changed["processed"]))
    # And the original is untouched.
    assert_same_outputs(boring_collection(batch, stage=Stage.TRAIN), before)


def test_deepcopy_of_nested_collection_is_independent(batch: dict) -> None:
    collection = two_head_collection()
    before = collection(batch, stage=Stage.TEST)
    clone = copy.deepcopy(collection)
    assert_same_outputs(clone(batch, stage=Stage.TEST), before)
    with torch.no_grad():
        clone["head1"]["classify"].model.weight.zero_()
        clone["head1"]["classify"].model.bias.fill_(1.0)
    torch.testing.assert_close(clone(batch, stage=Stage.TEST)["head1/logits"], torch.ones(4, NUM_CLASSES))
    assert_same_outputs(collection(batch, stage=Stage.TEST), before)


def test_deepcopy_can_be_mutated_without_touching_the_original(boring_collection: BrickCollection) -> None:
    clone = copy.deepcopy(boring_collection)
    del clone["prediction"]
    clone["head"].input_names = ["processed"]
    assert "class_prediction" not in clone.output_names(Stage.INFERENCE)
    assert "class_prediction" in boring_collection.output_names(Stage.INFERENCE)
    assert boring_collection["head"].input_names == ["features"]


def test_pickle_round_trip(boring_collection: BrickCollection, batch: dict) -> None:
    before = boring_collection(batch, stage=Stage.VALIDATION)
    loaded = pickle.loads(pickle.dumps(boring_collection))  # noqa: S301 - our own object
    assert isinstance(loaded, BrickCollection)
    assert_same_outputs(loaded(batch, stage=Stage.VALIDATION), before)
    assert loaded.input_names(Stage.TRAIN) == ["raw", "targets"]
    nudge_parameters(loaded)
    assert not torch.allclose(loaded(batch)["logits"], before["logits"])
    assert_same_outputs(boring_collection(batch, stage=Stage.VALIDATION), before)


def test_pickle_round_trip_of_nested_collection(batch: dict) -> None:
    collection = two_head_collection()
    loaded = pickle.loads(pickle.dumps(collection))  # noqa: S301 - our own object
    assert_same_outputs(loaded(batch, stage=Stage.TRAIN), collection(batch, stage=Stage.TRAIN))
    assert [path for path, _ in loaded.named_bricks()] == [path for path, _ in collection.named_bricks()]


# ----------------------------------------------------------------------------------------------- dtypes
def test_to_float64_and_back(boring_collection: BrickCollection, batch: dict) -> None:
    reference = boring_collection(batch, stage=Stage.TRAIN)
    returned = boring_collection.to(torch.float64)
    assert returned is boring_collection
    assert all(p.dtype == torch.float64 for p in boring_collection.parameters())
    batch64 = {"raw": batch["raw"].double(), "targets": batch["targets"]}
    outputs64 = boring_collection(batch64, stage=Stage.TRAIN)
    for name in (*TENSOR_OUTPUTS[:-1], "loss_ce"):
        assert outputs64[name].dtype == torch.float64, name
    torch.testing.assert_close(outputs64["logits"].float(), reference["logits"], rtol=1e-5, atol=1e-6)

    boring_collection.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in boring_collection.parameters())
    outputs32 = boring_collection(batch, stage=Stage.TRAIN)
    assert outputs32["logits"].dtype == torch.float32
    torch.testing.assert_close(outputs32["logits"], reference["logits"])


# ----------------------------------------------------------------------------------------------- state dicts
def test_state_dict_round_trip_into_a_fresh_collection(boring_collection: BrickCollection, batch: dict) -> None:
    torch.manual_seed(123)
    fresh = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    expected = boring_collection(batch, stage=Stage.TRAIN)
    assert not torch.allclose(fresh(batch, stage=Stage.TRAIN)["logits"], expected["logits"])  # really different
    result = fresh.load_state_dict(boring_collection.state_dict())
    assert list(result.missing_keys) == []
    assert list(result.unexpected_keys) == []
    assert_same_outputs(fresh(batch, stage=Stage.TRAIN), expected)


def test_state_dict_holds_every_parameter_exactly_once(boring_collection: BrickCollection) -> None:
    collection = BrickCollection({**boring_bricks(), "heads": {"head0": make_head(3), "head1": make_head(4)}})
    for each in (boring_collection, collection):
        state = each.state_dict()
        keys = list(state)
        assert len(keys) == len(set(keys))
        parameter_names = {name for name, _ in each.named_parameters()}
        parameter_keys = [name for name in keys if name in parameter_names]
        assert len(parameter_keys) == len(list(each.parameters()))
        assert set(parameter_keys) == parameter_names
    assert "heads.head0.classify.model.weight" in collection.state_dict()
    assert "backbone.model.weight" in boring_collection.state_dict()


def test_nested_state_dict_round_trip(batch: dict) -> None:
    source = two_head_collection()
    torch.manual_seed(7)
    target = two_head_collection()
    target.load_state_dict(source.state_dict())
    assert_same_outputs(target(batch, stage=Stage.TEST), source(batch, stage=Stage.TEST))


# ----------------------------------------------------------------------------------------------- printing and access
def test_print_shows_names_inputs_outputs_and_alive_stages(
    boring_collection: BrickCollection, capsys: pytest.CaptureFixture[str]
) -> None:
    print(boring_collection)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "BrickCollection("
    by_name = {line.strip().split(")", 1)[0].lstrip("("): line for line in lines[1:-1]}
    assert list(by_name) == ["preprocessor", "backbone", "head", "prediction", "loss", "accuracy"]
    for name, brick in boring_collection.items():
        line = by_name[name]
        assert type(brick).__name__ in line
        assert f"input_names={brick.input_names!r}" in line
        assert f"output_names={brick.output_names!r}" in line
    assert "alive_stages='all'" in by_name["backbone"]
    assert "alive_stages=['train', 'validation', 'test']" in by_name["loss"]
    assert "Linear" in by_name["backbone"]


def test_print_of_nested_collection_shows_nested_bricks() -> None:
    text = repr(two_head_collection())
    assert "(head0): BrickCollection(" in text
    assert "(classify): BrickTrainable(Linear, input_names=['features'], output_names=['./logits']" in text


def test_named_bricks_gives_paths_of_nested_collections() -> None:
    collection = two_head_collection()
    named = list(collection.named_bricks())
    assert [path for path, _ in named] == [
        "backbone",
        "head0/classify",
        "head0/loss",
        "head1/classify",
        "head1/loss",
    ]
    assert dict(named)["head1/loss"] is collection["head1"]["loss"]


def test_module_dict_access(boring_collection: BrickCollection) -> None:
    collection = two_head_collection()
    classify = collection["head0"]["classify"]
    assert isinstance(classify, BrickTrainable)
    assert classify.output_names == ["./logits"]
    assert collection.head0.classify is classify  # attribute access, like any ModuleDict
    assert list(collection.keys()) == ["backbone", "head0", "head1"]
    assert "head0" in collection
    assert len(collection) == 3
    assert list(boring_collection) == ["preprocessor", "backbone", "head", "prediction", "loss", "accuracy"]
    popped = boring_collection.pop("accuracy")
    assert popped.input_names == ["class_prediction", "targets"]
    assert "accuracy" not in boring_collection


def test_update_adds_bricks_through_the_same_checks(boring_collection: BrickCollection, batch: dict) -> None:
    boring_collection.update({"extra": BrickNotTrainable(nn.Identity(), input_names=["logits"], output_names=["copy"])})
    outputs = boring_collection(batch)
    torch.testing.assert_close(outputs["copy"], outputs["logits"])
    with pytest.raises(TypeError):
        boring_collection.update({"bad": nn.Identity()})


# ------------------------------------------------------------------------------------- nn.Module features (spec)
def test_float16_and_back(boring_collection: BrickCollection) -> None:
    boring_collection.to(torch.float16)
    assert all(p.dtype == torch.float16 for p in boring_collection.parameters())
    boring_collection.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in boring_collection.parameters())


def test_save_and_load_state_dict_through_a_file(
    boring_collection: BrickCollection, batch: dict, tmp_path: Any
) -> None:
    expected = boring_collection(batch, stage=Stage.TEST)
    path_model = tmp_path / "model.pt"
    torch.save(boring_collection.state_dict(), path_model)
    nudge_parameters(boring_collection)
    assert not torch.allclose(boring_collection(batch, stage=Stage.TEST)["logits"], expected["logits"])
    boring_collection.load_state_dict(torch.load(path_model))
    assert_same_outputs(boring_collection(batch, stage=Stage.TEST), expected)


def test_named_parameters(boring_collection: BrickCollection) -> None:
    names = [name for name, _ in boring_collection.named_parameters()]
    assert names == ["backbone.model.weight", "backbone.model.bias", "head.model.fc.weight", "head.model.fc.bias"]


def test_torch_compile_creates_a_module(boring_collection: BrickCollection) -> None:
    compiled = torch.compile(boring_collection)
    assert isinstance(compiled, nn.Module)
    assert compiled._orig_mod is boring_collection  # type: ignore[attr-defined]
