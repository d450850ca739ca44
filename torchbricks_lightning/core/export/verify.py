"""The check of an artefact against eager PyTorch: tolerances by precision, and one comparison for every format.

A float32 artefact is compared with the eager model. A float16 artefact is compared with the float32 model, the one
the user trained: its floating outputs must stay within the float16 tolerance of the float32 outputs, and the
reported difference is that drift (comparing it with the same model cast to float16 would report the agreement of
two float16 computations, about 0, and hide what float16 costs). Its integer outputs (a class index) are compared
with the model in float16, since float16 may rightly flip a near tie.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from torchbricks_lightning.errors import ExportError

__all__ = ["Tolerance", "as_float32", "compare_outputs", "default_tolerance", "raise_on_failures", "root_cause"]


@dataclass(frozen=True)
class Tolerance:
    """``|artefact - eager| <= atol + rtol * |eager|`` for every floating value; other values must be equal."""

    atol: float
    rtol: float


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance that fits an artefact computing in ``dtype``.

    float32 kernels of two runtimes differ in summation order (about 1e-6 relative); float16 keeps about three
    decimal digits, so its artefacts are checked at 1e-2 against the float32 model.

    Example:
        >>> default_tolerance(torch.float16)
        Tolerance(atol=0.01, rtol=0.01)
    """
    if dtype in (torch.float16, torch.bfloat16):
        return Tolerance(atol=1e-2, rtol=1e-2)
    return Tolerance(atol=1e-4, rtol=1e-3)


