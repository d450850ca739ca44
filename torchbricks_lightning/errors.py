"""The exceptions raised by torchbricks_lightning.

Every error derives from :class:`TorchBricksError` and also from the builtin that fits it, so
``except ValueError`` or ``except TypeError`` keep working for callers who do not know this package.

Example:
    >>> from torchbricks_lightning.errors import MissingInputError, TorchBricksError
    >>> issubclass(MissingInputError, ValueError) and issubclass(MissingInputError, TorchBricksError)
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BrickDefinitionError",
    "BrickGraphError",
    "BrickOutputError",
    "CycleError",
    "DuplicateOutputError",
    "ExportError",
    "InvalidNameError",
    "LossNotScalarError",
    "MissingInputError",
    "TorchBricksError",
    "UnknownStageError",
]


class TorchBricksError(Exception):
    """Base class of every error raised on purpose by torchbricks_lightning."""


class BrickDefinitionError(TorchBricksError, TypeError):
    """A brick or collection was given an argument of the wrong type."""


class BrickGraphError(TorchBricksError, ValueError):
    """The bricks do not form a valid graph."""


class MissingInputError(BrickGraphError):
    """A brick needs a name that neither the inputs nor an alive brick provides."""


class DuplicateOutputError(BrickGraphError):
    """Two bricks alive in the same stage produce the same name."""


class CycleError(BrickGraphError):
    """The bricks alive in a stage depend on each other in a cycle."""


class InvalidNameError(BrickGraphError):
    """A brick name or a data name is malformed (a '/' in a brick name, a relative name above the root)."""


class UnknownStageError(TorchBricksError, ValueError):
    """A stage string is not one of the known stages."""


class BrickOutputError(TorchBricksError, ValueError):
    """A brick returned something that does not match what it declared."""


class LossNotScalarError(BrickOutputError):
    """A loss brick returned a tensor that is not a scalar."""


class ExportError(TorchBricksError, RuntimeError):
    """Exporting to ONNX failed, or the exported file does not match the eager model."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return a ' Did you mean ...?' hint for ``name``, or '' when nothing is close.

    Example:
        >>> did_you_mean("embeding", ["embedding", "logits"])
        " Did you mean 'embedding'?"
        >>> did_you_mean("zzz", ["embedding"])
        ''
    """
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
