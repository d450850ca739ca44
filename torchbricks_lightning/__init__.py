"""torchbricks_lightning: build multi-task PyTorch models from bricks wired as a DAG, and train them with Lightning.

The top level is the one public entry point. The core API (bricks, collections, stages, ONNX export) is imported
with the package and never imports Lightning; the Lightning layer (``LightningBrickCollection``, checkpoint
loading, the pre-fit check) and the callbacks are imported on first use, so ``import torchbricks_lightning`` stays
free of Lightning:

>>> import torchbricks_lightning as tbl
>>> sorted(name for name in tbl.__all__ if name.startswith("Brick"))[:3]
['BrickCollection', 'BrickGraphLogger', 'BrickInterface']
>>> from torchbricks_lightning import LightningBrickCollection, OnnxExportCallback, load_brick_collection_weights
>>> LightningBrickCollection.__module__
'torchbricks_lightning.lightning.module'
"""

import importlib as _importlib
import typing as _typing

from torchbricks_lightning.core.bricks import (
    BrickInterface,
    BrickLoss,
    BrickModule,
    BrickNotTrainable,
    BrickSpec,
    BrickTrainable,
)
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export import ExportResult, ExportSpec, export_bricks
from torchbricks_lightning.core.graph import BrickNode, StagePlan
from torchbricks_lightning.core.mermaid import create_mermaid_dag_graph
from torchbricks_lightning.core.metric_bricks import BrickMetrics, BrickMetricSingle
from torchbricks_lightning.core.onnx_export import export_bricks_as_onnx
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.core.visualization import BrickVisualization, Visualizer
from torchbricks_lightning.errors import (
    CheckpointError,
    LossNotFiniteError,
    ResumeStateError,
    TorchBricksError,
    UntrustedCheckpointError,
)

if _typing.TYPE_CHECKING:
    from torchbricks_lightning.callbacks.checkpoint import KeyedModelCheckpoint
    from torchbricks_lightning.callbacks.graph_logging import BrickGraphLogger
    from torchbricks_lightning.callbacks.onnx_export import OnnxExportCallback
    from torchbricks_lightning.callbacks.prediction_reading import read_predictions
    from torchbricks_lightning.callbacks.prediction_writer import BrickPredictionWriter
    from torchbricks_lightning.checkpoints.io import SafeCheckpointIO
    from torchbricks_lightning.checkpoints.reading import load_brick_collection_weights
    from torchbricks_lightning.datamodules.arrays import ArrayDataModule
    from torchbricks_lightning.lightning.module import LightningBrickCollection
    from torchbricks_lightning.lightning.preflight import check_one_batch

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "ArrayDataModule": "torchbricks_lightning.datamodules.arrays",
    "BrickGraphLogger": "torchbricks_lightning.callbacks.graph_logging",
    "BrickPredictionWriter": "torchbricks_lightning.callbacks.prediction_writer",
    "KeyedModelCheckpoint": "torchbricks_lightning.callbacks.checkpoint",
    "LightningBrickCollection": "torchbricks_lightning.lightning.module",
    "OnnxExportCallback": "torchbricks_lightning.callbacks.onnx_export",
    "SafeCheckpointIO": "torchbricks_lightning.checkpoints.io",
    "check_one_batch": "torchbricks_lightning.lightning.preflight",
    "load_brick_collection_weights": "torchbricks_lightning.checkpoints.reading",
    "read_predictions": "torchbricks_lightning.callbacks.prediction_reading",
}
"""Public names of the Lightning layer, the callbacks and the datamodules, by the module that defines them: imported
on first use."""

__all__ = [
    "ArrayDataModule",
    "BrickCollection",
    "BrickGraphLogger",
    "BrickInterface",
    "BrickLoss",
    "BrickMetricSingle",
    "BrickMetrics",
    "BrickModule",
    "BrickNode",
    "BrickNotTrainable",
    "BrickPredictionWriter",
    "BrickSpec",
    "BrickTrainable",
    "BrickVisualization",
    "CheckpointError",
    "ExportResult",
    "ExportSpec",
    "KeyedModelCheckpoint",
    "LightningBrickCollection",
    "LossNotFiniteError",
    "OnnxExportCallback",
    "ResumeStateError",
    "SafeCheckpointIO",
    "Stage",
    "StagePlan",
    "TorchBricksError",
    "UntrustedCheckpointError",
    "Visualizer",
    "__version__",
    "check_one_batch",
    "create_mermaid_dag_graph",
    "export_bricks",
    "export_bricks_as_onnx",
    "load_brick_collection_weights",
    "read_predictions",
]


def __getattr__(name: str) -> _typing.Any:
    """Import a public name of the Lightning layer, the callbacks or the datamodules on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
