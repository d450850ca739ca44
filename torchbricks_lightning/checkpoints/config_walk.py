"""Where a configuration (a checkpoint's hyperparameters, a recipe) asks jsonargparse to import or build something.

jsonargparse reads a configuration alongside the signatures of the classes it builds, and what it does with a value
depends on the type of its slot (checked against jsonargparse 4.53):

- a slot typed as plain data (``str``, numbers, ``Literal``, ``Enum``, paths, or containers of those): the value is
  kept as it is. A ``"test.loss"`` there is a name, never imported, and ``{class_path: ...}`` text stays text;
- a slot typed as a class, a callable or ``type``: a ``class_path`` entry is imported and built, a dotted string is
  imported, and a string is read as YAML first, so ``"{class_path: torch.nn.Linear}"`` is built too;
- a slot of any value (``Any``, ``object``, no annotation, ``**kwargs``): a ``class_path`` entry is imported and
  built (unless jsonargparse's ``instantiate_subclass_spec_in_any`` setting is off), and a string is read as YAML
  first, so a class spec written as text is built as well.

:func:`walk` yields a :class:`Finding` for each such value, with its key and how jsonargparse would treat it;
:mod:`~torchbricks_lightning.checkpoints.trust` decides which of them a checkpoint may hold. Signatures are read only
from classes that may be imported (``may_import``), so walking an untrusted configuration never imports it.

Example:
    >>> from typing import Any
    >>> def train(monitor: str = "", optimizer: object = None, compile_kwargs: Any = None) -> None: ...
    >>> config = {"monitor": "test.loss", "optimizer": "torch.optim.Adam",
    ...           "compile_kwargs": {"mode": "{class_path: torch.nn.Linear}"}}
    >>> for finding in walk(config, owner=train, may_import=lambda path: False):
    ...     print(finding.where, finding.path, finding.kind)
    optimizer torch.optim.Adam name
    compile_kwargs.mode.class_path torch.nn.Linear class spec in text
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml

__all__ = ["CLASS_KEYS", "UNKNOWN", "Finding", "FindingKind", "resolve_dotted", "walk"]

CLASS_KEYS = ("class_path", "_class_path")
"""Keys that make a mapping a class spec: jsonargparse's ``class_path`` and Lightning's ``_class_path``."""

FindingKind = Literal["class_path", "name", "class spec in untyped slot", "class spec in text"]
"""How jsonargparse would treat a value: build the class of a ``class_path`` entry in a typed slot, import a dotted
name, build a class spec in a slot of any value, or read text as YAML into a class spec and build it."""


class _Unknown:
    """The type of a slot whose signature is unknown (no owner, an unreadable signature): every value is suspect."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()
"""The type of a slot whose signature is unknown."""


@dataclass(frozen=True)
class Finding:
    """A value that jsonargparse would import or build: its key, the dotted path it names, and how."""

    where: str
    path: str
    kind: FindingKind


@dataclass(frozen=True)
class _Arguments:
    """The arguments of a class or function, by name, with their annotations (``Any`` where unannotated)."""

    types: Mapping[str, Any]
    takes_any: bool

    def type_of(self, name: str) -> Any:
        if name in self.types:
            return self.types[name]
        return Any if self.takes_any else UNKNOWN


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_DATA_TYPES: tuple[type, ...] = (str, bytes, int, float, complex, bool, type(None), enum.Enum, pathlib.PurePath)
_SEQUENCES: frozenset[Any] = frozenset(
    {list, tuple, set, frozenset}
    | {getattr(collections.abc, name) for name in ("Sequence", "MutableSequence", "Set", "MutableSet", "Collection")}
    | {collections.abc.Iterable}
)
_MAPPINGS: frozenset[Any] = frozenset({dict, collections.abc.Mapping, collections.abc.MutableMapping})
_UNIONS = (Union, types.UnionType)


