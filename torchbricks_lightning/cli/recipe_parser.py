"""The CLI's argument parser: a recipe mistake is reported as one line naming the file and the key, without usage.

jsonargparse checks every value of a recipe against the signatures, and it is right about what is wrong; but it
names the key as its parser sees it (``Subcommand 'fit' does not accept option 'trainer.max_epoch'``, or the deepest
leaf below a misspelt section), prints every alternative of a union, and LightningCLI puts some 60 lines of usage
before it. :class:`RecipeArgumentParser` keeps jsonargparse's checks and, when it refuses a recipe, looks at the
recipe files it read with the checks of :mod:`~torchbricks_lightning.cli.recipe` (bricks, classes, stages, metrics)
and :mod:`~torchbricks_lightning.cli.recipe_keys` (every other key, from the signatures); the first mistake they
find is printed as ``error: recipe.yaml: trainer.max_epoch: Trainer takes no argument 'max_epoch'. Did you mean
'max_epochs'? Fix: rename it to 'max_epochs'.`` (the file relative to the folder the command runs in, the key as
written) and the command exits with status 2, as argparse does. A refusal they cannot explain keeps jsonargparse's
message, still without the usage. A parser made with ``exit_on_error=False`` raises jsonargparse's
``ArgumentError`` with the same message instead.

It also takes LightningCLI's class-path form of the model, ``model: {class_path:
torchbricks_lightning.LightningBrickCollection, init_args: {...}}``, as the plain form (``model: {...}``).

Example:
    >>> read = RecipeRead("recipe.yaml", "trainer: {max_epoch: 3}", "/home/me", top_level=lambda: ["trainer"])
    >>> print(explain(read))  # doctest: +ELLIPSIS
    recipe.yaml: trainer.max_epoch: Trainer takes no argument 'max_epoch'. Did you mean 'max_epochs'? Fix: ...
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml
from jsonargparse import get_loader
from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser
from typing_extensions import override

from torchbricks_lightning.cli.recipe import SUBCOMMANDS, first_recipe_problem
from torchbricks_lightning.cli.recipe_keys import first_key_problem, model_class_problem
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["RecipeArgumentParser", "RecipeRead", "explain", "plain_model_form"]

_EXIT_STATUS = 2
"""What argparse exits with on a bad command line."""


@dataclass
class RecipeRead:
    """A recipe read during one parse: its name as given, its text, and where the command ran.

    Attributes:
        path: the file as given on the command line (empty for a recipe given as text).
        content: the recipe's text.
        run_from: the folder the command was run from (jsonargparse reads a file from inside its folder).
        top_level: the names the parser that read it accepts at the recipe's top (None: not checked), asked for
            only when the recipe is refused.
        parser_mode: how to load the text (jsonargparse's ``parser_mode``).
    """

    path: str
    content: str
    run_from: str
    top_level: Callable[[], Collection[str] | None] = lambda: None
    parser_mode: str = "yaml"
    explained: list[str | None] = field(default_factory=list)  # the explanation, once computed


def explain(read: RecipeRead) -> str | None:
    """The message for the first mistake of a recipe that the checks find (``file: key: ...``), or None.

    The checks of a recipe run once, however many parsers report the same refusal.
    """
    if not read.explained:
        read.explained.append(_first_problem(read))
    problem = read.explained[0]
    return f"{_shown(read.path, read.run_from)}: {problem}" if problem and read.path else problem


def plain_model_form(config: Any) -> Any:
    """``config`` with a class-path ``model:`` naming ``LightningBrickCollection`` written in the plain form.

    Example:
        >>> plain_model_form({"model": {"class_path": "torchbricks_lightning.LightningBrickCollection",
        ...                             "init_args": {"brick_collection": {}}}})
        {'model': {'brick_collection': {}}}
    """
    if not isinstance(config, Mapping):
        return config
    plain = dict(config)
    for subcommand in SUBCOMMANDS:
        if isinstance(plain.get(subcommand), Mapping):
            plain[subcommand] = plain_model_form(plain[subcommand])
    model = plain.get("model")
    if (
        isinstance(model, Mapping)
        and "class_path" in model
        and model_class_problem(model) is None
        and set(model) <= {"class_path", "init_args"}
        and isinstance(model.get("init_args", {}), Mapping)
    ):
        plain["model"] = dict(model.get("init_args", {}))
    return plain


_READS: contextvars.ContextVar[list[RecipeRead] | None] = contextvars.ContextVar("recipe_reads", default=None)
_PATH_AS_GIVEN: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("path_as_given", default=None)
_QUIET_USAGE: contextvars.ContextVar[bool] = contextvars.ContextVar("quiet_usage", default=False)


class RecipeArgumentParser(LightningArgumentParser):
    """Lightning's parser, which names the file and the key of a recipe mistake, and prints no usage on an error.

    Every recipe file read during a parse (``--config``, before or after the subcommand) is kept with the folder
    the command ran from. When jsonargparse refuses the command line, :meth:`error` runs the checks of
    :func:`explain` over those recipes, loaded by the parser's own loader, and prints their first message in one
    line, without usage; when they find nothing, jsonargparse's message stands (without usage too). The
    checks look only at a refused recipe, so they never refuse one that jsonargparse accepts.
    """

    @override
    def parse_args(self, *args: Any, **kwargs: Any) -> Any:
        with _recording():
            return super().parse_args(*args, **kwargs)

    @override
    def parse_path(self, *args: Any, **kwargs: Any) -> Any:
        path = args[0] if args else kwargs.get("path", kwargs.get("cfg_path", ""))
        token = _PATH_AS_GIVEN.set((os.fspath(path), os.getcwd()))  # before jsonargparse enters the file's folder
        try:
            return super().parse_path(*args, **kwargs)
        finally:
            _PATH_AS_GIVEN.reset(token)

    @override
    def parse_string(self, *args: Any, **kwargs: Any) -> Any:
        # The text and the file name come first (named content and path; cfg_str and cfg_path in older jsonargparse).
        arguments = list(args)
        content = str(arguments[0] if arguments else kwargs.get("content", kwargs.get("cfg_str", "")))
        path = str(arguments[1] if len(arguments) > 1 else kwargs.get("path", kwargs.get("cfg_path", "")))
        given = _PATH_AS_GIVEN.get()
        _PATH_AS_GIVEN.set(None)  # a file named inside this one is another read
        path, run_from = given if given else (path, os.getcwd())
        reads = _READS.get()
        if reads is not None:
            reads.append(RecipeRead(path, content, run_from, self._top_level, self.parser_mode))
        rewritten = self._in_plain_model_form(content)
        if rewritten is not None:
            if arguments:
                arguments[0] = rewritten
            else:
                kwargs["content" if "content" in kwargs or "cfg_str" not in kwargs else "cfg_str"] = rewritten
        return super().parse_string(*arguments, **kwargs)

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        for read in _READS.get() or []:
            problem = explain(read)
            if problem:
                if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
                    super().error(problem, ex)
                print(f"error: {problem}", file=sys.stderr)
                sys.exit(_EXIT_STATUS)
        token = _QUIET_USAGE.set(True)
        try:
            super().error(message, ex)
        finally:
            _QUIET_USAGE.reset(token)

    @override
    def print_usage(self, *args: Any, **kwargs: Any) -> None:
        """Usage on request only: an error names its key and ``--help`` lists the options."""
        if not _QUIET_USAGE.get():
            super().print_usage(*args, **kwargs)

    def _top_level(self) -> list[str] | None:
        """The names a recipe read by this parser may hold at its top; None for the root parser, whose recipe may
        hold a section per subcommand."""
        names = {str(key).split(".")[0] for key in self.get_defaults().keys()}  # noqa: SIM118 - a Namespace, no __iter__
        return None if "subcommand" in names else sorted({*names, "config", "print_config"})

    def _in_plain_model_form(self, content: str) -> str | None:
        """The recipe's text with a class-path ``model:`` in the plain form, or None when it needs no change."""
        if LightningBrickCollection.__name__ not in content:
            return None
        try:
            config = get_loader(self.parser_mode)(content)
        except Exception:  # text jsonargparse cannot load either: its message says why
            return None
        plain = plain_model_form(config)
        return None if plain == config else yaml.safe_dump(plain, sort_keys=False)


def _first_problem(read: RecipeRead) -> str | None:
    # The checks only explain a refusal. When they cannot (text jsonargparse could not load either, a class whose
    # module fails to import), jsonargparse's own message stands rather than a traceback from here.
    try:
        config = get_loader(read.parser_mode)(read.content)
        folder = os.path.dirname(os.path.join(read.run_from, read.path)) if read.path else None
        if not isinstance(config, Mapping):
            return None
        return first_recipe_problem(config, run_from=read.run_from, recipe_folder=folder) or first_key_problem(
            config, read.top_level(), trainer_class=Trainer, model_class=LightningBrickCollection
        )
    except Exception:
        return None


def _shown(path: str, run_from: str) -> str:
    """The recipe's path relative to the folder the command ran from when it lies inside it, else as given."""
    full = os.path.abspath(os.path.join(run_from, path))
    inside = os.path.commonpath([full, os.path.abspath(run_from)]) == os.path.abspath(run_from)
    return os.path.relpath(full, run_from) if inside else path


@contextmanager
def _recording() -> Iterator[None]:
    """Keep the recipes read by this parse (the outermost one: a subcommand's parser shares its list)."""
    if _READS.get() is not None:
        yield
        return
    token = _READS.set([])
    try:
        yield
    finally:
        _READS.reset(token)
