"""The ``--config`` files of a command, checked before jsonargparse reads them.

jsonargparse reads a ``--config`` file as YAML text; a checkpoint given there by mistake (``--config run.ckpt``)
ends in a ``UnicodeDecodeError`` traceback. :func:`check_config_files` finds each ``--config`` file of the command
line and refuses a checkpoint, or any file that is not text, with the fix. A checkpoint given as ``--config`` is
never read as the user's recipe: its recipe never widens trust
(:func:`~torchbricks_lightning.checkpoints.trust.recipe_class_prefixes`).

Example:
    >>> config_files(["fit", "--config", "a.yaml", "--config=b.yaml", "-c", "c.yaml", "--trainer.x", "1"])
    ['a.yaml', 'b.yaml', 'c.yaml']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchbricks_lightning.checkpoints.trust import check_recipe_file

__all__ = ["check_config_files", "config_files"]

_OPTIONS = ("--config", "-c")


def config_files(argv: Sequence[str]) -> list[str]:
    """The values of ``--config`` (or ``-c``) in a command line, in order."""
    values = []
    for index, argument in enumerate(argv):
        name, equals, value = argument.partition("=")
        if name in _OPTIONS and equals:
            values.append(value)
        elif argument in _OPTIONS and index + 1 < len(argv):
            values.append(argv[index + 1])
    return values


def check_config_files(argv: Sequence[str]) -> None:
    """Refuse a ``--config`` file that is a checkpoint or not text (a value that is no file is left to jsonargparse,
    which reads it as YAML text).

    Raises:
        ConfigError: a ``--config`` file is a checkpoint, or not UTF-8 text.
    """
    for value in config_files(argv):
        if Path(value).is_file():
            check_recipe_file(value)
