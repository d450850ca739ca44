"""Trace a stage once with ``torch.export``: the program every format is written from, and its named shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchbricks_lightning.core.export.formats import rename_symbols
from torchbricks_lightning.core.export.shapes import DynamicDims, dynamic_shapes_of
from torchbricks_lightning.core.export.verify import root_cause
from torchbricks_lightning.errors import ExportError, TorchBricksError

__all__ = ["TracedProgram", "export_program"]


@dataclass(frozen=True)
class TracedProgram:
    """A traced stage.

    Attributes:
        program: the ``ExportedProgram``.
        symbols: torch.export's size symbols of the inputs' dynamic dimensions, by name (``{'s31': 'batch'}``).
        inputs: ``{"name", "dtype", "shape"}`` per input, dynamic dimensions named.
        outputs: the same per output; a size computed from dynamic ones is an expression (``'2*height'``).
    """

    program: torch.export.ExportedProgram
    symbols: dict[str, str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(value: Any, symbols: Mapping[str, str]) -> list[int | str]:
    shape = getattr(value, "shape", ())
    return [int(size) if isinstance(size, int) else rename_symbols(str(size), symbols) for size in shape]


def _value(node: Any) -> Any:
    """The example value torch.export recorded for a graph node (``None`` for a constant)."""
    return getattr(node, "meta", {}).get("val")


def export_program(
    module: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    dims: DynamicDims,
    output_names: Sequence[str],
    stage: str = "export",
) -> TracedProgram:
    """``torch.export.export(module, inputs)`` with the dynamic dimensions ``dims``, and the named shapes.

    Raises:
        ExportError: torch.export cannot trace a brick (the message gives the root cause and the brick), or a
            dimension made dynamic is fixed by the model.
    """
    dynamic = dynamic_shapes_of(inputs, dims) if any(dims.values()) else None
    try:
        program = torch.export.export(module, tuple(inputs.values()), dynamic_shapes=dynamic)
    except TorchBricksError:
        raise
    except Exception as err:
        fixed = "Constraints violated" in str(err) or "specialized" in str(err).lower()
        hint = (
            "A dimension made dynamic is fixed by the model (e.g. a flatten before a linear layer fixes the image "
            "size); export with dynamic_spatial=False or dynamic_batch_size=False."
            if fixed
            else "Every brick alive in this stage must be traceable by torch.export; make bricks that are not "
            f"(metrics, debugging, plotting) dead in {stage!r}, or export only the outputs you need (output_names)."
        )
        raise ExportError(f"Could not export stage {stage!r}: {root_cause(err)} {hint} Nothing was written.") from err
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    user_inputs = [placeholders[name] for name in program.graph_signature.user_inputs]
    symbols: dict[str, str] = {}
    for node, (name, tensor) in zip(user_inputs, inputs.items(), strict=True):
        shape = getattr(_value(node), "shape", tensor.shape)
        for dim, label in dims[name].items():
            if isinstance(shape[dim], int):
                raise ExportError(
                    f"Could not export stage {stage!r} with a dynamic {label!r} dimension: the model only works at "
                    f"the example's size ({name!r} dimension {dim} = {shape[dim]}). Export with "
                    f"{'dynamic_batch_size' if label == 'batch' else 'dynamic_spatial'}=False. Nothing was written."
                )
            symbols.setdefault(str(shape[dim]), label)
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    returned = output_node.args[0]
    returned = list(returned) if isinstance(returned, (tuple, list)) else [returned]
    user_returned = returned[-len(output_names) :] if output_names else []
    return TracedProgram(
        program=program,
        symbols=symbols,
        inputs=[
            {"name": name, "dtype": _dtype_name(tensor.dtype), "shape": _shape(node.meta.get("val"), symbols)}
            for node, (name, tensor) in zip(user_inputs, inputs.items(), strict=True)
        ],
        outputs=[
            {
                "name": name,
                "dtype": _dtype_name(getattr(_value(node), "dtype", torch.float32)),
                "shape": _shape(_value(node), symbols),
            }
            for name, node in zip(output_names, user_returned, strict=True)
        ],
    )
