"""What a checkpoint may ask to import and build: the trust model of checkpoint loading.

A checkpoint written by the CLI holds the recipe of its module: ``class_path`` entries, and dotted names of
callables (an optimizer given as ``torch.optim.Adam``). Lightning hands them to jsonargparse, which imports and
builds them. Before that, every value that jsonargparse would import or build (see
:mod:`~torchbricks_lightning.checkpoints.config_walk`) is checked here:

1. a dotted path is imported only when it starts with a trusted package (:data:`TRUSTED_CLASS_PREFIXES`, or one of
   ``trusted_class_prefixes``); it is then resolved the way jsonargparse resolves it (``torch.os.system`` is
   ``os.system``);
2. the object it resolves to must be a class, defined in a trusted package (its real ``__module__``), of a kind that
   recipes build (:func:`allowed_kinds`: modules, metrics, optimizers, schedulers, datamodules, bricks). Functions,
   ``subprocess.Popen`` and anything reached through a trusted package's imports are refused;
3. a slot of any type (``Any``, no annotation, ``**kwargs``) holds plain data: a class spec there is refused, as is
   text that jsonargparse would read into a class spec (``"{class_path: ...}"``) anywhere. Strings in slots typed as
   plain data (``lr_scheduler_monitor: test.loss``) are data and are not checked;
4. the ``_instantiator`` a checkpoint names must be Lightning's CLI one.

:func:`check_checkpoint` applies this to every hyperparameter location that Lightning reads. The command line adds
the packages of the classes that the user's own ``--config`` files name by ``class_path``
(:func:`recipe_class_prefixes`); what a checkpoint holds never widens trust.

Example:
    >>> check_class_paths({"model": {"class_path": "torch.nn.Linear"}})
    >>> check_class_paths({"model": {"class_path": "torch.os.system"}})
    Traceback (most recent call last):
    ...
    torchbricks_lightning.errors.UntrustedClassError: ...'torch.os.system' at 'model.class_path', which resolves to ...
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from torchmetrics import Metric

from torchbricks_lightning.checkpoints.config_walk import Finding, resolve_dotted, walk
from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.errors import CheckpointError, ConfigError, UntrustedCheckpointError, UntrustedClassError

__all__ = [
    "HYPER_PARAMETER_KEYS",
    "LIGHTNING_INSTANTIATORS",
    "TRUSTED_CLASS_PREFIXES",
    "allowed_kinds",
    "check_checkpoint",
    "check_class_paths",
    "check_recipe_file",
    "importable_paths",
    "is_trusted",
    "recipe_class_prefixes",
    "resolve_dotted",
    "trusted_class",
]

TRUSTED_CLASS_PREFIXES: tuple[str, ...] = (
    "torchbricks_lightning.",
    "torch.",
    "torchvision.",
    "torchmetrics.",
)
"""Packages whose classes a checkpoint may ask to build without the user opting in."""

LIGHTNING_INSTANTIATORS: frozenset[str] = frozenset(
    {"pytorch_lightning.cli.instantiate_module", "lightning.pytorch.cli.instantiate_module"}
)
"""The ``_instantiator`` a checkpoint may name: Lightning's CLI function that rebuilds a module from its recipe."""

HYPER_PARAMETER_KEYS: tuple[str, ...] = ("hparams", "module_arguments", "hyper_parameters")
"""Where Lightning reads a module's constructor arguments in a checkpoint, oldest first (later keys win); a
datamodule's are under ``datamodule_hyper_parameters``."""

_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
"""How a checkpoint file starts: a zip archive (``torch.save``) or a pickle (the legacy format)."""

_DATAMODULE_KEY = "datamodule_hyper_parameters"
_HPARAMS_NAME_KEY = "hparams_name"


@functools.cache
def allowed_kinds() -> tuple[type, ...]:
    """The kinds of class a checkpoint may ask to build: what recipes configure (``DeltaM`` is the module's
    multi-task score, a plain record of baselines).

    Example:
        >>> sorted(kind.__name__ for kind in allowed_kinds())  # doctest: +NORMALIZE_WHITESPACE
        ['BrickCollection', 'BrickInterface', 'DeltaM', 'LRScheduler', 'LightningDataModule', 'Metric', 'Module',
         'Optimizer']
    """
    from torchbricks_lightning.multitask.score import DeltaM

    return (
        torch.nn.Module,
        Metric,
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
        pl.LightningDataModule,
        BrickInterface,
        BrickCollection,
        DeltaM,
    )


