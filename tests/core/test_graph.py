"""The brick graph: execution order from names, nesting and relative names, special inputs, per-stage plans.

Also the pure functions of ``core/graph.py`` on plain ``BrickNode`` records, and the caching of the
generated stage plans (built once, rebuilt after the collection changes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.core import collection as collection_module
from torchbricks_lightning.core.graph import BrickNode, StagePlan, join_path, plan_stage, resolve_name
from torchbricks_lightning.errors import CycleError, DuplicateOutputError, InvalidNameError

LOSS_STAGES = (Stage.TRAIN, Stage.VALIDATION, Stage.TEST)
NO_LOSS_STAGES = (Stage.INFERENCE, Stage.EXPORT)


# ----------------------------------------------------------------------------------------------- helpers
class Recorder(nn.Module):
    """Appends its tag to a shared log when called and returns the sum of its inputs plus ``offset``."""

    def __init__(self, tag: str, log: list[str], offset: float = 1.0) -> None:
        super().__init__()
        self.tag = tag
        self.log = log
        self.offset = offset

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        self.log.append(self.tag)
        total = torch.zeros(())
        for value in values:
            total = total + value
        return total + self.offset


class AddOne(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Add(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class Divide(nn.Module):
    def forward(self, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        return numerator / denominator


class KeysOfAll(nn.Module):
    """Records the keys of the ``'__all__'`` dict it gets and returns how many there were."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def forward(self, named: dict[str, Any]) -> torch.Tensor:
        assert isinstance(named, dict)
        self.seen.append(list(named))
        return torch.tensor(float(len(named)))


class StageAwarePreprocessor(nn.Module):
    """The spec's example: resize only when exporting."""

    def __init__(self) -> None:
        super().__init__()
        self.stages_seen: list[object] = []

    def forward(self, input_image: torch.Tensor, stage: Stage) -> torch.Tensor:
        self.stages_seen.append(stage)
        if stage in [Stage.EXPORT]:
            input_image = nn.functional.interpolate(input_image, size=(50, 100))
        return input_image / 2


def recorder_brick(tag: str, log: list[str], inputs: Sequence[str], outputs: Sequence[str], **kwargs: Any):
    return BrickNotTrainable(Recorder(tag, log), input_names=list(inputs), output_names=list(outputs), **kwargs)


def node(
    path: str,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    *,
    index: int = 0,
    stages: Sequence[Stage] = tuple(Stage),
    keyword: Sequence[tuple[str, str]] = (),
    losses: Sequence[str] = (),
    loss_weight: float = 1.0,
    receives_stage: bool = False,
) -> BrickNode:
    return BrickNode(
        path=path,
        positional_inputs=tuple(inputs),
        keyword_inputs=tuple(keyword),
        output_names=tuple(outputs),
        loss_names=tuple(losses),
        loss_weight=loss_weight,
        alive_stages=frozenset(stages),
        receives_stage=receives_stage,
        index=index,
    )


def indexed(*nodes: BrickNode) -> list[BrickNode]:
    """Give the nodes their declaration index."""
    return [
        BrickNode(**{**{field: getattr(n, field) for field in BrickNode.__dataclass_fields__}, "index": i})
        for i, n in enumerate(nodes)
    ]


def paths(plan: StagePlan) -> list[str]:
    return [n.path for n in plan.nodes]


def execution_order(collection: BrickCollection, stage: Stage) -> list[str]:
    return [n.path for n in collection.plan(stage).nodes]


# ----------------------------------------------------------------------------------------------- order from names
@pytest.mark.parametrize("stage", list(Stage))
def test_consumer_declared_before_producer_gives_hand_written_outputs(stage: Stage, batch: dict) -> None:
    bricks = boring_bricks()
    reversed_bricks = dict(reversed(list(bricks.items())))
    collection = BrickCollection(reversed_bricks)  # type: ignore[arg-type]
    assert list(collection) == list(reversed_bricks)  # the dict order itself is kept

    outputs = collection(batch, stage=stage)

    # The same module objects, called by hand in the natural order.
    processed = bricks["preprocessor"].model(batch["raw"])
    features = bricks["backbone"].model(processed)
    logits, probabilities = bricks["head"].model(features)
    class_prediction = bricks["prediction"].model(logits)
    expected = {
        "processed": processed,
        "features": features,
        "logits": logits,
        "probabilities": probabilities,
        "class_prediction": class_prediction,
    }
    if stage in LOSS_STAGES:
        expected["loss_ce"] = bricks["loss"].model(logits, batch["targets"])
    assert set(outputs) == set(batch) | set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(outputs[name], value, rtol=0, atol=0, msg=name)


