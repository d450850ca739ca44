"""``export_artefacts``: one or several artefacts of one model, each with its manifest; the path every entry point
(``export_checkpoint``, ``OnnxExportCallback``, the ``export`` command) takes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export.exporting import ExportResult, export_bricks
from torchbricks_lightning.core.export.manifest import checkpoint_record
from torchbricks_lightning.core.export.options import ExportOptions
from torchbricks_lightning.core.export.selection import select_export_graph
from torchbricks_lightning.core.export.specs import Artefacts, artefact_specs, expand_specs, spec_options

__all__ = ["PlannedArtefact", "export_artefacts", "plan_artefacts"]


@dataclass(frozen=True)
class PlannedArtefact:
    """One artefact to write: its path and its own options (what its :class:`ExportSpec` set, over the shared ones)."""

    path: Path
    options: ExportOptions


def plan_artefacts(
    artefacts: Artefacts,
    brick_collection: BrickCollection,
    options: ExportOptions | None = None,
    *,
    folder: str | os.PathLike[str] | None = None,
) -> list[PlannedArtefact]:
    """The artefacts that :func:`export_artefacts` would write, each checked against the model; nothing is traced.

    ``{head}`` paths become one artefact per head and relative paths are relative to ``folder`` (when given).

    Raises:
        ConfigError: a bad path or option, an unknown output, or two artefacts with the same path.
        ExportError: a loss or metric brick would be exported unasked.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickTrainable
        >>> collection = BrickCollection({
        ...     "age": BrickTrainable(nn.Linear(4, 1), input_names=["raw"], output_names=["years"]),
        ...     "sex": BrickTrainable(nn.Linear(4, 2), input_names=["raw"], output_names=["logits"]),
        ... })
        >>> [(each.path.name, each.options.output_names, each.options.dtype)
        ...  for each in plan_artefacts("{head}.pt2", collection, ExportOptions(dtype="float16"))]
        [('age.pt2', ('years',), 'float16'), ('sex.pt2', ('logits',), 'float16')]
    """
    chosen = options if options is not None else ExportOptions()
    specs = expand_specs(artefact_specs(artefacts, chosen), brick_collection, chosen.stage, folder=folder)
    planned = [PlannedArtefact(Path(spec.path), spec_options(spec, chosen, several=len(specs) > 1)) for spec in specs]
    for each in planned:  # an unknown output or a loss in the stage fails before the first artefact is written
        select_export_graph(brick_collection, each.options.stage, each.options.output_names)
    return planned


def export_artefacts(
    artefacts: Artefacts,
    brick_collection: BrickCollection,
    named_inputs: Mapping[str, Any],
    options: ExportOptions | None = None,
    *,
    folder: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_sha256: str | None = None,
    inputs_from: str | None = None,
) -> list[ExportResult]:
    """Write each artefact of ``artefacts`` with :func:`~torchbricks_lightning.core.export.export_bricks`, in order.

    Args:
        artefacts: one path (``{head}`` in it gives one artefact per head), one :class:`ExportSpec`, or several;
            what a spec leaves out (outputs, format, dtype) comes from ``options``.
        brick_collection: the bricks.
        named_inputs: example inputs, shared by every artefact (each takes the names it needs).
        options: shared by every artefact; default: ``ExportOptions()``
            (see :class:`~torchbricks_lightning.core.export.ExportOptions`).
        folder: relative paths are relative to it.
        checkpoint_path: the checkpoint the weights came from, recorded in each manifest.
        checkpoint_sha256: the SHA-256 of the bytes the weights were loaded from; default: that of the file at
            ``checkpoint_path``, read once before the first artefact is written.
        inputs_from: where ``named_inputs`` came from, when the caller did not pass them (said in errors).

    Returns:
        One :class:`ExportResult` per artefact, in order.

    Raises:
        ConfigError, ExportError, MissingInputError: see :func:`plan_artefacts` (all raised before anything is
            written) and :func:`~torchbricks_lightning.core.export.export_bricks` (artefacts written before the
            failing one stay written).

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickTrainable, ExportSpec
        >>> collection = BrickCollection({"net": BrickTrainable(nn.Linear(4, 2), ["raw"], ["logits"])})
        >>> results = export_artefacts([ExportSpec("net.onnx"), ExportSpec("net.pt2", dtype="float16")], collection,
        ...                            {"raw": torch.rand(2, 4)}, folder=tempfile.mkdtemp())
        >>> [(result.path.name, result.dtype, result.manifest["inputs"][0]["shape"]) for result in results]
        [('net.onnx', 'float32', ['batch', 4]), ('net.pt2', 'float16', ['batch', 4])]
    """
    planned = plan_artefacts(artefacts, brick_collection, options, folder=folder)
    checkpoint = checkpoint_record(checkpoint_path, checkpoint_sha256)  # one file, one hash for every artefact
    return [
        export_bricks(
            each.path,
            brick_collection,
            named_inputs,
            each.options,
            checkpoint_path=checkpoint_path,
            checkpoint_sha256=None if checkpoint is None else checkpoint["sha256"],
            inputs_from=inputs_from,
        )
        for each in planned
    ]
