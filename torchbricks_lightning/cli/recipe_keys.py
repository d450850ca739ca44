"""Checks of a recipe's keys outside ``brick_collection``, from the signatures of the classes they configure.

jsonargparse refuses a misspelt key of a recipe, but its message names neither the file nor a close name, and for a
key inside a ``class_path`` entry (a datamodule's argument, an optimizer's, a callback's) it prints every
alternative of the slot's type. These checks read the signatures that jsonargparse reads (the Trainer's, the
module's, each ``class_path`` class's) and name the first mistake by its key as written: the section, the argument,
the ``class_path`` entry's own keys, and plain values of the wrong type (``max_epochs: ten``). Like those of
:mod:`~torchbricks_lightning.cli.recipe`, they run only on a recipe that jsonargparse has refused
(:mod:`~torchbricks_lightning.cli.recipe_parser`), so they never refuse a recipe that jsonargparse accepts.

Example:
    >>> from pytorch_lightning import Trainer
    >>> print(first_key_problem({"trainer": {"max_epoch": 3}}, trainer_class=Trainer))  # doctest: +ELLIPSIS
    trainer.max_epoch: Trainer takes no argument 'max_epoch'. Did you mean 'max_epochs'? Fix: rename it to ...
    >>> print(first_key_problem({"model": {"optimizer": {"class_path": "torch.optim.SGD",
    ...                                                  "init_args": {"learning_rate": 0.1}}}}))
    ... # doctest: +ELLIPSIS
    model.optimizer.init_args.learning_rate: torch.optim.SGD takes no argument 'learning_rate'. Did you mean 'lr'? ...
"""

from __future__ import annotations

import collections.abc
import contextlib
import difflib
import inspect
import types
import typing
from collections.abc import Collection, Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from torchbricks_lightning.checkpoints.trust import resolve_dotted
from torchbricks_lightning.cli.recipe import SUBCOMMANDS, accepted_arguments
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["ENTRY_KEYS", "close_name", "first_key_problem", "model_class_problem"]

ENTRY_KEYS = ("class_path", "init_args", "dict_kwargs")
"""The keys of a ``class_path`` entry that jsonargparse accepts (it refuses any other beside ``class_path``)."""

_SHORT_NAME_MODULES = {
    "callbacks": ("pytorch_lightning.callbacks", "torchbricks_lightning.callbacks"),
    "logger": ("pytorch_lightning.loggers",),
    "optimizer": ("torch.optim",),
    "lr_scheduler": ("torch.optim.lr_scheduler", "pytorch_lightning.cli"),
    "plugins": ("pytorch_lightning.plugins",),
    "data": ("torchbricks_lightning.datamodules",),
}
"""Where LightningCLI finds a short ``class_path`` (``ModelCheckpoint``) of each slot, so its arguments are checked."""

_MOVED_SECTIONS = {"optimizer": "model.optimizer", "lr_scheduler": "model.lr_scheduler"}
"""Top-level sections of other LightningCLI projects (``auto_configure_optimizers``) that are the module's arguments
here."""

_LISTED_AT_MOST = 16
"""A class with more arguments than this (the Trainer) has them listed by ``--help`` rather than in the message."""


def first_key_problem(
    config: Mapping[str, Any],
    top_level: Collection[str] | None = None,
    trainer_class: Any = None,
    model_class: Any = LightningBrickCollection,
) -> str | None:
    """A message for the first key of a recipe that the signatures refuse, or a plain value of the wrong type.

    ``model.brick_collection`` is left to the checks of :mod:`~torchbricks_lightning.cli.recipe`, which know bricks.

    Args:
        config: a recipe as loaded from YAML (sections per subcommand, ``fit:``, are checked each).
        top_level: the names a recipe may hold at its top (``trainer``, ``model``, ``data``, ...): None leaves them
            unchecked.
        trainer_class: the class of the ``trainer`` section (unchecked when None).
        model_class: the class of the ``model`` section.

    Returns:
        ``"key.path: what is wrong.[ Did you mean ...?] Fix: ..."``, or None when nothing here is wrong.
    """
    for subcommand in SUBCOMMANDS:
        section = config.get(subcommand)
        if isinstance(section, Mapping):
            problem = first_key_problem(section, None, trainer_class, model_class)
            if problem:
                return f"{subcommand}.{problem}"
    return next(_section_problems(config, top_level, trainer_class, model_class), None)


