"""The generated stage functions: bricks behave as ordinary modules, plans follow every change, names stay data."""

from __future__ import annotations

import copy
import linecache
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torchmetrics.aggregation import SumMetric

from torchbricks_lightning import (
    BrickCollection,
    BrickLoss,
    BrickMetricSingle,
    BrickNotTrainable,
    BrickTrainable,
    Stage,
)
from torchbricks_lightning.errors import ConfigError, TorchBricksError


def _collection() -> BrickCollection:
    return BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x"], calculate_gradients=False),
            "head": BrickTrainable(nn.Linear(3, 2), input_names=["x"], output_names=["y"]),
        }
    )


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them unchanged."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        return graph_module.forward


# --------------------------------------------------------------------------------------------- ordinary modules
def test_every_hook_and_compile_on_bricks_and_wrapped_modules_fires() -> None:
    torch._dynamo.reset()
    collection = _collection()
    collection["pre"].calculate_gradients = True
    head = collection["head"]
    fired: list[str] = []
    handles = [
        head.register_forward_pre_hook(lambda module, args: fired.append("brick forward pre")),
        head.register_forward_hook(lambda module, args, output: fired.append("brick forward")),
        head.register_full_backward_pre_hook(lambda module, grad: fired.append("brick backward pre")),
        head.register_full_backward_hook(lambda module, grad_in, grad_out: fired.append("brick backward")),
        head.model.register_forward_pre_hook(lambda module, args: fired.append("model forward pre")),
        head.model.register_forward_hook(lambda module, args, output: fired.append("model forward")),
        head.model.register_full_backward_hook(lambda module, grad_in, grad_out: fired.append("model backward")),
    ]
    inputs = {"raw": torch.rand(4, 3, requires_grad=True)}
    collection(inputs, Stage.TRAIN)["y"].sum().backward()
    assert set(fired) == {
        "brick forward pre",
        "brick forward",
        "brick backward pre",
        "brick backward",
        "model forward pre",
        "model forward",
        "model backward",
    }
    for handle in handles:
        handle.remove()
    fired.clear()
    collection(inputs, Stage.TRAIN)
    assert fired == []  # removed hooks stop firing

    brick_backend = CountingBackend()
    head.compile(backend=brick_backend)  # brick.compile() takes effect when the collection runs the brick
    eager = head.model(inputs["raw"])
    torch.testing.assert_close(collection(inputs, Stage.INFERENCE)["y"], eager)
    assert brick_backend.graphs == 1

    other = _collection()
    model_backend = CountingBackend()
    other["head"].model.compile(backend=model_backend)  # and so does compiling the wrapped module
    other(inputs, Stage.INFERENCE)
    assert model_backend.graphs == 1


def test_hooks_registered_after_the_plan_was_built_still_fire() -> None:
    collection = _collection()
    inputs = {"raw": torch.rand(4, 3)}
    collection(inputs)  # plan built and used
    seen: list[str] = []
    handle = collection["head"].register_forward_hook(lambda module, args, output: seen.append("brick"))
    inner = collection["head"].model.register_forward_hook(lambda module, args, output: seen.append("model"))
    collection(inputs)
    assert seen == ["model", "brick"]
    handle.remove()
    inner.remove()


def test_global_module_hooks_see_every_brick() -> None:
    collection = _collection()
    calls: list[str] = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, output: calls.append(type(module).__name__)
    )
    try:
        collection({"raw": torch.rand(2, 3)})
    finally:
        handle.remove()
    assert {"BrickTrainable", "BrickNotTrainable", "Linear", "Identity"} <= set(calls)


def test_train_eval_and_requires_grad_act_on_bricks() -> None:
    collection = BrickCollection(
        {
            "drop": BrickTrainable(nn.Dropout(p=0.5), input_names=["raw"], output_names=["x"]),
            "head": BrickTrainable(nn.Linear(8, 2), input_names=["x"], output_names=["y"]),
        }
    )
    inputs = {"raw": torch.ones(16, 8)}
    collection.eval()
    torch.testing.assert_close(collection(inputs)["x"], inputs["raw"])  # no dropout in eval mode
    collection.train()
    assert (collection(inputs)["x"] == 0).any()  # dropout in train mode
    collection["head"].requires_grad_(False)
    collection(inputs)["y"].sum().backward() if collection(inputs)["y"].requires_grad else None
    assert collection["head"].model.weight.grad is None


