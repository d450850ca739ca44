"""Reusable modules and ready-made bricks for image models: preprocessing, backbones and heads."""

from torchbricks_lightning.bag_of_bricks.backbones import BackboneResnet, resnet_to_brick
from torchbricks_lightning.bag_of_bricks.heads import ImageClassifier, create_image_classification_head
from torchbricks_lightning.bag_of_bricks.preprocessors import Preprocessor

__all__ = [
    "BackboneResnet",
    "ImageClassifier",
    "Preprocessor",
    "create_image_classification_head",
    "resnet_to_brick",
]
