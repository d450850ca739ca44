"""Metrics (keys, per-stage state, summarize) and losses (names, weights, total loss) of a collection."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
import torchvision
from conftest import NUM_CLASSES, boring_bricks
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from torchbricks_lightning import (
    BrickCollection,
    BrickLoss,
    BrickMetrics,
    BrickMetricSingle,
    BrickNotTrainable,
    BrickTrainable,
    Stage,
)
from torchbricks_lightning.bag_of_bricks import (
    ImageClassifier,
    Preprocessor,
    create_image_classification_head,
    resnet_to_brick,
)
from torchbricks_lightning.errors import BrickGraphError, ConfigError, DuplicateOutputError

N_FEATURES = 6


def _two_heads(loss_weight0: float = 1.0, loss_weight1: float = 1.0) -> BrickCollection:
    return BrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(4, N_FEATURES), input_names=["raw"], output_names=["features"]),
            "head0": create_image_classification_head(
                num_classes=3,
                in_channels=N_FEATURES,
                features_name="features",
                targets_name="targets",
                loss_weight=loss_weight0,
            ),
            "head1": create_image_classification_head(
                num_classes=3,
                in_channels=N_FEATURES,
                features_name="features",
                targets_name="targets",
                loss_weight=loss_weight1,
            ),
        }
    )


def _head_inputs(batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "raw": torch.randn(batch_size, 4, generator=generator),
        "targets": torch.randint(0, 3, (batch_size,), generator=generator),
    }


# ------------------------------------------------------------------------------------------- metric keys
def test_two_heads_with_the_same_metric_class_get_separate_keys() -> None:
    collection = _two_heads()
    inputs = _head_inputs()

    outputs = collection(inputs, Stage.TRAIN)
    metrics = collection.summarize(Stage.TRAIN)

    assert set(metrics) == {"head0/accuracy", "head1/accuracy"}
    assert collection.metric_keys() == ["head0/accuracy", "head1/accuracy"]
    for head in ("head0", "head1"):
        reference = MulticlassAccuracy(num_classes=3)
        reference.update(outputs[f"{head}/class_prediction"], inputs["targets"])
        torch.testing.assert_close(metrics[f"{head}/accuracy"], reference.compute())


def test_brick_metrics_with_metric_collection_keys_are_brick_path_and_metric_name() -> None:
    metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=3), "f1": MulticlassF1Score(num_classes=3)})
    collection = BrickCollection(
        {"task": {"metrics": BrickMetrics(metrics, input_names=["class_prediction", "targets"])}}
    )
    preds, targets = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])

    collection({"class_prediction": preds, "targets": targets}, Stage.VALIDATION)
    values = collection.summarize(Stage.VALIDATION)

    assert set(values) == {"task/metrics/acc", "task/metrics/f1"}
    torch.testing.assert_close(values["task/metrics/acc"], MulticlassAccuracy(num_classes=3)(preds, targets))
    torch.testing.assert_close(values["task/metrics/f1"], MulticlassF1Score(num_classes=3)(preds, targets))


def test_brick_metrics_with_a_dict_keys_are_brick_path_and_metric_name() -> None:
    brick = BrickMetrics(
        {"acc": MulticlassAccuracy(num_classes=3), "f1": MulticlassF1Score(num_classes=3)},
        input_names=["class_prediction", "targets"],
    )
    collection = BrickCollection({"metrics": brick})
    preds, targets = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])

    collection({"class_prediction": preds, "targets": targets}, Stage.TEST)

    assert brick.metric_names == ["acc", "f1"]
    assert collection.metric_keys() == ["metrics/acc", "metrics/f1"]
    values = collection.summarize(Stage.TEST)
    assert set(values) == {"metrics/acc", "metrics/f1"}
    torch.testing.assert_close(values["metrics/f1"], MulticlassF1Score(num_classes=3)(preds, targets))


@pytest.mark.parametrize(
    ("tree_path", "expected_key"),
    [
        (("acc_brick",), "top1"),
        (("head0", "acc_brick"), "head0/top1"),
    ],
)
def test_metric_name_on_brick_metric_single(tree_path: tuple[str, ...], expected_key: str) -> None:
    brick = BrickMetricSingle(
        MulticlassAccuracy(num_classes=3), input_names=["class_prediction", "targets"], metric_name="top1"
    )
    tree: dict[str, object] = {tree_path[-1]: brick}
    for name in reversed(tree_path[:-1]):
        tree = {name: tree}
    collection = BrickCollection(tree)  # type: ignore[arg-type]

    collection({"class_prediction": torch.tensor([0, 1]), "targets": torch.tensor([0, 0])}, Stage.TRAIN)

    assert collection.metric_keys() == [expected_key]
    assert list(collection.summarize(Stage.TRAIN)) == [expected_key]


def test_same_metric_name_in_one_directory_with_return_metrics_raises() -> None:
    with pytest.raises(
        DuplicateOutputError,
        match="Metric bricks 'first' and 'second' both report the metric key 'acc'",
    ):
        BrickCollection(
            {
                name: BrickMetricSingle(
                    MulticlassAccuracy(num_classes=3),
                    input_names=["class_prediction", targets],
                    metric_name="acc",
                    return_metrics=True,
                )
                for name, targets in (("first", "targets"), ("second", "other_targets"))
            }
        )


def test_same_metric_name_in_one_directory_is_rejected_rather_than_overwritten() -> None:
    """Two metric bricks whose summarize keys collide must not silently drop one of the values.

    With ``return_metrics=True`` the same bricks raise DuplicateOutputError (test above); without it, the
    keys of ``summarize`` still clash, so the collection should refuse them the same way.
    """
    with pytest.raises(DuplicateOutputError, match="'acc'"):
        BrickCollection(
            {
                name: BrickMetricSingle(
                    MulticlassAccuracy(num_classes=3), input_names=["class_prediction", targets], metric_name="acc"
                )
                for name, targets in (("first", "targets"), ("second", "other_targets"))
            }
        )


def test_brick_metric_single_without_metric_name_is_keyed_by_its_path(boring_collection: BrickCollection) -> None:
    boring_collection(
        {"raw": torch.randn(4, 5), "targets": torch.tensor([0, 1, 2, 1])},
        Stage.TRAIN,
    )
    assert list(boring_collection.summarize(Stage.TRAIN)) == ["accuracy"]


# ------------------------------------------------------------------------------------------- per stage
def _metric_collection() -> BrickCollection:
    return BrickCollection(
        {
            "accuracy": BrickMetricSingle(
                MulticlassAccuracy(num_classes=NUM_CLASSES), input_names=["class_prediction", "targets"]
            )
        }
    )


def _random_batch(generator: torch.Generator, size: int = 10) -> dict[str, torch.Tensor]:
    return {
        "class_prediction": torch.randint(0, NUM_CLASSES, (size,), generator=generator),
        "targets": torch.randint(0, NUM_CLASSES, (size,), generator=generator),
    }


def test_metric_state_is_kept_per_stage() -> None:
    collection = _metric_collection()
    generator = torch.Generator().manual_seed(3)
    train_reference = MulticlassAccuracy(num_classes=NUM_CLASSES)
    validation_reference = MulticlassAccuracy(num_classes=NUM_CLASSES)

    for _ in range(3):
        batch = _random_batch(generator)
        collection(batch, Stage.TRAIN)
        train_reference.update(batch["class_prediction"], batch["targets"])
        # Validation in the middle of the training epoch, with different data.
        for _ in range(2):
            validation_batch = _random_batch(generator)
            validation_batch["targets"] = (validation_batch["class_prediction"] + 1) % NUM_CLASSES  # always wrong
            collection(validation_batch, Stage.VALIDATION)
            validation_reference.update(validation_batch["class_prediction"], validation_batch["targets"])

    train_value = collection.summarize(Stage.TRAIN)["accuracy"]
    validation_value = collection.summarize(Stage.VALIDATION)["accuracy"]

    torch.testing.assert_close(train_value, train_reference.compute())
    torch.testing.assert_close(validation_value, validation_reference.compute())
    assert float(validation_value) == 0.0
    assert float(train_value) > 0.0


def test_summarize_reset_resets_only_that_stage() -> None:
    collection = _metric_collection()
    generator = torch.Generator().manual_seed(4)
    train_batch, validation_batch = _random_batch(generator), _random_batch(generator)
    collection(train_batch, Stage.TRAIN)
    collection(validation_batch, Stage.VALIDATION)
    validation_before = collection.summarize(Stage.VALIDATION)

    first = collection.summarize(Stage.TRAIN, reset=True)

    assert set(first) == {"accuracy"}
    assert collection.summarize(Stage.TRAIN) == {}  # reset: nothing accumulated any more
    after = collection.summarize(Stage.VALIDATION)
    torch.testing.assert_close(after, validation_before)

    # A new train batch starts a fresh accumulation that ignores the first batch.
    new_batch = _random_batch(generator)
    collection(new_batch, Stage.TRAIN)
    reference = MulticlassAccuracy(num_classes=NUM_CLASSES)
    reference.update(new_batch["class_prediction"], new_batch["targets"])
    torch.testing.assert_close(collection.summarize(Stage.TRAIN)["accuracy"], reference.compute())


def test_summarize_a_stage_where_no_metric_is_alive_is_empty(boring_collection: BrickCollection, batch) -> None:
    boring_collection(batch, Stage.TRAIN)
    boring_collection(batch, Stage.INFERENCE)
    assert boring_collection.summarize(Stage.INFERENCE) == {}
    assert boring_collection.summarize(Stage.EXPORT, reset=True) == {}
    assert set(boring_collection.summarize(Stage.TRAIN)) == {"accuracy"}


def test_summarize_before_any_update_is_empty_without_warnings(boring_collection: BrickCollection) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stage in Stage:
            assert boring_collection.summarize(stage) == {}
        assert boring_collection.summarize(Stage.TRAIN, reset=True) == {}


def test_summarize_accepts_stage_strings(boring_collection: BrickCollection, batch) -> None:
    boring_collection(batch, "validation")
    assert set(boring_collection.summarize("validation")) == {"accuracy"}
    assert boring_collection.summarize("train") == {}


# ------------------------------------------------------------------------------------------- return_metrics
def test_return_metrics_puts_batch_values_in_the_outputs() -> None:
    single = BrickMetricSingle(
        MulticlassAccuracy(num_classes=3), input_names=["./class_prediction", "targets"], return_metrics=True
    )
    several = BrickMetrics(
        {"acc": MulticlassAccuracy(num_classes=3), "f1": MulticlassF1Score(num_classes=3)},
        input_names=["./class_prediction", "targets"],
        return_metrics=True,
    )
    collection = BrickCollection({"head0": {"accuracy": single, "metrics": several}})
    first = {"head0/class_prediction": torch.tensor([0, 1, 2, 2]), "targets": torch.tensor([0, 1, 1, 2])}
    second = {"head0/class_prediction": torch.tensor([0, 0, 0, 0]), "targets": torch.tensor([1, 1, 1, 1])}

    assert collection.output_names(Stage.TRAIN) == ["head0/accuracy", "head0/metrics/acc", "head0/metrics/f1"]
    outputs_first = collection(first, Stage.TRAIN)
    outputs_second = collection(second, Stage.TRAIN)

    for outputs, batch in ((outputs_first, first), (outputs_second, second)):
        preds, targets = batch["head0/class_prediction"], batch["targets"]
        torch.testing.assert_close(outputs["head0/accuracy"], MulticlassAccuracy(num_classes=3)(preds, targets))
        torch.testing.assert_close(outputs["head0/metrics/acc"], MulticlassAccuracy(num_classes=3)(preds, targets))
        torch.testing.assert_close(outputs["head0/metrics/f1"], MulticlassF1Score(num_classes=3)(preds, targets))
    # The batch values are returned, and the accumulated value still covers both batches.
    reference = MulticlassAccuracy(num_classes=3)
    for batch in (first, second):
        reference.update(batch["head0/class_prediction"], batch["targets"])
    torch.testing.assert_close(collection.summarize(Stage.TRAIN)["head0/accuracy"], reference.compute())


def test_without_return_metrics_no_metric_is_in_the_outputs(boring_collection: BrickCollection, batch) -> None:
    outputs = boring_collection(batch, Stage.TRAIN)
    assert "accuracy" not in outputs
    assert "accuracy" not in boring_collection.output_names(Stage.TRAIN)


# ------------------------------------------------------------------------------------------- state_dict
def test_each_parameter_appears_once_in_state_dict() -> None:
    collection = _two_heads()
    collection(_head_inputs(), Stage.TRAIN)
    collection(_head_inputs(), Stage.VALIDATION)
    state = collection.state_dict()
    parameters = dict(collection.named_parameters())

    assert set(parameters) <= set(state)
    counts = Counter(tensor.data_ptr() for tensor in state.values() if tensor.numel())
    for name, parameter in parameters.items():
        assert counts[parameter.data_ptr()] == 1, name
    assert len({p.data_ptr() for p in parameters.values()}) == len(parameters)


def test_state_dict_round_trip_between_two_collections() -> None:
    torch.manual_seed(0)
    source = _two_heads()
    torch.manual_seed(1)
    target = _two_heads()
    inputs = _head_inputs()
    source.eval()
    target.eval()
    assert not torch.equal(source(inputs)["head0/logits"], target(inputs)["head0/logits"])

    result = target.load_state_dict(source.state_dict())

    assert result.missing_keys == []
    assert result.unexpected_keys == []
    torch.testing.assert_close(target(inputs)["head0/logits"], source(inputs)["head0/logits"])


# ------------------------------------------------------------------------------------------- losses
def test_extract_losses_finds_relative_and_nested_loss_names() -> None:
    collection = _two_heads()
    outputs = collection(_head_inputs(), Stage.TRAIN)

    losses = collection.extract_losses(outputs)

    assert set(losses) == {"head0/loss_ce", "head1/loss_ce"}
    for head in ("head0", "head1"):
        expected = nn.functional.cross_entropy(outputs[f"{head}/logits"], outputs["targets"])
        torch.testing.assert_close(losses[f"{head}/loss_ce"], expected)


def test_extract_losses_of_a_root_loss(boring_collection: BrickCollection, batch) -> None:
    outputs = boring_collection(batch, Stage.VALIDATION)
    losses = boring_collection.extract_losses(outputs)
    assert list(losses) == ["loss_ce"]
    assert losses["loss_ce"] is outputs["loss_ce"]


def test_total_loss_applies_loss_weights_from_the_head_factory() -> None:
    collection = _two_heads(loss_weight0=0.25, loss_weight1=3.0)
    outputs = collection(_head_inputs(), Stage.TRAIN)

    total = collection.total_loss(outputs)

    expected = 0.25 * outputs["head0/loss_ce"] + 3.0 * outputs["head1/loss_ce"]
    torch.testing.assert_close(total, expected)
    assert collection.loss_weights() == {"head0/loss_ce": 0.25, "head1/loss_ce": 3.0}


def test_total_loss_applies_loss_weight_of_brick_loss() -> None:
    bricks = boring_bricks()
    bricks["loss"] = BrickLoss(
        nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"], loss_weight=0.1
    )
    bricks["loss_l1"] = BrickLoss(
        L1ToOneHot(), input_names=["probabilities", "targets"], output_names=["loss_l1"], loss_weight=2.0
    )
    collection = BrickCollection(bricks)  # type: ignore[arg-type]
    outputs = collection({"raw": torch.randn(4, 5), "targets": torch.tensor([0, 1, 2, 1])}, Stage.TRAIN)

    total = collection.total_loss(outputs)

    torch.testing.assert_close(total, 0.1 * outputs["loss_ce"] + 2.0 * outputs["loss_l1"])
    assert bricks["loss"].loss_weight == 0.1


class L1ToOneHot(nn.Module):
    def forward(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(targets, probabilities.shape[1]).to(probabilities.dtype)
        return (probabilities - one_hot).abs().mean()


def test_total_loss_weights_can_be_overridden() -> None:
    collection = _two_heads(loss_weight0=0.25, loss_weight1=3.0)
    outputs = collection(_head_inputs(), Stage.TRAIN)

    total = collection.total_loss(outputs, loss_weights={"head1/loss_ce": 0.5})

    torch.testing.assert_close(total, 0.25 * outputs["head0/loss_ce"] + 0.5 * outputs["head1/loss_ce"])
    zeroed = collection.total_loss(outputs, loss_weights={"head0/loss_ce": 0.0, "head1/loss_ce": 1.0})
    torch.testing.assert_close(zeroed, outputs["head1/loss_ce"])
    # The override is per call: the bricks' own weights are unchanged.
    assert collection.loss_weights() == {"head0/loss_ce": 0.25, "head1/loss_ce": 3.0}


def test_total_loss_with_unknown_override_name_raises() -> None:
    collection = _two_heads()
    outputs = collection(_head_inputs(), Stage.TRAIN)
    with pytest.raises(ConfigError, match=r"unknown losses \['head2/loss_ce'\]"):
        collection.total_loss(outputs, loss_weights={"head2/loss_ce": 1.0})


def test_total_loss_gradient_is_weighted() -> None:
    collection = _two_heads(loss_weight0=2.0, loss_weight1=0.0)
    outputs = collection(_head_inputs(), Stage.TRAIN)
    collection.total_loss(outputs).backward()

    head1 = collection["head1"]["classify"].model.fc
    head0 = collection["head0"]["classify"].model.fc
    assert head1.weight.grad is not None
    assert torch.count_nonzero(head1.weight.grad) == 0
    assert torch.count_nonzero(head0.weight.grad) > 0


def test_loss_names_per_stage() -> None:
    collection = _two_heads()
    for stage in (Stage.TRAIN, Stage.VALIDATION, Stage.TEST, "train"):
        assert collection.loss_names(stage) == ["head0/loss_ce", "head1/loss_ce"]
    assert collection.loss_names(Stage.INFERENCE) == []
    assert collection.loss_names(Stage.EXPORT) == []
    assert collection.loss_names() == ["head0/loss_ce", "head1/loss_ce"]


def test_loss_names_follow_alive_stages() -> None:
    bricks = boring_bricks()
    bricks["loss"] = BrickLoss(
        nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"], alive_stages=[Stage.TRAIN]
    )
    collection = BrickCollection(bricks)  # type: ignore[arg-type]
    assert collection.loss_names(Stage.TRAIN) == ["loss_ce"]
    assert collection.loss_names(Stage.VALIDATION) == []


def test_total_loss_without_loss_in_outputs_raises(boring_collection: BrickCollection, batch) -> None:
    outputs = boring_collection(batch, Stage.INFERENCE)
    with pytest.raises(BrickGraphError, match=r"No loss found in the outputs.*declares \['loss_ce'\]"):
        boring_collection.total_loss(outputs)


def test_total_loss_of_a_collection_without_loss_bricks_raises() -> None:
    collection = BrickCollection({"head": BrickTrainable(nn.Linear(2, 2), input_names=["x"], output_names=["y"])})
    outputs = collection({"x": torch.randn(3, 2)}, Stage.TRAIN)
    with pytest.raises(BrickGraphError, match=r"No loss found.*declares none"):
        collection.total_loss(outputs)


@pytest.mark.parametrize("stage", [Stage.INFERENCE, Stage.EXPORT])
def test_losses_are_absent_in_inference_and_export_outputs(stage: Stage) -> None:
    collection = _two_heads()
    outputs = collection(_head_inputs(), stage)
    assert "head0/loss_ce" not in outputs
    assert "head1/loss_ce" not in outputs
    assert collection.extract_losses(outputs) == {}
    assert "targets" not in collection.input_names(stage)
    # Inference needs no targets at all.
    outputs = collection({"raw": torch.randn(2, 4)}, stage)
    assert set(outputs) >= {"head0/logits", "head1/logits"}


# ------------------------------------------------------------------------------------------- spec example
def test_spec_example_bricks_for_model_training() -> None:
    num_classes = 10
    resnet = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    resnet_brick = resnet_to_brick(resnet=resnet, input_name="normalized", output_name="features")
    n_features = resnet_brick.model.n_backbone_features
    bricks = {
        "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
        "backbone": resnet_brick,
        "head": BrickTrainable(
            ImageClassifier(num_classes=num_classes, n_features=n_features),
            input_names=["features"],
            output_names=["logits", "probabilities", "class_prediction"],
        ),
        "accuracy": BrickMetricSingle(
            MulticlassAccuracy(num_classes=num_classes), input_names=["class_prediction", "targets"]
        ),
        "loss": BrickLoss(model=nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"]),
    }
    brick_collection = BrickCollection(bricks)

    batch_size = 2
    batch_images = torch.rand((batch_size, 3, 32, 32))
    reference = MulticlassAccuracy(num_classes=num_classes)
    for _ in range(5):  # Simulates iterating over the dataset
        named_inputs = {"raw": batch_images, "targets": torch.ones((batch_size), dtype=torch.int64)}
        named_outputs = brick_collection(named_inputs=named_inputs, stage=Stage.TRAIN)
        reference.update(named_outputs["class_prediction"], named_inputs["targets"])

    metrics = brick_collection.summarize(stage=Stage.TRAIN, reset=True)

    assert set(metrics) == {"accuracy"}
    torch.testing.assert_close(metrics["accuracy"], reference.compute())
    assert list(named_outputs) == [
        "raw",
        "targets",
        "normalized",
        "features",
        "logits",
        "probabilities",
        "class_prediction",
        "loss_ce",
    ]
    assert named_outputs["loss_ce"].ndim == 0
    assert named_outputs["features"].shape == (batch_size, n_features, 1, 1)
    assert brick_collection.summarize(stage=Stage.TRAIN) == {}  # reset=True emptied it


def test_a_metric_brick_called_for_a_stage_it_is_not_alive_in_says_so_and_how_to_fix_it() -> None:
    brick = BrickMetricSingle(MulticlassAccuracy(num_classes=3, average="micro"), input_names=["pred", "targets"])
    preds, targets = torch.tensor([0, 1]), torch.tensor([0, 2])

    with pytest.raises(ConfigError, match=r"MulticlassAccuracy.*no metrics for stage 'inference'.*alive_stages"):
        brick(preds, targets, stage=Stage.INFERENCE)

    brick(preds, targets, stage="train")  # a stage given by its value is found, not refused
    torch.testing.assert_close(brick.compute(Stage.TRAIN), {"MulticlassAccuracy": torch.tensor(0.5)})