def test_execution_order_follows_names_and_keeps_declaration_order_for_ties() -> None:
    collection = BrickCollection(dict(reversed(list(boring_bricks().items()))))  # type: ignore[arg-type]
    # Declared: accuracy, loss, prediction, head, backbone, preprocessor. Once 'head' ran, both 'loss' and
    # 'prediction' are ready: 'loss' was declared first, so it runs first.
    assert execution_order(collection, Stage.TRAIN) == [
        "preprocessor",
        "backbone",
        "head",
        "loss",
        "prediction",
        "accuracy",
    ]
    assert execution_order(collection, Stage.INFERENCE) == ["preprocessor", "backbone", "head", "prediction"]


def test_bricks_are_called_in_dependency_order() -> None:
    log: list[str] = []
    collection = BrickCollection(
        {
            "c": recorder_brick("c", log, ["b_out"], ["c_out"]),
            "b": recorder_brick("b", log, ["a_out"], ["b_out"]),
            "a": recorder_brick("a", log, ["x"], ["a_out"]),
        }
    )
    outputs = collection({"x": torch.tensor(0.0)})
    assert log == ["a", "b", "c"]
    assert outputs["c_out"].item() == 3.0


@pytest.mark.parametrize("declared", list(itertools.permutations(["p", "q", "r"])))
def test_independent_bricks_run_in_declaration_order(declared: tuple[str, ...]) -> None:
    log: list[str] = []
    collection = BrickCollection({name: recorder_brick(name, log, ["x"], [f"{name}_out"]) for name in declared})
    collection({"x": torch.tensor(0.0)})
    assert log == list(declared)
    assert collection.output_names(Stage.INFERENCE) == [f"{name}_out" for name in declared]


def test_tie_after_a_dependency_prefers_the_earliest_declared_ready_brick() -> None:
    log: list[str] = []
    collection = BrickCollection(
        {
            "consumer": recorder_brick("consumer", log, ["y"], ["z"]),
            "producer": recorder_brick("producer", log, ["x"], ["y"]),
            "independent": recorder_brick("independent", log, ["x"], ["w"]),
        }
    )
    collection({"x": torch.tensor(0.0)})
    assert log == ["producer", "consumer", "independent"]


def test_dead_bricks_are_not_called() -> None:
    log: list[str] = []
    collection = BrickCollection(
        {
            "always": recorder_brick("always", log, ["x"], ["y"]),
            "train_only": recorder_brick("train_only", log, ["y"], ["z"], alive_stages=[Stage.TRAIN]),
            "never": recorder_brick("never", log, ["y"], ["w"], alive_stages="none"),
        }
    )
    outputs = collection({"x": torch.tensor(0.0)}, stage=Stage.INFERENCE)
    assert log == ["always"]
    assert "z" not in outputs
    assert "w" not in outputs
    log.clear()
    collection({"x": torch.tensor(0.0)}, stage=Stage.TRAIN)
    assert log == ["always", "train_only"]


# ----------------------------------------------------------------------------------------------- nesting
def test_nested_dicts_become_nested_brick_collections() -> None:
    leaf = BrickNotTrainable(AddOne(), input_names=["x"], output_names=["y"])
    collection = BrickCollection({"outer": {"inner": {"leaf": leaf}}})
    assert isinstance(collection["outer"], BrickCollection)
    assert isinstance(collection["outer"]["inner"], BrickCollection)
    assert collection["outer"]["inner"]["leaf"] is leaf
    assert [path for path, _ in collection.named_bricks()] == ["outer/inner/leaf"]