def is_trusted(name: str, trusted_class_prefixes: Iterable[str] = ()) -> bool:
    """Whether a dotted name (a class path or a module) lies in a trusted package: :data:`TRUSTED_CLASS_PREFIXES`
    or one of yours. A prefix is a whole package or module name, with or without its final dot.

    Example:
        >>> is_trusted("torch.nn.Linear"), is_trusted("torchx.Evil"), is_trusted("my.Model", ["my."])
        (True, False, True)
        >>> is_trusted("my_heads", ["my_heads."]), is_trusted("my_heads_evil.Head", ["my_heads"])
        (True, False)
    """
    for prefix in (*TRUSTED_CLASS_PREFIXES, *trusted_class_prefixes):
        package = prefix.rstrip(".")
        if package and (name == package or name.startswith(f"{package}.")):
            return True
    return False


def trusted_class(path: str, where: str, trusted_class_prefixes: Iterable[str] = ()) -> type:
    """The class ``path`` names, when a checkpoint may build it (see the module's docstring); else raise.

    Nothing is imported unless ``path`` starts with a trusted package.

    Raises:
        UntrustedClassError: ``path`` lies outside the trusted packages, or resolves to something other than a class
            of an allowed kind defined in a trusted package.
        CheckpointError: ``path`` is in a trusted package but does not resolve.

    Example:
        >>> trusted_class("torch.optim.Adam", "optimizer").__name__
        'Adam'
        >>> trusted_class("torch.utils.cpp_extension.subprocess.Popen", "compile_kwargs.x.class_path")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.UntrustedClassError: ...resolves to subprocess.Popen, a class of none of those...
    """
    prefixes = tuple(trusted_class_prefixes)
    if "." not in path:
        raise UntrustedClassError(
            f"The checkpoint names {path!r} at {where!r}, a short class name; a checkpoint must name classes by their "
            "full import path (the CLI writes them so), so it was not loaded."
        )
    if not is_trusted(path, prefixes):
        raise UntrustedClassError(
            f"The checkpoint names {path!r} at {where!r}, which is not in a trusted package "
            f"{_packages(prefixes)}; it was not loaded.",
            prefix=f"{path.rsplit('.', 1)[0]}.",
        )
    target = resolve_dotted(path)
    if target is None:
        raise CheckpointError(
            f"The checkpoint names {path!r} at {where!r}, which cannot be imported (is the installed version of its "
            "package older or newer than the one that wrote the checkpoint?)."
        )
    module = getattr(target, "__module__", None)
    real = f"{module}.{getattr(target, '__qualname__', getattr(target, '__name__', '?'))}"
    if not inspect.isclass(target) or not issubclass(target, allowed_kinds()):
        what = "a class of none of those kinds" if inspect.isclass(target) else f"a {type(target).__name__}"
        raise UntrustedClassError(
            f"The checkpoint names {path!r} at {where!r}, which resolves to {real}, {what}. A checkpoint may only ask "
            f"to build classes of these kinds: {', '.join(kind.__name__ for kind in allowed_kinds())}; it was not "
            "loaded."
        )
    if not isinstance(module, str) or not is_trusted(module, prefixes):
        raise UntrustedClassError(
            f"The checkpoint names {path!r} at {where!r}, which resolves to {real}, which is defined outside the "
            f"trusted packages {_packages(prefixes)}; it was not loaded.",
            prefix=_common_prefix(path, str(module)),
        )
    return target


