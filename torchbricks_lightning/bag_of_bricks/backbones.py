"""Backbones: torchvision classification models turned into feature extractors."""

from __future__ import annotations

import torch
from torch import nn

from torchbricks_lightning.core.bricks import BrickTrainable
from torchbricks_lightning.core.stages import AliveStages
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, did_you_mean

__all__ = ["BackboneResnet", "SmallConvNet", "TorchvisionBackbone", "resnet_to_brick"]


class BackboneResnet(nn.Module):
    """A torchvision ResNet without its pooling and classifier: images in, feature maps out.

    Attributes:
        n_backbone_features: the number of channels of the feature maps.

    Example:
        >>> import torch, torchvision
        >>> backbone = BackboneResnet(torchvision.models.resnet18(weights=None))
        >>> backbone.n_backbone_features, tuple(backbone(torch.rand(1, 3, 64, 64)).shape)
        (512, (1, 512, 2, 2))
    """

    conv1: nn.Module
    bn1: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module
    maxpool: nn.Module
    relu: nn.Module

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        required = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc")
        children: dict[str, nn.Module] = {
            name: child for name in required if isinstance(child := getattr(resnet, name, None), nn.Module)
        }
        missing = [name for name in required if name not in children]
        fc = children.get("fc")
        if missing or not isinstance(fc, nn.Linear):
            raise BrickDefinitionError(
                f"Expected a torchvision ResNet (with modules {', '.join(required)} and a Linear fc), "
                f"but {type(resnet).__name__} lacks {missing or ['a Linear fc']}."
            )
        self.conv1, self.bn1, self.relu, self.maxpool = (children[n] for n in ("conv1", "bn1", "relu", "maxpool"))
        self.layer1, self.layer2, self.layer3, self.layer4 = (children[f"layer{i}"] for i in range(1, 5))
        self.n_backbone_features: int = fc.in_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet_to_brick(
    resnet: nn.Module, input_name: str, output_name: str, alive_stages: AliveStages = "all"
) -> BrickTrainable:
    """Wrap a torchvision ResNet as a trainable backbone brick (its classifier is dropped).

    The brick's ``.model`` is a :class:`BackboneResnet`, whose ``n_backbone_features`` sizes the heads.

    Example:
        >>> import torchvision
        >>> brick = resnet_to_brick(torchvision.models.resnet18(weights=None), input_name="normalized",
        ...                         output_name="features")
        >>> brick.model.n_backbone_features
        512
    """
    return BrickTrainable(
        BackboneResnet(resnet), input_names=[input_name], output_names=[output_name], alive_stages=alive_stages
    )


def _output_channels(features: nn.Module) -> int | None:
    """The channels a feature extractor outputs, measured with one 224x224 image in eval mode (blocks that
    concatenate branches, as in SqueezeNet, make reading them off the last layer unreliable)."""
    training = {module: module.training for module in features.modules()}
    features.eval()
    try:
        with torch.no_grad():
            output = features(torch.zeros(1, 3, 224, 224))
    except Exception:  # not an image feature extractor
        return None
    finally:
        for module, mode in training.items():
            module.training = mode
    return int(output.shape[1]) if isinstance(output, torch.Tensor) and output.ndim == 4 else None


class TorchvisionBackbone(nn.Module):
    """Any torchvision classification model as a feature extractor, by name (for YAML recipes).

    ResNet-style models (``fc`` and ``layer4``) drop their pooling and classifier; models with ``features`` and
    ``classifier`` (VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet, ...) keep ``features``.

    Args:
        name: a torchvision model name, e.g. ``"resnet18"`` or ``"mobilenet_v3_small"``.
        weights: torchvision weights name (downloads them), or None for random initialisation.
        **kwargs: passed to the model builder.

    Attributes:
        n_backbone_features: the number of channels of the feature maps.

    Example:
        >>> import torch
        >>> backbone = TorchvisionBackbone("mobilenet_v3_small")
        >>> backbone.n_backbone_features, tuple(backbone(torch.rand(1, 3, 64, 64)).shape)
        (576, (1, 576, 2, 2))
    """

    def __init__(self, name: str = "resnet18", weights: str | None = None, **kwargs: object) -> None:
        super().__init__()
        import torchvision

        try:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
        except ValueError as err:
            available = torchvision.models.list_models(module=torchvision.models)
            raise ConfigError(
                f"Unknown torchvision classification model {name!r}.{did_you_mean(name, available)} "
                f"Available: {', '.join(available[:12])}, ..."
            ) from err
        self.name = name
        if hasattr(model, "fc") and hasattr(model, "layer4"):
            self.body: nn.Module = BackboneResnet(model)
            self.n_backbone_features = self.body.n_backbone_features
            return
        features = getattr(model, "features", None)
        channels = _output_channels(features) if isinstance(features, nn.Module) else None
        if channels is None or not isinstance(features, nn.Module):
            raise BrickDefinitionError(
                f"torchvision model {name!r} has neither a ResNet layout (fc, layer4) nor a features module ending in "
                "a convolution or normalisation layer; wrap it in your own nn.Module instead."
            )
        self.body = features
        self.n_backbone_features = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class SmallConvNet(nn.Module):
    """A small convolutional backbone for small images: ``conv-bn-relu`` blocks, halving the size between widths.

    Args:
        in_channels: image channels.
        widths: the channels of each block; a 2x2 max-pool follows every block but the last.

    Attributes:
        n_backbone_features: the number of channels of the feature maps.

    Example:
        >>> import torch
        >>> net = SmallConvNet(in_channels=1, widths=(16, 32))
        >>> net.n_backbone_features, tuple(net(torch.rand(2, 1, 8, 8)).shape)
        (32, (2, 32, 4, 4))
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] | list[int] = (32, 64, 128)) -> None:
        super().__init__()
        if not widths or any(width < 1 for width in widths):
            raise ConfigError(f"Expected widths to be positive channel counts, but got {widths!r}.")
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if index < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.layers = nn.Sequential(*layers)
        self.n_backbone_features = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)