def _relative_collection() -> BrickCollection:
    return BrickCollection(
        {
            "heads": {
                "head0": {
                    # '../shared' from 'heads/head0' is 'heads/shared'; '../../features' is the root's 'features'.
                    "post": BrickNotTrainable(
                        Add(), input_names=["./logits", "../../features"], output_names=["./sum"]
                    ),
                    "classify": BrickTrainable(
                        nn.Linear(N_FEATURES, N_FEATURES), input_names=["../shared"], output_names=["./logits"]
                    ),
                },
                "neck": BrickNotTrainable(AddOne(), input_names=["../features"], output_names=["./shared"]),
            },
            "backbone": BrickTrainable(
                nn.Linear(N_FEATURES, N_FEATURES), input_names=["raw"], output_names=["features"]
            ),
        }
    )


@pytest.mark.parametrize("stage", list(Stage))
def test_relative_names_resolve_two_levels_deep(stage: Stage) -> None:
    collection = _relative_collection()
    assert collection.output_names(stage) == ["features", "heads/shared", "heads/head0/logits", "heads/head0/sum"]
    assert collection.input_names(stage) == ["raw"]
    nodes = {n.path: n for n in collection.brick_nodes()}
    assert nodes["heads/neck"].input_names == ("features",)
    assert nodes["heads/head0/classify"].input_names == ("heads/shared",)
    assert nodes["heads/head0/post"].input_names == ("heads/head0/logits", "features")
    assert nodes["heads/head0/post"].output_names == ("heads/head0/sum",)

    raw = torch.randn(2, N_FEATURES)
    outputs = collection({"raw": raw}, stage=stage)
    features = collection["backbone"].model(raw)
    shared = features + 1
    logits = collection["heads"]["head0"]["classify"].model(shared)
    torch.testing.assert_close(outputs["features"], features)
    torch.testing.assert_close(outputs["heads/shared"], shared)
    torch.testing.assert_close(outputs["heads/head0/logits"], logits)
    torch.testing.assert_close(outputs["heads/head0/sum"], logits + features)


def test_the_same_head_twice_with_relative_names_gets_separate_names() -> None:
    """The spec's two classification heads built by one function, kept apart by './' names."""

    def create_head(num_classes: int) -> dict[str, Any]:
        return {
            "classify": BrickTrainable(
                nn.Linear(N_FEATURES, num_classes), input_names=["features"], output_names=["./logits"]
            ),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["./logits", "targets"], output_names=["./loss_ce"]),
        }

    collection = BrickCollection(
        {
            "backbone": BrickTrainable(
                nn.Linear(N_FEATURES, N_FEATURES), input_names=["raw"], output_names=["features"]
            ),
            "head0": create_head(3),
            "head1": create_head(5),
        }
    )
    assert collection.output_names(Stage.TRAIN) == [
        "features",
        "head0/logits",
        "head0/loss_ce",
        "head1/logits",
        "head1/loss_ce",
    ]
    assert collection.loss_names(Stage.TRAIN) == ["head0/loss_ce", "head1/loss_ce"]
    outputs = collection({"raw": torch.randn(4, N_FEATURES), "targets": torch.tensor([0, 1, 2, 1])}, stage="train")
    assert outputs["head0/logits"].shape == (4, 3)
    assert outputs["head1/logits"].shape == (4, 5)


# ----------------------------------------------------------------------------------------------- special inputs
def test_all_input_gets_every_value_produced_before_it_and_runs_last() -> None:
    visualizer = KeysOfAll()
    collection = BrickCollection(
        {
            # Declared first: it must still run after the bricks it does not feed.
            "visualizer": BrickNotTrainable(visualizer, input_names=["__all__"], output_names=["n_values"]),
            "preprocessor": BrickNotTrainable(AddOne(), input_names=["raw"], output_names=["processed"]),
            "backbone": BrickNotTrainable(AddOne(), input_names=["processed"], output_names=["embedding"]),
        }
    )
    assert execution_order(collection, Stage.INFERENCE) == ["preprocessor", "backbone", "visualizer"]
    outputs = collection({"raw": torch.zeros(2)}, stage=Stage.INFERENCE)
    assert visualizer.seen == [["raw", "processed", "embedding"]]
    assert outputs["n_values"].item() == 3.0
    assert list(outputs) == ["raw", "processed", "embedding", "n_values"]


