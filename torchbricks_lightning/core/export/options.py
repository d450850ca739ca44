"""``ExportOptions``: what an export writes, with the one set of defaults every export entry point uses.

:func:`~torchbricks_lightning.core.export.export_bricks`, ``export_bricks_as_onnx``, ``export_checkpoint``,
``OnnxExportCallback`` and the ``export`` command all build an ``ExportOptions`` from their arguments; an argument
left out takes the default documented here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, TypedDict, cast

import torch

from torchbricks_lightning.core.export.formats import FORMATS, ExportFormat
from torchbricks_lightning.core.stages import Stage, StageLike, parse_stage
from torchbricks_lightning.errors import ConfigError, did_you_mean

__all__ = ["DTYPES", "ExportDtype", "ExportOptionFields", "ExportOptions", "with_overrides"]

ExportDtype = Literal["float32", "float16"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
"""The precisions an artefact can compute in."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export: which outputs, in which format and precision, which dimensions may vary, and the check.

    Every field is checked when the options are built, so a mistake fails before anything is traced or read.

    Attributes:
        stage: the stage to export (default ``Stage.EXPORT``, where loss and metric bricks are dead by default); a
            stage name such as ``"inference"`` is accepted.
        output_names: the outputs, in order (default ``None``: the stage's terminal outputs, the values no alive
            brick reads; with ``{head}`` in an artefact path, each head's).
        format: ``"onnx"`` or ``"pt2"`` (default ``None``: from the artefact's suffix).
        dtype: ``"float32"`` (default) or ``"float16"`` (weights and floating inputs in half precision, checked
            against the eager model in half precision); a ``torch.dtype`` is accepted.
        dynamic_batch_size: the first dimension of every input may vary (default ``True``).
        dynamic_spatial: the dimensions after batch and channels of floating inputs may vary, e.g. image height and
            width (default ``False``).
        opset: the ONNX opset (default ``None``: the exporter's). A ``.pt2`` artefact has none: among several
            artefacts the opset applies to the ONNX ones, and alone a ``.pt2`` artefact refuses it.
        verify: load each artefact back (onnxruntime for ONNX, ``torch.export.load`` for ``.pt2``) and compare it
            with eager PyTorch before moving it into place (default ``True``).
        atol: absolute tolerance of the check (default ``None``: by dtype, 1e-4 for float32 and 1e-2 for float16).
        rtol: relative tolerance of the check (default ``None``: by dtype, 1e-3 for float32 and 1e-2 for float16).

    Raises:
        ConfigError: a field of the wrong type or out of range (the message names the field and the fix).
        UnknownStageError: an unknown stage name.

    Example:
        >>> options = ExportOptions(output_names=["digit/probabilities"], dtype=torch.float16)
        >>> options.stage, options.output_names, options.dtype, options.dynamic_batch_size
        (<Stage.EXPORT: 'export'>, ('digit/probabilities',), 'float16', True)
        >>> ExportOptions(opset=0)
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: Expected `opset` to be a positive int or None, but got 0. ...
    """

    stage: Stage = Stage.EXPORT
    output_names: Sequence[str] | None = None
    format: ExportFormat | None = None
    dtype: ExportDtype = "float32"
    dynamic_batch_size: bool = True
    dynamic_spatial: bool = False
    opset: int | None = None
    verify: bool = True
    atol: float | None = None
    rtol: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", parse_stage(self.stage, where="ExportOptions"))
        object.__setattr__(self, "output_names", _output_names(self.output_names))
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"Unknown export format {self.format!r}; expected one of {list(FORMATS)}.")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        for name in ("dynamic_batch_size", "dynamic_spatial", "verify"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"Expected `{name}` to be a bool, but got {getattr(self, name)!r}.")
        if self.opset is not None and (isinstance(self.opset, bool) or not isinstance(self.opset, int)):
            raise ConfigError(f"Expected `opset` to be a positive int or None, but got {self.opset!r}.")
        if self.opset is not None and self.opset < 1:
            raise ConfigError(
                f"Expected `opset` to be a positive int or None, but got {self.opset}. Leave it out for the "
                "exporter's default."
            )
        if self.opset is not None and self.format == "pt2":
            raise ConfigError("opset applies to ONNX exports only, but format is 'pt2'. Leave opset out.")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"Expected `{name}` to be a non-negative number or None (the default by dtype), but got {value!r}."
                )
            object.__setattr__(self, name, float(value))

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a ``torch.dtype``."""
        return DTYPES[self.dtype]


class ExportOptionFields(TypedDict, total=False):
    """The fields of :class:`ExportOptions`, as keyword arguments that override them (see :func:`with_overrides`)."""

    stage: StageLike
    output_names: Sequence[str] | None
    format: ExportFormat | None
    dtype: str | torch.dtype
    dynamic_batch_size: bool
    dynamic_spatial: bool
    opset: int | None
    verify: bool
    atol: float | None
    rtol: float | None


def with_overrides(options: ExportOptions | None, overrides: Mapping[str, Any], *, where: str) -> ExportOptions:
    """``options`` (default: ``ExportOptions()``) with the fields in ``overrides`` replaced, checked again.

    Raises:
        ConfigError: a name in ``overrides`` is not an option (with a close match), or a value is invalid.

    Example:
        >>> with_overrides(ExportOptions(dtype="float16"), {"dynamic_spatial": True}, where="f").dynamic_spatial
        True
        >>> with_overrides(None, {"dynamic_batch": False}, where="export_bricks")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: export_bricks got an unknown option 'dynamic_batch'. Did you mean ...
    """
    known = [field.name for field in fields(ExportOptions)]
    unknown = [name for name in overrides if name not in known]
    if unknown:
        raise ConfigError(
            f"{where} got an unknown option {unknown[0]!r}.{did_you_mean(unknown[0], known)} The options are {known}."
        )
    fields_given = dict(overrides)
    if "stage" in fields_given:  # parsed here, so that an unknown stage names the function it was passed to
        fields_given["stage"] = parse_stage(fields_given["stage"], where=where)
    return replace(options if options is not None else ExportOptions(), **fields_given)


def _output_names(names: Sequence[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"Expected `output_names` to be a list of output names or None, but got {names!r}."
            + (f" Wrap it in a list: [{names!r}]." if isinstance(names, str) else "")
        )
    return tuple(names)


def _dtype_name(dtype: str | torch.dtype) -> ExportDtype:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"Expected dtype to be one of {list(DTYPES)}, but got {dtype!r}.")
    return cast(ExportDtype, name)
