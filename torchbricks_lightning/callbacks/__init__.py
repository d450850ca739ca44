"""Lightning callbacks for brick collections."""

from torchbricks_lightning.callbacks.onnx_export import OnnxExportCallback

__all__ = ["OnnxExportCallback"]
