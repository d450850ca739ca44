"""The ``torchbricks-lightning`` command: Lightning's CLI for brick recipes in YAML, plus ``export``.

Subcommands ``fit``, ``validate``, ``test`` and ``predict`` come from ``LightningCLI`` and take
``--config recipe.yaml``; ``export --ckpt_path run.ckpt --output model.onnx`` turns a checkpoint into a verified
ONNX file.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from torchbricks_lightning.core.stages import Stage, parse_alive_stages
from torchbricks_lightning.errors import TorchBricksError, did_you_mean
from torchbricks_lightning.lightning.checkpoints import _importable_paths
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx
from torchbricks_lightning.lightning.module import LightningBrickCollection

__all__ = ["TorchBricksCLI", "main"]


class TorchBricksCLI(LightningCLI):
    """``LightningCLI`` for :class:`LightningBrickCollection` recipes.

    The model is always a ``LightningBrickCollection`` (configure its ``brick_collection``, ``optimizer`` and
    ``lr_scheduler`` under ``model:``), the datamodule is any ``LightningDataModule`` given by ``class_path``.
    Before fitting, the stage names in the recipe are checked, and one batch is compared with the inputs the
    training and validation graphs need, so a wrong recipe fails before any training.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", LightningBrickCollection)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (list, tuple)) or args is None:
            for config_file in _config_files(list(sys.argv[1:] if args is None else args)):
                problem = _first_unimportable_class(config_file)
                if problem:
                    parser.error(problem)
        super().parse_arguments(parser, args)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        model = config.get("model") if config is not None else None
        if model is None:
            return
        prefix = f"{self.subcommand}.model" if self.subcommand else "model"
        for where, value in _alive_stage_values(model.get("brick_collection"), f"{prefix}.brick_collection"):
            try:
                parse_alive_stages(value)
            except TorchBricksError as err:
                self.parser.error(f"Invalid value for {where}: {err}")

    def before_fit(self) -> None:
        """Check one training batch against the training and validation graphs, before any training."""
        model = self.model
        datamodule = self.datamodule
        if not isinstance(model, LightningBrickCollection) or datamodule is None:
            return
        datamodule.prepare_data()
        datamodule.setup("fit")
        batch = next(iter(datamodule.train_dataloader()))
        names = list(model.named_inputs_of(batch, Stage.TRAIN))
        for stage in (Stage.TRAIN, Stage.VALIDATION):
            model.brick_collection.check_input_names(stage, names)


def _alive_stage_values(config: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every ``alive_stages`` value in a (nested) brick configuration, with its key."""
    if isinstance(config, Namespace):
        config = vars(config)
    if isinstance(config, Mapping):
        for key, value in config.items():
            here = f"{where}.{key}"
            if key == "alive_stages" and value is not None:
                yield here, value
            else:
                yield from _alive_stage_values(value, here)


def _config_files(arguments: Sequence[str]) -> Iterator[Path]:
    for index, argument in enumerate(arguments):
        if argument in ("--config", "-c") and index + 1 < len(arguments):
            yield Path(arguments[index + 1])
        elif argument.startswith("--config="):
            yield Path(argument.split("=", 1)[1])


def _first_unimportable_class(config_file: Path) -> str | None:
    """A message for the first class path or dotted callable in a YAML file that cannot be imported, naming its key.

    It walks the recipe like the checkpoint allowlist does: ``class_path`` entries, and dotted names of callables
    (an optimizer given as ``torch.optim.Adam``) in installed packages.
    """
    try:
        config = yaml.safe_load(config_file.read_text())
    except (OSError, yaml.YAMLError):
        return None  # jsonargparse reports unreadable files itself
    for where, class_path in _importable_paths(config):
        module_name, _, attribute = class_path.rpartition(".")
        if not module_name:
            continue  # a short name such as 'ModelCheckpoint': LightningCLI resolves those itself
        try:
            module = importlib.import_module(module_name)
        except (ImportError, ValueError):
            return f"{config_file}: {where}: cannot import module {module_name!r} for class_path {class_path!r}."
        if not hasattr(module, attribute):
            names = [name for name in dir(module) if not name.startswith("_")]
            return (
                f"{config_file}: {where}: module {module_name!r} has no class {attribute!r}."
                f"{did_you_mean(attribute, names)}"
            )
    return None


def _export_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="torchbricks-lightning export", description="Export a checkpoint to ONNX.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint written by the fit subcommand.")
    parser.add_argument("--output", type=str, required=True, help="The .onnx file to write.")
    parser.add_argument("--stage", type=str, default="export", help="The stage to export.")
    parser.add_argument("--dynamic_batch_size", type=bool, default=True, help="Make the batch dimension dynamic.")
    parser.add_argument("--trusted_class_prefixes", type=list[str], default=[], help="More trusted packages.")
    parser.add_argument("--verify", type=bool, default=True, help="Check the file with onnxruntime.")
    return parser


def _export(argv: Sequence[str]) -> int:
    arguments = _export_parser().parse_args(list(argv))
    result = export_checkpoint_as_onnx(
        arguments.ckpt_path,
        arguments.output,
        dynamic_batch_size=arguments.dynamic_batch_size,
        stage=arguments.stage,
        trusted_class_prefixes=arguments.trusted_class_prefixes,
        verify=arguments.verify,
    )
    worst = max(result.max_abs_diff.values(), default=0.0)
    print(f"Wrote {result.path}")
    print(f"  inputs:  {result.input_names}")
    print(f"  outputs: {result.output_names}")
    print(f"  onnxruntime vs PyTorch: max abs diff {worst:.2e}" if arguments.verify else "  not verified")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchbricks-lightning`` command."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "export":
        try:
            return _export(arguments[1:])
        except TorchBricksError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        TorchBricksCLI(args=None if argv is None else arguments)
    except TorchBricksError as err:
        # A mistake in the recipe: say what and where, without a traceback through Lightning.
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