def test_all_input_brick_runs_before_bricks_that_read_its_output() -> None:
    visualizer = KeysOfAll()
    collection = BrickCollection(
        {
            "user": BrickNotTrainable(AddOne(), input_names=["n_values"], output_names=["n_plus_one"]),
            "visualizer": BrickNotTrainable(visualizer, input_names=["__all__"], output_names=["n_values"]),
            "preprocessor": BrickNotTrainable(AddOne(), input_names=["raw"], output_names=["processed"]),
        }
    )
    assert execution_order(collection, Stage.INFERENCE) == ["preprocessor", "visualizer", "user"]
    outputs = collection({"raw": torch.zeros(2)})
    assert visualizer.seen == [["raw", "processed"]]
    assert outputs["n_plus_one"].item() == 3.0


def test_all_input_dict_is_a_copy() -> None:
    class Vandal(nn.Module):
        def forward(self, named: dict[str, Any]) -> torch.Tensor:
            named["raw"] = torch.full((2,), 100.0)
            named["injected"] = torch.zeros(1)
            return torch.zeros(())

    collection = BrickCollection(
        {
            "vandal": BrickNotTrainable(Vandal(), input_names=["__all__"], output_names=["done"]),
            "pre": BrickNotTrainable(AddOne(), input_names=["raw"], output_names=["processed"]),
        }
    )
    outputs = collection({"raw": torch.zeros(2)})
    assert "injected" not in outputs
    torch.testing.assert_close(outputs["raw"], torch.zeros(2))


def test_two_all_input_bricks_keep_declaration_order() -> None:
    """Two '__all__' readers that do not feed each other are a tie: the first declared should run first."""
    first, second = KeysOfAll(), KeysOfAll()
    collection = BrickCollection(
        {
            "first": BrickNotTrainable(first, input_names=["__all__"], output_names=["n_first"]),
            "second": BrickNotTrainable(second, input_names=["__all__"], output_names=["n_second"]),
            "pre": BrickNotTrainable(AddOne(), input_names=["raw"], output_names=["processed"]),
        }
    )
    assert execution_order(collection, Stage.INFERENCE) == ["pre", "first", "second"]
    collection({"raw": torch.zeros(2)})
    assert first.seen == [["raw", "processed"]]
    assert second.seen == [["raw", "processed", "n_first"]]


@pytest.mark.parametrize("stage", list(Stage))
def test_stage_input_passes_the_stage_enum(stage: Stage) -> None:
    preprocessor = StageAwarePreprocessor()
    collection = BrickCollection(
        {"preprocessor": BrickNotTrainable(preprocessor, input_names=["raw", "stage"], output_names=["processed"])}
    )
    assert collection.input_names(stage) == ["raw"]  # 'stage' is not asked of the caller
    raw = torch.rand((1, 1, 100, 200))
    outputs = collection({"raw": raw}, stage=stage.value)  # a plain string works and still passes the enum
    expected_shape = [50, 100] if stage is Stage.EXPORT else [100, 200]
    assert list(outputs["processed"].shape[2:]) == expected_shape
    assert preprocessor.stages_seen == [stage]
    assert type(preprocessor.stages_seen[0]) is Stage
    assert "stage" not in outputs
    if stage is not Stage.EXPORT:
        torch.testing.assert_close(outputs["processed"], raw / 2)


def test_keyword_input_names_pass_keyword_arguments() -> None:
    collection = BrickCollection(
        {
            # Declared in the opposite order of the signature: only keywords get this right.
            "divide": BrickNotTrainable(
                Divide(), input_names={"denominator": "b", "numerator": "a"}, output_names=["ratio"]
            ),
        }
    )
    outputs = collection({"a": torch.tensor(6.0), "b": torch.tensor(2.0)})
    assert outputs["ratio"].item() == 3.0
    assert collection.input_names(Stage.INFERENCE) == ["b", "a"]
    (only,) = collection.brick_nodes()
    assert only.keyword_inputs == (("denominator", "b"), ("numerator", "a"))
    assert only.positional_inputs == ()


