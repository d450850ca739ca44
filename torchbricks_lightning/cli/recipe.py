"""Checks of a recipe that name the key of a mistake jsonargparse reports unclearly: pure functions over its values.

jsonargparse checks every value of a recipe against the signatures, and it is right about what is wrong. But a
mistake inside ``model.brick_collection`` (an argument of a brick, a class that does not exist, a plain module where
a brick belongs, a misspelt stage) fails every alternative of the ``BrickCollection | dict of bricks`` union, and
jsonargparse reports each of them: a page whose first lines are about an unrelated option. These checks find the
first such mistake in the values jsonargparse loaded, and say what and where in one line. They run only when
jsonargparse has refused the recipe (see :mod:`torchbricks_lightning.cli.app`), so they never refuse a recipe
jsonargparse accepts.

Example:
    >>> recipe = {"model": {"brick_collection": {"head": {"class_path": "torch.nn.Linear"}}}}
    >>> print(first_recipe_problem(recipe))  # doctest: +ELLIPSIS
    model.brick_collection.head.class_path: 'torch.nn.Linear' is not a brick. An entry under a brick collection ...
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Iterator, Mapping
from typing import Any, get_args

from jsonargparse import ArgumentParser
from pytorch_lightning import Trainer
from torch import nn

from torchbricks_lightning.checkpoints.trust import importable_paths, resolve_dotted
from torchbricks_lightning.cli.recipe_metrics import first_metric_problem
from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage, StageName
from torchbricks_lightning.errors import did_you_mean
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = [
    "SUBCOMMANDS",
    "accepted_arguments",
    "first_alive_stages_problem",
    "first_brick_problem",
    "first_brick_that_fails",
    "first_recipe_problem",
    "first_unimportable_class",
]

SUBCOMMANDS = ("fit", "validate", "test", "predict")
"""The subcommands whose sections a recipe given before the subcommand may hold."""

_SECTION_OWNERS: dict[str, Any] = {"model": LightningBrickCollection, "trainer": Trainer}
"""The class whose arguments each section of a recipe holds (``data`` is a ``class_path`` entry itself)."""

_STAGE_VALUES = list(get_args(StageName))
_RECIPE_STAGES = {*_STAGE_VALUES, *(stage.name for stage in Stage)}
"""What jsonargparse accepts in ``alive_stages``: the stages' values and the names of ``Stage`` members."""


def first_recipe_problem(config: Any, *, run_from: str | None = None, recipe_folder: str | None = None) -> str | None:
    """A message for the first mistake in a recipe that jsonargparse reports unclearly, naming its key.

    The checks, in order: :func:`first_unimportable_class`, :func:`first_brick_problem`,
    :func:`~torchbricks_lightning.cli.recipe_metrics.first_metric_problem` and :func:`first_alive_stages_problem`.
    A recipe given before the subcommand holds one section per subcommand (``fit:``); each is checked, and its keys
    start with the subcommand.

    Args:
        config: a recipe as loaded from YAML (nested dicts, lists and plain values).
        run_from: the folder the command was run from (the current folder when None), where Python looks for a
            recipe's own modules; see :func:`first_unimportable_class`.
        recipe_folder: the folder of the recipe's file, named too when it is another one.

    Returns:
        The message, or None when none of these checks finds a mistake.
    """
    if not isinstance(config, Mapping):
        return None
    for subcommand in SUBCOMMANDS:
        section = config.get(subcommand)
        if isinstance(section, Mapping):
            problem = first_recipe_problem(section, run_from=run_from, recipe_folder=recipe_folder)
            if problem:
                return f"{subcommand}.{problem}"
    return (
        first_unimportable_class(config, run_from=run_from, recipe_folder=recipe_folder)
        or first_brick_problem(config)
        or first_metric_problem(config)
        or first_alive_stages_problem(config)
    )


def first_brick_that_fails(config: Mapping[str, Any]) -> tuple[str, Exception] | None:
    """The first entry of ``model.brick_collection`` whose class raises when it is built, with what it raised.

    jsonargparse builds the whole collection as one value of the ``BrickCollection | dict of bricks`` union, so a
    brick's own error (``num_classes`` and ``class_names`` that disagree) comes back as one line of a page about
    every alternative. Built alone, as an ``nn.Module``, the entry raises its own exception. Run only after the
    collection failed to build: each entry is built once more here.

    Args:
        config: a parsed recipe (plain dicts: a ``Namespace``'s ``as_dict()``).

    Returns:
        ``(key, exception)``, or None when every entry builds on its own.
    """
    model = config.get("model")
    bricks = model.get("brick_collection") if isinstance(model, Mapping) else None
    for where, entry in _class_path_entries(bricks, "model.brick_collection"):
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--entry", type=nn.Module)
        try:
            parsed = parser.parse_object({"entry": entry})
        except Exception:  # noqa: S112 - a value jsonargparse refuses: the recipe checks report it, not this one
            continue
        try:
            parser.instantiate(parsed)
        except Exception as err:
            return where, err
    return None


