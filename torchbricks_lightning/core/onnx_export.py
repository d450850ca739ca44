"""``export_bricks_as_onnx``: the ONNX export of the reference spec, a builder of
:class:`~torchbricks_lightning.core.export.ExportOptions` for :func:`~torchbricks_lightning.core.export.export_bricks`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export import ExportOptions, ExportResult, export_bricks
from torchbricks_lightning.core.export.options import ExportOptionFields, with_overrides
from torchbricks_lightning.core.stages import StageLike
from torchbricks_lightning.errors import ConfigError

__all__ = ["export_bricks_as_onnx", "onnx_options"]


def export_bricks_as_onnx(
    path_onnx: str | os.PathLike[str],
    brick_collection: BrickCollection,
    named_inputs: Mapping[str, Any],
    dynamic_batch_size: bool = ExportOptions.dynamic_batch_size,
    stage: StageLike = ExportOptions.stage,
    output_names: Sequence[str] | None = ExportOptions.output_names,
    verify: bool = ExportOptions.verify,
    atol: float | None = ExportOptions.atol,
    rtol: float | None = ExportOptions.rtol,
    **export_kwargs: Any,
) -> ExportResult:
    """Export the bricks alive in ``stage`` as an ONNX file whose inputs and outputs carry the data names.

    The outputs are ``output_names`` (default: the stage's terminal outputs, the values no alive brick reads) and
    the graph is pruned to them, so only the inputs they need become inputs (``named_inputs`` may hold more, such
    as targets). The file is checked with onnxruntime against eager PyTorch before it is moved into place, so a
    failed export never leaves a broken file (an earlier file at ``path_onnx`` is kept); a JSON manifest is written
    beside it. See :func:`~torchbricks_lightning.core.export.export_bricks` for ``.pt2``, float16, dynamic image
    sizes and the opset.

    Args:
        path_onnx: where to write the ``.onnx`` file (parent folders are created).
        brick_collection: the collection to export; it runs in eval mode for the export and is put back.
        named_inputs: example inputs, e.g. ``{'raw': batch}``.
        dynamic_batch_size: make the first dimension of every input and output dynamic.
        stage: the stage to export.
        output_names: the outputs to export; default: the stage's terminal outputs.
        verify: run the file in onnxruntime and compare with eager PyTorch.
        atol: absolute tolerance of the check.
        rtol: relative tolerance of the check.
        **export_kwargs: passed on to ``torch.onnx.export``; ``opset_version`` sets the opset.

    The defaults are those of :class:`~torchbricks_lightning.core.export.ExportOptions`.

    Returns:
        An :class:`~torchbricks_lightning.core.export.ExportResult` with the path, names and the max abs
        difference per output.

    Raises:
        ConfigError: ``path_onnx`` does not end with ``.onnx``, or ``output_names`` names something the stage does
            not produce.
        ExportError: see :func:`~torchbricks_lightning.core.export.export_bricks`.

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
    options = onnx_options(
        path_onnx,
        where="export_bricks_as_onnx",
        stage=stage,
        output_names=output_names,
        dynamic_batch_size=dynamic_batch_size,
        opset=export_kwargs.pop("opset_version", ExportOptions.opset),
        verify=verify,
        atol=atol,
        rtol=rtol,
    )
    return export_bricks(path_onnx, brick_collection, named_inputs, options, export_kwargs=export_kwargs)


def onnx_options(
    path_onnx: str | os.PathLike[str], *, where: str, **fields: Unpack[ExportOptionFields]
) -> ExportOptions:
    """The options of an ``*_as_onnx`` function: ``fields`` with the ONNX format, once ``path_onnx`` is checked.

    Raises:
        ConfigError: ``path_onnx`` does not end with ``.onnx``, or a field is invalid.
        UnknownStageError: an unknown stage (the message names ``where``).

    Example:
        >>> onnx_options("model.onnx", where="f", stage="inference").format
        'onnx'
        >>> onnx_options("model.pt2", where="f")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: Expected path_onnx to end with '.onnx', but got 'model.pt2'.
    """
    if Path(path_onnx).suffix != ".onnx":
        raise ConfigError(f"Expected path_onnx to end with '.onnx', but got {str(path_onnx)!r}.")
    return with_overrides(ExportOptions(format="onnx"), fields, where=where)