def test_keyword_input_names_with_relative_names_and_stage() -> None:
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, stage: Stage) -> torch.Tensor:
            return x * (10 if stage is Stage.TRAIN else 1)

    collection = BrickCollection(
        {
            "head": {
                "source": BrickNotTrainable(AddOne(), input_names=["raw"], output_names=["./value"]),
                "scale": BrickNotTrainable(
                    Scaled(), input_names={"x": "./value", "stage": "stage"}, output_names=["./y"]
                ),
            }
        }
    )
    assert collection({"raw": torch.tensor(1.0)}, stage=Stage.TRAIN)["head/y"].item() == 20.0
    assert collection({"raw": torch.tensor(1.0)}, stage=Stage.TEST)["head/y"].item() == 2.0


# ----------------------------------------------------------------------------------------------- per-stage graphs
@pytest.mark.parametrize("stage", list(Stage))
def test_loss_alive_in_some_stages_changes_the_stage_interface(
    boring_collection: BrickCollection, stage: Stage
) -> None:
    if stage in LOSS_STAGES:
        assert boring_collection.input_names(stage) == ["raw", "targets"]
        assert "loss_ce" in boring_collection.output_names(stage)
    else:
        assert boring_collection.input_names(stage) == ["raw"]
        assert "loss_ce" not in boring_collection.output_names(stage)


@pytest.mark.parametrize("stage", NO_LOSS_STAGES)
def test_stage_without_loss_runs_without_targets(boring_collection: BrickCollection, stage: Stage) -> None:
    outputs = boring_collection({"raw": torch.randn(4, N_FEATURES)}, stage=stage)
    assert list(outputs) == ["raw", "processed", "features", "logits", "probabilities", "class_prediction"]
    assert outputs["logits"].shape == (4, NUM_CLASSES)


@pytest.mark.parametrize("stage", list(Stage))
def test_output_names_per_stage(boring_collection: BrickCollection, stage: Stage, batch: dict) -> None:
    expected = ["processed", "features", "logits", "probabilities", "class_prediction"]
    if stage in LOSS_STAGES:
        expected.append("loss_ce")
    assert boring_collection.output_names(stage) == expected
    assert boring_collection.output_names(stage.value) == expected
    outputs = boring_collection(batch, stage=stage)
    assert list(outputs) == [*batch, *expected]


@pytest.mark.parametrize("stage", list(Stage))
def test_same_output_name_in_disjoint_stages_is_allowed(stage: Stage) -> None:
    class AddTen(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 10

    collection = BrickCollection(
        {
            "train_head": BrickNotTrainable(AddOne(), input_names=["x"], output_names=["y"], alive_stages=["train"]),
            "eval_head": BrickNotTrainable(
                AddTen(), input_names=["x"], output_names=["y"], alive_stages=[s for s in Stage if s is not Stage.TRAIN]
            ),
        }
    )
    assert collection.output_names(stage) == ["y"]
    expected = 1.0 if stage is Stage.TRAIN else 10.0
    assert collection({"x": torch.tensor(0.0)}, stage=stage)["y"].item() == expected


# ----------------------------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize(
    ("name", "directory", "expected"),
    [
        ("x", "", "x"),
        ("x", "a/b", "x"),
        ("a/x", "c", "a/x"),
        ("./x", "", "x"),
        ("./x", "a", "a/x"),
        ("./x", "a/b", "a/b/x"),
        ("../x", "a", "x"),
        ("../x", "a/b", "a/x"),
        ("../../x", "a/b", "x"),
        ("./../x", "a/b", "a/x"),
        ("../y/z", "a/b", "a/y/z"),
        ("__all__", "a", "__all__"),
        ("stage", "a", "stage"),
    ],
)
def test_resolve_name(name: str, directory: str, expected: str) -> None:
    assert resolve_name(name, directory, brick_path=join_path(directory, "brick"), role="input") == expected


