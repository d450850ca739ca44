"""Several artefacts from one model: what each one holds, and ``{head}`` paths that give one artefact per head."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export.formats import format_of
from torchbricks_lightning.core.export.options import ExportOptions
from torchbricks_lightning.core.export.selection import select_export_graph
from torchbricks_lightning.core.outputs import head_output_names
from torchbricks_lightning.core.stages import StageLike, parse_stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError

__all__ = ["HEAD_PLACEHOLDER", "Artefacts", "ExportSpec", "artefact_specs", "expand_specs", "spec_options"]

HEAD_PLACEHOLDER = "{head}"
"""In an artefact path, stands for each head's name: ``exports/{head}.onnx`` writes one artefact per head."""


@dataclass(frozen=True)
class ExportSpec:
    """One artefact to write (or, with ``{head}`` in its path, one per head).

    Attributes:
        path: the file, ``.onnx`` or ``.pt2``; relative paths are relative to the export folder where there is one
            (the callback's). ``{head}`` in it gives one artefact per head, holding that head's terminal outputs.
        output_names: the outputs; default: the options' (see
            :class:`~torchbricks_lightning.core.export.ExportOptions`; with ``{head}``: the head's).
        format: ``"onnx"`` or ``"pt2"``; default: the options' (by default, from the suffix).
        dtype: ``"float32"`` or ``"float16"``; default: the options' (by default, ``"float32"``).

    Example:
        >>> ExportSpec("digit.onnx", output_names=["digit/probabilities"], dtype="float16")
        ExportSpec(path='digit.onnx', output_names=['digit/probabilities'], format=None, dtype='float16')
    """

    path: str
    output_names: list[str] | None = None
    format: Literal["onnx", "pt2"] | None = None
    dtype: Literal["float32", "float16"] | None = None


Artefacts = str | os.PathLike[str] | ExportSpec | Sequence[ExportSpec]
"""What to write: one path, one :class:`ExportSpec`, or several."""


def artefact_specs(artefacts: Artefacts, options: ExportOptions) -> list[ExportSpec]:
    """``artefacts`` as a list of :class:`ExportSpec`, each path checked against its format (no model needed).

    Raises:
        BrickDefinitionError: ``artefacts`` is neither a path nor ``ExportSpec`` items.
        ConfigError: a path that does not end with its format's suffix or holds a NUL character, or ``{head}`` in a
            path together with ``options.output_names``.

    Example:
        >>> artefact_specs("exports/{head}.onnx", ExportOptions())
        [ExportSpec(path='exports/{head}.onnx', output_names=None, format=None, dtype=None)]
        >>> artefact_specs("model.pt", ExportOptions())
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: Cannot tell the export format of 'model.pt': the path must end ...
    """
    if isinstance(artefacts, (str, os.PathLike)):
        specs = [ExportSpec(os.fspath(artefacts))]
    else:
        specs = [artefacts] if isinstance(artefacts, ExportSpec) else list(artefacts)
        if not specs or not all(isinstance(spec, ExportSpec) for spec in specs):
            raise BrickDefinitionError(
                f"Expected artefacts to be a path, an ExportSpec or a non-empty list of ExportSpec, but got "
                f"{artefacts!r}."
            )
    for spec in specs:
        if "\0" in spec.path:  # refused before anything is read or traced, rather than by the first write
            raise ConfigError(
                f"Artefact path {spec.path!r} holds a NUL character ('\\x00'), which no file name can hold; remove it."
            )
        format_of(Path(spec.path.replace(HEAD_PLACEHOLDER, "head")), spec.format or options.format)
        if HEAD_PLACEHOLDER in spec.path and spec.output_names is None and options.output_names is not None:
            raise ConfigError(
                f"Artefact path {spec.path!r} writes one artefact per head, each with its head's outputs, so it "
                f"cannot take output_names {list(options.output_names)} too. Drop {HEAD_PLACEHOLDER!r} or "
                "output_names."
            )
    return specs


