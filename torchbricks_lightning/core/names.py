"""Data names: what a brick reads and writes, checked once when the brick is built.

A brick names its inputs as a list (passed positionally) or a dict ``{argument_name: data_name}`` (passed as
keyword arguments), and its outputs as a list. Two input names are special: ``"stage"`` passes the current
:class:`~torchbricks_lightning.core.stages.Stage`, and ``"__all__"`` passes every named value as one dict.

Any string is a valid argument name here: the generated stage code passes keyword arguments through a dict
literal built with ``repr``, so no name ever reaches generated source unquoted.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from torchbricks_lightning.errors import BrickDefinitionError, InvalidNameError

__all__ = [
    "ALL_INPUTS",
    "RESERVED_INPUT_NAMES",
    "STAGE_INPUT",
    "InputNames",
    "check_brick_name",
    "check_data_name",
    "first_control_character",
    "normalize_input_names",
    "normalize_output_names",
]

ALL_INPUTS = "__all__"
"""Input name that passes every named value (a dict) to the brick."""
STAGE_INPUT = "stage"
"""Input name that passes the current :class:`Stage` to the brick."""
RESERVED_INPUT_NAMES = (ALL_INPUTS, STAGE_INPUT)
"""Names that are inputs only: no brick may produce them."""

InputNames = Sequence[str] | Mapping[str, str]


def first_control_character(name: str) -> tuple[int, str] | None:
    """The position and the character of the first control character in ``name`` (NUL, a tab, a newline, ...),
    or None: file formats cut names at NUL (zip member names), and no name is meant to hold one.

    Example:
        >>> first_control_character("head0/logits") is None
        True
        >>> first_control_character("head0/logits\\x00copy")
        (12, '\\x00')
    """
    for position, character in enumerate(name):
        if unicodedata.category(character) == "Cc":
            return position, character
    return None


def _control_character_error(kind: str, name: str, where: str) -> InvalidNameError | None:
    control = first_control_character(name)
    if control is None:
        return None
    shown = name if len(name) <= 60 else f"{name[:60]}..."
    return InvalidNameError(
        f"{kind} {shown!r}{where} holds the control character {control[1]!r}"
        f"{' (NUL)' if control[1] == chr(0) else ''} at position {control[0]}: names may "
        "not hold NUL, tabs, newlines or other control characters (file formats cut or mangle them, so two names "
        "could become one). Remove it from the name."
    )


def check_brick_name(name: object) -> str:
    """Return ``name`` if it can name a brick in a collection: a non-empty string without ``/``, ``.`` or control
    characters.

    Example:
        >>> check_brick_name("head0")
        'head0'
        >>> check_brick_name("head0/classify")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.InvalidNameError: Brick name 'head0/classify' contains '/', which separates ...
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"Expected brick names to be non-empty strings, but got {name!r}.")
    control = _control_character_error("Brick name", name, "")
    if control is not None:
        raise control
    if "/" in name or "." in name:
        raise InvalidNameError(
            f"Brick name {name!r} contains {'/' if '/' in name else '.'!r}, which separates nested names. "
            f"Use a nested dict instead, e.g. {{{name.split('/')[0].split('.')[0]!r}: {{...}}}}, or rename it."
        )
    return name


def check_data_name(name: object, *, role: str, where: str) -> str:
    """Return ``name`` if it is a well-formed data name: a non-empty string with single ``/`` separators and no
    control character (see :func:`first_control_character`).

    Example:
        >>> check_data_name("head0/logits", role="output_names", where="BrickTrainable")
        'head0/logits'
        >>> check_data_name("head0//logits", role="output_names", where="BrickTrainable")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.InvalidNameError: output_names of BrickTrainable has a malformed name ...
    """
    if not isinstance(name, str):
        raise BrickDefinitionError(f"Expected every name in {role} of {where} to be a str, but got {name!r}.")
    if not name or name.endswith("/") or "//" in name:
        raise InvalidNameError(
            f"{role} of {where} has a malformed name {name!r}: names must be non-empty and "
            "use single '/' separators, e.g. 'head0/logits'."
        )
    control = _control_character_error(f"The name in {role}", name, f" of {where}")
    if control is not None:
        raise control
    return name


def normalize_input_names(input_names: object, *, where: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Split declared input names into ``(positional data names, ((argument, data name), ...))``.

    Example:
        >>> normalize_input_names(["features"], where="head")
        (('features',), ())
        >>> normalize_input_names({"preds": "class_prediction", "target": "targets"}, where="metrics")
        ((), (('preds', 'class_prediction'), ('target', 'targets')))
    """
    if isinstance(input_names, str):
        raise BrickDefinitionError(
            f"Expected input_names of {where} to be a list of names or a dict {{argument_name: data_name}}, but "
            f"got the string {input_names!r}. Wrap it in a list: input_names=[{input_names!r}]."
        )
    if isinstance(input_names, Mapping):
        keyword: list[tuple[str, str]] = []
        for argument, name in input_names.items():
            if not isinstance(argument, str) or not argument:
                raise BrickDefinitionError(
                    f"Expected the keys of input_names of {where} to be argument names (non-empty strings), but got "
                    f"{argument!r}."
                )
            keyword.append((argument, check_data_name(name, role="input_names", where=where)))
        return (), tuple(keyword)
    if isinstance(input_names, Iterable):
        return tuple(check_data_name(name, role="input_names", where=where) for name in input_names), ()
    raise BrickDefinitionError(
        f"Expected input_names of {where} to be a list of names or a dict {{argument_name: data_name}}, but got "
        f"{type(input_names).__name__}: {input_names!r}."
    )


def normalize_output_names(output_names: object, *, where: str, role: str = "output_names") -> tuple[str, ...]:
    """Check declared output names (a single string is one name) and return them as a tuple.

    Example:
        >>> normalize_output_names("logits", where="head")
        ('logits',)
    """
    if isinstance(output_names, str):
        output_names = [output_names]
    if isinstance(output_names, Mapping) or not isinstance(output_names, Iterable):
        raise BrickDefinitionError(
            f"Expected {role} of {where} to be a list of names, but got "
            f"{type(output_names).__name__}: {output_names!r}."
        )
    names = tuple(check_data_name(name, role=role, where=where) for name in output_names)
    for name in names:
        if name in RESERVED_INPUT_NAMES:
            raise InvalidNameError(
                f"{where} declares the output name {name!r}, which is reserved for inputs. Choose another name."
            )
    return names