@pytest.mark.parametrize(("name", "directory"), [("../x", ""), ("../../x", "a"), ("../../../x", "a/b")])
def test_resolve_name_above_the_root(name: str, directory: str) -> None:
    brick_path = join_path(directory, "brick")
    with pytest.raises(InvalidNameError, match=r"climbs above the root") as info:
        resolve_name(name, directory, brick_path=brick_path, role="output")
    assert repr(brick_path) in str(info.value)
    assert repr(name) in str(info.value)
    assert "output" in str(info.value)


def test_join_path() -> None:
    assert join_path("", "x") == "x"
    assert join_path("head0", "x") == "head0/x"
    assert join_path("a/b", "x") == "a/b/x"


def test_plan_stage_orders_filters_and_describes_the_interface() -> None:
    nodes = indexed(
        node("loss", ["logits", "targets"], ["loss"], stages=LOSS_STAGES, losses=["loss"], loss_weight=0.5),
        node("head", ["features"], ["logits", "probs"]),
        node("backbone", ["raw"], ["features"]),
        node("export_only", ["logits"], ["exported"], stages=[Stage.EXPORT]),
    )
    train = plan_stage(nodes, Stage.TRAIN)
    assert train.stage is Stage.TRAIN
    assert paths(train) == ["backbone", "head", "loss"]
    assert train.required_inputs == ("raw", "targets")
    assert train.output_names == ("features", "logits", "probs", "loss")
    assert train.loss_weights == (("loss", 0.5),)

    inference = plan_stage(nodes, Stage.INFERENCE)
    assert paths(inference) == ["backbone", "head"]
    assert inference.required_inputs == ("raw",)
    assert inference.loss_weights == ()

    export = plan_stage(nodes, Stage.EXPORT)
    assert paths(export) == ["backbone", "head", "export_only"]
    assert export.output_names == ("features", "logits", "probs", "exported")


def test_plan_stage_required_inputs_skip_stage_and_all_and_keep_first_use_order() -> None:
    nodes = indexed(
        node("a", ["y", "stage"], ["a_out"], receives_stage=True),
        node("b", ["x"], ["b_out"], keyword=[("value", "z")]),
        node("c", ["__all__"], ["c_out"]),
    )
    plan = plan_stage(nodes, Stage.TEST)
    assert plan.required_inputs == ("y", "x", "z")
    assert paths(plan) == ["a", "b", "c"]


def test_plan_stage_with_no_alive_brick() -> None:
    plan = plan_stage(indexed(node("a", ["x"], ["y"], stages=[Stage.TRAIN])), Stage.EXPORT)
    assert plan.nodes == ()
    assert plan.required_inputs == ()
    assert plan.output_names == ()


def test_plan_stage_rejects_duplicates_and_cycles() -> None:
    duplicate = indexed(node("a", ["x"], ["y"]), node("b", ["x"], ["y"]))
    with pytest.raises(DuplicateOutputError, match=r"'a' and 'b' both produce 'y' in stage 'validation'"):
        plan_stage(duplicate, Stage.VALIDATION)
    cycle = indexed(node("a", ["y"], ["x"]), node("b", ["x"], ["y"]))
    with pytest.raises(CycleError, match=r"cycle in stage 'test'"):
        plan_stage(cycle, Stage.TEST)
    # Dead in the stage: no duplicate and no cycle there.
    assert paths(plan_stage(indexed(node("a", ["x"], ["y"]), node("b", ["x"], ["y"], stages=[])), Stage.TEST)) == ["a"]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(min_value=1, max_value=8))