def model_class_problem(model: Any, model_class: Any = LightningBrickCollection) -> str | None:
    """What is wrong with a ``model:`` written in the class-path form, or None when its class is ``model_class``.

    Example:
        >>> print(model_class_problem({"class_path": "torch.nn.Linear"}))  # doctest: +ELLIPSIS
        model.class_path: the command builds a torchbricks_lightning.LightningBrickCollection, not 'torch.nn.Linear'...
    """
    class_path = model.get("class_path") if isinstance(model, Mapping) else None
    if not isinstance(class_path, str) or _is_class(class_path, model_class):
        return None
    return (
        f"model.class_path: the command builds a torchbricks_lightning.{model_class.__name__}, not {class_path!r}. "
        f"Fix: write class_path: torchbricks_lightning.{model_class.__name__}, or put the module's arguments "
        "(brick_collection, optimizer, ...) directly under model:."
    )


def close_name(name: str, candidates: Collection[str]) -> str | None:
    """The candidate closest to ``name``: a near spelling, or a name whose initials ``name`` is (``lr`` for
    ``learning_rate``, and the other way round).

    Example:
        >>> close_name("max_epoch", ["max_epochs", "min_epochs"]), close_name("learning_rate", ["lr", "betas"])
        ('max_epochs', 'lr')
        >>> close_name("wd", ["weight_decay", "lr"]), close_name("zzz", ["lr"])
        ('weight_decay', None)
    """
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if close:
        return close[0]
    for candidate in candidates:
        if name == _initials(candidate) or _initials(name) == candidate:
            return candidate
    return None


# ------------------------------------------------------------------------------------------------ sections
def _section_problems(
    config: Mapping[str, Any], top_level: Collection[str] | None, trainer_class: Any, model_class: Any
) -> Iterator[str]:
    if top_level is not None:
        for key in config:
            if key in _MOVED_SECTIONS and key not in top_level:
                yield (
                    f"{key}: a recipe has no section {key!r}: the {key} is an argument of the module here. "
                    f"Fix: move it under model: ({_MOVED_SECTIONS[key]})."
                )
                return
            if key not in top_level and not str(key).startswith("__"):
                yield _unknown(str(key), "A recipe", sorted(name for name in top_level if name != "config"), "")
                return
    trainer = config.get("trainer")
    if isinstance(trainer, Mapping) and trainer_class is not None:
        yield from _arguments_problems(trainer_class, trainer_class.__name__, trainer, "trainer")
    model = config.get("model")
    if isinstance(model, Mapping):
        problem = model_class_problem(model, model_class)
        if problem:
            yield problem
            return
        arguments = model.get("init_args") if "class_path" in model else model
        where = "model.init_args" if "class_path" in model else "model"
        if isinstance(arguments, Mapping):
            others = {key: value for key, value in arguments.items() if key != "brick_collection"}
            yield from _arguments_problems(model_class, model_class.__name__, others, where)
    data = config.get("data")
    if isinstance(data, Mapping):
        yield from _entry_problems(data, "data", slot="data")


def _arguments_problems(cls: Any, name: str, arguments: Mapping[str, Any], where: str, skip: int = 0) -> Iterator[str]:
    """Unknown arguments of ``cls``, then the values of its known ones (class_path entries, plain values)."""
    accepted = accepted_arguments(cls)
    if accepted is None:
        return  # **kwargs, or no signature: anything goes
    accepted = accepted[skip:]
    for key in arguments:
        if key not in accepted and not str(key).startswith("__"):
            yield _unknown(str(key), name, accepted, f"{where}.")
            return
    hints = _hints(cls)
    for key, value in arguments.items():
        yield from _value_problems(value, f"{where}.{key}", hints.get(str(key)), slot=str(key))


def _entry_problems(node: Mapping[str, Any], where: str, slot: str, hint: Any = None) -> Iterator[str]:
    """A ``class_path`` entry: its own keys, then its class's arguments."""
    class_path = node.get("class_path")
    if not isinstance(class_path, str):
        misspelt = [str(key) for key in node if key not in ENTRY_KEYS and close_name(str(key), ENTRY_KEYS)]
        if "class_path" not in node and misspelt:  # 'class_pat:', 'init_arg:'
            yield _unknown(misspelt[0], "A class_path entry", list(ENTRY_KEYS), f"{where}.")
        return
    for key in node:
        if key not in ENTRY_KEYS and not str(key).startswith("__"):
            hint_text = "" if close_name(str(key), ENTRY_KEYS) else f" (arguments of {class_path} go under init_args)"
            yield _unknown(str(key), f"A class_path entry{hint_text}", list(ENTRY_KEYS), f"{where}.")
            return
    cls = _resolve(class_path, slot)
    init_args = node.get("init_args")
    if cls is None or not isinstance(init_args, Mapping):
        return
    skip = 1 if _is_callable_slot(hint) else 0  # an optimizer's params, a scheduler's optimizer: given by the module
    yield from _arguments_problems(cls, class_path, init_args, f"{where}.init_args", skip=skip)