def check_class_paths(
    config: Any, trusted_class_prefixes: Iterable[str] = (), *, owner: Callable[..., Any] | None = None
) -> None:
    """Raise if ``config`` (e.g. a checkpoint's hyperparameters) asks for anything a checkpoint may not build.

    Args:
        config: nested dicts and lists with ``class_path`` entries and dotted names of callables.
        trusted_class_prefixes: more trusted packages, e.g. ``["my_project."]``.
        owner: the class whose arguments the top level of ``config`` holds (``LightningBrickCollection`` for a
            module's hyperparameters); None when unknown, so every class path and dotted name is checked.

    Raises:
        UntrustedClassError: a value is not trusted (see the module's docstring).
        UntrustedCheckpointError: the checkpoint names another instantiator than Lightning's CLI one.
        CheckpointError: a class path in a trusted package does not resolve.
    """
    prefixes = tuple(trusted_class_prefixes)
    instantiator = config.get("_instantiator") if isinstance(config, Mapping) else None
    if instantiator is not None and instantiator not in LIGHTNING_INSTANTIATORS:
        raise UntrustedCheckpointError(
            f"The checkpoint asks Lightning to rebuild the model with {instantiator!r}, which is not one of "
            f"Lightning's trusted instantiators {sorted(LIGHTNING_INSTANTIATORS)}; it was not loaded."
        )
    for finding in walk(config, owner=owner, may_import=lambda path: is_trusted(path, prefixes)):
        _check_finding(finding, prefixes)


def check_checkpoint(
    checkpoint: Mapping[str, Any], owner: type, trusted_class_prefixes: Iterable[str] = ()
) -> dict[str, Any]:
    """Check every hyperparameter location of a checkpoint that Lightning reads; return the module's arguments.

    Lightning rebuilds a module from ``hparams`` and ``module_arguments`` (old checkpoints), then
    ``hyper_parameters``, each overriding the one before, and nests them all under one argument when
    ``hparams_name`` names one. Each location is checked, and so are those arguments as Lightning assembles them.
    A datamodule's ``datamodule_hyper_parameters`` are checked too.

    Args:
        checkpoint: the loaded checkpoint dict.
        owner: the module class being rebuilt, whose signature types the arguments.
        trusted_class_prefixes: more trusted packages.

    Returns:
        The module's constructor arguments, as Lightning will read them.

    Raises:
        UntrustedCheckpointError: a location asks for something a checkpoint may not build.
        CheckpointError: a location is not a dict.
    """
    prefixes = tuple(trusted_class_prefixes)
    arguments: dict[str, Any] = {}
    for key in HYPER_PARAMETER_KEYS:
        values = _mapping_at(checkpoint, key)
        check_class_paths(values, prefixes, owner=owner)
        arguments.update(values)
    name = checkpoint.get(_HPARAMS_NAME_KEY)
    if isinstance(name, str) and name in inspect.signature(owner).parameters:
        arguments = {name: arguments}
    check_class_paths(arguments, prefixes, owner=owner)
    # A datamodule built in subclass mode names its class (``_class_path``), whose signature types the rest.
    check_class_paths(_mapping_at(checkpoint, _DATAMODULE_KEY), prefixes)
    return arguments


def recipe_class_prefixes(recipe_paths: Iterable[str | os.PathLike[str] | None]) -> tuple[str, ...]:
    """The packages of the classes that the user's own recipes name by ``class_path``: trusted for this command.

    A user who passes ``--config recipe.yaml`` to ``validate``, ``test``, ``predict``, ``export`` or ``fit
    --ckpt_path`` trusts the classes it names, so a checkpoint trained from that recipe loads without
    ``--trusted_class_prefixes``: ``class_path: tabular.MyHead`` trusts ``tabular.``. Only the ``class_path``
    values written in these files count: not the checkpoint's own recipe (merged into the configuration after
    this), not dotted names in other keys, not the classes a named class's arguments default to. Nothing is
    imported here; each class the checkpoint asks for is still checked by :func:`trusted_class` (a class of an
    allowed kind, defined in a trusted package).

    Args:
        recipe_paths: the ``--config`` files of the command (None for a recipe given as text: skipped).

    Returns:
        The prefixes, e.g. ``('tabular.',)``, in the order the files name them.

    Raises:
        ConfigError: a file is a checkpoint (pass it as ``--ckpt_path``), or cannot be read.

    Example:
        >>> import pathlib, tempfile
        >>> recipe = pathlib.Path(tempfile.mkdtemp()) / "recipe.yaml"
        >>> _ = recipe.write_text("model: {head: {class_path: tabular.MyHead, init_args: {n: 2}}}\\n"
        ...                       "optimizer: my_optim.Adam\\ndata: {class_path: my_data.heads.Rows}\\n")
        >>> recipe_class_prefixes([recipe, None])
        ('tabular.', 'my_data.heads.')
    """
    prefixes: dict[str, None] = {}
    for path in recipe_paths:
        if path is None:
            continue
        for class_path in _class_paths(_read_recipe(os.fspath(path))):
            module, _, name = class_path.rpartition(".")
            if module and name:
                prefixes[f"{module}."] = None
    return tuple(prefixes)


