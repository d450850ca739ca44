"""``TorchBricksCLI``, the ``LightningCLI`` for brick recipes, and :func:`main`, the ``torchbricks-lightning`` command.

What happens to a recipe, in order:

1. jsonargparse reads it, once, and checks every value against the signatures (``alive_stages`` included: its type
   lists the stages). When it refuses the recipe, :class:`RecipeArgumentParser` looks at the values it loaded with
   the checks of :mod:`~torchbricks_lightning.cli.recipe`, and, when one names the mistake, reports that one line
   instead of jsonargparse's page of union alternatives.
2. A ``--ckpt_path`` file is read before Lightning opens it (:func:`check_ckpt_path`).
3. After the classes are built, the model's recipe is recorded in its hyperparameters, so that a checkpoint rebuilds
   the module alone (``LightningBrickCollection.load_from_checkpoint(path)``, ``export --ckpt_path``).
4. Before ``fit``, :func:`~torchbricks_lightning.lightning.preflight.check_one_batch` runs one batch through the
   validation and training graphs, so a recipe whose bricks do not fit together fails before any log or
   checkpoint folder is written.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import get_loader
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from torchbricks_lightning.cli.export import run_export
from torchbricks_lightning.cli.predict import BrickTrainer, report_predictions
from torchbricks_lightning.cli.recipe import first_recipe_problem
from torchbricks_lightning.errors import TorchBricksError
from torchbricks_lightning.lightning.checkpoints import read_checkpoint
from torchbricks_lightning.lightning.module import LightningBrickCollection
from torchbricks_lightning.lightning.preflight import check_one_batch

__all__ = ["RecipeArgumentParser", "TorchBricksCLI", "check_ckpt_path", "main"]

_LIGHTNING_CKPT_PATHS = re.compile(r"^(last|best|hpc)$|^(?i:registry)(:.*)?$|://")
"""``--ckpt_path`` values that Lightning resolves itself (special names, the model registry, remote URLs)."""


class RecipeArgumentParser(LightningArgumentParser):
    """Lightning's parser, which names the key of a recipe mistake that jsonargparse would report unclearly.

    jsonargparse reads each recipe once, through :meth:`parse_string`. When it refuses one, :meth:`error` runs the
    checks of :func:`~torchbricks_lightning.cli.recipe.first_recipe_problem` over the same text, loaded by the
    parser's own loader, and reports their message (``recipe.yaml: model.brick_collection.head0.init_args.
    num_clases: ... Did you mean 'num_classes'?``) instead of jsonargparse's. When none of them finds the mistake,
    jsonargparse's own message stands.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recipes: list[tuple[str, str]] = []  # (path, text) of the recipes being parsed, innermost last

    @override
    def parse_string(self, *args: Any, **kwargs: Any) -> Any:
        # The text and the file name come first (named content and path; cfg_str and cfg_path in older jsonargparse).
        content = args[0] if args else kwargs.get("content", kwargs.get("cfg_str", ""))
        path = args[1] if len(args) > 1 else kwargs.get("path", kwargs.get("cfg_path", ""))
        self._recipes.append((str(path), str(content)))
        try:
            return super().parse_string(*args, **kwargs)
        finally:
            self._recipes.pop()

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if self._recipes:
            path, content = self._recipes[-1]
            problem = self._recipe_problem(content)
            if problem:
                message = f"{path}: {problem}" if path else problem
        super().error(message, ex)

    def _recipe_problem(self, content: str) -> str | None:
        # The checks only explain a refusal. When they cannot (text jsonargparse could not load either, a class whose
        # module fails to import), jsonargparse's own message stands rather than a traceback from here.
        try:
            return first_recipe_problem(get_loader(self.parser_mode)(content))
        except Exception:
            return None


class TorchBricksCLI(LightningCLI):
    """``LightningCLI`` for :class:`LightningBrickCollection` recipes.

    The model is always a ``LightningBrickCollection`` (configure its ``brick_collection``, ``optimizer`` and
    ``lr_scheduler`` under ``model:``), the datamodule is any ``LightningDataModule`` given by ``class_path``.
    Mistakes in the recipe are named by their key (classes that cannot be imported, misspelt arguments of bricks,
    plain modules where a brick belongs, stage names), a ``--ckpt_path`` file is checked before Lightning reads
    it, and one batch runs before ``fit`` (see the module's docstring).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", LightningBrickCollection)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", RecipeArgumentParser)
        kwargs.setdefault("trainer_class", BrickTrainer)  # predict --output_dir (cli/predict.py)
        # Lightning then names its CLI instantiator in the hyperparameters, which rebuilds the module from its recipe.
        self.records_recipe = bool(kwargs.get("load_from_checkpoint_support", True))
        super().__init__(*args, **kwargs)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None:
            check_ckpt_path(ckpt_path)

    @override
    def after_instantiate_classes(self) -> None:
        """Record the recipe of the model's object arguments in its hyperparameters.

        ``LightningBrickCollection`` leaves its object arguments (the bricks, the optimizer and scheduler factories)
        out of its hyperparameters. Here they are plain recipe values (class paths and arguments), so they are
        added back: a checkpoint of a CLI run then rebuilds the module alone. (Lightning builds the module with
        its hyperparameters set to the recipe, and names its own CLI instantiator for ``load_from_checkpoint``;
        with ``load_from_checkpoint_support=False`` it does neither, and nothing is added.)
        """
        model = self.model
        if not (self.records_recipe and isinstance(model, LightningBrickCollection)):
            return
        dumped = yaml.safe_load(self.parser.dump(self.config, format="yaml", skip_link_targets=False))
        section = dumped.get(self.subcommand, {}) if self.subcommand else dumped
        recipe = section.get("model") or {}
        missing = {name: value for name, value in recipe.items() if name not in model.hparams}
        if missing:
            model.save_hyperparameters(missing)

    def before_fit(self) -> None:
        """Run one training batch through the validation and training graphs before any training.

        See :func:`~torchbricks_lightning.lightning.preflight.check_one_batch`: it runs before ``trainer.fit``
        writes the config, logs or checkpoints, so a recipe whose bricks do not fit together leaves nothing behind.

        Raises:
            MissingInputError: the batch lacks a name that a stage needs.
            RecipeError: a brick fails on the batch (e.g. sizes of connected bricks that do not agree).
        """
        if isinstance(self.model, LightningBrickCollection) and self.datamodule is not None:
            check_one_batch(self.model, self.datamodule)

    def after_predict(self) -> None:
        """Print where ``predict --output_dir`` wrote the predictions, or how to write them."""
        report_predictions(self.trainer)


def check_ckpt_path(ckpt_path: str | Path) -> None:
    """Read a ``--ckpt_path`` file before Lightning does, so a missing or broken one fails with a clear error.

    Lightning's own values (``last``, ``best``, ``hpc``, ``registry:...``) and URLs are left to Lightning.

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint.
        UntrustedCheckpointError: the file holds pickled objects other than tensors and plain values.

    Example:
        >>> check_ckpt_path("last")
        >>> check_ckpt_path("nowhere.ckpt")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.CheckpointError: Checkpoint 'nowhere.ckpt' does not exist.
    """
    if isinstance(ckpt_path, str) and _LIGHTNING_CKPT_PATHS.search(ckpt_path):
        return
    read_checkpoint(ckpt_path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchbricks-lightning`` command; returns its exit code.

    A mistake in the recipe prints ``error: ...`` without a traceback through Lightning and returns (or, from the
    parser, exits with) 2.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "export":
        return run_export(arguments[1:])
    try:
        TorchBricksCLI(args=None if argv is None else arguments)
    except TorchBricksError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0