def _value_problems(value: Any, where: str, hint: Any, slot: str) -> Iterator[str]:
    if isinstance(value, Mapping) and "class_path" in value:
        yield from _entry_problems(value, where, slot, hint)
    elif isinstance(value, list) and slot in _SHORT_NAME_MODULES:
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                yield from _entry_problems(item, f"{where}[{index}]", slot)
    elif isinstance(value, Mapping) and slot in _SHORT_NAME_MODULES:
        yield from _entry_problems(value, where, slot, hint)  # 'init_arg' for 'init_args', say
    elif hint is not None:
        problem = _plain_value_problem(value, hint)
        if problem:
            yield f"{where}: {problem}"


# ------------------------------------------------------------------------------------------------ plain values
def _plain_value_problem(value: Any, hint: Any) -> str | None:
    """A text where a slot takes only numbers, booleans, None or fixed choices; None when the value may fit (the
    slot takes anything else, or jsonargparse could read the text as one of them)."""
    if not isinstance(value, str):
        return None
    members = _union_members(hint)
    choices: list[Any] = []
    kinds: list[str] = []
    for member in members:
        if get_origin(member) is Literal:
            choices.extend(get_args(member))
        elif member in (int, float, bool, type(None)):
            kinds.append("None" if member is type(None) else member.__name__)
        else:
            return None  # a slot that takes more than plain values: jsonargparse's own message says it better
    if value in [str(choice) for choice in choices] or _safe_load(value) in choices or _reads_as(value, kinds):
        return None
    expected = " or ".join([*kinds, *([f"one of {choices}"] if choices else [])])
    texts = [str(choice) for choice in choices if isinstance(choice, str)]
    close = close_name(value, texts) if texts else None
    fix = f"Did you mean {close!r}? Fix: write {close}." if close else f"Fix: write a value of that type ({expected})."
    return f"expected {expected}, but got the text {value!r}. {fix}"


def _reads_as(text: str, kinds: list[str]) -> bool:
    """Whether jsonargparse could read ``text`` as one of ``kinds``: it reads a text as YAML ('yes' is a bool,
    'null' None), and a number as Python does ('1e-3' is a float)."""
    readings = [_safe_load(text)]
    for reads in (int, float):
        with contextlib.suppress(ValueError):
            readings.append(reads(text))
    return any(
        ("bool" in kinds and isinstance(reading, bool))
        or ("None" in kinds and reading is None)
        or ("int" in kinds and isinstance(reading, int) and not isinstance(reading, bool))
        or ("float" in kinds and isinstance(reading, (int, float)) and not isinstance(reading, bool))
        for reading in readings
    )


def _safe_load(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _union_members(hint: Any) -> tuple[Any, ...]:
    if get_origin(hint) in (Union, types.UnionType):
        return tuple(member for arg in get_args(hint) for member in _union_members(arg))
    return (hint,)


# ------------------------------------------------------------------------------------------------ helpers
def _unknown(key: str, owner: str, accepted: Collection[str], prefix: str) -> str:
    close = close_name(key, accepted)
    if owner == "A recipe":
        what = f"a recipe has no section {key!r}."
    elif owner.startswith("A class_path entry"):
        what = f"{owner} takes no key {key!r}."
    else:
        what = f"{owner} takes no argument {key!r}."
    if close:
        return f"{prefix}{key}: {what} Did you mean {close!r}? Fix: rename it to {close!r}."
    listed = sorted(accepted) if len(accepted) <= _LISTED_AT_MOST else "listed by the subcommand's --help"
    return f"{prefix}{key}: {what} Fix: remove it, or use one of its names ({listed})."


def _initials(name: str) -> str:
    parts = [part for part in name.split("_") if part]
    return "".join(part[0] for part in parts) if len(parts) > 1 else ""


def _hints(cls: Any) -> dict[str, Any]:
    """The annotations of ``cls``'s constructor, or none when they cannot be resolved."""
    try:
        return typing.get_type_hints(cls.__init__ if inspect.isclass(cls) else cls)
    except Exception:  # a forward reference that does not resolve: its values go unchecked
        return {}


def _is_callable_slot(hint: Any) -> bool:
    """Whether a slot takes a callable (``OptimizerCallable``), whose first argument the caller gives."""
    return any(get_origin(member) is collections.abc.Callable for member in _union_members(hint))


def _resolve(class_path: str, slot: str) -> Any:
    """The class a ``class_path`` names: dotted, or a short name in the modules LightningCLI looks in for the slot."""
    if "." in class_path:
        return resolve_dotted(class_path)
    for module in _SHORT_NAME_MODULES.get(slot, ()):
        found = resolve_dotted(f"{module}.{class_path}")
        if found is not None:
            return found
    return None


def _is_class(class_path: str, cls: Any) -> bool:
    """Whether ``class_path`` names ``cls`` (dotted, or its bare name as LightningCLI accepts it)."""
    return class_path == cls.__name__ or ("." in class_path and resolve_dotted(class_path) is cls)
