"""``TorchBricksCLI``, the ``LightningCLI`` for brick recipes, and :func:`main`, the ``torchbricks-lightning`` command.

What happens to a recipe, in order:

1. jsonargparse reads it, once, and checks every value against the signatures (``alive_stages`` included: its type
   lists the stages). When it refuses the recipe, :class:`~torchbricks_lightning.cli.recipe_parser.
   RecipeArgumentParser` looks at the values it loaded with the checks of :mod:`~torchbricks_lightning.cli.recipe`
   and :mod:`~torchbricks_lightning.cli.recipe_keys`, and, when one names the mistake, reports that one line (file,
   key, did-you-mean, fix) instead of jsonargparse's page of union alternatives; no usage is printed. The model
   may be written in LightningCLI's class-path form (``class_path: torchbricks_lightning.LightningBrickCollection``).
2. A ``--ckpt_path`` file is read once, before Lightning opens it, and checked against the trust model
   (:func:`check_ckpt_path`, :mod:`~torchbricks_lightning.checkpoints.trust`): the recipe that LightningCLI merges
   from the checkpoint into the model's configuration is the one checked, and the Trainer restores from the same
   copy. A URL is refused. The classes your ``--config`` files name by ``class_path`` are trusted in it
   (:func:`~torchbricks_lightning.checkpoints.trust.recipe_class_prefixes`), and ``--trusted_class_prefixes
   '[my_heads.]'`` trusts more packages; the checkpoint's own recipe never does.
3. After the classes are built, the model's recipe is recorded in its hyperparameters, so that a checkpoint rebuilds
   the module alone (``LightningBrickCollection.load_from_checkpoint(path)``, ``export --ckpt_path``).
4. The Trainer writes and reads checkpoints with
   :class:`~torchbricks_lightning.checkpoints.io.SafeCheckpointIO` (never a half-written file), unless
   the recipe's ``trainer.plugins`` hold another ``CheckpointIO``; it is bound to the Trainer, so the paths in a
   resumed checkpoint's callback states are confined to the Trainer's checkpoint folders.
5. Before ``fit``, :func:`~torchbricks_lightning.lightning.preflight.check_one_batch` runs one batch through the
   validation and training graphs, so a recipe whose bricks do not fit together fails before any log or
   checkpoint folder is written.

:func:`main` (the ``torchbricks-lightning`` command) makes the current folder importable first, as ``python -m``
does, so a recipe can name ``class_path: my_heads.RegressionHead`` from a ``my_heads.py`` next to it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from torchbricks_lightning.checkpoints.io import SafeCheckpointIO, with_safe_checkpoint_io
from torchbricks_lightning.checkpoints.reading import is_remote, read_checkpoint
from torchbricks_lightning.checkpoints.trust import check_checkpoint, recipe_class_prefixes
from torchbricks_lightning.cli.config_files import check_config_files
from torchbricks_lightning.cli.lightning_tips import hide_lightning_tips
from torchbricks_lightning.cli.predict import BrickTrainer, report_predictions
from torchbricks_lightning.cli.recipe import first_brick_that_fails
from torchbricks_lightning.cli.recipe_parser import RecipeArgumentParser
from torchbricks_lightning.core.distributed import is_distributed
from torchbricks_lightning.errors import RecipeError, TorchBricksError, command_line_message
from torchbricks_lightning.lightning.module import LightningBrickCollection
from torchbricks_lightning.lightning.preflight import check_one_batch

__all__ = ["RecipeArgumentParser", "TorchBricksCLI", "check_ckpt_path", "main"]

_LIGHTNING_CKPT_NAMES = re.compile(r"^(last|best|hpc)$|^(?i:registry)(:.*)?$")
"""``--ckpt_path`` values that Lightning resolves itself (special names, the model registry) to a checkpoint, which
the Trainer then loads through its ``CheckpointIO``."""


class TorchBricksCLI(LightningCLI):
    """``LightningCLI`` for :class:`LightningBrickCollection` recipes.

    The model is always a ``LightningBrickCollection`` (configure its ``brick_collection``, ``optimizer`` and
    ``lr_scheduler`` under ``model:``), the datamodule is any ``LightningDataModule`` given by ``class_path``.
    Mistakes in the recipe are named by their key (classes that cannot be imported, misspelt arguments of bricks,
    plain modules where a brick belongs, stage names), a ``--ckpt_path`` file is checked before Lightning reads
    it, and one batch runs before ``fit`` (see the module's docstring).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._checked_ckpt: tuple[str, dict[str, Any]] | None = None  # the --ckpt_path file, read and checked
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
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--trusted_class_prefixes",
            type=list[str],
            default=[],
            help="Packages of your own whose classes a --ckpt_path checkpoint may build, e.g. '[my_heads.]'.",
        )

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse the recipe, then read and check a ``--ckpt_path`` file and merge its recipe into the model's.

        LightningCLI merges the hyperparameters of a ``--ckpt_path`` checkpoint into the model's configuration
        (a ``validate``, ``test`` or ``predict`` run rebuilds the trained model). Here that is done from the copy
        read and checked once; the path is then hidden from LightningCLI's own merge, which would read the file
        again, until :meth:`before_instantiate_classes` hands it back for the Trainer.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is None:
            return
        recipes = [*(self.config.get("config") or []), *(self.config[subcommand].get("config") or [])]
        prefixes = [*(self.config[subcommand].get("trusted_class_prefixes") or []), *recipe_class_prefixes(recipes)]
        checkpoint = check_ckpt_path(ckpt_path, prefixes)
        if checkpoint is None:
            return  # 'last', 'best', ...: resolved by the Trainer, loaded through SafeCheckpointIO
        self._checked_ckpt = (str(ckpt_path), checkpoint)
        self._merge_checkpoint_recipe(subcommand, checkpoint.get("hyper_parameters") or {})
        self.config[f"{subcommand}.ckpt_path"] = None

    def _merge_checkpoint_recipe(self, subcommand: str, hyper_parameters: dict[str, Any]) -> None:
        """What LightningCLI does with a checkpoint's hyperparameters, from the checked copy."""
        recipe = {key: value for key, value in hyper_parameters.items() if key != "_instantiator"}
        if not recipe:
            return
        if "_class_path" in recipe:
            recipe = {"class_path": recipe.pop("_class_path"), "dict_kwargs": recipe}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": recipe}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    @override
    def before_instantiate_classes(self) -> None:
        if self._checked_ckpt is not None and self.subcommand:
            self.config[f"{self.subcommand}.ckpt_path"] = self._checked_ckpt[0]

    @override
    def instantiate_classes(self) -> None:
        """Build the recipe's objects; a brick whose constructor raises is named by its key.

        Raises:
            RecipeError: an entry of ``model.brick_collection`` raised when it was built (its error is the cause).
        """
        try:
            super().instantiate_classes()
        except (ValueError, TypeError):
            section = self.config.get(self.subcommand) if self.subcommand else self.config
            failure = first_brick_that_fails(section.as_dict()) if section is not None else None
            if failure is None:
                raise
            where, error = failure
            raise RecipeError(f"{where}: building it raised {type(error).__name__}: {error}") from error

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with :class:`SafeCheckpointIO` among its plugins unless the recipe sets a ``CheckpointIO``;
        it restores a ``--ckpt_path`` checkpoint from the copy that was checked."""
        key = f"{self.subcommand}.trainer.plugins" if self.subcommand else "trainer.plugins"
        plugins = with_safe_checkpoint_io(kwargs.get("plugins", self.config_init.get(key)))
        if self._checked_ckpt is not None:
            for plugin in plugins:
                if isinstance(plugin, SafeCheckpointIO):
                    plugin.preload(*self._checked_ckpt)
        trainer = super().instantiate_trainer(**{**kwargs, "plugins": plugins})
        for plugin in plugins:
            if isinstance(plugin, SafeCheckpointIO):  # callback states' paths confined to its checkpoint folders
                plugin.bind(trainer)
        return trainer

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
            check_one_batch(self.model, self.datamodule, trainer=self.trainer)

    def after_predict(self) -> None:
        """Print where ``predict --output_dir`` wrote the predictions, or how to write them."""
        report_predictions(self.trainer)


def check_ckpt_path(ckpt_path: str | Path, trusted_class_prefixes: Sequence[str] = ()) -> dict[str, Any] | None:
    """Read a ``--ckpt_path`` file before Lightning does, and check it as ``load_from_checkpoint`` would.

    Lightning's own names (``last``, ``best``, ``hpc``, ``registry:...``) are left to it when no such file exists:
    the Trainer resolves them and loads the file through its ``CheckpointIO``.

    Returns:
        The checkpoint, or None for a name that Lightning resolves.

    Raises:
        CheckpointError: the path is a URL, or the file is missing, truncated or not a checkpoint.
        UntrustedCheckpointError: the file holds pickled objects other than tensors and plain values, or its
            recipe asks for something the trust model refuses.

    Example:
        >>> check_ckpt_path("last")
        >>> check_ckpt_path("nowhere.ckpt")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.CheckpointError: Checkpoint 'nowhere.ckpt' does not exist.
    """
    if not is_remote(ckpt_path) and _LIGHTNING_CKPT_NAMES.search(str(ckpt_path)) and not Path(ckpt_path).is_file():
        return None
    checkpoint = read_checkpoint(ckpt_path)
    check_checkpoint(checkpoint, LightningBrickCollection, trusted_class_prefixes)
    return checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchbricks-lightning`` command; returns its exit code.

    The current folder is made importable first (as ``python -m`` does), so a recipe can name classes from modules
    next to it, and Lightning's tips to install its cloud loggers are not printed
    (:func:`~torchbricks_lightning.cli.lightning_tips.hide_lightning_tips`). A mistake in the recipe prints
    ``error: ...`` without a traceback through Lightning and returns (or, from the parser, exits with) 2; an untrusted
    checkpoint's message says how to trust it on the command line.
    """
    _import_from_current_folder()
    hide_lightning_tips()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "export":
        from torchbricks_lightning.cli.export import run_export  # ONNX and torch.export: loaded for export only

        return run_export(arguments[1:])
    try:
        check_config_files(arguments)  # a checkpoint given as --config: refused before jsonargparse reads it
        TorchBricksCLI(args=None if argv is None else arguments)
    except TorchBricksError as err:
        print(f"error: {type(err).__name__}: {command_line_message(err)}", file=sys.stderr)
        return 2
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Destroy the process group a DDP run leaves behind (Lightning keeps it, so that ``fit`` can be followed by
    ``test`` in one script). The command is done with it; destroying it joins gloo's threads before the interpreter
    exits, where they could otherwise abort a successful run with "terminate called without an active exception"."""
    import torch.distributed

    if is_distributed():
        torch.distributed.destroy_process_group()


def _import_from_current_folder() -> None:
    """Put the current folder first on ``sys.path`` unless it is there already (``python -m`` puts it there; an
    installed console script puts its own folder there instead)."""
    here = os.getcwd()
    if not any(os.path.abspath(entry or ".") == here for entry in sys.path):
        sys.path.insert(0, here)
