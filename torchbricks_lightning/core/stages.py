"""Model stages: the phases in which a brick can be alive.

:data:`StageName` spells the stages' values as a ``Literal`` type, for signatures that jsonargparse reads:

>>> import typing
>>> typing.get_args(StageName) == tuple(stage.value for stage in Stage)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Literal, TypeAlias

from torchbricks_lightning.errors import BrickDefinitionError, UnknownStageError, did_you_mean

__all__ = ["ALL_STAGES", "AliveStages", "Stage", "StageLike", "StageName", "parse_alive_stages", "parse_stage"]


class Stage(str, Enum):
    """A phase of a model's life. Each brick is alive in some stages and dead in the others.

    A ``Stage`` is also a ``str``, so wherever a stage is expected the plain value works too.

    Example:
        >>> Stage("train") is Stage.TRAIN
        True
        >>> Stage.EXPORT == "export"
        True
        >>> [stage.value for stage in Stage]
        ['train', 'validation', 'test', 'inference', 'export']
    """

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"
    INFERENCE = "inference"
    EXPORT = "export"

    def __str__(self) -> str:
        return self.value


ALL_STAGES: tuple[Stage, ...] = tuple(Stage)

StageLike: TypeAlias = Stage | str
StageName: TypeAlias = Literal["train", "validation", "test", "inference", "export"]
"""The value of each :class:`Stage`, as a type: what a recipe may write in ``alive_stages``."""
AliveStages: TypeAlias = Literal["all", "none"] | Sequence[Stage | StageName]
"""Where a brick is alive: ``"all"``, ``"none"`` or a list of stages. Typed precisely, so that jsonargparse refuses
a misspelt stage in a recipe itself; :func:`parse_alive_stages` also accepts any string that names a stage (e.g.
``"TRAIN"``) from Python."""


def parse_stage(stage: StageLike, *, where: str = "") -> Stage:
    """Return ``stage`` as a :class:`Stage`, accepting the enum, its value or its name.

    Args:
        stage: a ``Stage``, or a string such as ``"train"`` (or ``"TRAIN"``).
        where: context for the error message, e.g. ``"brick 'head'"``.

    Raises:
        UnknownStageError: the string is not a stage.
        BrickDefinitionError: ``stage`` is not a string.

    Example:
        >>> parse_stage("validation")
        <Stage.VALIDATION: 'validation'>
        >>> parse_stage("VALIDATION")
        <Stage.VALIDATION: 'validation'>
        >>> parse_stage("valdation")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.UnknownStageError: Unknown stage 'valdation'. ... Did you mean 'validation'?
    """
    if isinstance(stage, Stage):
        return stage
    context = f" in {where}" if where else ""
    if not isinstance(stage, str):
        raise BrickDefinitionError(
            f"Expected a stage{context} to be a Stage or one of {[s.value for s in Stage]}, "
            f"but got {type(stage).__name__}: {stage!r}."
        )
    try:
        return Stage(stage.lower())
    except ValueError:
        values = [s.value for s in Stage]
        raise UnknownStageError(
            f"Unknown stage {stage!r}{context}. Expected one of {values}.{did_you_mean(stage.lower(), values)}"
        ) from None


def parse_alive_stages(alive_stages: AliveStages | Iterable[StageLike], *, where: str = "") -> tuple[Stage, ...]:
    """Normalise ``alive_stages`` ("all", "none" or a list of stages) to a tuple in ``Stage`` order.

    Example:
        >>> parse_alive_stages("all") == ALL_STAGES
        True
        >>> parse_alive_stages("none")
        ()
        >>> [s.value for s in parse_alive_stages(["test", Stage.TRAIN])]
        ['train', 'test']
    """
    if isinstance(alive_stages, str) and not isinstance(alive_stages, Stage):
        if alive_stages == "all":
            return ALL_STAGES
        if alive_stages == "none":
            return ()
        context = f" of {where}" if where else ""
        raise UnknownStageError(
            f"Expected alive_stages{context} to be 'all', 'none' or a list of stages, but got the string "
            f"{alive_stages!r}. Wrap a single stage in a list: alive_stages=[{alive_stages!r}]."
        )
    if isinstance(alive_stages, Stage):
        alive_stages = [alive_stages]
    if not isinstance(alive_stages, Iterable):
        raise BrickDefinitionError(
            f"Expected alive_stages{' of ' + where if where else ''} to be 'all', 'none' or a list of stages, "
            f"but got {type(alive_stages).__name__}: {alive_stages!r}."
        )
    stages = {parse_stage(stage, where=where) for stage in alive_stages}
    return tuple(stage for stage in Stage if stage in stages)
