"""Export a LightningBrickCollection checkpoint to checked artefacts (ONNX, ``.pt2``): one checkpoint, many files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export import ExportResult, ExportSpec, expand_specs, export_bricks
from torchbricks_lightning.core.export.formats import format_of
from torchbricks_lightning.core.export.selection import select_export_graph
from torchbricks_lightning.core.export.specs import HEAD_PLACEHOLDER
from torchbricks_lightning.core.graph import check_input_names
from torchbricks_lightning.core.stages import Stage, StageLike, parse_stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["Artefacts", "export_checkpoint", "export_checkpoint_as_onnx"]

Artefacts = str | os.PathLike[str] | ExportSpec | Sequence[ExportSpec]
"""What to write: one path, one :class:`ExportSpec`, or several."""


def _specs(artefacts: Artefacts, output_names: Sequence[str] | None, format: Any, dtype: Any) -> list[ExportSpec]:
    if isinstance(artefacts, (str, os.PathLike)):
        return [
            ExportSpec(
                os.fspath(artefacts),
                output_names=None if output_names is None else list(output_names),
                format=format,
                dtype=dtype,
            )
        ]
    if output_names is not None:
        raise ConfigError("output_names goes with a single artefact path; give each ExportSpec its own output_names.")
    specs = [artefacts] if isinstance(artefacts, ExportSpec) else list(artefacts)
    if not specs or not all(isinstance(spec, ExportSpec) for spec in specs):
        raise BrickDefinitionError(
            f"Expected artefacts to be a path, an ExportSpec or a list of ExportSpec, but got {artefacts!r}."
        )
    return specs


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    artefacts: Artefacts,
    *,
    output_names: Sequence[str] | None = None,
    format: str | None = None,
    dtype: str = "float32",
    named_inputs: Mapping[str, torch.Tensor] | None = None,
    brick_collection: BrickCollection | Mapping[str, Any] | None = None,
    stage: StageLike = Stage.EXPORT,
    dynamic_batch_size: bool = True,
    dynamic_spatial: bool = False,
    opset: int | None = None,
    trusted_class_prefixes: Sequence[str] = (),
    verify: bool = True,
) -> list[ExportResult]:
    """Rebuild a model from a checkpoint once and write one or several checked artefacts from it.

    Each artefact holds the outputs it names (pruned graph) and gets a manifest that records the checkpoint's
    SHA-256 (see :func:`~torchbricks_lightning.core.export.export_bricks`). A path with ``{head}`` writes one
    artefact per head.

    Args:
        checkpoint_path: a checkpoint written by ``LightningBrickCollection`` (loaded with ``weights_only=True``).
        artefacts: the file to write (``.onnx`` or ``.pt2``), or :class:`ExportSpec` items for several.
        output_names: the outputs of a single artefact path; default: the stage's terminal outputs.
        format: ``"onnx"`` or ``"pt2"`` for a single path; default: from its suffix.
        dtype: ``"float32"`` or ``"float16"`` for a single path.
        named_inputs: example inputs; by default, random inputs shaped like the batches seen in training (their
            shapes and dtypes are stored in the checkpoint).
        brick_collection: the bricks, for checkpoints of modules built in Python (CLI checkpoints rebuild
            themselves).
        stage: the stage to export.
        dynamic_batch_size: make the batch dimension dynamic.
        dynamic_spatial: make the spatial dimensions (image sizes) dynamic.
        opset: the opset of the ONNX artefacts (``.pt2`` ones have none).
        trusted_class_prefixes: packages, beyond torch and friends, whose classes the checkpoint may use.
        verify: compare each artefact with eager PyTorch before moving it into place.

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
    parsed_stage = parse_stage(stage, where="export_checkpoint")
    specs = _specs(artefacts, output_names, format, dtype)
    for spec in specs:  # a bad file name fails before the checkpoint is read
        format_of(Path(spec.path.replace(HEAD_PLACEHOLDER, "head")), spec.format)
    kwargs: dict[str, Any] = {} if brick_collection is None else {"brick_collection": brick_collection}
    module = LightningBrickCollection.load_from_checkpoint(
        checkpoint_path, map_location="cpu", trusted_class_prefixes=trusted_class_prefixes, **kwargs
    )
    collection = module.brick_collection
    specs = expand_specs(specs, collection, parsed_stage)
    from_checkpoint = named_inputs is None
    inputs = module.example_named_inputs() if named_inputs is None else named_inputs
    results = []
    for spec in specs:
        if from_checkpoint:
            graph = select_export_graph(collection, parsed_stage, spec.output_names)
            _check_example_inputs(graph.collection, parsed_stage, inputs)
        results.append(
            export_bricks(
                Path(spec.path),
                collection,
                inputs,
                output_names=spec.output_names,
                stage=parsed_stage,
                format=spec.format,
                dtype=spec.dtype,
                dynamic_batch_size=dynamic_batch_size,
                dynamic_spatial=dynamic_spatial,
                opset=opset if format_of(Path(spec.path), spec.format) == "onnx" else None,
                verify=verify,
                checkpoint_path=checkpoint_path,
            )
        )
    return results


def export_checkpoint_as_onnx(
    checkpoint_path: str | os.PathLike[str],
    path_onnx: str | os.PathLike[str],
    named_inputs: Mapping[str, torch.Tensor] | None = None,
    brick_collection: BrickCollection | Mapping[str, Any] | None = None,
    dynamic_batch_size: bool = True,
    stage: StageLike = Stage.EXPORT,
    trusted_class_prefixes: Sequence[str] = (),
    verify: bool = True,
    output_names: Sequence[str] | None = None,
) -> ExportResult:
    """Rebuild a model from a checkpoint and export one stage to ONNX, checked with onnxruntime.

    :func:`export_checkpoint` with one ``.onnx`` path (see there for the arguments).

    Raises:
        ConfigError: ``path_onnx`` does not end with ``.onnx``.
    """
    if Path(path_onnx).suffix != ".onnx":
        raise ConfigError(f"Expected path_onnx to end with '.onnx', but got {str(path_onnx)!r}.")
    (result,) = export_checkpoint(
        checkpoint_path,
        path_onnx,
        output_names=output_names,
        format="onnx",
        named_inputs=named_inputs,
        brick_collection=brick_collection,
        stage=stage,
        dynamic_batch_size=dynamic_batch_size,
        trusted_class_prefixes=trusted_class_prefixes,
        verify=verify,
    )
    return result


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
