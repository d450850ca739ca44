"""Parameter groups named by brick paths: which parameters each group of the optimiser holds.

``LightningBrickCollection(param_groups=...)`` is a list of dicts, each with ``"bricks"`` (a pattern, or a list of
patterns, over brick paths), an optional ``"name"``, and options for the optimiser (``lr``, ``weight_decay``,
``momentum``, ... whatever it takes) or ``lr_scale`` (a factor of the base learning rate, see
:mod:`~torchbricks_lightning.lightning.optim.optimizers`):

- A pattern is matched with :func:`fnmatch.fnmatchcase` against each brick's path and the paths of the collections
  above it, so ``"backbone"`` takes the brick ``backbone``, or every brick of a nested collection ``backbone``, and
  ``"*/classify"`` every ``classify`` brick one level down or deeper (``*`` also matches ``/``).
- **First match wins**: a parameter belongs to the first group, in list order, with a pattern that matches a brick
  holding it. Put narrower patterns first.
- Parameters that no group takes, including the module's own outside the bricks (e.g. a learnable loss balancer),
  go to a last group named ``"default"``, with the optimiser's own settings.
- A group is named after its patterns (``"backbone"``, ``"*/classify"``, ``"a,b"``) unless it has a ``"name"``;
  Lightning's ``LearningRateMonitor`` logs its learning rate as ``lr-{Optimizer}/{name}``.
- The optimiser gets the groups in list order and the default group last, which is what a scheduler taking one
  value per group (``OneCycleLR(max_lr=[...])``) indexes. Empty groups are left out.
- Parameters that never train are in no group: those with ``requires_grad=False`` (``BrickNotTrainable``) and those
  of bricks run with ``calculate_gradients=False``. The parameters of bricks frozen by an ``unfreeze`` schedule are
  in their group from the start (see :mod:`~torchbricks_lightning.lightning.optim.finetuning`).
- With ``decay_norms_and_biases=False``, the parameters of a group with one dimension or none (biases and the
  weights of normalisation layers: the rule timm uses) go to a group of their own right after it, named
  ``"{name}/no_decay"``, with the same options and ``weight_decay=0``.

``unfreeze={pattern: epoch}`` uses the same patterns (:func:`plan_unfreeze`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchbricks_lightning.core.bricks import BrickModule
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, did_you_mean

__all__ = [
    "DEFAULT_GROUP",
    "LR_SCALE",
    "NO_DECAY_SUFFIX",
    "GroupSpec",
    "ScheduledBrick",
    "brick_matches",
    "matching_bricks",
    "param_groups_for",
    "parse_param_groups",
    "plan_unfreeze",
    "positive_number",
    "resolve_trainable",
    "trainable_parameters",
]

DEFAULT_GROUP = "default"
"""The name of the group of the parameters no pattern takes."""
NO_DECAY_SUFFIX = "/no_decay"
"""Appended to a group's name for its parameters without weight decay (``decay_norms_and_biases=False``)."""
LR_SCALE = "lr_scale"
"""The group option that sets its learning rate as a factor of the base learning rate."""
_BRICKS = "bricks"
_NAME = "name"
_RESERVED = ("params", "initial_lr")

ScheduledBrick = tuple[int, tuple[str, ...]]
"""``(the epoch a frozen brick starts training, the names of its parameters that the schedule freezes)``."""


@dataclass(frozen=True)
class GroupSpec:
    """One entry of ``param_groups``, checked: its patterns, name and options."""

    name: str
    patterns: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    lr_scale: float | None = None
    where: str = "param_groups[0]"


