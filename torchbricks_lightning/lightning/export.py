"""Export a LightningBrickCollection checkpoint to checked artefacts (ONNX, ``.pt2``): one checkpoint, many files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import torch

from torchbricks_lightning.checkpoints.reading import read_checkpoint_file
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export import (
    Artefacts,
    ExportOptions,
    ExportResult,
    ExportSpec,
    artefact_specs,
    export_artefacts,
)
from torchbricks_lightning.core.export.options import ExportOptionFields, with_overrides
from torchbricks_lightning.core.onnx_export import onnx_options
from torchbricks_lightning.core.stages import StageLike
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["Artefacts", "ExportSpec", "export_checkpoint", "export_checkpoint_as_onnx"]


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    artefacts: Artefacts,
    options: ExportOptions | None = None,
    *,
    named_inputs: Mapping[str, torch.Tensor] | None = None,
    brick_collection: BrickCollection | Mapping[str, Any] | None = None,
    trusted_class_prefixes: Sequence[str] = (),
    **overrides: Unpack[ExportOptionFields],
) -> list[ExportResult]:
    """Rebuild a model from a checkpoint once and write one or several checked artefacts from it.

    Each artefact holds the outputs it names (pruned graph) and gets a manifest that records the checkpoint's
    SHA-256 (see :func:`~torchbricks_lightning.core.export.export_artefacts`): that of the bytes the weights were
    loaded from, the file being read once. A path with ``{head}`` writes one
    artefact per head.

    Args:
        checkpoint_path: a checkpoint written by ``LightningBrickCollection`` (loaded with ``weights_only=True``).
        artefacts: the file to write (``.onnx`` or ``.pt2``), or :class:`ExportSpec` items for several.
        options: the stage, outputs, format, dtype, dynamic dimensions, opset and check, shared by the artefacts;
            default: ``ExportOptions()`` (see :class:`~torchbricks_lightning.core.export.ExportOptions`).
        named_inputs: example inputs; by default, random inputs shaped like the batches seen in training (their
            shapes and dtypes are stored in the checkpoint).
        brick_collection: the bricks, for checkpoints of modules built in Python (CLI checkpoints rebuild
            themselves).
        trusted_class_prefixes: packages, beyond torch and friends, whose classes the checkpoint may use.
        **overrides: fields of the options to replace, e.g. ``stage="inference"`` or ``dtype="float16"``.

    Returns:
        One :class:`ExportResult` per artefact written, in order.

    Raises:
        CheckpointError: the checkpoint is unreadable, does not fit ``brick_collection``, or holds invalid example
            inputs.
        MissingInputError: an artefact needs inputs that ``named_inputs`` (or, without it, the checkpoint's example
            inputs) lacks, such as targets.
        ExportError: see :func:`~torchbricks_lightning.core.export.export_bricks`; artefacts written before the
            failing one stay written.
    """
    chosen = with_overrides(options, overrides, where="export_checkpoint")
    artefact_specs(artefacts, chosen)  # a bad file name fails before the checkpoint is read
    kwargs: dict[str, Any] = {} if brick_collection is None else {"brick_collection": brick_collection}
    data = read_checkpoint_file(checkpoint_path)  # the bytes loaded are the bytes hashed, whatever the file becomes
    module = LightningBrickCollection.load_from_checkpoint(
        checkpoint_path,
        map_location="cpu",
        trusted_class_prefixes=trusted_class_prefixes,
        checkpoint_bytes=data,
        **kwargs,
    )
    return export_artefacts(
        artefacts,
        module.brick_collection,
        module.example_named_inputs() if named_inputs is None else named_inputs,
        chosen,
        checkpoint_path=checkpoint_path,
        checkpoint_sha256=hashlib.sha256(data).hexdigest(),
        inputs_from=None if named_inputs is not None else "the checkpoint's example inputs",
    )


def export_checkpoint_as_onnx(
    checkpoint_path: str | os.PathLike[str],
    path_onnx: str | os.PathLike[str],
    named_inputs: Mapping[str, torch.Tensor] | None = None,
    brick_collection: BrickCollection | Mapping[str, Any] | None = None,
    dynamic_batch_size: bool = ExportOptions.dynamic_batch_size,
    stage: StageLike = ExportOptions.stage,
    trusted_class_prefixes: Sequence[str] = (),
    verify: bool = ExportOptions.verify,
    output_names: Sequence[str] | None = ExportOptions.output_names,
) -> ExportResult:
    """Rebuild a model from a checkpoint and export one stage to ONNX, checked with onnxruntime.

    :func:`export_checkpoint` with one ``.onnx`` path (see there and
    :class:`~torchbricks_lightning.core.export.ExportOptions` for the arguments and their defaults).

    Raises:
        ConfigError: ``path_onnx`` does not end with ``.onnx``.
    """
    options = onnx_options(
        path_onnx,
        where="export_checkpoint_as_onnx",
        stage=stage,
        output_names=output_names,
        dynamic_batch_size=dynamic_batch_size,
        verify=verify,
    )
    (result,) = export_checkpoint(
        checkpoint_path,
        path_onnx,
        options,
        named_inputs=named_inputs,
        brick_collection=brick_collection,
        trusted_class_prefixes=trusted_class_prefixes,
    )
    return result
