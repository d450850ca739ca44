"""Lightning callbacks for brick collections."""

from torchbricks_lightning.callbacks.checkpoint import KeyedModelCheckpoint
from torchbricks_lightning.callbacks.graph_logging import BrickGraphLogger
from torchbricks_lightning.callbacks.onnx_export import OnnxExportCallback

__all__ = ["BrickGraphLogger", "KeyedModelCheckpoint", "OnnxExportCallback"]
