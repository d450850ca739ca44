"""torch.compile of a collection: one graph per stage, no graph breaks, no recompiles when stages alternate."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch._dynamo
from conftest import boring_bricks
from torch import nn

from torchbricks_lightning import BrickCollection, BrickNotTrainable, Stage


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _collection_without_live_metrics() -> BrickCollection:
    """The boring collection with its metric brick dead everywhere (torchmetrics breaks graphs)."""
    bricks = boring_bricks()
    bricks["accuracy"].alive_stages = "none"  # type: ignore[attr-defined]
    return BrickCollection(bricks)  # type: ignore[arg-type]


def _inputs(batch_size: int = 4) -> dict[str, torch.Tensor]:
    return {"raw": torch.randn(batch_size, 5), "targets": torch.arange(batch_size) % 3}


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs.append(graph_module)
        return graph_module.forward


def test_train_stage_compiles_to_one_graph_without_breaks_including_losses() -> None:
    collection = _collection_without_live_metrics()
    assert collection.loss_names(Stage.TRAIN) == ["loss_ce"]

    explanation = torch._dynamo.explain(collection)(_inputs(), Stage.TRAIN)

    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # The loss brick is inside the graph: its cross entropy is one of the traced ops.
    graph_code = "\n".join(graph.code for graph in explanation.graphs)
    assert "cross_entropy" in graph_code


@pytest.mark.parametrize("stage", [Stage.VALIDATION, Stage.INFERENCE, Stage.EXPORT])
def test_other_stages_compile_without_breaks(stage: Stage) -> None:
    explanation = torch._dynamo.explain(_collection_without_live_metrics())(_inputs(), stage)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_fullgraph_compiled_outputs_and_gradients_equal_eager() -> None:
    collection = _collection_without_live_metrics()
    compiled = torch.compile(collection, fullgraph=True, backend="aot_eager")
    inputs = _inputs()

    eager_outputs = collection(inputs, Stage.TRAIN)
    collection.total_loss(eager_outputs).backward()
    eager_grads = {name: p.grad.clone() for name, p in collection.named_parameters() if p.grad is not None}
    collection.zero_grad()

    compiled_outputs = compiled(inputs, Stage.TRAIN)
    collection.total_loss(compiled_outputs).backward()
    compiled_grads = {name: p.grad.clone() for name, p in collection.named_parameters() if p.grad is not None}

    assert list(compiled_outputs) == list(eager_outputs)
    for name, value in eager_outputs.items():
        torch.testing.assert_close(compiled_outputs[name], value, msg=name)
    assert set(compiled_grads) == set(eager_grads)
    assert eager_grads  # the trainable bricks did get gradients
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, msg=name)


def test_alternating_stages_compiles_once_per_stage() -> None:
    collection = _collection_without_live_metrics()
    backend = CountingBackend()
    compiled = torch.compile(collection, fullgraph=True, backend=backend)
    inputs = _inputs()

    for _ in range(10):
        train_outputs = compiled(inputs, Stage.TRAIN)
        validation_outputs = compiled(inputs, Stage.VALIDATION)

    assert len(backend.graphs) == 2
    torch.testing.assert_close(train_outputs["loss_ce"], collection(inputs, Stage.TRAIN)["loss_ce"])
    torch.testing.assert_close(validation_outputs["logits"], collection(inputs, Stage.VALIDATION)["logits"])


def test_alternating_stages_counted_by_dynamo_stats() -> None:
    collection = _collection_without_live_metrics()
    compiled = torch.compile(collection, fullgraph=True, backend="eager")
    inputs = _inputs()
    torch._dynamo.utils.counters.clear()

    for _ in range(10):
        compiled(inputs, Stage.TRAIN)
        compiled(inputs, Stage.VALIDATION)

    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_not_trainable_without_gradients_compiles_without_breaks() -> None:
    bricks = boring_bricks()
    bricks["accuracy"].alive_stages = "none"  # type: ignore[attr-defined]
    bricks["neck"] = BrickNotTrainable(
        nn.Linear(5, 5), input_names=["features"], output_names=["neck_features"], calculate_gradients=False
    )
    bricks["head"].input_names = ["neck_features"]  # type: ignore[attr-defined]
    collection = BrickCollection(bricks)  # type: ignore[arg-type]
    inputs = _inputs()

    explanation = torch._dynamo.explain(collection)(inputs, Stage.TRAIN)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    torch._dynamo.reset()
    backend = CountingBackend()
    compiled = torch.compile(collection, fullgraph=True, backend=backend)
    outputs = compiled(inputs, Stage.TRAIN)
    assert len(backend.graphs) == 1
    assert outputs["neck_features"].requires_grad is False
    assert outputs["features"].requires_grad
    torch.testing.assert_close(outputs["logits"], collection(inputs, Stage.TRAIN)["logits"])


class Ignores(nn.Module):
    """A brick module without outputs (it could log or check something); it returns None."""

    def forward(self, features: torch.Tensor) -> None:
        return None


def test_brick_without_outputs_compiles_without_breaks() -> None:
    """The check that a brick without outputs returned None is decided at trace time: no guard, no break."""
    bricks = boring_bricks()
    bricks["accuracy"].alive_stages = "none"  # type: ignore[attr-defined]
    bricks["probe"] = BrickNotTrainable(Ignores(), input_names=["features"], output_names=[])
    collection = BrickCollection(bricks)  # type: ignore[arg-type]

    explanation = torch._dynamo.explain(collection)(_inputs(), Stage.TRAIN)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compile_with_an_alive_metric_brick_runs_the_metric_eagerly() -> None:
    """torchmetrics updates cannot be traced; metric bricks run eagerly inside the compiled stage."""
    torch._dynamo.reset()
    eager_collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    compiled_collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    compiled_collection.load_state_dict(eager_collection.state_dict())
    compiled = torch.compile(compiled_collection, backend="eager")
    batches = [{"raw": torch.randn(6, 5), "targets": torch.randint(0, 3, (6,))} for _ in range(3)]
    for batch in batches:
        eager_collection(batch, Stage.TRAIN)
        compiled(batch, Stage.TRAIN)
    expected = eager_collection.summarize(Stage.TRAIN)
    actual = compiled_collection.summarize(Stage.TRAIN)
    assert list(actual) == ["accuracy"]
    torch.testing.assert_close(actual, expected)


def test_a_live_metric_brick_compiles_to_one_graph_when_the_caller_updates_the_metrics() -> None:
    """forward(..., update_metrics=False) leaves the metric updates out of the traced function; update_metrics runs
    them eagerly after. The metric values and the losses equal eager's."""
    eager_collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    compiled_collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    compiled_collection.load_state_dict(eager_collection.state_dict())
    assert compiled_collection.metric_keys() == ["accuracy"]
    assert Stage.TRAIN in compiled_collection["accuracy"].alive_stages  # type: ignore[attr-defined]

    explanation = torch._dynamo.explain(compiled_collection)(_inputs(), Stage.TRAIN, update_metrics=False)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    assert not compiled_collection.summarize(Stage.TRAIN)  # the traced call updated nothing
    compiled_collection.reset_metrics()

    torch._dynamo.reset()
    backend = CountingBackend()
    compiled = torch.compile(compiled_collection, fullgraph=True, backend=backend)
    batches = [{"raw": torch.randn(6, 5), "targets": torch.randint(0, 3, (6,))} for _ in range(3)]
    for batch in batches:
        eager_outputs = eager_collection(batch, Stage.TRAIN)
        compiled_outputs = compiled(batch, Stage.TRAIN, update_metrics=False)
        compiled_collection.update_metrics(compiled_outputs, Stage.TRAIN)
        torch.testing.assert_close(compiled_outputs["loss_ce"], eager_outputs["loss_ce"])
    assert len(backend.graphs) == 1
    expected = eager_collection.summarize(Stage.TRAIN)
    assert list(expected) == ["accuracy"]
    torch.testing.assert_close(compiled_collection.summarize(Stage.TRAIN), expected)


def test_update_metrics_names_the_metric_brick_whose_input_is_missing() -> None:
    from torchbricks_lightning.errors import MissingInputError

    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    outputs = collection(_inputs(), Stage.TRAIN, return_inputs=False, update_metrics=False)
    with pytest.raises(MissingInputError, match=r"Brick 'accuracy' updates its metrics in stage 'train'.*targets"):
        collection.update_metrics(outputs, Stage.TRAIN)
