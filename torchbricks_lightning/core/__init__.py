"""The core: bricks, the brick collection and its graph. Imports torch and torchmetrics only, never Lightning."""

from torchbricks_lightning.core.bricks import (
    BrickInterface,
    BrickLoss,
    BrickModule,
    BrickNotTrainable,
    BrickSpec,
    BrickTrainable,
)
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetrics, BrickMetricSingle
from torchbricks_lightning.core.stages import Stage

__all__ = [
    "BrickCollection",
    "BrickInterface",
    "BrickLoss",
    "BrickMetricSingle",
    "BrickMetrics",
    "BrickModule",
    "BrickNotTrainable",
    "BrickSpec",
    "BrickTrainable",
    "Stage",
]
