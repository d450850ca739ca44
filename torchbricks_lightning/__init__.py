"""torchbricks_lightning: build multi-task PyTorch models from bricks wired as a DAG, and train them with Lightning.

The top level holds the core API (it never imports Lightning):

>>> import torchbricks_lightning as tbl
>>> sorted(name for name in tbl.__all__ if name.startswith("Brick"))[:3]
['BrickCollection', 'BrickInterface', 'BrickLoss']
"""

from torchbricks_lightning.core.bricks import (
    BrickInterface,
    BrickLoss,
    BrickModule,
    BrickNotTrainable,
    BrickSpec,
    BrickTrainable,
)
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.graph import BrickNode, StagePlan
from torchbricks_lightning.core.mermaid import create_mermaid_dag_graph
from torchbricks_lightning.core.metric_bricks import BrickMetrics, BrickMetricSingle
from torchbricks_lightning.core.onnx_export import OnnxExportResult, export_bricks_as_onnx
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import TorchBricksError

__version__ = "0.1.0"

__all__ = [
    "BrickCollection",
    "BrickInterface",
    "BrickLoss",
    "BrickMetricSingle",
    "BrickMetrics",
    "BrickModule",
    "BrickNode",
    "BrickNotTrainable",
    "BrickSpec",
    "BrickTrainable",
    "OnnxExportResult",
    "Stage",
    "StagePlan",
    "TorchBricksError",
    "__version__",
    "create_mermaid_dag_graph",
    "export_bricks_as_onnx",
]