def test_calculate_gradients_false_detaches_even_an_identity() -> None:
    collection = _collection()
    inputs = {"raw": torch.rand(2, 3, requires_grad=True)}
    outputs = collection(inputs)
    assert not outputs["x"].requires_grad
    outputs["y"].sum().backward()
    assert inputs["raw"].grad is None
    collection["pre"].calculate_gradients = True  # read at call time: no plan involved
    collection(inputs)["y"].sum().backward()
    assert inputs["raw"].grad is not None


# --------------------------------------------------------------------------------------------- plans follow changes
def test_return_metrics_set_after_the_collection_was_built_returns_metrics() -> None:
    metric = BrickMetricSingle(SumMetric(), input_names=["x"])
    collection = BrickCollection({"total": metric})
    inputs = {"x": torch.tensor([1.0, 2.0])}
    assert "total" not in collection(inputs, Stage.TRAIN)
    metric.return_metrics = True
    outputs = collection(inputs, Stage.TRAIN)
    assert float(outputs["total"]) == 3.0
    assert collection.output_names(Stage.TRAIN) == ["total"]


def _nested() -> tuple[BrickCollection, BrickTrainable]:
    head = BrickTrainable(nn.Linear(3, 2), input_names=["../x"], output_names=["./y"])
    collection = BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x"]),
            "task": {"head": head},
        }
    )
    return collection, head


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda head: setattr(head, "output_names", ["./z"]), lambda c: "task/z" in c.output_names("inference")),
        (lambda head: setattr(head, "input_names", ["raw"]), lambda c: c.plan("inference").nodes[1].input_names),
        (
            lambda head: setattr(head, "alive_stages", ["train"]),
            lambda c: "task/y" not in c.output_names("inference"),
        ),
    ],
    ids=["output_names", "input_names", "alive_stages"],
)
def test_changing_a_nested_brick_rebuilds_the_root_plans(
    change: Callable[[BrickTrainable], None], check: Callable[[BrickCollection], Any]
) -> None:
    collection, head = _nested()
    collection({"raw": torch.rand(2, 3)})
    before = collection.plan(Stage.INFERENCE)
    change(head)
    assert collection.plan(Stage.INFERENCE) is not before
    assert check(collection)


def test_loss_weight_and_membership_changes_rebuild_the_plans() -> None:
    collection, _ = _nested()
    loss = BrickLoss(nn.L1Loss(), input_names=["task/y", "targets"], output_names=["l1"])
    collection["loss"] = loss
    assert collection.loss_weights() == {"l1": 1.0}
    loss.loss_weight = 0.25
    assert collection.loss_weights() == {"l1": 0.25}
    del collection["loss"]
    assert collection.loss_names() == []
    loss.loss_weight = 2.0  # a removed brick no longer reaches the collection
    assert collection.loss_weights() == {}


def test_a_brick_shared_by_two_collections_updates_both() -> None:
    shared = BrickTrainable(nn.Linear(3, 3), input_names=["raw"], output_names=["a"])
    first, second = BrickCollection({"b": shared}), BrickCollection({"c": {"b": shared}})
    shared.output_names = ["renamed"]
    assert first.output_names(Stage.INFERENCE) == ["renamed"]
    assert second.output_names(Stage.INFERENCE) == ["renamed"]


def _pickled(collection: BrickCollection) -> BrickCollection:
    return pickle.loads(pickle.dumps(collection))  # noqa: S301 - our own object


@pytest.mark.parametrize("clone", [copy.deepcopy, _pickled], ids=["deepcopy", "pickle"])
def test_copies_follow_changes_of_their_own_bricks_only(clone: Callable[[BrickCollection], BrickCollection]) -> None:
    original, _ = _nested()
    copied = clone(original)
    copied["task"]["head"].output_names = ["./copied"]
    assert "task/copied" in copied.output_names(Stage.INFERENCE)
    assert "task/y" in original.output_names(Stage.INFERENCE)


