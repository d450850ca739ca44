"""The random generators a training run draws from: capture them, restore them, or keep them untouched.

One home for what a mid-epoch resume saves (torch's CPU and CUDA generators, Python's ``random`` and NumPy's
global generator), what a pre-flight check must leave as it found it, and the per-sample seeding of augmentations.
The states are tensors, numbers and tuples only, so a checkpoint holding them still loads with
``weights_only=True``.

Example:
    >>> import torch
    >>> with preserved_random_state():
    ...     _ = torch.rand(3)  # draws inside the block do not move the generators outside it
    >>> saved = capture_random_state()
    >>> first = torch.rand(2)
    >>> restore_random_state(saved)
    >>> torch.equal(torch.rand(2), first)
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "capture_random_state",
    "preserved_random_state",
    "random_state_problems",
    "restore_random_state",
    "seeded",
]


def capture_random_state() -> dict[str, Any]:
    """The states of torch's CPU (and initialised CUDA) generators, Python's ``random`` and NumPy's global one."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy
    except ModuleNotFoundError:  # pragma: no cover - numpy comes with torch's usual installs
        return states
    numpy_state = numpy.random.get_state(legacy=False)
    states["numpy"] = {
        "bit_generator": str(numpy_state["bit_generator"]),
        "key": torch.from_numpy(numpy_state["state"]["key"].astype("int64")),
        "pos": int(numpy_state["state"]["pos"]),
        "has_gauss": int(numpy_state["has_gauss"]),
        "gauss": float(numpy_state["gauss"]),
    }
    return states


def restore_random_state(states: Mapping[str, Any]) -> None:
    """Set the generators to states from :func:`capture_random_state` (those it holds; CUDA only if in use)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda])
    saved_numpy = states.get("numpy")
    if saved_numpy is not None:
        import numpy

        numpy.random.set_state(
            {
                "bit_generator": saved_numpy["bit_generator"],
                "state": {"key": saved_numpy["key"].numpy().astype("uint32"), "pos": saved_numpy["pos"]},
                "has_gauss": saved_numpy["has_gauss"],
                "gauss": saved_numpy["gauss"],
            }
        )


def random_state_problems(states: object) -> list[str]:
    """What is wrong with ``states`` (read from a file) as a :func:`capture_random_state` result: ``[]`` when
    :func:`restore_random_state` can set every generator from it.

    Each state is tried on a fresh generator of its kind, never on the global ones, so a check changes nothing.

    Example:
        >>> random_state_problems(capture_random_state())
        []
        >>> for problem in random_state_problems({"torch": "x", "python": (3, (1, 2), None)}):
        ...     print(problem)
        'torch' is a str, not torch's generator state (a uint8 tensor)
        'python' is not a state of Python's random: state vector is the wrong size
    """
    if not isinstance(states, Mapping):
        return [f"the states are a {type(states).__name__}, not a mapping of generator names to states"]
    problems = []
    unknown = sorted(str(name) for name in states if name not in ("torch", "python", "cuda", "numpy"))
    if unknown:
        problems.append(f"unknown generators {unknown}")
    torch_state = states.get("torch")
    if "torch" in states:
        if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
            problems.append(f"'torch' is a {_kind(torch_state)}, not torch's generator state (a uint8 tensor)")
        else:
            try:
                torch.Generator().set_state(torch_state.cpu())
            except (RuntimeError, ValueError, TypeError) as err:
                problems.append(f"'torch' is not a state of torch's generator: {err}")
    if "python" in states:
        try:
            version, internal, gauss = states["python"]
            random.Random().setstate((version, tuple(internal), gauss))  # noqa: S311 - checks a state, draws nothing
        except (TypeError, ValueError, OverflowError) as err:
            problems.append(f"'python' is not a state of Python's random: {err}")
    cuda = states.get("cuda")
    if "cuda" in states and not (
        isinstance(cuda, (list, tuple))
        and all(isinstance(item, torch.Tensor) and item.dtype == torch.uint8 for item in cuda)
    ):
        problems.append(f"'cuda' is a {_kind(cuda)}, not a list of CUDA generator states (uint8 tensors)")
    if "numpy" in states:
        problems.extend(_numpy_problems(states["numpy"]))
    return problems


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor"
    return type(value).__name__


def _numpy_problems(saved: object) -> list[str]:
    import numpy

    try:
        if not isinstance(saved, Mapping) or not isinstance(saved.get("key"), torch.Tensor):
            raise TypeError(f"expected a mapping with a 'key' tensor, got a {_kind(saved)}")
        numpy.random.RandomState().set_state(
            (
                str(saved["bit_generator"]),
                saved["key"].numpy().astype("uint32"),
                int(saved["pos"]),
                int(saved["has_gauss"]),
                float(saved["gauss"]),
            )
        )
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        return [f"'numpy' is not a state of NumPy's generator: {err}"]
    return []


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore every generator on exit, so work inside the block draws nothing that the code after it would see."""
    states = capture_random_state()
    try:
        yield
    finally:
        restore_random_state(states)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and Python's ``random`` inside the block; restore both (and the rest) afterwards.

    Example:
        >>> with seeded(3):
        ...     a = torch.rand(1)
        >>> with seeded(3):
        ...     b = torch.rand(1)
        >>> torch.equal(a, b)
        True
    """
    with preserved_random_state():
        torch.manual_seed(seed)
        random.seed(seed)
        yield
