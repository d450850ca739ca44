"""Lightning callbacks for brick collections."""

from torchbricks_lightning.callbacks.checkpoint import KeyedModelCheckpoint
from torchbricks_lightning.callbacks.graph_logging import BrickGraphLogger
from torchbricks_lightning.callbacks.onnx_export import OnnxExportCallback
from torchbricks_lightning.callbacks.prediction_writer import BrickPredictionWriter

__all__ = ["BrickGraphLogger", "BrickPredictionWriter", "KeyedModelCheckpoint", "OnnxExportCallback"]
