"""Which names a checkpoint or a recipe asks jsonargparse to import, and whether they come from trusted packages.

A checkpoint written by the CLI holds the recipe of its module: ``class_path`` entries, and dotted names of
callables (an optimizer given as ``torch.optim.Adam``). ``load_from_checkpoint`` hands them to jsonargparse, which
imports them, so each one must come from a trusted package first.

Which strings are names to import is read from the signatures, walking the configuration alongside the classes it
instantiates: a string in an argument typed as plain data (``str``, a number, a ``Literal``, an ``Enum``, a path, or
containers of those) is data, never imported: a monitor such as ``"test.loss"`` is not the module ``test``. A dotted
string anywhere else (an argument typed as a class, a callable, ``type`` or ``Any``, or one whose type is unknown) may
be imported by jsonargparse, so it is checked. Signatures are read only from classes that may be imported (by
default, those in trusted packages), so checking an untrusted checkpoint never imports it.

Example:
    >>> def train(monitor: str = "", optimizer: object = None) -> None: ...
    >>> config = {"monitor": "test.loss", "optimizer": "torch.optim.Adam"}
    >>> list(importable_paths(config, owner=train))
    [('optimizer', 'torch.optim.Adam')]
"""

from __future__ import annotations

import collections.abc
import enum
import importlib
import importlib.util
import inspect
import pathlib
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from torchbricks_lightning.errors import UntrustedCheckpointError

__all__ = [
    "LIGHTNING_INSTANTIATORS",
    "TRUSTED_CLASS_PREFIXES",
    "check_class_paths",
    "importable_paths",
    "is_trusted",
    "resolve_dotted",
]

TRUSTED_CLASS_PREFIXES: tuple[str, ...] = (
    "torchbricks_lightning.",
    "torch.",
    "torchvision.",
    "torchmetrics.",
)
"""Packages whose classes a checkpoint may ask to instantiate without the user opting in."""

LIGHTNING_INSTANTIATORS: frozenset[str] = frozenset(
    {"pytorch_lightning.cli.instantiate_module", "lightning.pytorch.cli.instantiate_module"}
)
"""The ``_instantiator`` a checkpoint may name: Lightning's CLI function that rebuilds a module from its recipe.
(Lightning keeps its own allowlist too, in a private name; this one does not depend on it.)"""

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_DATA_TYPES: tuple[type, ...] = (str, bytes, int, float, complex, bool, type(None), enum.Enum, pathlib.PurePath)
_SEQUENCES: frozenset[Any] = frozenset(
    {list, tuple, set, frozenset}
    | {getattr(collections.abc, name) for name in ("Sequence", "MutableSequence", "Set", "MutableSet", "Collection")}
    | {collections.abc.Iterable}
)
_MAPPINGS: frozenset[Any] = frozenset({dict, collections.abc.Mapping, collections.abc.MutableMapping})
_UNIONS = (Union, types.UnionType)


@dataclass(frozen=True)
class _Arguments:
    """The arguments of a class or function, by name, with their annotations (``Any`` where unknown)."""

    types: Mapping[str, Any]
    takes_any: bool

    def type_of(self, name: str) -> Any:
        return self.types.get(name, Any)


def is_trusted(class_path: str, trusted_class_prefixes: Iterable[str] = ()) -> bool:
    """Whether ``class_path`` lies in a trusted package (:data:`TRUSTED_CLASS_PREFIXES` or one of yours).

    Example:
        >>> is_trusted("torch.nn.Linear"), is_trusted("torchx.Evil"), is_trusted("my.Model", ["my."])
        (True, False, True)
    """
    return class_path.startswith((*TRUSTED_CLASS_PREFIXES, *trusted_class_prefixes))


def resolve_dotted(path: str) -> Any:
    """The object a dotted path names (``"torch.nn.Linear"``), or None when it is not dotted or cannot be imported.

    It imports the module, so call it only for names you trust.

    Example:
        >>> resolve_dotted("torch.nn.Linear").__name__, resolve_dotted("torch.nn.Linaer"), resolve_dotted("Linear")
        ('Linear', None, None)
    """
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        return None
    try:
        return getattr(importlib.import_module(module_name), attribute, None)
    except (ImportError, ValueError):
        return None