def _class_path_entries(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``class_path`` entries of a brick collection's recipe (nested dicts of bricks walked through)."""
    if not isinstance(node, Mapping):
        return
    if "class_path" in node:
        yield where, {key: value for key, value in node.items() if not str(key).startswith("__")}
        return
    for name, value in node.items():
        if not str(name).startswith("__"):
            yield from _class_path_entries(value, f"{where}.{name}")


def first_unimportable_class(
    config: Mapping[str, Any], *, run_from: str | None = None, recipe_folder: str | None = None
) -> str | None:
    """A message for the first class path or dotted callable in a recipe that cannot be imported, naming its key.

    It walks the recipe like the checkpoint allowlist does, reading the signatures: ``class_path`` entries, and
    dotted names in arguments that take a class or a callable (an optimizer given as ``torch.optim.Adam``). A
    dotted string in a ``str`` argument (a monitor such as ``test.loss``) is data, not checked. A module that is
    not found is looked for in ``run_from`` (the folder the command was run from: jsonargparse reads a recipe from
    inside its folder, so the current folder then is the recipe's) and the installed packages.

    Example:
        >>> first_unimportable_class({"model": {"optimizer": "torch.optim.Adamm", "lr_scheduler_monitor": "test.x"}})
        "model.optimizer: module 'torch.optim' has no class 'Adamm'. Did you mean 'Adam'? Fix: write torch.optim.Adam."
    """
    for key, section in config.items():
        owner = _SECTION_OWNERS.get(str(key))
        for where, class_path in importable_paths(section, str(key), owner=owner, may_import=_any_class):
            module_name, _, attribute = class_path.rpartition(".")
            if not module_name:
                continue  # a short name such as 'ModelCheckpoint': LightningCLI resolves those itself
            try:
                module = importlib.import_module(module_name)
            except (ImportError, ValueError) as err:
                return f"{where}: cannot import module {module_name!r} for class_path {class_path!r}. " + _import_hint(
                    err, run_from or os.getcwd(), recipe_folder
                )
            if not hasattr(module, attribute):
                names = [name for name in dir(module) if not name.startswith("_")]
                close = difflib.get_close_matches(attribute, names, n=1)
                fix = f"write {module_name}.{close[0]}" if close else f"name a class that {module_name} defines"
                return (
                    f"{where}: module {module_name!r} has no class {attribute!r}.{did_you_mean(attribute, names)} "
                    f"Fix: {fix}."
                )
    return None


def first_brick_problem(config: Mapping[str, Any]) -> str | None:
    """A message for the first entry under ``model.brick_collection`` that is not a brick or has an unknown argument.

    Each entry directly under a brick collection must be a brick, a ``BrickCollection`` or a dict of bricks, and
    every ``init_args`` key (at any depth) must be an argument of its class.
    """
    model = config.get("model")
    bricks = model.get("brick_collection") if isinstance(model, Mapping) else None
    return next(_collection_problems(bricks, "model.brick_collection"), None)


def first_alive_stages_problem(config: Mapping[str, Any]) -> str | None:
    """A message for the first ``alive_stages`` under ``model`` that is not ``all``, ``none`` or a list of stages.

    Example:
        >>> bricks = {"head": {"class_path": "torchbricks_lightning.BrickTrainable",
        ...                    "init_args": {"alive_stages": ["train", "valdation"]}}}
        >>> print(first_alive_stages_problem({"model": {"brick_collection": bricks}}))  # doctest: +ELLIPSIS
        model.brick_collection.head.init_args.alive_stages: Unknown stage 'valdation'. ... Did you mean 'validation'?
    """
    for where, value in _alive_stage_values(config.get("model"), "model"):
        problem = _alive_stages_problem(value)
        if problem:
            return f"{where}: {problem}"
    return None


def accepted_arguments(cls: Any) -> list[str] | None:
    """The keyword arguments of ``cls``'s constructor, or None when it takes ``**kwargs`` or has no signature.

    Example:
        >>> accepted_arguments(Exception), accepted_arguments(len)
        (None, None)
    """
    if not inspect.isclass(cls):
        return None
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [parameter.name for parameter in parameters if parameter.kind in keyword]


def _import_hint(err: BaseException, run_from: str, recipe_folder: str | None = None) -> str:
    """How to make a module importable, or what went wrong inside it when it was found but failed to import.

    Example:
        >>> error = ModuleNotFoundError("No module named 'my_heads'", name="my_heads")
        >>> print(_import_hint(error, "/home/me", "/home/me/recipes"))  # doctest: +NORMALIZE_WHITESPACE
        Python looks for 'my_heads' in the current folder (/home/me), the folder the command was run from, not in
        the recipe's folder (/home/me/recipes), and in the installed packages. Fix: run the command from the folder
        that holds my_heads.py (or the package folder my_heads/), or add that folder to PYTHONPATH (or install
        your package: pip install -e .).
    """
    missing = getattr(err, "name", None)
    if isinstance(err, ModuleNotFoundError) and missing:
        top = missing.split(".")[0]
        elsewhere = ""
        if recipe_folder and os.path.abspath(recipe_folder) != os.path.abspath(run_from):
            elsewhere = f", not in the recipe's folder ({recipe_folder}),"
        return (
            f"Python looks for {top!r} in the current folder ({run_from}), the folder the command was run from"
            f"{elsewhere} and in the installed packages. Fix: run the command from the folder that holds {top}.py "
            f"(or the package folder {top}/), or add that folder to PYTHONPATH (or install your package: pip "
            "install -e .)."
        )
    return f"Importing it failed: {type(err).__name__}: {err}"


# ------------------------------------------------------------------------------------------------ bricks
def _any_class(class_path: str) -> bool:
    """A recipe's classes may all be imported to read their signatures: jsonargparse imports them anyway."""
    return True


def _collection_problems(node: Any, where: str) -> Iterator[str]:
    """Problems of a brick collection: a ``BrickCollection`` class path, or a dict of bricks."""
    if not isinstance(node, Mapping):
        return
    if "class_path" in node:
        yield from _entry_problems(node, where, brick_allowed=False)
        return
    for name, value in node.items():
        here = f"{where}.{name}"
        if isinstance(value, Mapping) and "class_path" in value:
            yield from _entry_problems(value, here, brick_allowed=True)
        else:
            yield from _collection_problems(value, here)  # a nested dict of bricks


def _entry_problems(node: Mapping[str, Any], where: str, brick_allowed: bool) -> Iterator[str]:
    class_path = node.get("class_path")
    cls = resolve_dotted(class_path) if isinstance(class_path, str) else None
    if cls is None:
        return  # a short name that LightningCLI resolves itself (an unimportable one is reported before)
    allowed: tuple[type, ...] = (BrickInterface, BrickCollection) if brick_allowed else (BrickCollection,)
    if not (inspect.isclass(cls) and issubclass(cls, allowed)):
        if brick_allowed:
            yield (
                f"{where}.class_path: {class_path!r} is not a brick. An entry under a brick collection must be a "
                "BrickInterface (e.g. torchbricks_lightning.BrickTrainable), a BrickCollection or a dict of bricks. "
                f"Wrap the module in a brick: class_path: torchbricks_lightning.BrickTrainable, with init_args "
                f"model (class_path: {class_path}), input_names and output_names."
            )
        else:
            yield (
                f"{where}.class_path: {class_path!r} is not a BrickCollection. model.brick_collection must be a "
                "BrickCollection or a dict of bricks."
            )
        return
    yield from _argument_problems(node, where)
    init_args = node.get("init_args")
    if issubclass(cls, BrickCollection) and isinstance(init_args, Mapping):
        yield from _collection_problems(init_args.get("bricks"), f"{where}.init_args.bricks")


def _argument_problems(node: Any, where: str) -> Iterator[str]:
    """Unknown ``init_args`` keys of ``node`` and of the class paths nested in its arguments (a brick's model)."""
    if isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _argument_problems(value, f"{where}[{index}]")
        return
    if not isinstance(node, Mapping):
        return
    init_args = node.get("init_args")
    if "class_path" in node and isinstance(init_args, Mapping):
        class_path = node["class_path"]
        cls = resolve_dotted(class_path) if isinstance(class_path, str) else None
        accepted = accepted_arguments(cls) if cls is not None else None
        for key in init_args:
            if accepted is not None and key not in accepted:
                yield (
                    f"{where}.init_args.{key}: {class_path} takes no argument {key!r}."
                    f"{did_you_mean(str(key), accepted)} Its arguments are {accepted}."
                )
        for key, value in init_args.items():
            if key != "bricks" or cls is None or not issubclass(cls, BrickCollection):
                yield from _argument_problems(value, f"{where}.init_args.{key}")
    elif "class_path" not in node:
        for key, value in node.items():
            yield from _argument_problems(value, f"{where}.{key}")


# ------------------------------------------------------------------------------------------------ stages
def _alive_stage_values(config: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every ``alive_stages`` value in a (nested) brick configuration, with its key."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            here = f"{where}.{key}"
            if key == "alive_stages" and value is not None:
                yield here, value
            else:
                yield from _alive_stage_values(value, here)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from _alive_stage_values(value, f"{where}[{index}]")


def _alive_stages_problem(value: Any) -> str | None:
    if value in ("all", "none"):
        return None
    if isinstance(value, str):
        return (
            f"Expected 'all', 'none' or a list of stages, but got the string {value!r}. Wrap a single stage in a "
            f"list: [{value}]."
        )
    if not isinstance(value, list):
        return f"Expected 'all', 'none' or a list of stages, but got {type(value).__name__}: {value!r}."
    for stage in value:
        if not isinstance(stage, str) or stage not in _RECIPE_STAGES:
            return (
                f"Unknown stage {stage!r}. Expected one of {_STAGE_VALUES}."
                f"{did_you_mean(str(stage).lower(), _STAGE_VALUES)}"
            )
    return None
