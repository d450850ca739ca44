"""Export a LightningBrickCollection checkpoint to a verified ONNX file."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.onnx_export import OnnxExportResult, export_bricks_as_onnx
from torchbricks_lightning.core.stages import Stage, StageLike
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
    """
    kwargs: dict[str, Any] = {} if brick_collection is None else {"brick_collection": brick_collection}
    module = LightningBrickCollection.load_from_checkpoint(
        checkpoint_path, map_location="cpu", trusted_class_prefixes=trusted_class_prefixes, **kwargs
    )
    inputs = dict(named_inputs) if named_inputs is not None else module.example_named_inputs()
    return export_bricks_as_onnx(
        path_onnx, module.brick_collection, inputs, dynamic_batch_size=dynamic_batch_size, stage=stage, verify=verify
    )