def importable_paths(
    config: Any,
    where: str = "",
    *,
    owner: Callable[..., Any] | None = None,
    may_import: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, str]]:
    """Every value in ``config`` that jsonargparse could import, with its key: ``class_path`` entries, and dotted
    names of installed packages in arguments whose type admits a class or a callable.

    Each ``class_path`` is yielded before its class is imported to read its signature, so a caller that stops at an
    untrusted one never imports it.

    Args:
        config: nested dicts and lists, e.g. a checkpoint's hyperparameters or a recipe.
        where: the key of ``config`` itself, the prefix of every key yielded.
        owner: the class or function whose arguments the top level of ``config`` holds (e.g.
            ``LightningBrickCollection`` for a checkpoint's hyperparameters); None when unknown, so every dotted
            string at the top level counts.
        may_import: whether a class may be imported to read its signature; default: classes in trusted packages.

    Yields:
        ``(key, dotted name)`` pairs, such as ``("brick_collection.head0.class_path", "my_project.Head")``.
    """
    allowed = may_import if may_import is not None else is_trusted
    expected: Any = _arguments_of(owner) if owner is not None else Any
    yield from _walk(config, where, expected, allowed)


def check_class_paths(
    config: Any, trusted_class_prefixes: Iterable[str] = (), *, owner: Callable[..., Any] | None = None
) -> None:
    """Raise if ``config`` (e.g. a checkpoint's hyperparameters) names a class outside the trusted packages.

    Args:
        config: nested dicts and lists with ``class_path`` entries and dotted names of callables.
        trusted_class_prefixes: more trusted prefixes, e.g. ``["my_project."]``.
        owner: the class whose arguments the top level of ``config`` holds (see :func:`importable_paths`).

    Raises:
        UntrustedCheckpointError: a class path is not trusted, or the checkpoint names another instantiator than
            Lightning's CLI one.

    Example:
        >>> check_class_paths({"model": {"class_path": "torch.nn.Linear"}})
        >>> check_class_paths({"model": {"class_path": "evil.Payload"}})
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.UntrustedCheckpointError: ...'evil.Payload' at 'model.class_path'...
    """
    prefixes = tuple(trusted_class_prefixes)
    instantiator = config.get("_instantiator") if isinstance(config, Mapping) else None
    if instantiator is not None and instantiator not in LIGHTNING_INSTANTIATORS:
        raise UntrustedCheckpointError(
            f"The checkpoint asks Lightning to rebuild the model with {instantiator!r}, which is not one of "
            f"Lightning's trusted instantiators {sorted(LIGHTNING_INSTANTIATORS)}; it was not loaded."
        )
    for where, class_path in importable_paths(config, owner=owner, may_import=lambda path: is_trusted(path, prefixes)):
        if not is_trusted(class_path, prefixes):
            raise UntrustedCheckpointError(
                f"The checkpoint asks to instantiate {class_path!r} at {where!r}, which is not in a trusted package "
                f"{[*TRUSTED_CLASS_PREFIXES, *prefixes]}; it was not loaded. If you trust this checkpoint, pass "
                f"trusted_class_prefixes=[{class_path.rsplit('.', 1)[0] + '.'!r}]."
            )


# ------------------------------------------------------------------------------------------------ the walk
def _walk(value: Any, where: str, expected: Any, may_import: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        class_key = next((key for key in ("class_path", "_class_path") if key in value), None)
        if class_key is not None:
            yield from _class_node(value, where, class_key, may_import)
            return
        for key, item in value.items():
            if key != "_instantiator":  # checked by check_class_paths against Lightning's instantiators
                yield from _walk(item, _join(where, key), _member_type(expected, str(key)), may_import)
    elif isinstance(value, (list, tuple)):
        item_type = _item_type(expected)
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}[{index}]", item_type, may_import)
    elif isinstance(value, str) and not _is_data(expected) and _DOTTED.match(value) and _root_importable(value):
        yield where, value


