"""A stage's outputs: which values are results (terminal outputs), grouped by head, and checks of requested names.

Pure functions over a :class:`~torchbricks_lightning.core.graph.StagePlan`, shared by exports (the default outputs
of an artefact) and predictions (what ``predict_step`` returns).
"""

from __future__ import annotations

from collections.abc import Iterable

from torchbricks_lightning.core.graph import StagePlan
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, did_you_mean

__all__ = ["check_output_names", "head_output_names", "terminal_output_names"]


def terminal_output_names(plan: StagePlan) -> list[str]:
    """The values of ``plan`` that no alive brick reads: the stage's results, in execution order.

    Intermediate values (normalised images, features, logits that a softmax brick reads) are left out. This is
    :attr:`StagePlan.terminal_output_names <torchbricks_lightning.core.graph.DataFlow.terminal_output_names>`, as a
    list.

    Example:
        >>> from torchbricks_lightning.core.graph import BrickNode, plan_stage
        >>> from torchbricks_lightning.core.stages import Stage
        >>> def node(path, inputs, outputs, index):
        ...     return BrickNode(path, inputs, (), outputs, (), 1.0, frozenset(Stage), False, index)
        >>> nodes = [node("backbone", ("raw",), ("features",), 0), node("head", ("features",), ("logits",), 1)]
        >>> terminal_output_names(plan_stage(nodes, Stage.INFERENCE))
        ['logits']
    """
    return list(plan.terminal_output_names)


def head_output_names(plan: StagePlan) -> dict[str, list[str]]:
    """The terminal outputs of ``plan`` grouped by head: the top-level member of the collection that produces them.

    In a multi-task model ``{"backbone": ..., "digit": {...}, "parity": {...}}`` the heads are ``digit`` and
    ``parity``; exporting each group on its own gives one artefact per task.

    Example:
        >>> from torchbricks_lightning.core.graph import BrickNode, plan_stage
        >>> from torchbricks_lightning.core.stages import Stage
        >>> def node(path, inputs, outputs, index):
        ...     return BrickNode(path, inputs, (), outputs, (), 1.0, frozenset(Stage), False, index)
        >>> nodes = [node("backbone", ("raw",), ("features",), 0), node("a/classify", ("features",), ("a/p",), 1),
        ...          node("b/classify", ("features",), ("b/p", "b/c"), 2)]
        >>> head_output_names(plan_stage(nodes, Stage.EXPORT))
        {'a': ['a/p'], 'b': ['b/p', 'b/c']}
    """
    terminal = set(plan.terminal_output_names)
    heads: dict[str, list[str]] = {}
    for node in plan.nodes:
        names = [name for name in node.output_names if name in terminal]
        if names:
            heads.setdefault(node.path.split("/", 1)[0], []).extend(names)
    return heads


def check_output_names(plan: StagePlan, output_names: Iterable[str], *, argument: str = "output_names") -> list[str]:
    """Return ``output_names`` as a list if every name is produced in ``plan``'s stage; raise otherwise.

    Raises:
        BrickDefinitionError: ``output_names`` is a single string or holds something that is not a string.
        ConfigError: a name is not produced in the stage (with a close match, if any), a name is repeated, or no
            name is given.

    Example:
        >>> from torchbricks_lightning.core.graph import BrickNode, plan_stage
        >>> from torchbricks_lightning.core.stages import Stage
        >>> plan = plan_stage([BrickNode("head", ("raw",), (), ("probabilities",), (), 1.0, frozenset(Stage),
        ...                              False, 0)], Stage.INFERENCE)
        >>> check_output_names(plan, ["probabilites"], argument="predict_output_names")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: predict_output_names ['probabilites'] are not produced in stage ...
    """
    if isinstance(output_names, str) or not isinstance(output_names, Iterable):
        hint = f" Wrap it in a list: [{output_names!r}]." if isinstance(output_names, str) else ""
        raise BrickDefinitionError(
            f"Expected {argument} to be a list of names, but got {type(output_names).__name__}: {output_names!r}."
            + hint
        )
    names = list(output_names)
    not_strings = [name for name in names if not isinstance(name, str)]
    if not_strings:
        raise BrickDefinitionError(f"Expected {argument} to hold names (strings), but it holds {not_strings!r}.")
    stage = plan.stage.value
    if not names:
        raise ConfigError(
            f"{argument} is empty; name at least one value produced in stage {stage!r}: {list(plan.output_names)}."
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{argument} names {repeated} more than once; name each output once.")
    produced = set(plan.output_names)
    unknown = [name for name in names if name not in produced]
    if unknown:
        raise ConfigError(
            f"{argument} {unknown} are not produced in stage {stage!r}; it produces "
            f"{list(plan.output_names)}.{did_you_mean(unknown[0], plan.output_names)} Make the brick that produces "
            f"{'it' if len(unknown) == 1 else 'them'} alive in {stage!r} (alive_stages), or pick another name."
        )
    return names
