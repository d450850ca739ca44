"""Example inputs for export: the shape and dtype of each export input seen in training, kept in checkpoints.

``LightningBrickCollection`` records them from its first batch and writes them into every checkpoint under
:data:`EXAMPLE_INPUTS_KEY`, so that a checkpoint can be exported to ONNX alone (``export_checkpoint_as_onnx``,
``OnnxExportCallback``). The tensors made from them draw from a private, seeded generator, never from the global
one: exporting in the middle of training leaves the training's random numbers (dropout, augmentation) as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import CheckpointError, ConfigError

__all__ = [
    "EXAMPLE_INPUTS_KEY",
    "MAX_EXAMPLE_ELEMENTS",
    "ExampleInputs",
    "check_example_inputs",
    "example_tensors",
    "record_example_inputs",
    "stored_example_inputs",
]

EXAMPLE_INPUTS_KEY = "torchbricks_example_inputs"
"""Checkpoint key holding the shape and dtype of each export input, so a checkpoint can be exported alone."""

ExampleInputs = dict[str, dict[str, Any]]
"""``{input name: {"shape": [1, *sample shape], "dtype": "torch.float32"}}``."""

MAX_EXAMPLE_ELEMENTS = 1 << 25
"""The most elements one sample of an example input may have (33.5 million: a 4K RGB image has 25 million)."""

_DTYPES: dict[str, torch.dtype] = {
    str(dtype): dtype
    for dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def _problem(name: object, spec: object) -> str | None:
    """What is wrong with one recorded example input, or None."""
    if not isinstance(name, str) or not isinstance(spec, Mapping):
        return f"entry {name!r} is not a name with a {{'shape', 'dtype'}} record"
    dtype, shape = spec.get("dtype"), spec.get("shape")
    if not isinstance(dtype, str) or (dtype not in _DTYPES and f"torch.{dtype}" not in _DTYPES):
        return f"input {name!r} has dtype {dtype!r}, which is not a tensor dtype (expected one of {sorted(_DTYPES)})"
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape
    ):
        return f"input {name!r} has shape {shape!r}, which is not a list of sizes"
    elements = math.prod(shape[1:])
    if elements > MAX_EXAMPLE_ELEMENTS:
        return (
            f"input {name!r} has shape {list(shape)}: {elements:,} elements per sample, more than the "
            f"{MAX_EXAMPLE_ELEMENTS:,} an example input may have"
        )
    return None


def stored_example_inputs(checkpoint: Mapping[str, Any]) -> ExampleInputs:
    """The example inputs a checkpoint holds (``{}`` when none); their records are checked when they are used.

    Raises:
        CheckpointError: they are not a dict.
    """
    stored = checkpoint.get(EXAMPLE_INPUTS_KEY, {})
    if not isinstance(stored, Mapping):
        raise CheckpointError(
            f"The example inputs (checkpoint key {EXAMPLE_INPUTS_KEY!r}) are a {type(stored).__name__}, not a dict of "
            "{'shape', 'dtype'} records. The checkpoint was not written by this library or was altered; pass "
            "named_inputs explicitly."
        )
    return dict(stored)


def check_example_inputs(example_inputs: object) -> ExampleInputs:
    """Return ``example_inputs`` if every record has a known dtype and a bounded size; raise otherwise.

    They come from checkpoints (:data:`EXAMPLE_INPUTS_KEY`), so they are checked before any tensor is made from them:
    an unknown dtype or a huge shape is a clear error, not an ``AttributeError`` or an allocation failure.

    Raises:
        CheckpointError: a record is malformed, names an unknown dtype or has too many elements.

    Example:
        >>> check_example_inputs({"raw": {"shape": [1, 3], "dtype": "torch.hub"}})
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.CheckpointError: The example inputs ... input 'raw' has dtype 'torch.hub', ...
    """
    if not isinstance(example_inputs, Mapping):
        raise CheckpointError(
            f"The example inputs (checkpoint key {EXAMPLE_INPUTS_KEY!r}) are a {type(example_inputs).__name__}, not "
            "a dict of {'shape', 'dtype'} records. Pass named_inputs explicitly."
        )
    for name, spec in example_inputs.items():
        problem = _problem(name, spec)
        if problem:
            raise CheckpointError(
                f"The example inputs (checkpoint key {EXAMPLE_INPUTS_KEY!r}) cannot be used: {problem}. The checkpoint "
                "was not written by this library or was altered; pass named_inputs explicitly."
            )
    return dict(example_inputs)


def record_example_inputs(collection: BrickCollection, named_inputs: Mapping[str, Any]) -> ExampleInputs:
    """The shape (batch dimension set to 1) and dtype of each tensor in ``named_inputs`` that the export stage needs.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickTrainable
        >>> collection = BrickCollection({"net": BrickTrainable(nn.Linear(3, 2), ["raw"], ["logits"])})
        >>> record_example_inputs(collection, {"raw": torch.zeros(8, 3), "targets": torch.zeros(8)})
        {'raw': {'shape': [1, 3], 'dtype': 'torch.float32'}}
    """
    example: ExampleInputs = {}
    for name in collection.input_names(Stage.EXPORT):
        value = named_inputs.get(name)
        if isinstance(value, torch.Tensor):
            example[name] = {"shape": [1, *value.shape[1:]] if value.ndim else [], "dtype": str(value.dtype)}
    return example


def example_tensors(
    example_inputs: Mapping[str, Mapping[str, Any]], batch_size: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Tensors shaped like ``example_inputs`` with ``batch_size`` samples: uniform in [0, 1) for floating dtypes,
    zeros otherwise. They come from a private generator seeded with ``seed``: the global one does not move.

    Raises:
        ConfigError: ``example_inputs`` is empty (no batch seen, no example inputs in the checkpoint).
        CheckpointError: a record has an unknown dtype or too many elements (see :func:`check_example_inputs`).

    Example:
        >>> tensors = example_tensors({"raw": {"shape": [1, 3], "dtype": "torch.float32"}}, batch_size=4)
        >>> tensors["raw"].shape, torch.equal(tensors["raw"], example_tensors({"raw": {"shape": [1, 3],
        ...     "dtype": "torch.float32"}}, batch_size=4)["raw"])
        (torch.Size([4, 3]), True)
    """
    if not example_inputs:
        raise ConfigError(
            "No example inputs are known: the module has not seen a batch and its checkpoint holds none. "
            "Pass named_inputs explicitly."
        )
    check_example_inputs(example_inputs)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 1024:
        raise ConfigError(f"Expected batch_size to be an integer in [1, 1024], but got {batch_size!r}.")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, spec in example_inputs.items():
        dtype = _DTYPES[str(spec["dtype"]) if str(spec["dtype"]) in _DTYPES else f"torch.{spec['dtype']}"]
        shape = [batch_size, *spec["shape"][1:]] if spec["shape"] else []
        if dtype.is_floating_point:
            tensors[name] = torch.rand(shape, dtype=dtype, generator=generator)
        else:
            tensors[name] = torch.zeros(shape, dtype=dtype)
    return tensors