def spec_options(spec: ExportSpec, options: ExportOptions, *, several: bool) -> ExportOptions:
    """The options of one artefact: ``options`` with what ``spec`` sets, and no opset for a ``.pt2`` among several.

    Example:
        >>> spec_options(ExportSpec("a.pt2", dtype="float16"), ExportOptions(opset=18), several=True)
        ExportOptions(stage=<Stage.EXPORT: 'export'>, output_names=None, format='pt2', dtype='float16', ...)
    """
    artefact_format = format_of(Path(spec.path), spec.format or options.format)
    return replace(
        options,
        output_names=options.output_names if spec.output_names is None else spec.output_names,
        format=artefact_format,
        dtype=options.dtype if spec.dtype is None else spec.dtype,
        opset=None if several and artefact_format != "onnx" else options.opset,
    )


def expand_specs(
    specs: Sequence[ExportSpec],
    collection: BrickCollection,
    stage: StageLike,
    folder: str | os.PathLike[str] | None = None,
) -> list[ExportSpec]:
    """Resolve ``{head}`` paths into one spec per head and relative paths against ``folder``; refuse clashes.

    A head is a top-level member of the collection that produces terminal outputs of ``stage`` (see
    :func:`~torchbricks_lightning.core.outputs.head_output_names`).

    Raises:
        BrickDefinitionError: an item is not an ``ExportSpec``.
        ExportError: a loss or metric brick is alive in ``stage`` (as for an export of the default outputs).
        ConfigError: ``{head}`` together with ``output_names``, another ``{...}`` in a path, or two artefacts with
            the same path.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickTrainable
        >>> collection = BrickCollection({
        ...     "backbone": BrickTrainable(nn.Identity(), input_names=["raw"], output_names=["features"]),
        ...     "digit": {"classify": BrickTrainable(nn.Linear(4, 10), ["features"], ["./probabilities"])},
        ...     "parity": {"classify": BrickTrainable(nn.Linear(4, 2), ["features"], ["./probabilities"])},
        ... })
        >>> [(spec.path, spec.output_names) for spec in expand_specs([ExportSpec("{head}.pt2")], collection, "export")]
        [('digit.pt2', ['digit/probabilities']), ('parity.pt2', ['parity/probabilities'])]
    """
    expanded: list[ExportSpec] = []
    for spec in specs:
        if not isinstance(spec, ExportSpec):
            raise BrickDefinitionError(f"Expected export specs to be ExportSpec, but got {type(spec).__name__}.")
        path = spec.path if folder is None or Path(spec.path).is_absolute() else str(Path(folder) / spec.path)
        without = path.replace(HEAD_PLACEHOLDER, "")
        if "{" in without or "}" in without:
            raise ConfigError(
                f"Artefact path {spec.path!r} holds a placeholder other than {HEAD_PLACEHOLDER!r}, the only one known."
            )
        if HEAD_PLACEHOLDER not in path:
            expanded.append(replace(spec, path=path))
            continue
        if spec.output_names is not None:
            raise ConfigError(
                f"Artefact path {spec.path!r} writes one artefact per head, each with its head's outputs, so it "
                f"cannot take output_names {spec.output_names} too. Drop {HEAD_PLACEHOLDER!r} or output_names."
            )
        parsed = parse_stage(stage, where="expand_specs")
        select_export_graph(collection, parsed, None)  # the default outputs, split by head: same checks
        heads = head_output_names(collection.plan(parsed))
        expanded += [
            replace(spec, path=path.replace(HEAD_PLACEHOLDER, head), output_names=names)
            for head, names in heads.items()
        ]
    paths = [spec.path for spec in expanded]
    repeated = sorted({path for path in paths if paths.count(path) > 1})
    if repeated:
        raise ConfigError(f"Several artefacts would be written to {repeated}; give each artefact its own path.")
    return expanded
