"""Ready-made visualisers for :class:`~torchbricks_lightning.core.visualization.BrickVisualization`, usable from YAML.

Each is a plain class with simple constructor arguments; its call gets the brick's named values and returns one
picture per sample, a ``uint8`` tensor ``(N, 3, H, W)``. Small images are enlarged (``min_size``) so that the
captions, in a legible font, fit; ``draw`` returns the pictures with every text drawn on them (what the tests read).

- :class:`ClassificationVisualizer`: each image captioned ``predicted / true``, with class names when given;
- :class:`SegmentationVisualizer`: predicted and true masks blended over the image, side by side, with a legend;
- :class:`DetectionVisualizer`: predicted boxes with class names and scores beside the true boxes;
- :class:`DepthVisualizer`: predicted and true depth in a colour map with a colour bar of its values.

Example:
    >>> import torch
    >>> from torchbricks_lightning import BrickVisualization
    >>> brick = BrickVisualization(
    ...     ClassificationVisualizer(class_names=["cat", "dog"]),
    ...     input_names={"images": "raw", "predictions": "head/probabilities", "targets": "targets"},
    ... )
    >>> brick.alive_stages
    (<Stage.VALIDATION: 'validation'>, <Stage.TEST: 'test'>)
"""

from torchbricks_lightning.bag_of_bricks.visualizers.classification import ClassificationVisualizer
from torchbricks_lightning.bag_of_bricks.visualizers.depth import DepthVisualizer
from torchbricks_lightning.bag_of_bricks.visualizers.detection import DetectionVisualizer
from torchbricks_lightning.bag_of_bricks.visualizers.segmentation import SegmentationVisualizer

__all__ = ["ClassificationVisualizer", "DepthVisualizer", "DetectionVisualizer", "SegmentationVisualizer"]