def test_plan_stage_orders_any_dag_whatever_the_declaration_order(data: st.DataObject, size: int) -> None:
    # Node k produces 'v{k}' and reads some of 'v0'..'v{k-1}' (and maybe the external 'raw').
    reads = [
        data.draw(st.lists(st.sampled_from([f"v{j}" for j in range(k)] + ["raw"]), unique=True, max_size=3))
        for k in range(size)
    ]
    declaration = data.draw(st.permutations(list(range(size))))
    nodes = indexed(*(node(f"n{k}", reads[k], [f"v{k}"]) for k in declaration))
    plan = plan_stage(nodes, Stage.TRAIN)

    position = {n.path: i for i, n in enumerate(plan.nodes)}
    assert sorted(position) == sorted(f"n{k}" for k in range(size))
    for k in range(size):
        for name in reads[k]:
            if name != "raw":
                assert position[f"n{name[1:]}"] < position[f"n{k}"]
    assert set(plan.required_inputs) == ({"raw"} if any("raw" in r for r in reads) else set())
    # Greedy: every brick runs as soon as possible, earliest declared first.
    done: set[str] = set()
    for n in plan.nodes:
        ready = [
            m.path
            for m in nodes
            if m.path not in done and all(name == "raw" or f"n{name[1:]}" in done for name in m.input_names)
        ]
        assert n.path == ready[0]
        done.add(n.path)


# ----------------------------------------------------------------------------------------------- plan caching
@pytest.fixture
def compile_counter(monkeypatch: pytest.MonkeyPatch) -> list[Stage]:
    """Count the calls of ``compile_stage`` made by collections (the stage of each call)."""
    calls: list[Stage] = []
    original = collection_module.compile_stage

    def counting(plan: StagePlan, modules: Sequence[nn.Module]):
        calls.append(plan.stage)
        return original(plan, modules)

    monkeypatch.setattr(collection_module, "compile_stage", counting)
    return calls


def test_stage_plan_is_cached(boring_collection: BrickCollection) -> None:
    compiled = boring_collection._stage(Stage.TRAIN)
    assert boring_collection._stage(Stage.TRAIN) is compiled
    assert boring_collection._stage("train") is compiled
    assert boring_collection.plan(Stage.TRAIN) is compiled.plan
    assert boring_collection._stage(Stage.INFERENCE) is not compiled


def test_forward_does_not_rebuild_the_plan(compile_counter: list[Stage], batch: dict) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    assert sorted(compile_counter) == sorted(Stage)  # once per stage, at construction
    plans = {stage: collection._stage(stage) for stage in Stage}
    compile_counter.clear()
    for i in range(100):
        stage = list(Stage)[i % len(Stage)]
        collection(batch, stage=stage if i % 2 else stage.value)
    collection.input_names(Stage.TRAIN)
    collection.output_names(Stage.EXPORT)
    assert compile_counter == []
    assert all(collection._stage(stage) is plan for stage, plan in plans.items())


def test_adding_a_brick_rebuilds_the_plan(compile_counter: list[Stage], batch: dict) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    before = collection._stage(Stage.INFERENCE)
    compile_counter.clear()
    collection["extra"] = BrickNotTrainable(AddOne(), input_names=["class_prediction"], output_names=["shifted"])
    outputs = collection(batch, stage=Stage.INFERENCE)
    assert compile_counter  # rebuilt
    assert collection._stage(Stage.INFERENCE) is not before
    assert collection.output_names(Stage.INFERENCE)[-1] == "shifted"
    torch.testing.assert_close(outputs["shifted"], outputs["class_prediction"] + 1)
    n_builds = len(compile_counter)
    collection(batch, stage=Stage.INFERENCE)
    assert len(compile_counter) == n_builds  # and cached again


def test_deleting_a_brick_rebuilds_the_plan(boring_collection: BrickCollection, batch: dict) -> None:
    assert boring_collection.input_names(Stage.TRAIN) == ["raw", "targets"]
    del boring_collection["prediction"]
    assert "class_prediction" not in boring_collection.output_names(Stage.INFERENCE)
    # The accuracy metric now needs 'class_prediction' from the caller.
    assert boring_collection.input_names(Stage.TRAIN) == ["raw", "targets", "class_prediction"]
    outputs = boring_collection(batch, stage=Stage.INFERENCE)
    assert "class_prediction" not in outputs
    assert execution_order(boring_collection, Stage.INFERENCE) == ["preprocessor", "backbone", "head"]