def check_recipe_file(path: str | os.PathLike[str]) -> str:
    """The text of a ``--config`` file; a checkpoint or a file that is not text is refused (nothing is unpickled).

    Raises:
        ConfigError: the file is a checkpoint (pass it as ``--ckpt_path``), is not UTF-8 text, or cannot be read.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise ConfigError(f"Could not read the recipe --config {os.fspath(path)!r}: {err}.") from err
    if data.startswith(_CHECKPOINT_MAGIC):
        raise ConfigError(
            f"--config {os.fspath(path)!r} is a checkpoint, not a recipe: pass it as --ckpt_path, and the recipe (a "
            "YAML file) as --config. A checkpoint's recipe is never read as yours."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"--config {os.fspath(path)!r} is not a text file ({err}); a recipe is a YAML file."
        ) from None


def _read_recipe(path: str) -> Any:
    """A ``--config`` file as YAML; None when it is not YAML (the parser reports it)."""
    try:
        return yaml.safe_load(check_recipe_file(path))
    except yaml.YAMLError:
        return None


def _class_paths(node: Any) -> Iterator[str]:
    """Every ``class_path`` value (a string) in a loaded recipe, at any depth."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "class_path" and isinstance(value, str):
                yield value
            else:
                yield from _class_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _class_paths(value)


def importable_paths(
    config: Any,
    where: str = "",
    *,
    owner: Callable[..., Any] | None = None,
    may_import: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, str]]:
    """Every dotted path in ``config`` that jsonargparse would import, with its key (see
    :func:`~torchbricks_lightning.checkpoints.config_walk.walk`).

    Example:
        >>> def train(monitor: str = "", optimizer: object = None) -> None: ...
        >>> list(importable_paths({"monitor": "test.loss", "optimizer": "torch.optim.Adam"}, owner=train))
        [('optimizer', 'torch.optim.Adam')]
    """
    for finding in walk(config, where, owner=owner, may_import=may_import or is_trusted):
        yield finding.where, finding.path


def _check_finding(finding: Finding, prefixes: tuple[str, ...]) -> None:
    if finding.kind == "class spec in untyped slot":
        raise UntrustedClassError(
            f"The checkpoint holds a class spec ({finding.path!r}) at {finding.where!r}, an argument of any type (Any, "
            "no annotation, or **kwargs). Such arguments of a checkpoint are plain data, never built, so it was not "
            "loaded. If the class is yours, annotate the argument with the class it takes."
        )
    if finding.kind == "class spec in text":
        raise UntrustedClassError(
            f"The checkpoint holds text at {finding.where!r} that reads as a class spec ({finding.path!r}); text is "
            "never turned into classes, so it was not loaded."
        )
    trusted_class(finding.path, finding.where, prefixes)


def _mapping_at(checkpoint: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    values = checkpoint.get(key)
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise CheckpointError(
            f"The checkpoint's {key!r} is a {type(values).__name__}, not a dict of arguments; it is not a checkpoint "
            "that Lightning can rebuild."
        )
    return values


def _packages(prefixes: tuple[str, ...]) -> list[str]:
    return [*TRUSTED_CLASS_PREFIXES, *prefixes]


def _common_prefix(path: str, module: str) -> str | None:
    """The longest package both the path and the object's real module lie in, as a prefix (None: no common one)."""
    common: list[str] = []
    for left, right in zip(path.split(".")[:-1], module.split("."), strict=False):
        if left != right:
            break
        common.append(left)
    return f"{'.'.join(common)}." if common else None