def _class_node(
    node: Mapping[str, Any], where: str, class_key: str, may_import: Callable[[str], bool]
) -> Iterator[tuple[str, str]]:
    """``{class_path, init_args, dict_kwargs}`` as jsonargparse writes it, or ``{_class_path, **arguments}`` as
    Lightning stores a module built in subclass mode."""
    class_path = node[class_key]
    if isinstance(class_path, str):
        yield _join(where, class_key), class_path
    target = resolve_dotted(class_path) if isinstance(class_path, str) and may_import(class_path) else None
    arguments: Any = _arguments_of(target) if callable(target) else Any
    for key, item in node.items():
        if key == class_key:
            continue
        if class_key == "_class_path":
            yield from _walk(item, _join(where, key), _member_type(arguments, key), may_import)
        elif key == "init_args" and isinstance(item, Mapping):
            for name, argument in item.items():
                here = _join(where, f"init_args.{name}")
                yield from _walk(argument, here, _member_type(arguments, str(name)), may_import)
        else:  # dict_kwargs (arguments for **kwargs) and anything else: types unknown
            yield from _walk(item, _join(where, key), Any, may_import)


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _root_importable(dotted: str) -> bool:
    """Whether the top-level package of a dotted name is installed (found without importing it)."""
    try:
        return importlib.util.find_spec(dotted.split(".", 1)[0]) is not None
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------ annotations
def _arguments_of(target: Callable[..., Any]) -> _Arguments | Any:
    """The arguments of a class's constructor or of a function, or ``Any`` when they cannot be read."""
    try:
        signature = inspect.signature(target, eval_str=True)
    except Exception:  # an annotation that does not evaluate: read the names, leave the types unknown
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return Any
    named: dict[str, Any] = {}
    takes_any = False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            takes_any = True
        elif parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            annotation = parameter.annotation
            unknown = annotation is inspect.Parameter.empty or isinstance(annotation, str)
            named[parameter.name] = Any if unknown else annotation
    return _Arguments(named, takes_any)


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a Union (or the annotation itself), with ``Annotated`` unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin in _UNIONS:
        return [member for argument in get_args(annotation) for member in _members(argument)]
    return [annotation]


def _is_data(annotation: Any) -> bool:
    """Whether every value an argument typed ``annotation`` takes is plain data (jsonargparse imports none of it)."""
    for member in _members(annotation):
        origin = get_origin(member)
        if origin is Literal or member is None:
            continue
        if origin is not None:
            arguments = [argument for argument in get_args(member) if argument is not Ellipsis]
            if origin not in _SEQUENCES | _MAPPINGS or not arguments or not all(map(_is_data, arguments)):
                return False
        elif not (isinstance(member, type) and issubclass(member, _DATA_TYPES)):
            return False
    return True


def _member_type(expected: Any, key: str) -> Any:
    """The annotation of the value at ``key`` of a mapping whose own annotation is ``expected``."""
    if isinstance(expected, _Arguments):
        return expected.type_of(key)
    values: list[Any] = []
    for member in _members(expected):
        origin = get_origin(member)
        if origin in _MAPPINGS:
            arguments = get_args(member)
            values.append(arguments[1] if len(arguments) == 2 else Any)
        elif not _is_data(member):
            return Any  # a class, a callable or Any: jsonargparse may read the mapping in other ways
    return Union[tuple(values)] if values else Any  # noqa: UP007 - built from a runtime tuple


def _item_type(expected: Any) -> Any:
    """The annotation of the items of a list whose own annotation is ``expected``."""
    items: list[Any] = []
    for member in _members(expected):
        origin = get_origin(member)
        if origin in _SEQUENCES:
            arguments = [argument for argument in get_args(member) if argument is not Ellipsis]
            items.extend(arguments or [Any])
        elif not _is_data(member):
            return Any
    return Union[tuple(items)] if items else Any  # noqa: UP007 - built from a runtime tuple