def test_the_plan_is_not_rebuilt_per_call() -> None:
    collection = _collection()
    compiled = collection._stage(Stage.TRAIN)
    for _ in range(5):
        collection({"raw": torch.rand(2, 3)}, "train")
    assert collection._stage("train") is compiled


# --------------------------------------------------------------------------------------------- names are data
class Echo(nn.Module):
    """Returns its keyword arguments' values in name order."""

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return (*args, *(kwargs[name] for name in sorted(kwargs)))


HOSTILE = [
    "quote'",
    'double"quote',
    "new\\nline",  # a backslash and an n: a newline if it reached the source unquoted (real newlines are refused)
    "brace}{",
    "class",
    "def f(): pass",
    "')); import os; os.system('touch pwned'); (('",
    "\\",
    "__import__('os')",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_data_names_are_only_data(name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    collection = BrickCollection(
        {
            "echo": BrickTrainable(Echo(), input_names=[name], output_names=[name + "/out"]),
            "loss": BrickLoss(
                nn.L1Loss(), input_names=[name + "/out", "targets"], output_names=[name + "/loss"], alive_stages="all"
            ),
        }
    )
    outputs = collection({name: torch.ones(2), "targets": torch.zeros(2)}, Stage.TRAIN)
    assert float(outputs[name + "/loss"]) == 1.0
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argument", [*HOSTILE, "stage", "__all__", "lambda", "x y"])
def test_hostile_keyword_argument_names_work(argument: str) -> None:
    collection = BrickCollection({"echo": BrickTrainable(Echo(), input_names={argument: "raw"}, output_names=["y"])})
    outputs = collection({"raw": torch.tensor([7.0])}, Stage.INFERENCE)
    assert float(outputs["y"]) == 7.0
    assert "**{" in collection.stage_source(Stage.INFERENCE)


def test_stage_as_a_keyword_of_a_metric_brick_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="receives the current stage as its keyword argument 'stage'"):
        BrickMetricSingle(SumMetric(), input_names={"value": "x", "stage": "y"})


def test_every_name_reaches_the_source_quoted() -> None:
    name = "a'b\\nc"  # a quote, a backslash and an n (a real newline is refused at build: tests/core/test_names.py)
    collection = BrickCollection({"echo": BrickTrainable(Echo(), input_names={name: name}, output_names=[name + "/y"])})
    source = collection.stage_source(Stage.INFERENCE)
    assert repr(name) in source
    assert name not in source
    compile(source, "<check>", "exec")


# --------------------------------------------------------------------------------------------- tracebacks
class Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("inner failure")


def test_a_traceback_shows_the_generated_line_and_the_note_names_the_brick() -> None:
    collection = BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x"]),
            "broken": BrickTrainable(Fails(), input_names=["x"], output_names=["y"]),
        }
    )
    with pytest.raises(ValueError, match="inner failure") as info:
        collection({"raw": torch.ones(1)}, Stage.INFERENCE)
    assert any("While running brick 'broken' in stage 'inference'" in note for note in info.value.__notes__)
    text = "".join(traceback.format_exception(info.value))
    assert "t = b1(d['x'])" in text  # the generated line itself, from linecache
    filename = collection._stage(Stage.INFERENCE).filename
    assert filename.startswith("<torchbricks ")
    assert filename.endswith(" inference>")
    assert linecache.getline(filename, 1).startswith("def run(")
    other = BrickCollection({"pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x"])})
    assert other._stage(Stage.INFERENCE).filename != filename  # unique per collection


def test_return_inputs_false_returns_only_what_the_bricks_produced() -> None:
    outputs = _collection()({"raw": torch.rand(2, 3), "extra": 1}, Stage.INFERENCE, return_inputs=False)
    assert list(outputs) == ["x", "y"]


def test_errors_raised_by_the_library_keep_their_type() -> None:
    with pytest.raises(TorchBricksError):
        _collection()({}, Stage.INFERENCE)
