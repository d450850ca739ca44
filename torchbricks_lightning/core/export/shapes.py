"""Dynamic dimensions of an export: which input dimensions may vary, their names, and the second shape to check.

The batch dimension is the first dimension of every input (one shared ``batch``). Spatial dimensions are the
dimensions after batch and channels of every floating input with three or more dimensions: ``height`` and
``width`` of an image ``(batch, channels, height, width)``, ``length`` of a signal, ``depth``, ``height`` and
``width`` of a volume. When several inputs have spatial dimensions, the names start with the input's name
(``raw_height``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "DynamicDims",
    "dynamic_dims",
    "dynamic_shapes_of",
    "output_shape_names",
    "second_shape_inputs",
    "shape_with_names",
]

_SPATIAL_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}

DynamicDims = dict[str, dict[int, str]]
"""``{input name: {dimension: name}}`` for the dimensions that may vary."""


@dataclass(frozen=True)
class _Spatial:
    name: str
    dims: tuple[int, ...]


def _spatial_inputs(named: Mapping[str, torch.Tensor]) -> list[_Spatial]:
    return [
        _Spatial(name, tuple(range(2, tensor.ndim)))
        for name, tensor in named.items()
        if tensor.ndim >= 3 and tensor.is_floating_point()
    ]


def dynamic_dims(named: Mapping[str, torch.Tensor], *, batch: bool, spatial: bool) -> DynamicDims:
    """Name the dimensions of ``named`` that may vary.

    Example:
        >>> import torch
        >>> dynamic_dims({"raw": torch.zeros(2, 3, 8, 8), "mask": torch.zeros(2, dtype=torch.bool)}, batch=True,
        ...              spatial=True)
        {'raw': {0: 'batch', 2: 'height', 3: 'width'}, 'mask': {0: 'batch'}}
    """
    dims: DynamicDims = {name: {} for name in named}
    if batch:
        for name, tensor in named.items():
            if tensor.ndim:
                dims[name][0] = "batch"
    if spatial:
        spatial_inputs = _spatial_inputs(named)
        for each in spatial_inputs:
            words = _SPATIAL_NAMES.get(len(each.dims)) or tuple(f"dim{i}" for i in each.dims)
            prefix = f"{each.name}_" if len(spatial_inputs) > 1 else ""
            for dim, word in zip(each.dims, words, strict=True):
                dims[each.name][dim] = f"{prefix}{word}"
    return dims


def dynamic_shapes_of(named: Mapping[str, torch.Tensor], dims: DynamicDims) -> tuple[tuple[dict[int, object], ...]]:
    """The ``dynamic_shapes`` argument of ``torch.export.export`` for a module called as ``module(*tensors)``.

    The batch is one named dimension shared by every input; spatial dimensions are ``Dim.DYNAMIC``, whose range
    torch.export works out (a strided convolution needs at least a few pixels), and which fail the export when the
    model only works at the example's size.
    """
    batch = torch.export.Dim("batch")
    specs = []
    for name in named:
        specs.append(
            {dim: (batch if label == "batch" else torch.export.Dim.DYNAMIC) for dim, label in dims[name].items()}
        )
    return (tuple(specs),)


def second_shape_inputs(named: Mapping[str, torch.Tensor], dims: DynamicDims) -> dict[str, torch.Tensor]:
    """Inputs at another shape along every dynamic dimension: one more sample, twice the spatial size.

    The values are the example's, repeated (so they stay in the example's range).

    Example:
        >>> import torch
        >>> other = second_shape_inputs({"raw": torch.rand(2, 3, 8, 8)}, {"raw": {0: "batch", 2: "height"}})
        >>> tuple(other["raw"].shape)
        (3, 3, 16, 8)
    """
    result = {}
    for name, tensor in named.items():
        grown = tensor
        for dim, label in sorted(dims[name].items()):
            size = tensor.shape[dim]
            target = size + 1 if label == "batch" else 2 * size
            repeats = -(-target // size)
            grown = torch.cat([grown] * repeats, dim=dim).narrow(dim, 0, target)
        result[name] = grown.contiguous()
    return result


def shape_with_names(shape: Sequence[int], dims: Mapping[int, str]) -> list[int | str]:
    """``shape`` with each dynamic dimension replaced by its name.

    Example:
        >>> shape_with_names([2, 3, 8, 8], {0: "batch", 2: "height", 3: "width"})
        ['batch', 3, 'height', 'width']
    """
    return [dims.get(i, int(size)) for i, size in enumerate(shape)]


def output_shape_names(
    first: Sequence[int],
    second: Sequence[int] | None,
    inputs_first: Mapping[str, torch.Tensor],
    inputs_second: Mapping[str, torch.Tensor] | None,
    dims: DynamicDims,
) -> list[int | str]:
    """An output's shape with its dynamic dimensions named, from its shapes at the two checked input shapes.

    A dimension that changed with the inputs takes the name of the input dimension that changed the same way
    (``batch``, ``height``, ...), or ``"dynamic"`` when none did (a size computed from several).

    Example:
        >>> import torch
        >>> small, large = {"raw": torch.zeros(2, 1, 8, 8)}, {"raw": torch.zeros(3, 1, 16, 16)}
        >>> output_shape_names([2, 10], [3, 10], small, large, {"raw": {0: "batch", 2: "height", 3: "width"}})
        ['batch', 10]
        >>> output_shape_names([2, 4, 4], [3, 8, 8], small, large, {"raw": {0: "batch", 2: "height", 3: "width"}})
        ['batch', 'dynamic', 'dynamic']
    """
    if second is None or inputs_second is None or len(second) != len(first):
        return [int(size) for size in first]
    sizes = {
        (int(inputs_first[name].shape[dim]), int(inputs_second[name].shape[dim])): label
        for name, named_dims in dims.items()
        for dim, label in named_dims.items()
    }
    return [int(a) if a == b else sizes.get((int(a), int(b)), "dynamic") for a, b in zip(first, second, strict=True)]
