"""Bag of bricks: preprocessor, ResNet backbone, image classifier and the classification head factory."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import Normalize

from torchbricks_lightning import (
    BrickCollection,
    BrickInterface,
    BrickLoss,
    BrickMetricSingle,
    BrickNotTrainable,
    BrickTrainable,
    Stage,
    create_mermaid_dag_graph,
)
from torchbricks_lightning.bag_of_bricks import (
    BackboneResnet,
    ImageClassifier,
    MaskedCrossEntropyLoss,
    Preprocessor,
    create_image_classification_head,
    resnet_to_brick,
)
from torchbricks_lightning.bag_of_bricks.preprocessors import IMAGENET_MEAN, IMAGENET_STD
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError
from torchbricks_lightning.multitask import BrickLabelledLoss


# ---------------------------------------------------------------------------------------------- Preprocessor
def test_preprocessor_normalises_per_channel_like_torchvision() -> None:
    images = torch.rand(2, 3, 8, 6)
    expected = Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)(images)
    torch.testing.assert_close(Preprocessor()(images), expected)


def test_preprocessor_with_custom_statistics() -> None:
    mean, std = [0.1, 0.5, 0.9, 0.0], [0.2, 1.0, 3.0, 0.5]
    images = torch.rand(3, 4, 5, 5)
    output = Preprocessor(mean=mean, std=std)(images)
    torch.testing.assert_close(output, Normalize(mean=mean, std=std)(images))
    for channel in range(4):
        torch.testing.assert_close(output[:, channel], (images[:, channel] - mean[channel]) / std[channel])


def test_preprocessor_statistics_are_buffers_that_move_with_the_module() -> None:
    preprocessor = Preprocessor()
    assert list(preprocessor.parameters()) == []
    assert set(dict(preprocessor.named_buffers())) == {"mean", "std"}
    doubled = preprocessor.to(torch.float64)
    assert doubled.mean.dtype == torch.float64
    assert doubled(torch.rand(1, 3, 2, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ([0.1, 0.2], [1.0], "Expected mean and std of equal length, but got 2 and 1"),
        ([0.1, 0.2], [1.0, 0.0], r"Expected every std to be positive, but got \[1.0, 0.0\]"),
    ],
)
def test_preprocessor_rejects_bad_statistics(mean: list[float], std: list[float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Preprocessor(mean=mean, std=std)


# ---------------------------------------------------------------------------------------------- ResNet
def test_resnet_to_brick_gives_a_backbone_brick() -> None:
    resnet = torchvision.models.resnet18(weights=None, num_classes=10)
    brick = resnet_to_brick(resnet, input_name="normalized", output_name="features")

    assert isinstance(brick, BrickTrainable)
    assert isinstance(brick.model, BackboneResnet)
    assert brick.model.n_backbone_features == 512
    assert brick.input_names == ["normalized"]
    assert brick.output_names == ["features"]
    assert all(p.requires_grad for p in brick.parameters())
    assert not hasattr(brick.model, "fc")  # the classifier is dropped
    assert not any(isinstance(module, nn.Linear) for module in brick.model.modules())

    brick.eval()
    with torch.no_grad():
        features = brick(torch.rand(2, 3, 64, 96))
    assert features.shape == (2, 512, 2, 3)  # stride 32


def test_backbone_matches_the_resnet_up_to_its_pooling() -> None:
    resnet = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    backbone = BackboneResnet(resnet).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        pooled = backbone(images).mean(dim=(2, 3))
        torch.testing.assert_close(resnet.fc(pooled), resnet(images))


def test_resnet50_backbone_has_2048_features() -> None:
    # Built on the meta device: no memory or time spent on weights.
    with torch.device("meta"):
        resnet = torchvision.models.resnet50(weights=None)
    assert resnet_to_brick(resnet, input_name="x", output_name="y").model.n_backbone_features == 2048


def test_resnet_to_brick_passes_alive_stages() -> None:
    resnet = torchvision.models.resnet18(weights=None)
    brick = resnet_to_brick(resnet, input_name="x", output_name="y", alive_stages=[Stage.TRAIN])
    assert brick.alive_stages == (Stage.TRAIN,)


def test_non_resnet_raises() -> None:
    with pytest.raises(BrickDefinitionError, match=r"Expected a torchvision ResNet.*but Sequential lacks \['conv1'"):
        resnet_to_brick(nn.Sequential(nn.Conv2d(3, 4, 3)), input_name="x", output_name="y")


def test_resnet_without_linear_classifier_raises() -> None:
    resnet = torchvision.models.resnet18(weights=None)
    resnet.fc = nn.Identity()  # type: ignore[assignment]
    with pytest.raises(BrickDefinitionError, match=r"but ResNet lacks \['a Linear fc'\]"):
        resnet_to_brick(resnet, input_name="x", output_name="y")


# ---------------------------------------------------------------------------------------------- ImageClassifier
def test_image_classifier_outputs() -> None:
    classifier = ImageClassifier(num_classes=4, n_features=8)
    features = torch.randn(5, 8)

    logits, probabilities, class_prediction = classifier(features)

    assert logits.shape == (5, 4)
    assert probabilities.shape == (5, 4)
    assert class_prediction.shape == (5,)
    assert logits.dtype == torch.float32
    assert probabilities.dtype == torch.float32
    assert class_prediction.dtype == torch.int64
    torch.testing.assert_close(logits, classifier.fc(features))
    torch.testing.assert_close(probabilities, logits.softmax(dim=1))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(5))
    assert torch.equal(class_prediction, logits.argmax(dim=1))


def test_image_classifier_pools_feature_maps() -> None:
    classifier = ImageClassifier(num_classes=3, n_features=6)
    feature_maps = torch.randn(2, 6, 4, 5)

    logits, _, _ = classifier(feature_maps)

    torch.testing.assert_close(logits, classifier.fc(feature_maps.mean(dim=(2, 3))))
    torch.testing.assert_close(logits, classifier(nn.AdaptiveAvgPool2d(1)(feature_maps).flatten(1))[0])


def test_image_classifier_without_pooling_flattens_feature_maps() -> None:
    classifier = ImageClassifier(num_classes=3, n_features=6 * 2 * 2, use_average_pooling=False)
    feature_maps = torch.randn(2, 6, 2, 2)
    logits, _, _ = classifier(feature_maps)
    torch.testing.assert_close(logits, classifier.fc(feature_maps.flatten(1)))


@pytest.mark.parametrize(("num_classes", "n_features"), [(0, 4), (3, 0)])
def test_image_classifier_rejects_non_positive_sizes(num_classes: int, n_features: int) -> None:
    with pytest.raises(ConfigError, match="Expected num_classes and n_features to be positive"):
        ImageClassifier(num_classes=num_classes, n_features=n_features)


# ---------------------------------------------------------------------------------------------- heads
def test_create_image_classification_head_bricks() -> None:
    head = create_image_classification_head(
        num_classes=4, in_channels=7, features_name="features", targets_name="targets", loss_weight=0.5
    )

    assert list(head) == ["classify", "metrics", "loss"]
    assert all(isinstance(brick, BrickInterface) for brick in head.values())
    classify, accuracy, loss = head["classify"], head["metrics"], head["loss"]
    assert isinstance(classify, BrickTrainable)
    assert isinstance(classify.model, ImageClassifier)
    assert classify.model.fc.in_features == 7
    assert classify.model.fc.out_features == 4
    assert classify.input_names == ["features"]
    assert classify.output_names == ["./logits", "./probabilities", "./class_prediction"]
    assert isinstance(accuracy, BrickMetricSingle)
    assert accuracy.input_names == ["./class_prediction", "targets"]
    assert accuracy.report_names == ["accuracy"]
    assert isinstance(loss, BrickLabelledLoss)  # a BrickLoss that also outputs its labelled count
    assert isinstance(loss, BrickLoss)
    assert isinstance(loss.model, MaskedCrossEntropyLoss)
    assert loss.model.ignore_index == -100
    assert loss.input_names == ["./logits", "targets"]
    assert loss.output_names == ["./loss_ce", "./labelled"]
    assert loss.loss_output_names == ["./loss_ce"]
    assert loss.loss_weight == 0.5


def test_two_heads_from_the_factory_are_independent() -> None:
    first = create_image_classification_head(3, 5, "features", "targets")
    second = create_image_classification_head(3, 5, "features", "targets")
    assert first["classify"].model is not second["classify"].model
    assert first["metrics"] is not second["metrics"]


def test_spec_nested_heads_example(capsys: pytest.CaptureFixture[str]) -> None:
    resnet = torchvision.models.resnet18(weights=None, num_classes=10)
    resnet_brick = resnet_to_brick(resnet=resnet, input_name="normalized", output_name="features")
    n_features = resnet_brick.model.n_backbone_features
    bricks = {
        "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
        "backbone": resnet_brick,
        "head0": create_image_classification_head(
            num_classes=3, in_channels=n_features, features_name="features", targets_name="targets"
        ),
        "head1": create_image_classification_head(
            num_classes=5, in_channels=n_features, features_name="features", targets_name="targets"
        ),
    }
    brick_collections = BrickCollection(bricks)
    print(brick_collections)
    print(create_mermaid_dag_graph(brick_collections))
    printed = capsys.readouterr().out

    assert 'subgraph group_head0["head0"]' in printed
    assert 'subgraph group_head1["head1"]' in printed
    assert '--> |"head0/logits"| brick_head0_sloss' in printed
    assert '--> |"features"| brick_head1_sclassify' in printed
    assert "BrickMetricSingle(['ConfusionMatrixMetrics']" in printed

    batch_size = 2
    named_inputs = {"raw": torch.rand(batch_size, 3, 32, 32), "targets": torch.tensor([1, 2])}
    outputs = brick_collections(named_inputs, Stage.TRAIN)

    for head, num_classes in (("head0", 3), ("head1", 5)):
        assert outputs[f"{head}/logits"].shape == (batch_size, num_classes)
        assert outputs[f"{head}/probabilities"].shape == (batch_size, num_classes)
        assert outputs[f"{head}/class_prediction"].dtype == torch.int64
        assert outputs[f"{head}/loss_ce"].ndim == 0
    assert brick_collections.output_names(Stage.TRAIN) == [
        "normalized",
        "features",
        "head0/logits",
        "head0/probabilities",
        "head0/class_prediction",
        "head0/loss_ce",
        "head0/labelled",
        "head1/logits",
        "head1/probabilities",
        "head1/class_prediction",
        "head1/loss_ce",
        "head1/labelled",
    ]
    metrics = brick_collections.summarize(Stage.TRAIN, reset=True)
    assert set(metrics) == {"head0/accuracy", "head1/accuracy"}
    reference = MulticlassAccuracy(num_classes=5)
    reference.update(outputs["head1/class_prediction"], named_inputs["targets"])
    torch.testing.assert_close(metrics["head1/accuracy"], reference.compute())

    inference = brick_collections({"raw": named_inputs["raw"]}, Stage.INFERENCE)
    assert "head0/loss_ce" not in inference
    assert "head1/class_prediction" in inference
