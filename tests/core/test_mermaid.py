"""Mermaid drawings of a collection: inputs, outputs, edges, subgraphs and stages."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import boring_bricks
from torch import nn

from torchbricks_lightning import (
    BrickCollection,
    BrickLoss,
    BrickNotTrainable,
    BrickTrainable,
    Stage,
    create_mermaid_dag_graph,
)
from torchbricks_lightning.bag_of_bricks import create_image_classification_head
from torchbricks_lightning.errors import UnknownStageError

_BRICK_LINE = re.compile(r'^\s*(brick_\w+)\("(.*)"\):::(\w+)$')
_INPUT_LINE = re.compile(r'^\s*input_\w+\(\["(.*)"\]\):::input --> (brick_\w+)$')
_OUTPUT_LINE = re.compile(r'^\s*(brick_\w+) --> output_\w+\(\["(.*)"\]\):::output$')
_EDGE_LINE = re.compile(r'^\s*(brick_\w+) --> \|"(.*)"\| (brick_\w+)$')


def _bricks(graph: str) -> dict[str, str]:
    """Brick node id -> its label."""
    return {m.group(1): m.group(2) for line in graph.splitlines() if (m := _BRICK_LINE.match(line))}


def _inputs(graph: str) -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2)) for line in graph.splitlines() if (m := _INPUT_LINE.match(line))}


def _outputs(graph: str) -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2)) for line in graph.splitlines() if (m := _OUTPUT_LINE.match(line))}


def _edges(graph: str) -> set[tuple[str, str, str]]:
    return {(m.group(1), m.group(2), m.group(3)) for line in graph.splitlines() if (m := _EDGE_LINE.match(line))}


def _subgraph_balance(graph: str) -> tuple[int, int]:
    stripped = [line.strip() for line in graph.splitlines()]
    return sum(line.startswith("subgraph ") for line in stripped), sum(line == "end" for line in stripped)


def test_inputs_outputs_and_edges_of_the_train_stage(boring_collection: BrickCollection) -> None:
    graph = create_mermaid_dag_graph(boring_collection, stage=Stage.TRAIN)

    assert graph.splitlines()[0] == "flowchart LR"
    assert set(_bricks(graph)) == {
        "brick_preprocessor",
        "brick_backbone",
        "brick_head",
        "brick_prediction",
        "brick_loss",
        "brick_accuracy",
    }
    assert _inputs(graph) == {
        ("raw", "brick_preprocessor"),
        ("targets", "brick_loss"),
        ("targets", "brick_accuracy"),
    }
    assert _outputs(graph) == {("brick_head", "probabilities"), ("brick_loss", "loss_ce")}
    assert _edges(graph) == {
        ("brick_preprocessor", "processed", "brick_backbone"),
        ("brick_backbone", "features", "brick_head"),
        ("brick_head", "logits", "brick_prediction"),
        ("brick_head", "logits", "brick_loss"),
        ("brick_prediction", "class_prediction", "brick_accuracy"),
    }
    # Every input and output line is recognised by the patterns above (nothing else is marked).
    assert graph.count(":::input -->") == 3
    assert graph.count(":::output") == 2 + graph.count("legend_output")


def test_brick_labels_name_the_kind_path_and_module(boring_collection: BrickCollection) -> None:
    labels = _bricks(create_mermaid_dag_graph(boring_collection, stage="train"))
    assert labels["brick_loss"] == "<strong>BrickLoss</strong><br><strong>loss</strong>: CrossEntropyLoss"
    assert labels["brick_preprocessor"] == "<strong>BrickNotTrainable</strong><br><strong>preprocessor</strong>: Scale"
    assert "MulticlassAccuracy" in labels["brick_accuracy"]


def test_dead_bricks_are_left_out_of_the_inference_graph(boring_collection: BrickCollection) -> None:
    graph = create_mermaid_dag_graph(boring_collection, stage=Stage.INFERENCE)

    assert set(_bricks(graph)) == {"brick_preprocessor", "brick_backbone", "brick_head", "brick_prediction"}
    assert "brick_loss" not in graph
    assert "brick_accuracy" not in graph
    assert "targets" not in graph
    assert _inputs(graph) == {("raw", "brick_preprocessor")}
    # Without the loss and metric, nothing reads the prediction: it becomes an output.
    assert _outputs(graph) == {("brick_head", "probabilities"), ("brick_prediction", "class_prediction")}


def test_stage_none_draws_every_brick(boring_collection: BrickCollection) -> None:
    graph = create_mermaid_dag_graph(boring_collection, stage=None)
    assert set(_bricks(graph)) == {f"brick_{path}" for path, _ in boring_collection.named_bricks()}
    assert ("targets", "brick_loss") in _inputs(graph)


def test_stage_none_includes_bricks_alive_only_in_one_stage() -> None:
    bricks = boring_bricks()
    bricks["export_only"] = BrickNotTrainable(
        nn.Softmax(dim=1), input_names=["logits"], output_names=["scores"], alive_stages=[Stage.EXPORT]
    )
    collection = BrickCollection(bricks)  # type: ignore[arg-type]

    everything = create_mermaid_dag_graph(collection)
    train = create_mermaid_dag_graph(collection, stage="train")
    export = create_mermaid_dag_graph(collection, stage="export")

    assert "brick_export__only" in _bricks(everything)
    assert "brick_export__only" not in _bricks(train)
    assert "brick_export__only" in _bricks(export)
    assert ("brick_export__only", "scores") in _outputs(export)


def test_unknown_stage_raises(boring_collection: BrickCollection) -> None:
    with pytest.raises(UnknownStageError, match=r"Unknown stage 'trian'.*Did you mean 'train'\?"):
        create_mermaid_dag_graph(boring_collection, stage="trian")


def test_legends_are_optional(boring_collection: BrickCollection) -> None:
    with_legends = create_mermaid_dag_graph(boring_collection, stage="train")
    without = create_mermaid_dag_graph(boring_collection, stage="train", add_legends=False)
    assert "subgraph Legends" in with_legends
    assert "legend_input" in with_legends
    assert "subgraph" not in without
    assert "legend" not in without


def _nested_twice() -> BrickCollection:
    return BrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(4, 6), input_names=["raw"], output_names=["features"]),
            "heads": {
                "head0": create_image_classification_head(3, 6, features_name="features", targets_name="targets"),
                "head1": create_image_classification_head(5, 6, features_name="features", targets_name="targets"),
            },
            "post": BrickNotTrainable(nn.Identity(), input_names=["heads/head0/logits"], output_names=["final"]),
        }
    )


def test_nested_collections_become_nested_subgraphs() -> None:
    graph = create_mermaid_dag_graph(_nested_twice(), stage=Stage.TRAIN, add_legends=False)
    lines = graph.splitlines()

    assert _subgraph_balance(graph) == (3, 3)
    heads = next(i for i, line in enumerate(lines) if line.strip() == 'subgraph group_heads["heads"]')
    head0 = next(i for i, line in enumerate(lines) if line.strip() == 'subgraph group_heads_shead0["heads/head0"]')
    head1 = next(i for i, line in enumerate(lines) if line.strip() == 'subgraph group_heads_shead1["heads/head1"]')
    classify0 = next(i for i, line in enumerate(lines) if "brick_heads_shead0_sclassify(" in line)
    classify1 = next(i for i, line in enumerate(lines) if "brick_heads_shead1_sclassify(" in line)
    post = next(i for i, line in enumerate(lines) if "brick_post(" in line)
    assert heads < head0 < classify0 < head1 < classify1 < post
    # The subgraphs are closed before the root brick 'post' (depth-aware indentation).
    ends = [i for i, line in enumerate(lines) if line.strip() == "end"]
    assert all(i < post for i in ends)
    assert lines[head0].startswith(" " * 8)  # nested one level deeper than 'heads'
    assert not lines[heads].startswith(" " * 8)

    edges = _edges(graph)
    assert ("brick_heads_shead0_sclassify", "heads/head0/logits", "brick_heads_shead0_sloss") in edges
    assert ("brick_heads_shead0_sclassify", "heads/head0/logits", "brick_post") in edges
    assert ("brick_backbone", "features", "brick_heads_shead1_sclassify") in edges
    assert ("brick_heads_shead1_sloss", "heads/head1/loss_ce") in _outputs(graph)


def test_nested_subgraphs_stay_balanced_with_legends() -> None:
    graph = create_mermaid_dag_graph(_nested_twice())
    starts, ends = _subgraph_balance(graph)
    assert starts == ends == 4  # heads, heads/head0, heads/head1 and the legend
    depth = 0
    for line in graph.splitlines():
        stripped = line.strip()
        depth += stripped.startswith("subgraph ")
        depth -= stripped == "end"
        assert depth >= 0
    assert depth == 0


def test_node_ids_of_different_bricks_never_collide() -> None:
    """'a_b' at the root and 'b' inside 'a' are two bricks; the drawing must keep them apart.

    Node ids are made by replacing every non-word character by '_', so 'a/b' and 'a_b' both become
    'brick_a_b' and mermaid merges them into one node.
    """
    collection = BrickCollection(
        {
            "a_b": BrickTrainable(nn.Linear(2, 2), input_names=["x"], output_names=["y"]),
            "a": {"b": BrickTrainable(nn.Linear(2, 2), input_names=["y"], output_names=["z"])},
        }
    )
    graph = create_mermaid_dag_graph(collection, add_legends=False)
    brick_ids = [m.group(1) for line in graph.splitlines() if (m := _BRICK_LINE.match(line))]
    assert len(brick_ids) == 2
    assert len(set(brick_ids)) == 2, graph
    ((source, _name, target),) = _edges(graph)
    assert source != target, graph


def test_spec_concept_two_example_prints_a_graph(capsys: pytest.CaptureFixture[str]) -> None:
    class PreprocessorDummy(nn.Module):
        def forward(self, raw_input: torch.Tensor) -> torch.Tensor:
            return raw_input / 2

    class TinyModel(nn.Module):
        def __init__(self, n_channels: int, n_features: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(n_channels, n_features, kernel_size=1)

        def forward(self, tensor: torch.Tensor) -> torch.Tensor:
            return self.conv(tensor)

    class ClassifierDummy(nn.Module):
        def __init__(self, num_classes: int, in_features: int) -> None:
            super().__init__()
            self.fc = nn.Linear(in_features, num_classes)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.softmax = nn.Softmax(dim=1)

        def forward(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.fc(torch.flatten(self.avgpool(tensor), start_dim=1))
            return logits, self.softmax(logits)

    num_classes = 3
    bricks = {
        "preprocessor": BrickNotTrainable(
            PreprocessorDummy(), input_names=["raw"], output_names=["processed"], alive_stages="all"
        ),
        "backbone": BrickTrainable(
            TinyModel(n_channels=num_classes, n_features=10),
            input_names=["processed"],
            output_names=["embedding"],
            alive_stages="all",
        ),
        "head": BrickTrainable(
            ClassifierDummy(num_classes=num_classes, in_features=10),
            input_names=["embedding"],
            output_names=["logits", "softmaxed"],
            alive_stages="all",
        ),
        "loss": BrickLoss(
            model=nn.CrossEntropyLoss(),
            input_names=["logits", "targets"],
            output_names=["loss_ce"],
            alive_stages=[Stage.TRAIN, Stage.VALIDATION, Stage.TEST],
        ),
    }
    brick_collection = BrickCollection(bricks)

    print(brick_collection)
    print(create_mermaid_dag_graph(brick_collection))
    printed = capsys.readouterr().out

    assert "BrickLoss(CrossEntropyLoss, input_names=['logits', 'targets'], output_names=['loss_ce']" in printed
    assert "alive_stages=['train', 'validation', 'test']" in printed
    graph = printed[printed.index("flowchart LR") :]
    assert set(_bricks(graph)) == {"brick_preprocessor", "brick_backbone", "brick_head", "brick_loss"}
    assert _inputs(graph) == {("raw", "brick_preprocessor"), ("targets", "brick_loss")}
    assert _outputs(graph) == {("brick_head", "softmaxed"), ("brick_loss", "loss_ce")}
    assert ("brick_head", "logits", "brick_loss") in _edges(graph)

    inference = create_mermaid_dag_graph(brick_collection, stage=Stage.INFERENCE)
    assert _inputs(inference) == {("raw", "brick_preprocessor")}
    assert _outputs(inference) == {("brick_head", "logits"), ("brick_head", "softmaxed")}

    batch_images = torch.rand((2, 3, 20, 40))
    named_outputs = brick_collection(named_inputs={"raw": batch_images}, stage=Stage.INFERENCE)
    assert list(named_outputs) == ["raw", "processed", "embedding", "logits", "softmaxed"]