def walk(
    config: Any,
    where: str = "",
    *,
    owner: Callable[..., Any] | None = None,
    may_import: Callable[[str], bool],
) -> Iterator[Finding]:
    """Every value in ``config`` that jsonargparse would import or build, in order, with its key.

    Each ``class_path`` is yielded before its class is imported to read its signature, so a caller that raises on
    an untrusted one never imports it.

    Args:
        config: nested dicts and lists, e.g. a checkpoint's hyperparameters or a recipe.
        where: the key of ``config`` itself, the prefix of every key yielded.
        owner: the class or function whose arguments the top level of ``config`` holds (e.g.
            ``LightningBrickCollection`` for a checkpoint's hyperparameters); None when unknown, so that every
            ``class_path`` and dotted name counts.
        may_import: whether a class may be imported to read its signature.
    """
    expected: Any = _arguments_of(owner) if owner is not None else UNKNOWN
    yield from _walk(config, where, expected, may_import, in_text=False)


def resolve_dotted(path: str) -> Any:
    """The object a dotted path names, the way jsonargparse imports it, or None when it does not resolve.

    jsonargparse imports the module part and takes the last name from it; when the module part is not a module, it
    takes the last two names from the module before them. So ``torch.os.system`` is ``os.system``. This imports
    modules: call it only for paths whose package you trust.

    Example:
        >>> resolve_dotted("torch.nn.Linear").__name__, resolve_dotted("torch.nn.Linaer"), resolve_dotted("Linear")
        ('Linear', None, None)
        >>> resolve_dotted("torch.os.system").__module__ in ("posix", "nt")
        True
    """
    if not _DOTTED.match(path):
        return None
    module_name, _, name = path.rpartition(".")
    try:
        try:
            parent: Any = importlib.import_module(module_name)
        except ModuleNotFoundError:
            if "." not in module_name:
                return None
            module_name, _, first = module_name.rpartition(".")
            parent = _attribute(importlib.import_module(module_name), first)
        return _attribute(parent, name)
    except (ImportError, AttributeError, ValueError):
        return None


def _attribute(parent: Any, name: str) -> Any:
    """``getattr``, importing a submodule of a package when it is not an attribute yet (as ``__import__`` with a
    ``fromlist`` does)."""
    if not hasattr(parent, name) and inspect.ismodule(parent) and hasattr(parent, "__path__"):
        importlib.import_module(f"{parent.__name__}.{name}")
    return getattr(parent, name)


# ------------------------------------------------------------------------------------------------ the walk
def _walk(value: Any, where: str, expected: Any, may_import: Callable[[str], bool], in_text: bool) -> Iterator[Finding]:
    if isinstance(value, Mapping):
        class_key = next((key for key in CLASS_KEYS if key in value), None)
        if class_key is not None:
            yield from _class_spec(value, where, class_key, expected, may_import, in_text)
            return
        for key, item in value.items():
            if key != "_instantiator":  # checked against Lightning's instantiators by the trust module
                yield from _walk(item, _join(where, key), _member_type(expected, str(key)), may_import, in_text)
    elif isinstance(value, (list, tuple)):
        item_type = _item_type(expected)
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}[{index}]", item_type, may_import, in_text)
    elif isinstance(value, str) and not _is_data(expected):
        yield from _string(value, where, expected, may_import, in_text)


