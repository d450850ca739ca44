"""OnnxExportCallback: export the trained model (ONNX or ``.pt2``) next to the run's checkpoints."""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from typing_extensions import override

from torchbricks_lightning.checkpoints.reading import brick_state_dict, load_state_into, read_checkpoint_bytes
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export import (
    ExportOptions,
    ExportResult,
    ExportSpec,
    artefact_specs,
    export_artefacts,
    plan_artefacts,
)
from torchbricks_lightning.core.stages import StageLike, parse_stage
from torchbricks_lightning.errors import BrickDefinitionError
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["OnnxExportCallback"]

log = logging.getLogger(__name__)


class OnnxExportCallback(pl.Callback):
    """Export the ``EXPORT`` stage to checked artefacts: at the end of fit, or the weights of each new best checkpoint.

    Each artefact goes next to the run's checkpoints (the ``ModelCheckpoint`` folder), or into the logger's folder,
    is checked against eager PyTorch before it is moved into place (onnxruntime for ONNX, ``torch.export.load`` for
    ``.pt2``), and gets a JSON manifest beside it. Example inputs are shaped like the training batches and drawn from
    a private generator: exporting never changes the training.

    With ``on_best=True`` the artefacts hold the weights of the checkpoint that ``ModelCheckpoint`` just marked best:
    that file is read back once it is written (before the next training step) and exported, so the artefact and the
    checkpoint hold the same weights (also when another callback, such as weight averaging, changes what a
    checkpoint saves), and the manifest records the checkpoint's SHA-256. The end of fit then exports nothing more:
    the last epoch's weights never replace the best ones. Without a best checkpoint (no ``ModelCheckpoint``), the
    weights at the end of fit are exported. With ``on_best=False`` (the default), only the weights at the end of
    fit are.

    Args:
        filename: the artefact's file name (``.onnx`` or ``.pt2``; default ``model.onnx``). ``{head}`` in it writes
            one artefact per head (``{head}.onnx``), each with that head's outputs.
        dirpath: the folder; default: beside the checkpoints.
        on_best: export the weights of each new best checkpoint instead of those at the end of fit.
        dynamic_batch_size: make the batch dimension dynamic.
        stage: the stage to export.
        output_names: the outputs to export; default: the stage's terminal outputs.
        format: ``"onnx"`` or ``"pt2"``; default: from the file name.
        dtype: ``"float32"`` or ``"float16"``.
        dynamic_spatial: make the spatial dimensions (image sizes) dynamic.
        opset: the opset of the ONNX artefacts; default: the exporter's.
        artefacts: several artefacts at once, each with its own path (relative to the folder) and, where it sets
            them, its own outputs, format and dtype (the others come from ``output_names``, ``format`` and
            ``dtype``); replaces ``filename``.

    The export options' defaults are those of :class:`~torchbricks_lightning.core.export.ExportOptions`.

    Attributes:
        last_results: the :class:`ExportResult` of each artefact of the latest export.
        last_result: the last of them.
    """

    def __init__(
        self,
        filename: str = "model.onnx",
        dirpath: str | None = None,
        on_best: bool = False,
        dynamic_batch_size: bool = ExportOptions.dynamic_batch_size,
        stage: StageLike = ExportOptions.stage,
        output_names: list[str] | None = None,
        format: Literal["onnx", "pt2"] | None = ExportOptions.format,
        dtype: Literal["float32", "float16"] = ExportOptions.dtype,
        dynamic_spatial: bool = ExportOptions.dynamic_spatial,
        opset: int | None = ExportOptions.opset,
        artefacts: list[ExportSpec] | None = None,
    ) -> None:
        self.options = ExportOptions(
            stage=parse_stage(stage, where="OnnxExportCallback"),
            output_names=output_names,
            format=format,
            dtype=dtype,
            dynamic_batch_size=dynamic_batch_size,
            dynamic_spatial=dynamic_spatial,
            opset=opset,
        )
        # a bad suffix fails now, not after fit
        self.specs = artefact_specs(filename if artefacts is None else artefacts, self.options)
        self.dirpath = dirpath
        self.on_best = on_best
        self.last_results: list[ExportResult] = []
        self._best_path: str | None = None
        self._pending: str | None = None

    @property
    def last_result(self) -> ExportResult | None:
        """The result of the last artefact of the latest export."""
        return self.last_results[-1] if self.last_results else None

    def _folder(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        checkpoint = trainer.checkpoint_callback
        folder = getattr(checkpoint, "dirpath", None)
        if folder:
            return Path(folder)
        return Path(trainer.log_dir or trainer.default_root_dir)

    def export(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint_path: str | None = None
    ) -> list[ExportResult]:
        """Export now, the module's weights or (with ``checkpoint_path``) that checkpoint's, and log what was written.

        Raises:
            BrickDefinitionError: the model is not a ``LightningBrickCollection``.
            ExportError: see :func:`~torchbricks_lightning.core.export.export_bricks`.
        """
        module = _brick_module(pl_module)
        collection: BrickCollection = module.brick_collection
        checkpoint_sha256 = None
        if checkpoint_path is not None:  # the bytes loaded are the bytes hashed, whatever the file becomes
            collection = copy.deepcopy(collection).cpu()
            checkpoint, data = read_checkpoint_bytes(checkpoint_path)
            load_state_into(collection, brick_state_dict(checkpoint, source=checkpoint_path), True, checkpoint_path)
            checkpoint_sha256 = hashlib.sha256(data).hexdigest()
        device = next((p.device for p in collection.parameters()), pl_module.device)
        inputs = {name: tensor.to(device) for name, tensor in module.example_named_inputs().items()}
        self.last_results = export_artefacts(
            self.specs,
            collection,
            inputs,
            self.options,
            folder=self._folder(trainer),
            checkpoint_path=checkpoint_path,
            checkpoint_sha256=checkpoint_sha256,
        )
        source = f"the weights of {checkpoint_path}" if checkpoint_path else "the current weights"
        for result in self.last_results:
            worst = max(result.max_abs_diff.values(), default=0.0)
            reference = "PyTorch" if result.dtype == "float32" else "the float32 model"  # a float16 artefact's drift
            message = (
                f"Exported stage {self.options.stage.value!r} to {'ONNX' if result.format == 'onnx' else '.pt2'}: "
                f"{result.path} ({source}; max abs diff vs {reference} {worst:.2e}; manifest {result.manifest_path})"
            )
            log.info(message)
            print(message)
        return self.last_results

    def _export_pending(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and trainer.is_global_zero:
            self.export(trainer, pl_module, checkpoint_path=pending)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Unknown outputs, or a loss alive in the exported stage, fail now rather than after the training.
        plan_artefacts(self.specs, _brick_module(pl_module).brick_collection, self.options)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # ModelCheckpoint sets best_model_path before it saves; the file is written after this hook, so the export
        # waits for the next hook (the next training batch or epoch, or the end of fit).
        if not self.on_best:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", None)
        if best and best != self._best_path:
            self._best_path = best
            self._pending = best

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            self._export_pending(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            self._export_pending(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_best and self._best_path is not None:
            self._export_pending(trainer, pl_module)
        elif trainer.is_global_zero:
            self.export(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"best_path": self._best_path}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._best_path = state_dict.get("best_path")


def _brick_module(pl_module: pl.LightningModule) -> LightningBrickCollection:
    if not isinstance(pl_module, LightningBrickCollection):
        raise BrickDefinitionError(
            f"OnnxExportCallback needs a LightningBrickCollection, but the model is {type(pl_module).__name__}. "
            "Remove the callback or train a LightningBrickCollection."
        )
    return pl_module
