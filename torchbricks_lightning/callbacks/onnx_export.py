"""OnnxExportCallback: export the trained model to ONNX, next to the run's checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from torchbricks_lightning.core.onnx_export import OnnxExportResult, export_bricks_as_onnx
from torchbricks_lightning.core.stages import Stage, StageLike, parse_stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["OnnxExportCallback"]

log = logging.getLogger(__name__)


class OnnxExportCallback(pl.Callback):
    """Export the ``EXPORT`` stage to ONNX at the end of fit (and, optionally, at each new best checkpoint).

    The file goes next to the run's checkpoints (the ``ModelCheckpoint`` folder), or into the logger's folder,
    and is checked with onnxruntime against eager PyTorch before it is moved into place. Example inputs are
    shaped like the training batches.

    Args:
        filename: the file name (default ``model.onnx``).
        dirpath: the folder; default: beside the checkpoints.
        on_best: also export each time ``ModelCheckpoint`` saves a new best checkpoint.
        dynamic_batch_size: make the batch dimension dynamic.
        stage: the stage to export.

    Attributes:
        last_result: the :class:`OnnxExportResult` of the latest export.
    """

    def __init__(
        self,
        filename: str = "model.onnx",
        dirpath: str | None = None,
        on_best: bool = False,
        dynamic_batch_size: bool = True,
        stage: StageLike = Stage.EXPORT,
    ) -> None:
        if not filename.endswith(".onnx"):
            raise ConfigError(f"Expected filename to end with '.onnx', but got {filename!r}.")
        self.filename = filename
        self.dirpath = dirpath
        self.on_best = on_best
        self.dynamic_batch_size = dynamic_batch_size
        self.stage = parse_stage(stage, where="OnnxExportCallback")
        self.last_result: OnnxExportResult | None = None
        self._best_path: str | None = None

    def _folder(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        checkpoint = trainer.checkpoint_callback
        folder = getattr(checkpoint, "dirpath", None)
        if folder:
            return Path(folder)
        return Path(trainer.log_dir or trainer.default_root_dir)

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> OnnxExportResult:
        """Export now and log where the file went."""
        if not isinstance(pl_module, LightningBrickCollection):
            raise BrickDefinitionError(
                f"OnnxExportCallback needs a LightningBrickCollection, but the model is {type(pl_module).__name__}."
            )
        path = self._folder(trainer) / self.filename
        inputs = {name: tensor.to(pl_module.device) for name, tensor in pl_module.example_named_inputs().items()}
        result = export_bricks_as_onnx(
            path, pl_module.brick_collection, inputs, dynamic_batch_size=self.dynamic_batch_size, stage=self.stage
        )
        worst = max(result.max_abs_diff.values(), default=0.0)
        message = f"Exported stage {self.stage.value!r} to ONNX: {path} (onnxruntime max abs diff {worst:.2e})"
        log.info(message)
        print(message)
        self.last_result = result
        return result

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, LightningBrickCollection):
            raise BrickDefinitionError(
                f"OnnxExportCallback needs a LightningBrickCollection, but the model is {type(pl_module).__name__}. "
                "Remove the callback or train a LightningBrickCollection."
            )

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # ModelCheckpoint sets best_model_path before it saves, so a new best is visible here.
        if not self.on_best or not trainer.is_global_zero:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", None)
        if best and best != self._best_path:
            self._best_path = best
            self.export(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.export(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"best_path": self._best_path}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._best_path = state_dict.get("best_path")
