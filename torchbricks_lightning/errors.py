"""Every exception raised on purpose by torchbricks_lightning, in one place.

Every error derives from :class:`TorchBricksError` and also from one builtin that says whose fault it is:

- ``ValueError`` (a bad value: a name, a number, a file's content, a recipe) or ``TypeError`` (an argument of the
  wrong type): the caller's input, fixed by changing it;
- ``OSError`` (:class:`FileWriteError`, :class:`CheckpointWriteError`, :class:`DatasetNotAvailableError`): the
  environment failed (a full disk, a folder that cannot be written, data that is not there), fixed outside the
  code. ``except ValueError`` written for bad input never swallows a full disk.

So ``except ValueError``, ``except TypeError`` or ``except OSError`` keep working for callers who do not know this
package. The same mistake raises the same type wherever it is found. Import the classes from this module: it is
the one that defines and exports them (the top-level package re-exports the common ones).

Example:
    >>> from torchbricks_lightning.errors import CheckpointWriteError, MissingInputError, TorchBricksError
    >>> issubclass(MissingInputError, ValueError) and issubclass(MissingInputError, TorchBricksError)
    True
    >>> issubclass(CheckpointWriteError, OSError), issubclass(CheckpointWriteError, ValueError)
    (True, False)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BrickDefinitionError",
    "BrickGraphError",
    "BrickOutputError",
    "BricksNotStoredError",
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigError",
    "CycleError",
    "DatasetNotAvailableError",
    "DuplicateOutputError",
    "ExportError",
    "FileWriteError",
    "InvalidNameError",
    "LoaderStateError",
    "LossNotFiniteError",
    "LossNotScalarError",
    "MissingInputError",
    "RecipeError",
    "ResumeStateError",
    "TorchBricksError",
    "UnknownStageError",
    "UntrustedCheckpointError",
    "UntrustedClassError",
    "command_line_message",
    "did_you_mean",
]


class TorchBricksError(Exception):
    """Base class of every error raised on purpose by torchbricks_lightning."""


# ------------------------------------------------------------------------------------------------ wrong types
class BrickDefinitionError(TorchBricksError, TypeError):
    """An argument has the wrong type: a brick where a module belongs, a string where a list belongs, ..."""


# ------------------------------------------------------------------------------------------------ bad values
class ConfigError(TorchBricksError, ValueError):
    """An argument has the right type but a bad value: an unknown name, a number out of range, a bad option."""


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


class LossNotFiniteError(BrickOutputError):
    """A training loss is NaN or infinite."""


class ExportError(TorchBricksError, ValueError):
    """The model cannot be exported as asked, the exported file does not match the eager model, or the output path
    cannot take a file (see :func:`~torchbricks_lightning.core.atomic_files.check_output_path`).

    A write that fails on the way (a full disk) is a :class:`FileWriteError` instead."""


class RecipeError(TorchBricksError, ValueError):
    """The bricks of a recipe cannot be built, or fail on a batch of its datamodule (found before any training)."""


class CheckpointError(TorchBricksError, ValueError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


class BricksNotStoredError(CheckpointError):
    """A checkpoint of a module built in Python holds the weights but not the bricks: they must be given to load it.
    ``checkpoint_path`` names the file."""

    def __init__(self, message: str, checkpoint_path: str) -> None:
        super().__init__(message)
        self.checkpoint_path = checkpoint_path

    def __reduce__(self) -> tuple[type[BricksNotStoredError], tuple[str, str]]:
        return type(self), (str(self), self.checkpoint_path)


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint asks to instantiate a class outside the trusted packages, or holds arbitrary code."""


class ResumeStateError(CheckpointError):
    """A checkpoint's resume state does not fit the bricks or the processes of the resumed run."""


class LoaderStateError(TorchBricksError, ValueError):
    """A saved loader state cannot continue the current data: the data, batch size, seed or processes changed."""


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


class UntrustedClassError(UntrustedCheckpointError):
    """A checkpoint names something it may not build: a class outside the trusted packages, a function, a class of a
    kind no recipe builds, or a class spec where only plain data belongs.

    ``str(error)`` says how to opt in from Python (``trusted_class_prefixes=['my_heads.']``);
    :attr:`command_line_message` says it the way the command line takes it (``--trusted_class_prefixes
    '[my_heads.]'``). ``prefix`` is None when no prefix would make the checkpoint loadable.

    Example:
        >>> error = UntrustedClassError("It names 'my_heads.Head'.", "my_heads.")
        >>> print(str(error).removeprefix(error.problem))
         If you trust this checkpoint and that package, pass trusted_class_prefixes=['my_heads.'].
        >>> print(error.command_line_message.removeprefix(error.problem))
         If you trust this checkpoint and that package, pass --trusted_class_prefixes '[my_heads.]'.
    """

    def __init__(self, problem: str, prefix: str | None = None) -> None:
        self.problem = problem
        self.prefix = prefix
        super().__init__(problem + self._opt_in(f"trusted_class_prefixes=[{prefix!r}]"))

    @property
    def command_line_message(self) -> str:
        """The message with the opt-in spelt for the command line."""
        return self.problem + self._opt_in(f"--trusted_class_prefixes '[{self.prefix}]'")

    def _opt_in(self, spelling: str) -> str:
        return f" If you trust this checkpoint and that package, pass {spelling}." if self.prefix else ""

    def __reduce__(self) -> tuple[type[UntrustedClassError], tuple[str, str | None]]:
        return type(self), (self.problem, self.prefix)


# ------------------------------------------------------------------------------------------------ the environment
class FileWriteError(TorchBricksError, OSError):
    """A file could not be written (a full disk, a read-only folder, a folder in the way); whatever was at its path
    before is intact. ``errno`` is the one of the failed operation (``errno.ENOSPC`` for a full disk)."""


class CheckpointWriteError(FileWriteError):
    """A checkpoint could not be written (a full disk, a read-only folder); the previous file at its path is intact.

    Not a :class:`CheckpointError`: that one is a ``ValueError`` (a bad file), and a full disk is not a bad value."""


class DatasetNotAvailableError(TorchBricksError, OSError):
    """A dataset is neither on disk nor downloadable, or its files on disk are damaged."""


def command_line_message(error: BaseException) -> str:
    """The message of ``error`` as the command line shows it: an opt-in is spelt as a command-line option.

    Example:
        >>> command_line_message(UntrustedClassError("It names 'my_heads.Head'.", "my_heads.")).split(", pass ")[1]
        "--trusted_class_prefixes '[my_heads.]'."
        >>> command_line_message(ConfigError("Bad value."))
        'Bad value.'
    """
    return error.command_line_message if isinstance(error, UntrustedClassError) else str(error)