def as_float32(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` with float16 and bfloat16 tensors cast to float32: the float32 model's inputs for ``full_precision``.

    Example:
        >>> as_float32({"image": torch.ones(1, dtype=torch.float16), "index": torch.ones(1, dtype=torch.int64)})
        {'image': tensor([1.]), 'index': tensor([1])}
    """
    return {
        name: tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
        for name, tensor in inputs.items()
    }


def compare_outputs(
    names: Sequence[str],
    actual: Sequence[torch.Tensor],
    expected: Sequence[torch.Tensor],
    tolerance: Tolerance,
    full_precision: Sequence[torch.Tensor] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Compare an artefact's outputs with eager PyTorch's, name by name: floating outputs with ``full_precision``
    when it is given (a float16 artefact against the float32 model), else with ``expected``.

    Infinities and NaN are compared as values: an infinity matches the same infinity at the same position (a logit
    masked with ``-inf``), and NaN matches NaN. A value that is infinite or NaN in a float16 artefact where the model
    gives a finite one is an overflow: its line names float16's largest finite value (65504), the model's largest
    magnitude and the fix.

    Args:
        names: the output names.
        actual: the artefact's outputs.
        expected: eager PyTorch's outputs, in the dtype the artefact computes in (the dtypes must match; integer
            outputs are compared with these).
        tolerance: the tolerance of floating outputs.
        full_precision: for a float16 artefact, the float32 model's outputs: its floating outputs are compared with
            them, so the difference reported is the drift from the float32 model, and a float16 export of values
            beyond 65504 is reported as an overflow rather than accepted as equal infinities.

    Returns:
        The largest absolute difference per output over the values finite in both (from the float32 model with
        ``full_precision``; for integer outputs, the number of differing values), and one line per output that
        fails the check.

    Example:
        >>> compare_outputs(["p"], [torch.tensor([0.5])], [torch.tensor([0.5001])], Tolerance(1e-3, 0.0))[1]
        []
        >>> compare_outputs(["c"], [torch.tensor([1, 2])], [torch.tensor([1, 3])], Tolerance(1e-3, 0.0))[1]
        ["'c': 1 of 2 values differ"]
        >>> masked = torch.tensor([float("-inf"), 1.0])
        >>> compare_outputs(["logits"], [masked], [masked.clone()], Tolerance(1e-3, 0.0))
        ({'logits': 0.0}, [])
        >>> half = torch.tensor([float("inf"), 1.0], dtype=torch.float16)
        >>> compare_outputs(["y"], [half], [half.clone()], Tolerance(1e-2, 1e-2), [torch.tensor([9e4, 1.0])])[1]
        ["'y': overflows float16: 1 of 2 values are inf or NaN in the artefact where the model gives finite ..."]
        >>> third = torch.tensor([1 / 3])  # the float32 model; float16 rounds it to 0.33325
        >>> differences, _ = compare_outputs(["p"], [third.half()], [third.half()], Tolerance(1e-2, 1e-2), [third])
        >>> f"{differences['p']:.1e}"  # the drift from the float32 model, not 0 (float16 against itself)
        '8.1e-05'
    """
    differences: dict[str, float] = {}
    failures: list[str] = []
    wide = [None] * len(names) if full_precision is None else list(full_precision)
    for name, got, want, full in zip(names, actual, expected, wide, strict=True):
        reference = want.detach().cpu()
        result = got.detach().cpu()
        if tuple(result.shape) != tuple(reference.shape):
            failures.append(f"{name!r}: shape {tuple(result.shape)} in the artefact vs {tuple(reference.shape)} eager")
            continue
        if result.dtype != reference.dtype:
            failures.append(f"{name!r}: dtype {result.dtype} in the artefact vs {reference.dtype} eager")
            continue
        if reference.is_floating_point():
            differences[name], failure = _compare_floats(name, result, reference, tolerance, full)
            if failure:
                failures.append(failure)
        else:
            differences[name] = float((result != reference).sum())
            if differences[name]:
                failures.append(f"{name!r}: {int(differences[name])} of {reference.numel()} values differ")
    return differences, failures


_OVERFLOW = " overflows "


def _compare_floats(
    name: str, result: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance, full: torch.Tensor | None
) -> tuple[float, str]:
    """The largest difference over the values finite in both, and the failure line of one floating output ('')."""
    got = result.double()
    compared_with_full = full is not None and tuple(full.shape) == tuple(reference.shape)
    want = full.detach().cpu().double() if full is not None and compared_with_full else reference.double()
    got_finite, want_finite = torch.isfinite(got), torch.isfinite(want)
    both = got_finite & want_finite
    distance = torch.where(both, (got - want).abs(), torch.zeros_like(got))
    worst = float(distance.max()) if distance.numel() else 0.0
    close = distance <= tolerance.atol + tolerance.rtol * torch.where(both, want.abs(), torch.zeros_like(want))
    same_special = (torch.isnan(got) & torch.isnan(want)) | (torch.isinf(got) & (got == want))
    overflow = ~got_finite & want_finite
    if bool(overflow.any()) and result.dtype in (torch.float16, torch.bfloat16):
        largest = float(want[want_finite].abs().max())
        highest = torch.finfo(result.dtype).max
        model = "eager PyTorch" if full is None else "the float32 model"
        dtype = str(result.dtype).removeprefix("torch.")
        where = (
            f"the largest magnitude in {model} is {largest:.6g}, beyond the largest finite {dtype}, {highest:.6g}"
            if largest > highest
            else f"a value it is computed from overflows: its largest magnitude in {model} is {largest:.6g}, within "
            f"the largest finite {dtype}, {highest:.6g}"
        )
        return worst, (
            f"{name!r}:{_OVERFLOW}{dtype}: {int(overflow.sum())} of {got.numel()} values are inf or NaN in the "
            f"artefact where the model gives finite values ({where}). Keep {name!r} in float32 (export it with "
            f"dtype='float32', e.g. in an ExportSpec of its own) or scale it, or what it is computed from, into "
            f"{dtype}'s range"
        )
    mismatched = ~(both | same_special)
    lines = []
    if bool(mismatched.any()):
        index = tuple(int(i) for i in torch.nonzero(mismatched)[0])
        lines.append(
            f"{int(mismatched.sum())} of {got.numel()} values are inf or NaN in only one of the two, or are "
            f"infinities of opposite signs (at {index}: {float(got[index])} in the artefact vs {float(want[index])} "
            "eager)"
        )
    if not bool(close.all()):
        source = " from the float32 model" if compared_with_full else ""
        lines.append(f"max abs diff {worst:.3g}{source} (atol={tolerance.atol}, rtol={tolerance.rtol})")
    return worst, f"{name!r}: " + "; ".join(lines) if lines else ""


def raise_on_failures(failures: Sequence[str], *, runtime: str, shape: str, reference: str = "eager PyTorch") -> None:
    """Raise the :class:`ExportError` of a failed check, or nothing when ``failures`` is empty.

    An overflow's line gives its own fix; looser tolerances or ``verify=False`` are offered for the other lines only
    (they would let an artefact that gives inf through). ``reference`` says what the artefact was compared with.
    """
    if not failures:
        return
    differences = [line for line in failures if _OVERFLOW not in line]
    advice = (
        " Pass verify=False to skip the check, or loosen atol/rtol if the difference is expected."
        if differences
        else ""
    )
    raise ExportError(
        f"The exported model disagrees with {reference} in {runtime} at input shape {shape}: "
        + "; ".join(failures)
        + ". The artefact was not written."
        + advice
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
