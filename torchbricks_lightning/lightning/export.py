"""Export a LightningBrickCollection checkpoint to a verified ONNX file."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.graph import check_input_names
from torchbricks_lightning.core.onnx_export import OnnxExportResult, export_bricks_as_onnx
from torchbricks_lightning.core.stages import Stage, StageLike, parse_stage
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["export_checkpoint_as_onnx"]


def export_checkpoint_as_onnx(
    checkpoint_path: str | os.PathLike[str],
    path_onnx: str | os.PathLike[str],
    named_inputs: Mapping[str, torch.Tensor] | None = None,
    brick_collection: BrickCollection | Mapping[str, Any] | None = None,
    dynamic_batch_size: bool = True,
    stage: StageLike = Stage.EXPORT,
    trusted_class_prefixes: Sequence[str] = (),
    verify: bool = True,
) -> OnnxExportResult:
    """Rebuild a model from a checkpoint and export one stage to ONNX, checked with onnxruntime.

    Args:
        checkpoint_path: a checkpoint written by ``LightningBrickCollection`` (loaded with ``weights_only=True``).
        path_onnx: the ``.onnx`` file to write (atomically).
        named_inputs: example inputs; by default, random inputs shaped like the batches seen in training
            (their shapes and dtypes are stored in the checkpoint).
        brick_collection: the bricks, for checkpoints of modules built in Python (CLI checkpoints rebuild
            themselves).
        dynamic_batch_size: make the batch dimension dynamic.
        stage: the stage to export.
        trusted_class_prefixes: packages, beyond torch and friends, whose classes the checkpoint may use.
        verify: compare onnxruntime with eager PyTorch on the example inputs.

    Raises:
        CheckpointError: the checkpoint is unreadable, or does not fit ``brick_collection``.
        MissingInputError: ``stage`` needs inputs that ``named_inputs`` (or, without it, the checkpoint's example
            inputs, which hold what the export stage needs) lacks, such as targets.
        ExportError: see :func:`export_bricks_as_onnx`.
    """
    parsed_stage = parse_stage(stage, where="export_checkpoint_as_onnx")
    kwargs: dict[str, Any] = {} if brick_collection is None else {"brick_collection": brick_collection}
    module = LightningBrickCollection.load_from_checkpoint(
        checkpoint_path, map_location="cpu", trusted_class_prefixes=trusted_class_prefixes, **kwargs
    )
    if named_inputs is None:
        named_inputs = module.example_named_inputs()
        _check_example_inputs(module.brick_collection, parsed_stage, named_inputs)
    return export_bricks_as_onnx(
        path_onnx,
        module.brick_collection,
        named_inputs,
        dynamic_batch_size=dynamic_batch_size,
        stage=parsed_stage,
        verify=verify,
    )


def _check_example_inputs(collection: BrickCollection, stage: Stage, inputs: Mapping[str, torch.Tensor]) -> None:
    """Raise if ``stage`` needs more than the checkpoint's example inputs, saying where they came from."""
    missing = [name for name in collection.input_names(stage) if name not in inputs]
    if not missing:
        return
    enough = [other.value for other in Stage if set(collection.input_names(other)) <= set(inputs)]
    check_input_names(
        collection.plan(stage),
        inputs,
        given="No named_inputs were passed, so the checkpoint's example inputs were used",
        hint=(
            f"Pass named_inputs holding {missing} as well, or export a stage that needs only the example inputs: "
            f"{enough} (e.g. stage='export', or --stage export on the command line)."
        ),
    )
