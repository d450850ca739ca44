"""The error for a stage's missing input: which brick needs it, what is there, and a close match of the same kind."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torchbricks_lightning.core.graph import BrickNode, StagePlan
from torchbricks_lightning.errors import MissingInputError, did_you_mean

__all__ = ["check_input_names"]


def check_input_names(
    plan: StagePlan, available: Iterable[str], *, given: str = "Inputs given", hint: str = ""
) -> None:
    """Raise :class:`MissingInputError` if ``available`` lacks a name that ``plan`` needs.

    The message names the first brick that needs the missing name, the stage, what is available and a close match
    of the same kind, if there is one: a name given in the inputs, or an output of an alive brick in the same
    namespace (``'head0/logit'`` for ``'head0/logits'``) that the brick does not read already. So a label column
    missing from a stage's batch is never matched with a model output (``'digits'`` with ``'digit/logits'``). When
    only losses and metrics read the name, the message says how to do without that label in the stage.

    Args:
        plan: the stage's plan.
        available: the names the caller provides.
        given: how the message introduces ``available`` (say where the names came from if the caller did not
            give them).
        hint: a sentence appended to the message (a fix that fits the caller).

    Example:
        >>> from torchbricks_lightning.core.graph import plan_stage
        >>> from torchbricks_lightning.core.stages import Stage
        >>> def node(path, inputs, outputs, index, losses=()):
        ...     return BrickNode(path, inputs, (), outputs, losses, 1.0, frozenset(Stage), False, index)
        >>> plan = plan_stage([node("digit/head", ("raw",), ("digit/logits",), 0),
        ...                    node("digit/loss", ("digit/logits", "digits"), ("digit/ce",), 1, ("digit/ce",))],
        ...                   Stage.VALIDATION)
        >>> check_input_names(plan, ["raw"])
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.MissingInputError: Brick 'digit/loss' needs input 'digits' in stage ...
        >>> try:
        ...     check_input_names(plan, ["raw"])
        ... except MissingInputError as err:
        ...     print(str(err).split("stage: ['digit/logits', 'digit/ce'].")[1])
         Only losses and metrics read 'digits' here (['digit/loss']): if it is a label this stage's batches lack,
         give the column with the missing-label value in every row (-100 for class labels, NaN for floating targets;
         the losses and metrics skip those rows), or make ['digit/loss'] dead in stage 'validation' (leave
         'validation' out of their alive_stages).
    """
    available = list(available)
    present = set(available)
    missing = [name for name in plan.required_inputs if name not in present]
    if not missing:
        return
    name = missing[0]
    readers = plan.readers[name]
    consumer = readers[0]
    more = f" (also missing: {missing[1:]})" if len(missing) > 1 else ""
    suggestion = did_you_mean(name, available) or did_you_mean(name, _outputs_like(plan, name, consumer))
    label_hint = "" if suggestion else _label_hint(plan, name, readers)
    raise MissingInputError(
        f"Brick {consumer.path!r} needs input {name!r} in stage {plan.stage.value!r}, but neither the inputs nor "
        f"an alive brick provides it{more}. {given}: {sorted(present)}; produced by bricks alive in this "
        f"stage: {list(plan.output_names)}.{suggestion}{label_hint}{f' {hint}' if hint else ''}"
    )


def _outputs_like(plan: StagePlan, name: str, consumer: BrickNode) -> list[str]:
    """The outputs that ``name`` may be a misspelling of: those in its namespace that ``consumer`` does not read."""
    namespace = name.rpartition("/")[0]
    return [
        output
        for output in plan.output_names
        if output.rpartition("/")[0] == namespace and output not in consumer.input_names
    ]


def _label_hint(plan: StagePlan, name: str, readers: Sequence[BrickNode]) -> str:
    """How to do without a label in a stage, when only losses and metrics read it ('' otherwise)."""
    if not all(node.loss_names or node.updates_only for node in readers):
        return ""
    paths = [node.path for node in readers]
    stage = plan.stage.value
    return (
        f" Only losses and metrics read {name!r} here ({paths}): if it is a label this stage's batches lack, give the "
        "column with the missing-label value in every row (-100 for class labels, NaN for floating targets; the "
        f"losses and metrics skip those rows), or make {paths} dead in stage {stage!r} (leave {stage!r} out of "
        "their alive_stages)."
    )
