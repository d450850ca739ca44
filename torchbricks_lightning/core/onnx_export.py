"""Export the bricks alive in one stage to ONNX, and check the file with onnxruntime."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage, StageLike, parse_stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, ExportError, TorchBricksError

__all__ = ["OnnxExportResult", "export_bricks_as_onnx"]


@dataclass(frozen=True)
class OnnxExportResult:
    """What :func:`export_bricks_as_onnx` wrote and how closely onnxruntime matched eager PyTorch.

    Attributes:
        path: the ONNX file.
        input_names: the graph's inputs (the stage's data names).
        output_names: the graph's outputs (data names, nested names such as ``head0/logits`` kept).
        max_abs_diff: the largest absolute difference per output between onnxruntime and eager
            PyTorch, empty when the check was turned off.
    """

    path: Path
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)


class _StageAsTensors(nn.Module):
    """Runs one stage of a collection with tensors in and a tuple of tensors out, as ONNX needs."""

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


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in was_training.items():
            m.training = training


def export_bricks_as_onnx(
    path_onnx: str | os.PathLike[str],
    brick_collection: BrickCollection,
    named_inputs: Mapping[str, Any],
    dynamic_batch_size: bool = False,
    stage: StageLike = Stage.EXPORT,
    output_names: Sequence[str] | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    **export_kwargs: Any,
) -> OnnxExportResult:
    """Export the bricks alive in ``stage`` as an ONNX file whose inputs and outputs carry the data names.

    Only the bricks alive in ``stage`` are exported, so only the names that stage needs become inputs
    (``named_inputs`` may hold more, such as targets). The file is written atomically: it is exported to
    a temporary file beside ``path_onnx``, checked, and only then moved into place, so a failed export
    never leaves a broken file (and an earlier file at ``path_onnx`` is kept).

    Args:
        path_onnx: where to write the ``.onnx`` file (parent folders are created).
        brick_collection: the collection to export; it runs in eval mode for the export and is put back.
        named_inputs: example inputs, e.g. ``{'raw': batch}``.
        dynamic_batch_size: make the first dimension of every input and output dynamic.
        stage: the stage to export (default ``Stage.EXPORT``).
        output_names: the outputs to export; default: every tensor the stage produces.
        verify: run the file in onnxruntime on ``named_inputs`` and compare with eager PyTorch.
        atol: absolute tolerance of the check.
        rtol: relative tolerance of the check.
        **export_kwargs: passed on to ``torch.onnx.export`` (e.g. ``opset_version``).

    Returns:
        An :class:`OnnxExportResult` with the path, names and the max abs difference per output.

    Raises:
        BrickDefinitionError: ``brick_collection`` is not a collection, ``named_inputs`` is not a dict of tensors,
            ``path_onnx`` does not end with ``.onnx``, or ``output_names`` names something the stage does not produce.
        MissingInputError: ``named_inputs`` lacks a name the stage needs.
        ExportError: tracing or exporting failed, or onnxruntime disagrees with PyTorch beyond the tolerance.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
        >>> collection = BrickCollection({
        ...     "head": BrickTrainable(nn.Linear(4, 2), input_names=["raw"], output_names=["logits"]),
        ...     "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss"]),
        ... })
        >>> inputs = {"raw": torch.rand(3, 4), "targets": torch.tensor([0, 1, 1])}
        >>> result = export_bricks_as_onnx(Path(tempfile.mkdtemp()) / "model.onnx", collection, inputs,
        ...                                dynamic_batch_size=True)
        >>> result.input_names, result.output_names, result.max_abs_diff["logits"] < 1e-5
        (['raw'], ['logits'], True)
    """
    if not isinstance(brick_collection, BrickCollection):
        raise BrickDefinitionError(
            f"Expected brick_collection to be a BrickCollection, but got {type(brick_collection).__name__}."
        )
    parsed_stage = parse_stage(stage, where="export_bricks_as_onnx")
    path = Path(path_onnx)
    if path.suffix != ".onnx":
        raise ConfigError(f"Expected path_onnx to end with '.onnx', but got {str(path)!r}.")
    input_names = brick_collection.input_names(parsed_stage)
    if not isinstance(named_inputs, Mapping):
        raise BrickDefinitionError(
            f"Expected named_inputs to be a dict of named example inputs, e.g. {{'raw': tensor}}, but got "
            f"{type(named_inputs).__name__}. Stage {parsed_stage.value!r} needs {input_names}."
        )
    brick_collection.check_input_names(parsed_stage, named_inputs.keys())
    tensors = tuple(named_inputs[name] for name in input_names)
    not_tensors = [
        name for name, value in zip(input_names, tensors, strict=True) if not isinstance(value, torch.Tensor)
    ]
    if not_tensors:
        raise BrickDefinitionError(f"ONNX inputs must be tensors, but {not_tensors} in named_inputs are not.")

    with _eval_mode(brick_collection), torch.no_grad():
        eager = brick_collection(dict(zip(input_names, tensors, strict=True)), parsed_stage)
        produced = brick_collection.output_names(parsed_stage)
        if output_names is None:
            chosen = [name for name in produced if isinstance(eager.get(name), torch.Tensor)]
        else:
            chosen = list(output_names)
            unknown = [name for name in chosen if name not in produced]
            if unknown:
                raise ConfigError(
                    f"output_names {unknown} are not produced in stage {parsed_stage.value!r}; it produces {produced}."
                )
        if not chosen:
            raise ExportError(f"Stage {parsed_stage.value!r} produces no tensor to export (it produces {produced}).")
        wrapper = _StageAsTensors(brick_collection, parsed_stage, input_names, chosen).eval()
        kwargs: dict[str, Any] = {"dynamo": True, "external_data": False, "verbose": False, **export_kwargs}
        if dynamic_batch_size and kwargs.get("dynamo"):
            batch = torch.export.Dim("batch")
            kwargs.setdefault("dynamic_shapes", (tuple({0: batch} if t.ndim else {} for t in tensors),))
        elif dynamic_batch_size:
            kwargs.setdefault("dynamic_axes", {name: {0: "batch"} for name in [*input_names, *chosen]})

        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx.tmp", dir=path.parent)
        os.close(descriptor)
        temporary = Path(temporary_name)
        try:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", category=DeprecationWarning)
                    torch.onnx.export(
                        wrapper, tensors, str(temporary), input_names=input_names, output_names=chosen, **kwargs
                    )
            except TorchBricksError:
                raise
            except Exception as err:
                raise ExportError(
                    f"Could not export stage {parsed_stage.value!r} to ONNX: {_root_cause(err)} "
                    "Every brick alive in this stage must be traceable by torch.export; make bricks that are not "
                    f"(metrics, debugging, plotting) dead in {parsed_stage.value!r}. "
                    f"Nothing was written to {str(path)!r}."
                ) from err
            differences: dict[str, float] = {}
            if verify:
                expected = [eager[name] for name in chosen]
                differences = _check_with_onnxruntime(temporary, input_names, tensors, chosen, expected, atol, rtol)
                if dynamic_batch_size:
                    _check_batch_is_dynamic(temporary, input_names, tensors)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return OnnxExportResult(path=path, input_names=input_names, output_names=chosen, max_abs_diff=differences)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _root_cause(err: BaseException) -> str:
    """The innermost cause of ``err`` in one plain line, with the brick notes found along the chain."""
    notes: list[str] = []
    innermost = err
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        notes += [note for note in getattr(current, "__notes__", []) if note.startswith("While running brick")]
        innermost = current
        current = current.__cause__ or current.__context__
    text = _ANSI.sub("", str(innermost)).strip()
    first = text.splitlines()[0] if text else ""
    summary = f"{type(innermost).__name__}: {first}".rstrip(": ")
    return " ".join([summary.rstrip(".") + ".", *dict.fromkeys(notes)])


def _session(path: Path) -> Any:
    import onnxruntime  # imported here: only exporting needs it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_with_onnxruntime(
    path: Path,
    input_names: Sequence[str],
    tensors: Sequence[torch.Tensor],
    output_names: Sequence[str],
    expected: Sequence[torch.Tensor],
    atol: float,
    rtol: float,
) -> dict[str, float]:
    session = _session(path)
    feeds = {name: tensor.detach().cpu().numpy() for name, tensor in zip(input_names, tensors, strict=True)}
    actual = session.run(list(output_names), feeds)
    differences: dict[str, float] = {}
    failures: list[str] = []
    for name, got, want in zip(output_names, actual, expected, strict=True):
        reference = want.detach().cpu()
        result = torch.from_numpy(got).to(reference.dtype)
        if result.shape != reference.shape:
            failures.append(f"{name!r}: shape {tuple(result.shape)} in onnxruntime vs {tuple(reference.shape)} eager")
            continue
        if reference.is_floating_point():
            diff = (result - reference).abs()
            differences[name] = float(diff.max()) if diff.numel() else 0.0
            if not torch.all(diff <= atol + rtol * reference.abs()):
                failures.append(f"{name!r}: max abs diff {differences[name]:.3g} (atol={atol}, rtol={rtol})")
        else:
            differences[name] = float((result != reference).sum())
            if differences[name]:
                failures.append(f"{name!r}: {int(differences[name])} of {reference.numel()} values differ")
    if failures:
        raise ExportError(
            "The exported ONNX model disagrees with eager PyTorch: " + "; ".join(failures) + ". The file was not "
            "written. Pass verify=False to skip the check, or loosen atol/rtol if the difference is expected."
        )
    return differences


def _check_batch_is_dynamic(path: Path, input_names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    session = _session(path)
    doubled = {
        name: torch.cat([tensor, tensor]).detach().cpu().numpy() if tensor.ndim else tensor.detach().cpu().numpy()
        for name, tensor in zip(input_names, tensors, strict=True)
    }
    try:
        session.run(None, doubled)
    except Exception as err:
        raise ExportError(
            f"dynamic_batch_size=True, but the exported model fails on a batch of twice the example's size: {err}. "
            "A brick probably depends on the batch size (e.g. a reshape with a fixed first dimension)."
        ) from err
