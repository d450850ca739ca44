"""The check of an artefact against eager PyTorch: tolerances by precision, and one comparison for every format."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from torchbricks_lightning.errors import ExportError

__all__ = ["Tolerance", "compare_outputs", "default_tolerance", "raise_on_failures", "root_cause"]


@dataclass(frozen=True)
class Tolerance:
    """``|artefact - eager| <= atol + rtol * |eager|`` for every floating value; other values must be equal."""

    atol: float
    rtol: float


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance that fits an artefact computing in ``dtype``.

    float32 kernels of two runtimes differ in summation order (about 1e-6 relative); float16 keeps about three
    decimal digits, so its artefacts are checked at 1e-2.

    Example:
        >>> default_tolerance(torch.float16)
        Tolerance(atol=0.01, rtol=0.01)
    """
    if dtype in (torch.float16, torch.bfloat16):
        return Tolerance(atol=1e-2, rtol=1e-2)
    return Tolerance(atol=1e-4, rtol=1e-3)


def compare_outputs(
    names: Sequence[str], actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], tolerance: Tolerance
) -> tuple[dict[str, float], list[str]]:
    """Compare an artefact's outputs with eager PyTorch's, name by name.

    Returns:
        The largest absolute difference per output (for integer outputs, the number of differing values), and one
        line per output that fails the check.

    Example:
        >>> compare_outputs(["p"], [torch.tensor([0.5])], [torch.tensor([0.5001])], Tolerance(1e-3, 0.0))[1]
        []
        >>> compare_outputs(["c"], [torch.tensor([1, 2])], [torch.tensor([1, 3])], Tolerance(1e-3, 0.0))[1]
        ["'c': 1 of 2 values differ"]
    """
    differences: dict[str, float] = {}
    failures: list[str] = []
    for name, got, want in zip(names, actual, expected, strict=True):
        reference = want.detach().cpu()
        result = got.detach().cpu()
        if tuple(result.shape) != tuple(reference.shape):
            failures.append(f"{name!r}: shape {tuple(result.shape)} in the artefact vs {tuple(reference.shape)} eager")
            continue
        if result.dtype != reference.dtype:
            failures.append(f"{name!r}: dtype {result.dtype} in the artefact vs {reference.dtype} eager")
            continue
        if reference.is_floating_point():
            diff = (result.double() - reference.double()).abs()
            differences[name] = float(diff.max()) if diff.numel() else 0.0
            same_nan = torch.isnan(result) == torch.isnan(reference)
            within = (diff <= tolerance.atol + tolerance.rtol * reference.double().abs()) | torch.isnan(reference)
            if not bool(torch.all(within & same_nan)):
                failures.append(
                    f"{name!r}: max abs diff {differences[name]:.3g} (atol={tolerance.atol}, rtol={tolerance.rtol})"
                )
        else:
            differences[name] = float((result != reference).sum())
            if differences[name]:
                failures.append(f"{name!r}: {int(differences[name])} of {reference.numel()} values differ")
    return differences, failures


def raise_on_failures(failures: Sequence[str], *, runtime: str, shape: str) -> None:
    """Raise the :class:`ExportError` of a failed check, or nothing when ``failures`` is empty."""
    if failures:
        raise ExportError(
            f"The exported model disagrees with eager PyTorch in {runtime} at input shape {shape}: "
            + "; ".join(failures)
            + ". The artefact was not written. Pass verify=False to skip the check, or loosen atol/rtol if the "
            "difference is expected."
        )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(err: BaseException) -> str:
    """The innermost cause of ``err`` in one plain line, with the brick notes found along the chain."""
    notes: list[str] = []
    innermost = err
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        notes += [note for note in getattr(current, "__notes__", []) if note.startswith("While running brick")]
        innermost = current
        current = current.__cause__ or current.__context__
    text = _ANSI.sub("", str(innermost)).strip()
    first = text.splitlines()[0] if text else ""
    summary = f"{type(innermost).__name__}: {first}".rstrip(": ")
    return " ".join([summary.rstrip(".") + ".", *dict.fromkeys(notes)])