def _class_spec(
    node: Mapping[str, Any],
    where: str,
    class_key: str,
    expected: Any,
    may_import: Callable[[str], bool],
    in_text: bool,
) -> Iterator[Finding]:
    """``{class_path, init_args, dict_kwargs}`` as jsonargparse writes it, or ``{_class_path, **arguments}`` as
    Lightning stores a module built in subclass mode."""
    class_path = node[class_key]
    here = _join(where, class_key)
    if not isinstance(class_path, str):
        yield Finding(here, repr(class_path), "class_path")
        return
    if in_text:
        yield Finding(here, class_path, "class spec in text")
        return
    if expected is not UNKNOWN and _accepts_any(expected):
        yield Finding(here, class_path, "class spec in untyped slot")
        return
    yield Finding(here, class_path, "class_path")
    target = resolve_dotted(class_path) if may_import(class_path) else None
    arguments: Any = _arguments_of(target) if callable(target) else UNKNOWN
    for key, item in node.items():
        if key in (class_key, "_instantiator"):  # Lightning's instantiator: checked by the trust module
            continue
        if class_key == "_class_path":
            yield from _walk(item, _join(where, key), _member_type(arguments, str(key)), may_import, in_text)
        elif key == "init_args" and isinstance(item, Mapping):
            for name, argument in item.items():
                yield from _walk(
                    argument, _join(where, f"init_args.{name}"), _member_type(arguments, str(name)), may_import, False
                )
        elif key == "dict_kwargs":  # the arguments of **kwargs: values of any type
            yield from _walk(item, _join(where, key), Mapping[str, Any], may_import, in_text)
        else:
            yield from _walk(item, _join(where, key), UNKNOWN, may_import, in_text)


def _string(
    value: str, where: str, expected: Any, may_import: Callable[[str], bool], in_text: bool
) -> Iterator[Finding]:
    """A string where jsonargparse may import it (a dotted name) or read it as YAML (text holding a class spec)."""
    if _DOTTED.match(value):
        if _root_importable(value):
            yield Finding(where, value, "name")
        return
    try:
        loaded = yaml.safe_load(value)
    except yaml.YAMLError:
        return
    if isinstance(loaded, (Mapping, list)) or (isinstance(loaded, str) and loaded != value):
        yield from _walk(loaded, where, expected, may_import, in_text=True)


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _root_importable(dotted: str) -> bool:
    """Whether the top-level package of a dotted name can be found (without importing it)."""
    try:
        return importlib.util.find_spec(dotted.split(".", 1)[0]) is not None
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------ annotations
def _arguments_of(target: Callable[..., Any]) -> _Arguments | Any:
    """The arguments of a class's constructor or of a function, or ``UNKNOWN`` when they cannot be read."""
    try:
        signature = inspect.signature(target, eval_str=True)
    except Exception:  # an annotation that does not evaluate: read the names, leave the types open
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return UNKNOWN
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


def _accepts_any(annotation: Any) -> bool:
    """Whether a slot typed ``annotation`` takes any value (``Any``, ``object``), None aside: a class spec there is
    built as whatever class it names."""
    members = [member for member in _members(annotation) if member not in (None, type(None))]
    return bool(members) and all(member is Any or member is object for member in members)


def _is_data(annotation: Any) -> bool:
    """Whether every value a slot typed ``annotation`` takes is plain data (jsonargparse imports none of it)."""
    if annotation is UNKNOWN or isinstance(annotation, _Arguments):
        return False
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
    if expected is UNKNOWN:
        return UNKNOWN
    values: list[Any] = []
    for member in _members(expected):
        origin = get_origin(member)
        if origin in _MAPPINGS:
            arguments = get_args(member)
            values.append(arguments[1] if len(arguments) == 2 else Any)
        elif member is Any or member is object:
            values.append(Any)
        elif not _is_data(member):
            return UNKNOWN  # a class or a callable: jsonargparse may read the mapping in other ways
    return Union[tuple(values)] if values else UNKNOWN  # noqa: UP007 - built from a runtime tuple


def _item_type(expected: Any) -> Any:
    """The annotation of the items of a list whose own annotation is ``expected``."""
    if expected is UNKNOWN or isinstance(expected, _Arguments):
        return UNKNOWN
    items: list[Any] = []
    for member in _members(expected):
        origin = get_origin(member)
        if origin in _SEQUENCES:
            arguments = [argument for argument in get_args(member) if argument is not Ellipsis]
            items.extend(arguments or [Any])
        elif member is Any or member is object:
            items.append(Any)
        elif not _is_data(member):
            return UNKNOWN
    return Union[tuple(items)] if items else UNKNOWN  # noqa: UP007 - built from a runtime tuple