# ------------------------------------------------------------------------------------------------ bricks and patterns
def brick_matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` matches the brick ``path`` or a collection above it (``fnmatch``, case-sensitive).

    Example:
        >>> brick_matches("backbone", "backbone/stem"), brick_matches("*/classify", "heads/a/classify")
        (True, True)
        >>> brick_matches("back*", "head/backbone"), brick_matches("head", "head0")
        (False, False)
    """
    parts = path.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:end]), pattern) for end in range(1, len(parts) + 1))


def matching_bricks(collection: BrickCollection, pattern: str, where: str) -> list[str]:
    """The brick paths ``pattern`` matches, in the collection's order.

    Raises:
        ConfigError: it matches none; the message lists the brick paths.
    """
    paths = [path for path, _ in collection.named_bricks()]
    matched = [path for path in paths if brick_matches(pattern, path)]
    if not matched:
        raise ConfigError(
            f"{where}: the pattern {pattern!r} matches no brick.{did_you_mean(pattern, paths)} The brick paths are "
            f"{paths}; a pattern matches a path or a collection above it, with fnmatch wildcards ('*/classify')."
        )
    return matched


def trainable_parameters(brick: nn.Module, also: Iterable[int] = ()) -> list[tuple[str, nn.Parameter]]:
    """The parameters of ``brick`` that can train: they require gradients (or their ``id`` is in ``also``: frozen by an
    unfreeze schedule for now) and the brick computes gradients.

    Example:
        >>> from torchbricks_lightning import BrickNotTrainable, BrickTrainable
        >>> [name for name, _ in trainable_parameters(BrickTrainable(nn.Linear(2, 1), ["x"], ["y"]))]
        ['model.weight', 'model.bias']
        >>> trainable_parameters(BrickNotTrainable(nn.Linear(2, 1), ["x"], ["y"]))
        []
    """
    if isinstance(brick, BrickModule) and not brick.calculate_gradients:
        return []
    also = set(also)
    return [(name, p) for name, p in brick.named_parameters() if p.requires_grad or id(p) in also]


def _frozen_description(collection: BrickCollection, paths: Iterable[str]) -> str:
    bricks = dict(collection.named_bricks())
    described = []
    for path in paths:
        brick = bricks[path]
        if not any(True for _ in brick.parameters()):
            described.append(f"{path!r} ({type(brick).__name__}, no parameters)")
        elif isinstance(brick, BrickModule) and not brick.calculate_gradients:
            described.append(f"{path!r} ({type(brick).__name__}, calculate_gradients=False)")
        else:
            described.append(f"{path!r} ({type(brick).__name__}, requires_grad=False)")
    return ", ".join(described)


def resolve_trainable(
    collection: BrickCollection, patterns: Sequence[str], where: str, what: str, also: Iterable[int] = ()
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parameters of the bricks ``patterns`` match, by brick path (bricks without any left out).

    Raises:
        ConfigError: a pattern matches no brick, or only bricks without a trainable parameter (frozen bricks, bricks
            run with ``calculate_gradients=False``, losses and metrics): each pattern must name something to train.
    """
    bricks = dict(collection.named_bricks())
    also = set(also)
    found: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for pattern in patterns:
        matched = matching_bricks(collection, pattern, where)
        trainable = {path: trainable_parameters(bricks[path], also) for path in matched}
        trainable = {path: parameters for path, parameters in trainable.items() if parameters}
        if not trainable:
            raise ConfigError(
                f"{where}: the pattern {pattern!r} matches only bricks without trainable parameters, so {what}: "
                f"{_frozen_description(collection, matched)}. Frozen bricks (BrickNotTrainable, "
                "calculate_gradients=False) never get gradients: make the brick a BrickTrainable, or leave it out."
            )
        found.update({path: parameters for path, parameters in trainable.items() if path not in found})
    return found


# ------------------------------------------------------------------------------------------------ param_groups
def _patterns(value: Any, where: str) -> tuple[str, ...]:
    patterns = (value,) if isinstance(value, str) else value
    if (
        not isinstance(patterns, Sequence)
        or not patterns
        or not all(isinstance(pattern, str) and pattern for pattern in patterns)
    ):
        raise BrickDefinitionError(
            f"Expected {where}['bricks'] to be a brick path pattern or a list of them, but got {value!r}."
        )
    return tuple(patterns)


def positive_number(value: Any, where: str) -> float:
    """``value`` as a float, or a :class:`ConfigError` naming ``where`` when it is not a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"Expected {where} to be a positive number, but got {value!r}.")
    return float(value)


def parse_param_groups(param_groups: Sequence[Mapping[str, Any]] | None) -> tuple[GroupSpec, ...]:
    """Check the shape of ``param_groups`` (not the bricks): each a dict with ``"bricks"``, names unique.

    Example:
        >>> groups = [{"bricks": "backbone", "lr": 1e-4}, {"bricks": ["a", "b"], "lr_scale": 2}]
        >>> first, second = parse_param_groups(groups)
        >>> first.name, first.options, second.name, second.patterns, second.lr_scale
        ('backbone', {'lr': 0.0001}, 'a,b', ('a', 'b'), 2.0)

    Raises:
        BrickDefinitionError: an entry is not a dict, or its ``"bricks"`` not a pattern or a list of them.
        ConfigError: an entry sets both ``lr`` and ``lr_scale``, a learning rate that is not positive, a name used
            twice or ``"default"``, or a key the optimiser fills itself (``params``).
    """
    if param_groups is None:
        return ()
    if isinstance(param_groups, (str, Mapping)) or not isinstance(param_groups, Sequence):
        raise BrickDefinitionError(
            f"Expected param_groups to be a list of dicts such as [{{'bricks': 'backbone', 'lr': 1e-4}}], but got "
            f"{param_groups!r}."
        )
    specs: list[GroupSpec] = []
    for index, entry in enumerate(param_groups):
        where = f"param_groups[{index}]"
        if not isinstance(entry, Mapping):
            raise BrickDefinitionError(f"Expected {where} to be a dict with 'bricks' and options, but got {entry!r}.")
        if _BRICKS not in entry:
            raise ConfigError(
                f"{where} {dict(entry)} has no 'bricks': say which bricks it holds, e.g. {{'bricks': 'backbone', ...}}."
            )
        patterns = _patterns(entry[_BRICKS], where)
        name = entry.get(_NAME, ",".join(patterns))
        if not isinstance(name, str) or not name:
            raise BrickDefinitionError(f"Expected {where}['name'] to be a non-empty string, but got {name!r}.")
        options = {key: value for key, value in entry.items() if key not in (_BRICKS, _NAME, LR_SCALE)}
        reserved = [key for key in options if key in _RESERVED]
        if reserved:
            raise ConfigError(f"{where} sets {reserved}, which the optimiser fills itself; leave them out.")
        if "lr" in options and LR_SCALE in entry:
            raise ConfigError(
                f"{where} ({name!r}) sets both 'lr' and 'lr_scale'; give one: an absolute learning rate, or a factor "
                "of the base learning rate (the module's lr)."
            )
        if "lr" in options:
            options["lr"] = positive_number(options["lr"], f"{where}['lr']")
        scale = positive_number(entry[LR_SCALE], f"{where}['lr_scale']") if LR_SCALE in entry else None
        specs.append(GroupSpec(name=name, patterns=patterns, options=options, lr_scale=scale, where=where))
    names = [spec.name for spec in specs]
    for spec in specs:
        if spec.name == DEFAULT_GROUP or names.count(spec.name) > 1 or spec.name.endswith(NO_DECAY_SUFFIX):
            raise ConfigError(
                f"{spec.where} is named {spec.name!r}, which is taken (group names: {names}; {DEFAULT_GROUP!r} is the "
                f"group of the parameters no pattern takes, and '{NO_DECAY_SUFFIX}' ends the groups without weight "
                "decay). Give it another 'name'."
            )
    return tuple(specs)


# ------------------------------------------------------------------------------------------------ groups and schedules
def param_groups_for(
    module: nn.Module,
    collection: BrickCollection,
    specs: Sequence[GroupSpec],
    lr: float | None = None,
    decay_norms_and_biases: bool = True,
    scheduled: Mapping[str, ScheduledBrick] | None = None,
) -> list[dict[str, Any]]:
    """The parameter groups for the optimiser (``params``, ``name`` and options), following the rules above.

    Args:
        module: the module whose parameters are optimised (the LightningModule, holding ``collection`` and perhaps
            parameters of its own, which go to the default group).
        collection: the bricks the patterns match.
        specs: the checked ``param_groups``.
        lr: the learning rate of the groups without ``lr`` or ``lr_scale``; None: the optimiser's own.
        decay_norms_and_biases: False splits off each group's ``/no_decay`` part.
        scheduled: the bricks an unfreeze schedule freezes (:func:`plan_unfreeze`): their parameters are in the
            groups even while they do not require gradients.

    Returns:
        One dict per non-empty group. A group with ``lr_scale`` keeps it under that key, for the optimiser
        factory's caller to resolve against the base learning rate.

    Raises:
        ConfigError: a pattern matches no brick or only frozen ones, or a group gets no parameter.

    Example:
        >>> from torchbricks_lightning import BrickTrainable
        >>> collection = BrickCollection({
        ...     "backbone": BrickTrainable(nn.Linear(4, 4), ["raw"], ["features"]),
        ...     "head": BrickTrainable(nn.Linear(4, 3), ["features"], ["logits"]),
        ... })
        >>> groups = param_groups_for(collection, collection, parse_param_groups([{"bricks": "backbone", "lr": 0.1}]),
        ...                           decay_norms_and_biases=False)
        >>> [(group["name"], len(group["params"]), group.get("weight_decay")) for group in groups]
        [('backbone', 1, None), ('backbone/no_decay', 1, 0.0), ('default', 1, None), ('default/no_decay', 1, 0.0)]
    """
    bricks = dict(collection.named_bricks())
    frozen_for_now = {
        id(parameter)
        for path, (_, names) in (scheduled or {}).items()
        for name, parameter in bricks[path].named_parameters()
        if name in names
    }
    no_grad = [b for b in bricks.values() if isinstance(b, BrickModule) and not b.calculate_gradients]
    with_grad = [b for b in bricks.values() if not (isinstance(b, BrickModule) and not b.calculate_gradients)]
    # Bricks run under no_grad give their parameters no gradient (unless another brick shares them).
    without_gradients = {id(p) for b in no_grad for p in b.parameters()} - {
        id(p) for b in with_grad for p in b.parameters()
    }
    trainable = [
        p
        for p in module.parameters()
        if (p.requires_grad or id(p) in frozen_for_now) and id(p) not in without_gradients
    ]
    allowed = {id(p) for p in trainable}
    owner: dict[int, int] = {}  # id(parameter) -> index of its group: the first that matches one of its bricks
    for index, spec in enumerate(specs):
        found = resolve_trainable(collection, spec.patterns, spec.where, "the group would be empty", frozen_for_now)
        matched = [id(p) for parameters in found.values() for _, p in parameters if id(p) in allowed]
        claimed = [key for key in matched if key not in owner]
        if not claimed:
            earlier = sorted({specs[owner[key]].name for key in matched})
            raise ConfigError(
                f"{spec.where} ({spec.name!r}) gets no parameters: the bricks it matches, {list(found)}, are all "
                f"taken by the earlier groups {earlier} (the first matching group wins). Put the narrower pattern "
                "first, or remove this group."
            )
        owner.update(dict.fromkeys(claimed, index))
    groups: list[dict[str, Any]] = []
    for index, group_spec in enumerate([*specs, None]):
        params = [p for p in trainable if owner.get(id(p), len(specs)) == index]
        options: dict[str, Any] = {} if group_spec is None else dict(group_spec.options)
        if group_spec is not None and group_spec.lr_scale is not None:
            options[LR_SCALE] = group_spec.lr_scale
        elif "lr" not in options and lr is not None:
            options["lr"] = lr
        name = DEFAULT_GROUP if group_spec is None else group_spec.name
        if decay_norms_and_biases or options.get("weight_decay") == 0:
            groups += [{"params": params, "name": name, **options}] if params else []
            continue
        decayed, undecayed = [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]
        groups += [{"params": decayed, "name": name, **options}] if decayed else []
        if undecayed:
            groups.append({"params": undecayed, "name": name + NO_DECAY_SUFFIX, **options, "weight_decay": 0.0})
    return groups


def plan_unfreeze(collection: BrickCollection, unfreeze: Mapping[str, int] | None) -> dict[str, ScheduledBrick]:
    """Resolve ``unfreeze={pattern: epoch}`` to the bricks it freezes: ``{brick path: (epoch, parameter names)}``.

    The parameter names are those that train (see :func:`trainable_parameters`) when this is called, at the
    module's construction; the schedule leaves the others alone. When two patterns match a brick, the first wins.

    Example:
        >>> from torchbricks_lightning import BrickTrainable
        >>> collection = BrickCollection({"backbone": BrickTrainable(nn.Linear(2, 2), ["x"], ["y"])})
        >>> plan_unfreeze(collection, {"back*": 3})
        {'backbone': (3, ('model.weight', 'model.bias'))}

    Raises:
        BrickDefinitionError: ``unfreeze`` is not a dict of patterns and whole epochs.
        ConfigError: an epoch is negative, a pattern matches no brick, or only bricks that never train.
    """
    if not unfreeze:
        return {}
    if not isinstance(unfreeze, Mapping):
        raise BrickDefinitionError(
            f"Expected unfreeze to be a dict {{brick pattern: epoch}} such as {{'backbone': 3}}, but got {unfreeze!r}."
        )
    planned: dict[str, ScheduledBrick] = {}
    for pattern, epoch in unfreeze.items():
        where = f"unfreeze[{pattern!r}]"
        if not isinstance(pattern, str) or isinstance(epoch, bool) or not isinstance(epoch, int):
            raise BrickDefinitionError(
                f"Expected unfreeze to map brick patterns to whole epochs, but {where} is {epoch!r}."
            )
        if epoch < 0:
            raise ConfigError(f"{where} is {epoch}; epochs count from 0 (the first epoch), so it cannot be negative.")
        found = resolve_trainable(collection, [pattern], where, "there is nothing to freeze and unfreeze")
        for path, parameters in found.items():
            planned.setdefault(path, (epoch, tuple(name for name, _ in parameters)))
    return planned
