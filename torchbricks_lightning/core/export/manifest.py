"""The manifest written beside each artefact: what it takes and returns, what it expects, and where it came from.

``model.onnx`` gets ``model.onnx.json`` (``model.pt2`` gets ``model.pt2.json``), put into place before the
artefact (see :mod:`~torchbricks_lightning.core.export.publishing`, whose ``check_artefact`` reads it). Its
fields (``MANIFEST_VERSION`` 1):

* ``manifest_version``: 1.
* ``artefact``: ``file`` (the artefact's name, in the same folder), ``format`` (``onnx`` or ``pt2``), ``sha256`` and
  ``bytes`` of the artefact, and ``opset`` for ONNX.
* ``stage``: the exported stage; ``dtype``: the precision the artefact computes in (``float32`` or ``float16``).
* ``inputs`` and ``outputs``: in call order, each ``{"name", "dtype", "shape"}``; a dynamic dimension is a string
  (``"batch"``, ``"height"``, or an expression such as ``"((height - 1)//2) + 1"``), a fixed one an integer.
* ``bricks``: the bricks inside the artefact (the graph pruned to the outputs).
* ``preprocessing``: one entry per brick whose module knows a normalisation (``mean`` and ``std`` attributes, as
  :class:`~torchbricks_lightning.bag_of_bricks.Preprocessor` has): ``{"brick", "input", "output", "mean", "std",
  "formula"}``. It runs inside the artefact: feed it raw values.
* ``class_names``: per brick whose module (or the brick itself) has a ``class_names`` attribute:
  ``{"outputs": [...], "names": [...]}``.
* ``metadata``: per brick whose module (or the brick itself) has an ``export_metadata`` attribute (a dict of JSON
  values: what a reader of its outputs must know, e.g. a detection head's box format, stride and padding rows):
  ``{"outputs": [...], **export_metadata}``; the field is left out when no brick records any.
* ``checkpoint``: ``{"path", "sha256"}`` of the checkpoint the weights came from, or ``null``; ``export_checkpoint``
  hashes the bytes it loaded the weights from, not the file again after the export.
* ``previous``: only while the artefact is published (and after a kill then): the manifest of the artefact it
  replaces, or ``null`` (see :mod:`~torchbricks_lightning.core.export.publishing`).
* ``verification``: how the artefact was checked (``runtime``, ``atol``, ``rtol``, the ``input_shapes`` run, the
  ``max_abs_diff`` per output, and the ``reference`` it was compared with: ``"eager PyTorch"``, or for a float16
  artefact ``"the float32 model"``), or ``null`` when it was not.
* ``versions``: of torchbricks_lightning, torch, and for ONNX, onnx and onnxruntime.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbricks_lightning.core.bricks import BrickInterface, BrickModule
from torchbricks_lightning.core.graph import BrickNode
from torchbricks_lightning.errors import ConfigError, ExportError

__all__ = [
    "MANIFEST_VERSION",
    "checkpoint_record",
    "class_names_of",
    "file_sha256",
    "manifest_path",
    "metadata_of",
    "preprocessing_of",
    "versions",
]

MANIFEST_VERSION = 1


def manifest_path(artefact: str | os.PathLike[str]) -> Path:
    """Where the manifest of ``artefact`` goes: ``model.onnx`` -> ``model.onnx.json``.

    Example:
        >>> manifest_path("exports/digit.pt2").as_posix()
        'exports/digit.pt2.json'
    """
    path = Path(artefact)
    return path.with_name(path.name + ".json")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_record(
    checkpoint_path: str | os.PathLike[str] | None, checkpoint_sha256: str | None
) -> dict[str, str] | None:
    """The manifest's ``checkpoint`` field: the checkpoint's path and the SHA-256 of its bytes (by default, those
    of the file now).

    Raises:
        ConfigError: ``checkpoint_sha256`` without ``checkpoint_path``.
        ExportError: the file cannot be read.

    Example:
        >>> checkpoint_record("runs/last.ckpt", "ab12")
        {'path': 'runs/last.ckpt', 'sha256': 'ab12'}
    """
    if checkpoint_path is None:
        if checkpoint_sha256 is not None:
            raise ConfigError("checkpoint_sha256 was given without checkpoint_path; pass the checkpoint's path too.")
        return None
    if checkpoint_sha256 is None:
        try:
            checkpoint_sha256 = file_sha256(checkpoint_path)
        except OSError as err:
            raise ExportError(
                f"Could not read the checkpoint {str(checkpoint_path)!r} to record its SHA-256 in the manifest: "
                f"{err.strerror or err}. Pass the path of the checkpoint the weights came from."
            ) from err
    return {"path": str(checkpoint_path), "sha256": checkpoint_sha256}


def _wrapped(brick: BrickInterface) -> list[Any]:
    modules: list[Any] = [brick]
    if isinstance(brick, BrickModule):
        modules.append(brick.model)
    return modules


def _as_floats(value: Any) -> list[float] | None:
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().cpu().flatten()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    return None


def preprocessing_of(nodes: Sequence[BrickNode], bricks: Mapping[str, BrickInterface]) -> list[dict[str, Any]]:
    """The normalisations that the bricks of ``nodes`` apply: modules with ``mean`` and ``std`` attributes.

    Example:
        >>> from torchbricks_lightning import BrickCollection, BrickNotTrainable
        >>> from torchbricks_lightning.bag_of_bricks import Preprocessor
        >>> collection = BrickCollection({"pre": BrickNotTrainable(Preprocessor([0.5], [0.25]), ["raw"], ["x"])})
        >>> preprocessing_of(collection.plan("export").nodes, dict(collection.named_bricks()))
        [{'brick': 'pre', 'input': 'raw', 'output': 'x', 'mean': [0.5], 'std': [0.25], 'formula': '(raw - mean) / std'}]
    """
    found = []
    for node in nodes:
        for module in _wrapped(bricks[node.path]):
            mean, std = _as_floats(getattr(module, "mean", None)), _as_floats(getattr(module, "std", None))
            if mean is None or std is None or not isinstance(module, nn.Module):
                continue
            source = node.data_inputs[0] if node.data_inputs else ""
            found.append(
                {
                    "brick": node.path,
                    "input": source,
                    "output": node.output_names[0] if node.output_names else "",
                    "mean": mean,
                    "std": std,
                    "formula": f"({source} - mean) / std",
                }
            )
            break
    return found


def class_names_of(nodes: Sequence[BrickNode], bricks: Mapping[str, BrickInterface]) -> dict[str, dict[str, Any]]:
    """The class names that the bricks of ``nodes`` know (a ``class_names`` attribute on the brick or its module).

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickTrainable
        >>> head = nn.Linear(4, 2)
        >>> head.class_names = ["cat", "dog"]
        >>> collection = BrickCollection({"head": BrickTrainable(head, ["features"], ["logits"])})
        >>> class_names_of(collection.plan("export").nodes, dict(collection.named_bricks()))
        {'head': {'outputs': ['logits'], 'names': ['cat', 'dog']}}
    """
    found = {}
    for node in nodes:
        for module in _wrapped(bricks[node.path]):
            names = getattr(module, "class_names", None)
            if isinstance(names, (list, tuple)) and names and all(isinstance(name, str) for name in names):
                found[node.path] = {"outputs": list(node.output_names), "names": list(names)}
                break
    return found


def metadata_of(nodes: Sequence[BrickNode], bricks: Mapping[str, BrickInterface]) -> dict[str, dict[str, Any]]:
    """What the bricks of ``nodes`` say about their outputs: an ``export_metadata`` dict on the brick or its module.

    Any brick can record facts a consumer of the artefact needs (units, formats, padding conventions) this way;
    the manifest stores them beside the brick's output names, as JSON.

    Raises:
        ExportError: ``export_metadata`` is not a dict with string keys, or holds a value JSON cannot write.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickTrainable
        >>> head = nn.Linear(4, 4)
        >>> head.export_metadata = {"box_format": "xyxy", "stride": 8}
        >>> collection = BrickCollection({"head": BrickTrainable(head, ["features"], ["boxes"])})
        >>> metadata_of(collection.plan("export").nodes, dict(collection.named_bricks()))
        {'head': {'outputs': ['boxes'], 'box_format': 'xyxy', 'stride': 8}}
    """
    found = {}
    for node in nodes:
        for module in _wrapped(bricks[node.path]):
            metadata = getattr(module, "export_metadata", None)
            if metadata is None:
                continue
            if not isinstance(metadata, Mapping) or not all(isinstance(key, str) for key in metadata):
                raise ExportError(
                    f"Brick {node.path!r}: export_metadata must be a dict with string keys, but got "
                    f"{type(metadata).__name__}. Record what a reader of the artefact needs as {{'name': value}}."
                )
            try:
                json.dumps(dict(metadata), allow_nan=False)
            except (TypeError, ValueError) as err:
                raise ExportError(
                    f"Brick {node.path!r}: export_metadata cannot be written to the JSON manifest: {err}. Use strings, "
                    "numbers, booleans, lists and dicts (tensors as .tolist())."
                ) from err
            found[node.path] = {"outputs": list(node.output_names), **metadata}
            break
    return found


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(format: str) -> dict[str, str | None]:
    """The versions of the packages that made (and, for ONNX, checked) an artefact."""
    found: dict[str, str | None] = {
        "torchbricks_lightning": _version("torchbricks-lightning"),  # installed metadata: core never imports the root
        "torch": torch.__version__,
    }
    if format == "onnx":
        found["onnx"] = _version("onnx")
        found["onnxruntime"] = _version("onnxruntime")
    return found
