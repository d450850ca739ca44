"""OnnxExportCallback: export the trained model (ONNX or ``.pt2``) next to the run's checkpoints."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from typing_extensions import override

from torchbricks_lightning.checkpoints.reading import load_brick_collection_weights
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export import ExportResult, ExportSpec, expand_specs, export_bricks
from torchbricks_lightning.core.export.formats import format_of
from torchbricks_lightning.core.export.selection import select_export_graph
from torchbricks_lightning.core.stages import Stage, StageLike, parse_stage
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
        artefacts: several artefacts at once, each with its own path (relative to the folder), outputs, format and
            dtype; replaces ``filename``, ``output_names``, ``format`` and ``dtype``.

    Attributes:
        last_results: the :class:`ExportResult` of each artefact of the latest export.
        last_result: the last of them.
    """

    def __init__(
        self,
        filename: str = "model.onnx",
        dirpath: str | None = None,
        on_best: bool = False,
        dynamic_batch_size: bool = True,
        stage: StageLike = Stage.EXPORT,
        output_names: list[str] | None = None,
        format: Literal["onnx", "pt2"] | None = None,
        dtype: Literal["float32", "float16"] = "float32",
        dynamic_spatial: bool = False,
        opset: int | None = None,
        artefacts: list[ExportSpec] | None = None,
    ) -> None:
        if artefacts is not None:
            specs = list(artefacts)
            if not specs or not all(isinstance(spec, ExportSpec) for spec in specs):
                raise BrickDefinitionError(
                    f"Expected artefacts to be a non-empty list of ExportSpec, got {artefacts!r}."
                )
        else:
            specs = [ExportSpec(filename, output_names=output_names, format=format, dtype=dtype)]
        for spec in specs:
            format_of(Path(spec.path.replace("{head}", "head")), spec.format)  # a bad suffix fails now, not after fit
        self.specs = specs
        self.dirpath = dirpath
        self.on_best = on_best
        self.dynamic_batch_size = dynamic_batch_size
        self.dynamic_spatial = dynamic_spatial
        self.opset = opset
        self.stage = parse_stage(stage, where="OnnxExportCallback")
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
        if checkpoint_path is not None:
            collection = copy.deepcopy(collection).cpu()
            load_brick_collection_weights(collection, checkpoint_path)
        device = next((p.device for p in collection.parameters()), pl_module.device)
        inputs = {name: tensor.to(device) for name, tensor in module.example_named_inputs().items()}
        results = []
        for spec in expand_specs(self.specs, collection, self.stage, folder=self._folder(trainer)):
            result = export_bricks(
                Path(spec.path),
                collection,
                inputs,
                output_names=spec.output_names,
                stage=self.stage,
                format=spec.format,
                dtype=spec.dtype,
                dynamic_batch_size=self.dynamic_batch_size,
                dynamic_spatial=self.dynamic_spatial,
                opset=self.opset if format_of(Path(spec.path), spec.format) == "onnx" else None,
                checkpoint_path=checkpoint_path,
            )
            worst = max(result.max_abs_diff.values(), default=0.0)
            source = f"the weights of {checkpoint_path}" if checkpoint_path else "the current weights"
            message = (
                f"Exported stage {self.stage.value!r} to {'ONNX' if result.format == 'onnx' else '.pt2'}: "
                f"{result.path} ({source}; max abs diff vs PyTorch {worst:.2e}; manifest {result.manifest_path})"
            )
            log.info(message)
            print(message)
            results.append(result)
        self.last_results = results
        return results

    def _export_pending(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and trainer.is_global_zero:
            self.export(trainer, pl_module, checkpoint_path=pending)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Unknown outputs, or a loss alive in the exported stage, fail now rather than after the training.
        collection = _brick_module(pl_module).brick_collection
        for spec in expand_specs(self.specs, collection, self.stage):
            select_export_graph(collection, self.stage, spec.output_names)

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
