"""``export_bricks``: one stage's pruned graph as a checked artefact (ONNX or ``.pt2``) with its manifest."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

import torch
from torch import nn

from torchbricks_lightning.core.atomic_files import check_output_path
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export.formats import ExportFormat, format_of, load_runner, write_artefact
from torchbricks_lightning.core.export.manifest import (
    MANIFEST_VERSION,
    checkpoint_record,
    class_names_of,
    file_sha256,
    manifest_path,
    metadata_of,
    preprocessing_of,
    versions,
)
from torchbricks_lightning.core.export.options import ExportOptionFields, ExportOptions, with_overrides
from torchbricks_lightning.core.export.program import export_program
from torchbricks_lightning.core.export.publishing import publishing
from torchbricks_lightning.core.export.selection import ExportGraph, select_export_graph
from torchbricks_lightning.core.export.shapes import dynamic_dims, second_shape_inputs
from torchbricks_lightning.core.export.verify import (
    Tolerance,
    as_float32,
    compare_outputs,
    default_tolerance,
    raise_on_failures,
    root_cause,
)
from torchbricks_lightning.core.missing_inputs import check_input_names
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, ExportError
from torchbricks_lightning.random_state import preserved_random_state

__all__ = ["ExportResult", "export_bricks"]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how closely the artefact matched eager PyTorch.

    Attributes:
        path: the artefact.
        input_names: its inputs (data names), in call order: only those its outputs need.
        output_names: its outputs (data names, nested names such as ``head0/logits`` kept), in order.
        max_abs_diff: the largest absolute difference per output between the artefact and eager PyTorch, over
            every checked shape (for integer outputs, the number of differing values); empty when not checked. For a
            float16 artefact, the floating outputs' drift from the float32 model (``manifest["verification"]
            ["reference"]`` says which).
        format: ``"onnx"`` or ``"pt2"``.
        dtype: the precision the artefact computes in.
        manifest_path: the JSON manifest beside the artefact.
        manifest: the manifest's content.
    """

    path: Path
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    format: str = "onnx"
    dtype: str = "float32"
    manifest_path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in was_training.items():
            m.training = training


def _example_tensors(
    graph: ExportGraph, named_inputs: Mapping[str, Any], inputs_from: str | None
) -> dict[str, torch.Tensor]:
    if not isinstance(named_inputs, Mapping):
        raise BrickDefinitionError(
            f"Expected named_inputs to be a dict of named example inputs, e.g. {{'raw': tensor}}, but got "
            f"{type(named_inputs).__name__}. Stage {graph.stage.value!r} needs {graph.input_names}."
        )
    if inputs_from is None:
        graph.collection.check_input_names(graph.stage, named_inputs.keys())
    else:
        _check_inputs_from(graph, named_inputs, inputs_from)
    not_tensors = [name for name in graph.input_names if not isinstance(named_inputs[name], torch.Tensor)]
    if not_tensors:
        raise BrickDefinitionError(f"Exported inputs must be tensors, but {not_tensors} in named_inputs are not.")
    return {name: named_inputs[name] for name in graph.input_names}


def _check_inputs_from(graph: ExportGraph, named_inputs: Mapping[str, Any], inputs_from: str) -> None:
    """Raise if the pruned graph needs more than inputs the caller did not give, saying where they came from."""
    collection = graph.collection
    missing = [name for name in collection.input_names(graph.stage) if name not in named_inputs]
    if not missing:
        return
    enough = [other.value for other in Stage if set(collection.input_names(other)) <= set(named_inputs)]
    check_input_names(
        collection.plan(graph.stage),
        named_inputs,
        given=f"No named_inputs were passed, so {inputs_from} were used",
        hint=(
            f"Pass named_inputs holding {missing} as well, or export a stage that needs only those inputs: "
            f"{enough} (e.g. stage='export', or --stage export on the command line)."
        ),
    )


def _prepare_inputs(
    tensors: Mapping[str, torch.Tensor], dtype: torch.dtype, dynamic_batch_size: bool
) -> dict[str, torch.Tensor]:
    prepared = {}
    for name, tensor in tensors.items():
        value = tensor.detach()
        if value.is_floating_point():
            value = value.to(dtype)
        if dynamic_batch_size and value.ndim and value.shape[0] == 1:
            value = torch.cat([value, value])  # torch.export makes a size-1 dimension static
        prepared[name] = value
    return prepared


