"""Backbones by torchvision name, the small conv net, and classification heads with a confusion matrix."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from torchbricks_lightning import BrickCollection, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import (
    BackboneResnet,
    ClassificationHead,
    SmallConvNet,
    TorchvisionBackbone,
    create_image_classification_head,
)
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError


# ------------------------------------------------------------------------------------------------ torchvision
@pytest.mark.parametrize(
    ("name", "features", "spatial"), [("resnet18", 512, 2), ("mobilenet_v3_small", 576, 2), ("resnet34", 512, 2)]
)
def test_torchvision_backbone_features(name: str, features: int, spatial: int) -> None:
    backbone = TorchvisionBackbone(name).eval()
    assert backbone.name == name
    assert backbone.n_backbone_features == features
    with torch.no_grad():
        output = backbone(torch.rand(2, 3, 64, 64))
    assert output.shape == (2, features, spatial, spatial)


def test_torchvision_resnet_backbone_drops_pooling_and_classifier() -> None:
    backbone = TorchvisionBackbone("resnet18")
    assert isinstance(backbone.body, BackboneResnet)
    assert not any(isinstance(module, nn.Linear) for module in backbone.modules())


def test_torchvision_features_backbone_keeps_only_the_features() -> None:
    torch.manual_seed(0)
    backbone = TorchvisionBackbone("mobilenet_v3_small").eval()
    assert not any(isinstance(module, nn.Linear) for module in backbone.modules())
    reference = torchvision.models.mobilenet_v3_small(weights=None).eval()
    reference.features.load_state_dict(backbone.body.state_dict())
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), reference.features(images))


def test_torchvision_backbone_passes_builder_kwargs() -> None:
    backbone = TorchvisionBackbone("resnet18", zero_init_residual=True)
    assert float(backbone.body.layer1[0].bn2.weight.detach().abs().sum()) == 0.0


def test_unknown_torchvision_model_suggests_a_name() -> None:
    with pytest.raises(ConfigError, match="Did you mean") as info:
        TorchvisionBackbone("resnet81")
    message = str(info.value)
    assert "'resnet81'" in message
    assert "resnet18" in message
    assert "Available:" in message


@pytest.mark.parametrize(
    "name", ["mobilenet_v3_small", "efficientnet_b0", "densenet121", "convnext_tiny", "vgg11", "alexnet"]
)
def test_features_backbone_counts_the_channels_of_its_feature_maps(name: str) -> None:
    """``n_backbone_features`` sizes the heads: it must be the channel count of what the backbone returns.

    The docstring promises VGG among the ``features`` + ``classifier`` models; VGG's (and AlexNet's) first
    classifier Linear takes the *flattened* pooled maps (512 x 7 x 7 = 25088), not the 512 channels.
    """
    backbone = TorchvisionBackbone(name).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 64, 64))
    assert backbone.n_backbone_features == features.shape[1]
    head = BrickCollection({"head": ClassificationHead(num_classes=3, in_channels=backbone.n_backbone_features)})
    outputs = head({"features": features}, Stage.INFERENCE)
    assert outputs["head/logits"].shape == (1, 3)


def test_torchvision_model_without_a_usable_layout_raises() -> None:
    # A vision transformer has neither a ResNet layout nor a convolutional 'features' module.
    with pytest.raises(BrickDefinitionError, match="neither a ResNet layout"):
        TorchvisionBackbone("vit_b_16")


def test_squeezenet_channels_are_measured_not_read_off_the_last_layer() -> None:
    # Fire modules concatenate two 256-channel branches: the last convolution says 256, the output has 512.
    backbone = TorchvisionBackbone("squeezenet1_0")
    assert backbone.n_backbone_features == 512
    assert backbone(torch.rand(1, 3, 64, 64)).shape[1] == 512


# ------------------------------------------------------------------------------------------------ small conv net
@pytest.mark.parametrize(
    ("in_channels", "widths", "size", "expected"),
    [
        (1, (16, 32), 8, (32, 4)),
        (3, (8, 16, 24), 16, (24, 4)),
        (3, [5], 7, (5, 7)),
        (1, (4, 4, 4, 4), 16, (4, 2)),
    ],
)
def test_small_conv_net_shapes(in_channels: int, widths: tuple[int, ...], size: int, expected: tuple[int, int]) -> None:
    net = SmallConvNet(in_channels=in_channels, widths=widths)
    channels, spatial = expected
    assert net.n_backbone_features == channels
    with torch.no_grad():
        output = net(torch.rand(2, in_channels, size, size))
    assert output.shape == (2, channels, spatial, spatial)
    assert float(output.min()) >= 0  # ends in a ReLU


def test_small_conv_net_default() -> None:
    net = SmallConvNet()
    assert net.n_backbone_features == 128
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 128, 8, 8)


@pytest.mark.parametrize("widths", [(), [], (16, 0), (-1,), (8, -2, 4)])
def test_small_conv_net_rejects_invalid_widths(widths: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="positive channel counts"):
        SmallConvNet(widths=widths)


# ------------------------------------------------------------------------------------------------ heads
PREDICTIONS = torch.tensor([0, 1, 2, 2, 1, 0, 2, 2])
TARGETS = torch.tensor([0, 1, 1, 2, 0, 0, 2, 1])


def _hand_confusion(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for predicted, target in zip(predictions.tolist(), targets.tolist(), strict=True):
        matrix[target, predicted] += 1  # rows: true class, columns: predicted class
    return matrix


def _features_for(predictions: torch.Tensor, num_classes: int, classifier: nn.Module) -> torch.Tensor:
    """Features that make an identity-weight classifier predict ``predictions``."""
    with torch.no_grad():
        classifier.fc.weight.copy_(torch.eye(num_classes))
        classifier.fc.bias.zero_()
    return torch.nn.functional.one_hot(predictions, num_classes).float() * 5


def test_classification_head_without_confusion_has_only_accuracy() -> None:
    collection = BrickCollection({"digit": ClassificationHead(num_classes=3, in_channels=3)})
    assert collection.metric_keys() == ["digit/accuracy"]
    assert collection.loss_names(Stage.TRAIN) == ["digit/loss_ce"]


@pytest.mark.parametrize("as_class", [True, False])
def test_confusion_metric_equals_a_hand_computed_matrix(as_class: bool) -> None:
    num_classes = 3
    head = (
        ClassificationHead(num_classes=num_classes, in_channels=num_classes, with_confusion_matrix=True)
        if as_class
        else create_image_classification_head(
            num_classes, num_classes, "features", "targets", with_confusion_matrix=True
        )
    )
    collection = BrickCollection({"head": head})
    assert sorted(collection.metric_keys()) == ["head/accuracy", "head/confusion"]
    bricks = dict(collection.named_bricks())
    classify = bricks["head/classify"]
    assert isinstance(classify, BrickTrainable)
    features = _features_for(PREDICTIONS, num_classes, classify.model)
    # Two batches: the metric accumulates.
    for part in (slice(0, 5), slice(5, 8)):
        outputs = collection({"features": features[part], "targets": TARGETS[part]}, Stage.VALIDATION)
        assert torch.equal(outputs["head/class_prediction"], PREDICTIONS[part])
    summary = collection.summarize(Stage.VALIDATION, reset=True)
    expected = _hand_confusion(PREDICTIONS, TARGETS, num_classes)
    assert torch.equal(summary["head/confusion"].to(torch.int64), expected)
    assert expected.tolist() == [[2, 1, 0], [0, 1, 2], [0, 0, 2]]
    assert float(summary["head/accuracy"]) == pytest.approx(
        float(torch.diagonal(expected / expected.sum(1, keepdim=True)).mean())  # macro accuracy, torchmetrics' default
    )
    # Reset: a fresh pass counts only its own data.
    collection({"features": features[:2], "targets": TARGETS[:2]}, Stage.VALIDATION)
    again = collection.summarize(Stage.VALIDATION, reset=True)
    assert torch.equal(again["head/confusion"].to(torch.int64), _hand_confusion(PREDICTIONS[:2], TARGETS[:2], 3))


def test_confusion_is_kept_per_stage() -> None:
    collection = BrickCollection({"head": ClassificationHead(3, 3, with_confusion_matrix=True)})
    classify = dict(collection.named_bricks())["head/classify"]
    features = _features_for(PREDICTIONS, 3, classify.model)
    collection({"features": features, "targets": TARGETS}, Stage.TEST)
    collection({"features": features[:1], "targets": TARGETS[:1]}, Stage.VALIDATION)
    assert int(collection.summarize(Stage.TEST)["head/confusion"].sum()) == 8
    assert int(collection.summarize(Stage.VALIDATION)["head/confusion"].sum()) == 1


def test_head_loss_weight_and_names() -> None:
    collection = BrickCollection(
        {"parity": ClassificationHead(num_classes=2, in_channels=4, targets_name="parity", loss_weight=0.5)}
    )
    assert collection.loss_weights() == {"parity/loss_ce": 0.5}
    outputs = collection({"features": torch.rand(3, 4, 2, 2), "parity": torch.tensor([0, 1, 1])}, Stage.TRAIN)
    assert outputs["parity/logits"].shape == (3, 2)
    assert torch.allclose(outputs["parity/probabilities"].sum(dim=1), torch.ones(3))
    expected = nn.functional.cross_entropy(outputs["parity/logits"], torch.tensor([0, 1, 1]))
    torch.testing.assert_close(outputs["parity/loss_ce"], expected)