def test_changing_input_names_rebuilds_the_plan(boring_collection: BrickCollection, batch: dict) -> None:
    before = boring_collection(batch, stage=Stage.INFERENCE)
    boring_collection["backbone"].input_names = ["raw"]  # skip the preprocessor
    assert boring_collection.input_names(Stage.INFERENCE) == ["raw"]
    after = boring_collection(batch, stage=Stage.INFERENCE)
    torch.testing.assert_close(after["features"], boring_collection["backbone"].model(batch["raw"]))
    assert not torch.allclose(after["features"], before["features"])


def test_changing_output_names_and_alive_stages_rebuilds_the_plan(boring_collection: BrickCollection) -> None:
    boring_collection["head"].output_names = ["scores", "probabilities"]
    assert "scores" in boring_collection.output_names(Stage.INFERENCE)
    assert "logits" in boring_collection.input_names(Stage.INFERENCE)  # 'prediction' still reads 'logits'
    boring_collection["prediction"].alive_stages = [Stage.TRAIN]
    assert boring_collection.input_names(Stage.INFERENCE) == ["raw"]
    assert "class_prediction" not in boring_collection.output_names(Stage.INFERENCE)


def test_mutating_a_nested_collection_rebuilds_the_root_plan() -> None:
    collection = _relative_collection()
    assert "heads/head0/extra" not in collection.output_names(Stage.TEST)
    collection["heads"]["head0"]["extra"] = BrickNotTrainable(AddOne(), input_names=["./sum"], output_names=["./extra"])
    assert collection.output_names(Stage.TEST)[-1] == "heads/head0/extra"
    outputs = collection({"raw": torch.randn(2, N_FEATURES)}, stage=Stage.TEST)
    torch.testing.assert_close(outputs["heads/head0/extra"], outputs["heads/head0/sum"] + 1)


def test_mutation_that_breaks_the_graph_is_reported_at_the_next_use(boring_collection: BrickCollection) -> None:
    boring_collection["copycat"] = BrickNotTrainable(AddOne(), input_names=["raw"], output_names=["logits"])
    with pytest.raises(DuplicateOutputError, match=r"'head' and 'copycat' both produce 'logits'"):
        boring_collection({"raw": torch.randn(4, N_FEATURES)})
    del boring_collection["copycat"]
    assert "logits" in boring_collection({"raw": torch.randn(4, N_FEATURES)})


def test_a_stage_plan_answers_producers_readers_and_terminal_outputs() -> None:
    from torchbricks_lightning.core.mermaid import create_mermaid_dag_graph
    from torchbricks_lightning.core.outputs import terminal_output_names

    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    plan = collection.plan(Stage.TRAIN)
    assert {name: [node.path for node in nodes] for name, nodes in plan.producers.items()} == {
        "processed": ["preprocessor"],
        "features": ["backbone"],
        "logits": ["head"],
        "probabilities": ["head"],
        "class_prediction": ["prediction"],
        "loss_ce": ["loss"],
    }
    assert [node.path for node in plan.readers["targets"]] == ["loss", "accuracy"]
    assert plan.input_names == plan.required_inputs == ("raw", "targets")
    assert plan.terminal_output_names == ("probabilities", "loss_ce")
    assert terminal_output_names(plan) == list(plan.terminal_output_names)
    assert collection.data_flow(Stage.TRAIN) is plan
    graph = create_mermaid_dag_graph(collection, stage=Stage.TRAIN, add_legends=False)
    drawn_outputs = [line.split('(["')[1].split('"])')[0] for line in graph.splitlines() if ":::output" in line]
    assert drawn_outputs == list(plan.terminal_output_names)


def test_a_brick_reading_every_value_reads_no_data_name() -> None:
    def node(path: str, inputs: tuple[str, ...], outputs: tuple[str, ...], index: int) -> BrickNode:
        return BrickNode(path, inputs, (), outputs, (), 1.0, frozenset(Stage), False, index)

    nodes = [node("head", ("raw",), ("logits",), 0), node("logger", ("__all__", "stage"), (), 1)]
    plan = plan_stage(nodes, Stage.INFERENCE)
    assert [each.path for each in plan.nodes] == ["head", "logger"]
    assert plan.terminal_output_names == ("logits",)  # read through '__all__' only: still a result
    assert "__all__" not in plan.readers
    assert plan.required_inputs == ("raw",)