def _tensor_outputs(graph: ExportGraph, outputs: Mapping[str, Any], requested: bool) -> list[str]:
    not_tensors = {name: type(outputs[name]).__name__ for name in graph.output_names}
    not_tensors = {name: kind for name, kind in not_tensors.items() if not isinstance(outputs[name], torch.Tensor)}
    if not_tensors and requested:
        raise ExportError(
            f"Outputs {not_tensors} of stage {graph.stage.value!r} are not tensors, so they cannot be exported. "
            "Leave them out of output_names."
        )
    return [name for name in graph.output_names if name not in not_tensors]


class _StageAsTensors(nn.Module):
    """Runs one stage of a collection with tensors in and a tuple of tensors out, as an artefact does."""

    def __init__(
        self, collection: BrickCollection, stage: Stage, input_names: Sequence[str], output_names: Sequence[str]
    ):
        super().__init__()
        self.collection = collection
        self.stage = stage
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named_outputs = self.collection(dict(zip(self.input_names, tensors, strict=True)), self.stage)
        return tuple(named_outputs[name] for name in self.output_names)


def export_bricks(
    path: str | os.PathLike[str],
    brick_collection: BrickCollection,
    named_inputs: Mapping[str, Any],
    options: ExportOptions | None = None,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_sha256: str | None = None,
    export_kwargs: Mapping[str, Any] | None = None,
    inputs_from: str | None = None,
    **overrides: Unpack[ExportOptionFields],
) -> ExportResult:
    """Export the bricks that the outputs need in the options' stage as a checked artefact, with a JSON manifest.

    The graph is pruned to the outputs (default: the stage's terminal outputs, the values no alive brick reads), so
    bricks they do not need are not run and inputs they do not need are not inputs. ``torch.export`` traces it once;
    the program is written as ONNX (``.onnx``, run in onnxruntime) or as an ``ExportedProgram`` (``.pt2``, run after
    ``torch.export.load``). Before the artefact is moved into place it is loaded back and compared with eager
    PyTorch at the example inputs and, when a dimension is dynamic, at a second shape (one more sample, twice the
    spatial size). A failed export leaves nothing behind and keeps an earlier file. The manifest
    (``model.onnx.json``, see :mod:`~torchbricks_lightning.core.export.manifest`) goes into place before the
    artefact, so that a reader (:func:`~torchbricks_lightning.core.export.check_artefact`) never takes a mismatched
    pair (see :mod:`~torchbricks_lightning.core.export.publishing`).
    The collection runs in eval mode and no random generator moves.

    Args:
        path: the artefact to write: ``.onnx`` or ``.pt2``.
        brick_collection: the bricks.
        named_inputs: example inputs, e.g. ``{'raw': batch}`` (more names, such as targets, may be given).
        options: the outputs, format, dtype, dynamic dimensions, opset and check; default: ``ExportOptions()``
            (see :class:`~torchbricks_lightning.core.export.ExportOptions` for each field and its default).
        checkpoint_path: the checkpoint the weights came from, recorded with its SHA-256 in the manifest.
        checkpoint_sha256: the SHA-256 of the bytes the weights were loaded from; default: that of the file at
            ``checkpoint_path``, read before the export starts (pass it when the file may change meanwhile).
        export_kwargs: more arguments for ``torch.onnx.export``.
        inputs_from: where ``named_inputs`` came from when the caller did not give them (e.g. "the checkpoint's
            example inputs"); a missing input's message then says so.
        **overrides: fields of the options to replace, e.g. ``output_names=[...]`` or ``dynamic_spatial=True``.

    Returns:
        An :class:`ExportResult`.

    Raises:
        BrickDefinitionError: ``brick_collection`` is not a collection, or ``named_inputs`` not a dict of tensors.
        ConfigError: an unknown option or output name, a bad option value, a suffix that does not fit the format,
            or a NUL character in the path.
        MissingInputError: ``named_inputs`` lacks a name the pruned graph needs.
        ExportError: a loss or metric brick would be exported unasked, the output path cannot be written, tracing
            or writing failed, or the artefact disagrees with eager PyTorch.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickTrainable
        >>> collection = BrickCollection({
        ...     "backbone": BrickTrainable(nn.Linear(4, 4), input_names=["raw"], output_names=["features"]),
        ...     "head0": BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits0"]),
        ...     "head1": BrickTrainable(nn.Linear(4, 3), input_names=["features"], output_names=["logits1"]),
        ... })
        >>> result = export_bricks(Path(tempfile.mkdtemp()) / "head1.pt2", collection, {"raw": torch.rand(2, 4)},
        ...                        output_names=["logits1"])
        >>> result.format, result.input_names, result.output_names, result.manifest["outputs"][0]["shape"]
        ('pt2', ['raw'], ['logits1'], ['batch', 3])
    """
    if not isinstance(brick_collection, BrickCollection):
        raise BrickDefinitionError(
            f"Expected brick_collection to be a BrickCollection, but got {type(brick_collection).__name__}."
        )
    chosen_options = with_overrides(options, overrides, where="export_bricks")
    parsed_stage = chosen_options.stage
    target = Path(path)
    artefact_format = format_of(target, chosen_options.format)
    precision = chosen_options.dtype
    dtype = chosen_options.torch_dtype
    dynamic_batch_size = chosen_options.dynamic_batch_size
    if chosen_options.opset is not None and artefact_format != "onnx":
        raise ConfigError(f"opset applies to ONNX exports only, but {str(target)!r} is a {artefact_format} export.")
    output_names = chosen_options.output_names
    graph = select_export_graph(brick_collection, parsed_stage, output_names)
    examples = _example_tensors(graph, named_inputs, inputs_from)
    check_output_path(target)
    check_output_path(manifest_path(target), what="manifest")
    checkpoint = checkpoint_record(checkpoint_path, checkpoint_sha256)
    tolerance = default_tolerance(dtype)
    atol, rtol = chosen_options.atol, chosen_options.rtol
    tolerance = Tolerance(tolerance.atol if atol is None else atol, tolerance.rtol if rtol is None else rtol)
    verify = chosen_options.verify

    with _eval_mode(brick_collection), torch.no_grad(), preserved_random_state():
        model = graph.collection
        if precision != "float32":
            model = copy.deepcopy(model).to(dtype)
        inputs = _prepare_inputs(examples, dtype, dynamic_batch_size)
        eager = model(inputs, parsed_stage)
        chosen = _tensor_outputs(graph, eager, requested=output_names is not None)
        if chosen != graph.output_names:
            graph = select_export_graph(brick_collection, parsed_stage, chosen)
            model = graph.collection
            if precision != "float32":
                model = copy.deepcopy(model).to(dtype)
            inputs = {name: inputs[name] for name in graph.input_names}
        dims = dynamic_dims(inputs, batch=dynamic_batch_size, spatial=chosen_options.dynamic_spatial)
        wrapper = _StageAsTensors(model, parsed_stage, graph.input_names, graph.output_names).eval()
        traced = export_program(wrapper, inputs, dims, graph.output_names, parsed_stage.value)
        shapes = [inputs]
        if any(dims.values()):
            shapes.append(second_shape_inputs(inputs, dims))
        expected = [[eager[name] for name in graph.output_names]]
        expected += [_eager_at(model, parsed_stage, other, graph.output_names) for other in shapes[1:]]
        full_precision = None  # a float16 artefact's floating outputs are checked against the float32 model
        if verify and precision != "float32":
            # On the inputs as given (the artefact gets them rounded to float16: that rounding is part of the drift).
            given = {name: examples[name] for name in graph.input_names}
            full_precision = [
                _eager_at(graph.collection, parsed_stage, each, graph.output_names)
                for each in [_prepare_inputs(given, torch.float32, dynamic_batch_size), *map(as_float32, shapes[1:])]
            ]

        with publishing(target) as publication:
            format_info = write_artefact(
                publication.temporary,
                artefact_format,
                traced.program,
                list(inputs.values()),
                graph.input_names,
                graph.output_names,
                traced.symbols,
                chosen_options.opset,
                export_kwargs or {},
            )
            differences: dict[str, float] = {}
            if verify:
                differences = _check(
                    publication.temporary, artefact_format, graph, shapes, expected, tolerance, full_precision
                )
            manifest: dict[str, Any] = {
                "manifest_version": MANIFEST_VERSION,
                "artefact": {
                    "file": target.name,
                    "format": artefact_format,
                    "sha256": file_sha256(publication.temporary),
                    "bytes": publication.temporary.stat().st_size,
                }
                | format_info,
                "stage": parsed_stage.value,
                "dtype": precision,
                "inputs": traced.inputs,
                "outputs": traced.outputs,
                "bricks": [node.path for node in graph.nodes],
                "preprocessing": preprocessing_of(graph.nodes, dict(graph.collection.named_bricks())),
                "class_names": class_names_of(graph.nodes, dict(graph.collection.named_bricks())),
                "checkpoint": checkpoint,
                "verification": None
                if not verify
                else {
                    "runtime": "onnxruntime" if artefact_format == "onnx" else "torch.export.load",
                    "atol": tolerance.atol,
                    "rtol": tolerance.rtol,
                    "input_shapes": [{name: list(t.shape) for name, t in each.items()} for each in shapes],
                    "max_abs_diff": differences,
                    "reference": "eager PyTorch" if full_precision is None else "the float32 model",
                },
                "versions": versions(artefact_format),
            }
            metadata = metadata_of(graph.nodes, dict(graph.collection.named_bricks()))
            if metadata:  # only when a brick records some: the manifests of other models keep their fields
                manifest = _with_metadata(manifest, metadata)
            publication.announce(manifest)
    return ExportResult(
        path=target,
        input_names=list(graph.input_names),
        output_names=list(graph.output_names),
        max_abs_diff=differences,
        format=artefact_format,
        dtype=precision,
        manifest_path=manifest_path(target),
        manifest=manifest,
    )


