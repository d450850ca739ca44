"""Reusable modules and ready-made bricks for image models: preprocessing, backbones and heads."""

from torchbricks_lightning.bag_of_bricks.backbones import (
    BackboneResnet,
    SmallConvNet,
    TorchvisionBackbone,
    resnet_to_brick,
)
from torchbricks_lightning.bag_of_bricks.heads import (
    ClassificationHead,
    ImageClassifier,
    create_image_classification_head,
)
from torchbricks_lightning.bag_of_bricks.metrics import ConfusionMatrixMetrics
from torchbricks_lightning.bag_of_bricks.preprocessors import Preprocessor

__all__ = [
    "BackboneResnet",
    "ClassificationHead",
    "ConfusionMatrixMetrics",
    "ImageClassifier",
    "Preprocessor",
    "SmallConvNet",
    "TorchvisionBackbone",
    "create_image_classification_head",
    "resnet_to_brick",
]
