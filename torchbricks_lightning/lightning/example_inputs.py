"""Example inputs for export: the shape and dtype of each export input seen in training, kept in checkpoints.

``LightningBrickCollection`` records them from its first batch and writes them into every checkpoint under
:data:`EXAMPLE_INPUTS_KEY`, so that a checkpoint can be exported to ONNX alone (``export_checkpoint_as_onnx``,
``OnnxExportCallback``). The tensors made from them draw from a private, seeded generator, never from the global
one: exporting in the middle of training leaves the training's random numbers (dropout, augmentation) as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ConfigError

__all__ = ["EXAMPLE_INPUTS_KEY", "ExampleInputs", "example_tensors", "record_example_inputs"]

EXAMPLE_INPUTS_KEY = "torchbricks_example_inputs"
"""Checkpoint key holding the shape and dtype of each export input, so a checkpoint can be exported alone."""

ExampleInputs = dict[str, dict[str, Any]]
"""``{input name: {"shape": [1, *sample shape], "dtype": "torch.float32"}}``."""


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
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, spec in example_inputs.items():
        dtype = getattr(torch, str(spec["dtype"]).removeprefix("torch."))
        shape = [batch_size, *spec["shape"][1:]] if spec["shape"] else []
        if dtype.is_floating_point:
            tensors[name] = torch.rand(shape, dtype=dtype, generator=generator)
        else:
            tensors[name] = torch.zeros(shape, dtype=dtype)
    return tensors