def _with_metadata(manifest: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with ``metadata`` placed after ``class_names``."""
    keys = list(manifest)
    at = keys.index("class_names") + 1
    return {key: manifest[key] for key in keys[:at]} | {"metadata": metadata} | {k: manifest[k] for k in keys[at:]}


def _eager_at(
    model: BrickCollection, stage: Stage, inputs: Mapping[str, torch.Tensor], output_names: Sequence[str]
) -> list[torch.Tensor]:
    """Eager outputs at the second shape; a model that fails there cannot have those dimensions dynamic."""
    try:
        outputs = model(inputs, stage)
    except Exception as err:
        shape = ", ".join(f"{name}{tuple(t.shape)}" for name, t in inputs.items())
        raise ExportError(
            f"The model fails in eager PyTorch at input shape {shape}, so those dimensions cannot be dynamic: "
            f"{root_cause(err)} Export with dynamic_spatial=False (or dynamic_batch_size=False). Nothing was written."
        ) from err
    return [outputs[name] for name in output_names]


def _check(
    path: Path,
    artefact_format: ExportFormat,
    graph: ExportGraph,
    shapes: Sequence[Mapping[str, torch.Tensor]],
    expected: Sequence[Sequence[torch.Tensor]],
    tolerance: Tolerance,
    full_precision: Sequence[Sequence[torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Run the written artefact at every shape and compare it with eager PyTorch; raise on a disagreement."""
    runtime = "onnxruntime" if artefact_format == "onnx" else "torch.export.load"
    run = load_runner(path, artefact_format, graph.input_names)
    worst: dict[str, float] = {}
    wide: Sequence[Sequence[torch.Tensor] | None] = full_precision or [None] * len(shapes)
    for inputs, wanted, full in zip(shapes, expected, wide, strict=True):
        shape = ", ".join(f"{name}{tuple(t.shape)}" for name, t in inputs.items())
        try:
            actual = run(list(inputs.values()))
        except Exception as err:
            raise ExportError(
                f"The exported model fails in {runtime} at input shape {shape}: {err}. The artefact was not written. "
                "A brick "
                "probably depends on a size made dynamic (e.g. a reshape to a fixed batch size); export with "
                "dynamic_batch_size=False or dynamic_spatial=False."
            ) from err
        differences, failures = compare_outputs(graph.output_names, actual, wanted, tolerance, full)
        reference = "eager PyTorch" if full is None else "the float32 model"
        raise_on_failures(failures, runtime=runtime, shape=shape, reference=reference)
        for name, value in differences.items():
            worst[name] = max(worst.get(name, 0.0), value)
    return worst
