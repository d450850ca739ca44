"""The two artefact formats: write an ``ExportedProgram`` as ONNX or as ``.pt2``, and load each back to run it.

Both start from one ``torch.export`` program. ONNX goes through ``torch.onnx.export`` (the torch.export-based
exporter) and runs in onnxruntime; ``.pt2`` is ``torch.export.save`` and runs after ``torch.export.load``.
TorchScript is not offered: ``torch.export`` supersedes it.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from torchbricks_lightning.errors import ConfigError, ExportError

__all__ = ["FORMATS", "ExportFormat", "format_of", "load_runner", "rename_symbols", "write_artefact"]

ExportFormat = Literal["onnx", "pt2"]
FORMATS: dict[str, str] = {"onnx": ".onnx", "pt2": ".pt2"}
"""Each format and the file suffix it needs."""

Runner = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]
"""Runs a loaded artefact on positional input tensors and returns its outputs in order."""

_SYMBOL = re.compile(r"\b[su]\d+\b")


def format_of(path: Path, format: str | None) -> ExportFormat:
    """The format of an artefact at ``path``: ``format`` when given (it must fit the suffix), else the suffix's.

    Raises:
        ConfigError: unknown format, or a suffix that is not the format's.

    Example:
        >>> format_of(Path("model.pt2"), None)
        'pt2'
        >>> format_of(Path("model.onnx"), "pt2")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: Format 'pt2' writes '.pt2' files, but the path is 'model.onnx'. ...
    """
    if format is not None and format not in FORMATS:
        raise ConfigError(f"Unknown export format {format!r}; expected one of {list(FORMATS)}.")
    if format is None:
        for name, suffix in FORMATS.items():
            if path.suffix == suffix:
                return name  # type: ignore[return-value]
        raise ConfigError(
            f"Cannot tell the export format of {str(path)!r}: the path must end with "
            f"{' or '.join(repr(s) for s in FORMATS.values())}."
        )
    if path.suffix != FORMATS[format]:
        raise ConfigError(
            f"Format {format!r} writes {FORMATS[format]!r} files, but the path is {str(path)!r}. "
            f"Name the file '{path.stem}{FORMATS[format]}'."
        )
    return format  # type: ignore[return-value]


def rename_symbols(text: str, names: Mapping[str, str]) -> str:
    """Replace torch.export's size symbols (``s31``) in ``text`` by their names (``batch``).

    Example:
        >>> rename_symbols("((s18 - 1)//2) + 1", {"s18": "height"})
        '((height - 1)//2) + 1'
    """
    return _SYMBOL.sub(lambda match: names.get(match.group(0), match.group(0)), text)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The ONNX exporter prints its progress and warns about deprecations; keep the user's console for errors."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        yield


def write_artefact(
    path: Path,
    format: ExportFormat,
    program: torch.export.ExportedProgram,
    tensors: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    symbols: Mapping[str, str],
    opset: int | None,
    export_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """Write ``program`` to ``path`` in ``format``; return what the manifest records of the format (the opset).

    Raises:
        ExportError: the ONNX exporter failed, or wrote another opset than ``opset``.
    """
    if format == "pt2":
        torch.export.save(program, str(path))
        return {}
    kwargs: dict[str, Any] = {"external_data": False, "verbose": False, **export_kwargs}
    if opset is not None:
        kwargs["opset_version"] = opset
    with _quiet():
        torch.onnx.export(
            program, tuple(tensors), str(path), input_names=list(input_names), output_names=list(output_names), **kwargs
        )
    import onnx  # imported here: only ONNX exports need it

    model = onnx.load(str(path))
    written = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise ExportError(
            f"opset {opset} was asked for, but torch's ONNX exporter wrote opset {written} (it cannot convert this "
            f"model to {opset}). Use opset {written} or newer."
        )
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = rename_symbols(dim.dim_param, symbols)
    onnx.save(model, str(path))
    return {"opset": written}


def load_runner(path: Path, format: ExportFormat, input_names: Sequence[str]) -> Runner:
    """Load the artefact at ``path`` the way a user would (onnxruntime, ``torch.export.load``) and return a runner."""
    if format == "pt2":
        module = torch.export.load(str(path)).module()

        def run_pt2(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            with torch.no_grad():
                outputs = module(*tensors)
            return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]

        return run_pt2

    import onnxruntime  # imported here: only ONNX exports need it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_onnx(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feeds = {name: tensor.detach().cpu().numpy() for name, tensor in zip(input_names, tensors, strict=True)}
        return [torch.from_numpy(value) for value in session.run(None, feeds)]

    return run_onnx
