"""Reusable modules and ready-made bricks for image models: preprocessing, backbones, heads, losses and metrics."""

from torchbricks_lightning.bag_of_bricks.backbones import (
    BackboneResnet,
    SmallConvNet,
    TorchvisionBackbone,
    resnet_to_brick,
)
from torchbricks_lightning.bag_of_bricks.dense_metrics import DepthMetrics, NormalsMetrics
from torchbricks_lightning.bag_of_bricks.dense_regressor import DenseRegressor
from torchbricks_lightning.bag_of_bricks.depth_head import DepthHead, DepthRegressor, MaskedDepthLoss, create_depth_head
from torchbricks_lightning.bag_of_bricks.detection import (
    DetectionHead,
    create_detection_head,
    pad_detection_targets,
)
from torchbricks_lightning.bag_of_bricks.heads import (
    ClassificationHead,
    ImageClassifier,
    create_image_classification_head,
)
from torchbricks_lightning.bag_of_bricks.losses import MaskedCrossEntropyLoss, MaskedRegressionLoss
from torchbricks_lightning.bag_of_bricks.metrics import ConfusionMatrixMetrics, RegressionMetrics
from torchbricks_lightning.bag_of_bricks.normals_head import (
    CosineNormalLoss,
    NormalsHead,
    NormalsRegressor,
    create_normals_head,
)
from torchbricks_lightning.bag_of_bricks.preprocessors import Preprocessor
from torchbricks_lightning.bag_of_bricks.regression_head import RegressionHead, Regressor, create_regression_head
from torchbricks_lightning.bag_of_bricks.segmentation_head import (
    PixelClassifier,
    SegmentationHead,
    create_segmentation_head,
)
from torchbricks_lightning.bag_of_bricks.visualizers import (
    ClassificationVisualizer,
    DepthVisualizer,
    DetectionVisualizer,
    SegmentationVisualizer,
)

__all__ = [
    "BackboneResnet",
    "ClassificationHead",
    "ClassificationVisualizer",
    "ConfusionMatrixMetrics",
    "CosineNormalLoss",
    "DenseRegressor",
    "DepthHead",
    "DepthMetrics",
    "DepthRegressor",
    "DepthVisualizer",
    "DetectionHead",
    "DetectionVisualizer",
    "ImageClassifier",
    "MaskedCrossEntropyLoss",
    "MaskedDepthLoss",
    "MaskedRegressionLoss",
    "NormalsHead",
    "NormalsMetrics",
    "NormalsRegressor",
    "PixelClassifier",
    "Preprocessor",
    "RegressionHead",
    "RegressionMetrics",
    "Regressor",
    "SegmentationHead",
    "SegmentationVisualizer",
    "SmallConvNet",
    "TorchvisionBackbone",
    "create_depth_head",
    "create_detection_head",
    "create_image_classification_head",
    "create_normals_head",
    "create_regression_head",
    "create_segmentation_head",
    "pad_detection_targets",
    "resnet_to_brick",
]
