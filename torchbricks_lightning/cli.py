"""The ``torchbricks-lightning`` command: Lightning's CLI for brick recipes in YAML, plus ``export``.

Subcommands ``fit``, ``validate``, ``test`` and ``predict`` come from ``LightningCLI`` and take
``--config recipe.yaml``; ``export --ckpt_path run.ckpt --output model.onnx`` turns a checkpoint into a verified
ONNX file.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage, parse_alive_stages
from torchbricks_lightning.errors import RecipeError, TorchBricksError, did_you_mean
from torchbricks_lightning.lightning.checkpoints import importable_paths, read_checkpoint
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx
from torchbricks_lightning.lightning.module import LightningBrickCollection
from torchbricks_lightning.random_state import preserved_random_state

__all__ = ["RecipeError", "TorchBricksCLI", "main"]

_LIGHTNING_CKPT_PATHS = re.compile(r"^(last|best|hpc)$|^(?i:registry)(:.*)?$|://")
"""``--ckpt_path`` values that Lightning resolves itself (special names, the model registry, remote URLs)."""


class TorchBricksCLI(LightningCLI):
    """``LightningCLI`` for :class:`LightningBrickCollection` recipes.

    The model is always a ``LightningBrickCollection`` (configure its ``brick_collection``, ``optimizer`` and
    ``lr_scheduler`` under ``model:``), the datamodule is any ``LightningDataModule`` given by ``class_path``.
    Before anything runs, the recipe is checked (classes that cannot be imported, misspelt arguments of bricks,
    plain modules where a brick belongs, stage names) and so is a ``--ckpt_path`` file. Before fitting, one
    batch is compared with the inputs the training and validation graphs need and run through both, so a wrong
    recipe fails before any training, and before any log or checkpoint folder is written.
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
                problem = _first_recipe_problem(config_file)
                if problem:
                    parser.error(problem)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None:
            _check_ckpt_path(ckpt_path)

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
        """Check one training batch against the validation and training graphs, and run it, before any training.

        The first two samples of the batch run through both graphs, on the CPU, to find bricks that do not fit
        together; this adds milliseconds (about 5 ms for the digits example, 35 ms for its resnet18 variant).

        It runs before ``trainer.fit`` writes the config, logs or checkpoints, so a recipe whose bricks do not fit
        together leaves nothing behind. The check draws no random numbers that training would see (the random
        generators are restored), updates no metric (they are reset) and no batch-norm statistics (it runs in eval
        mode, without gradients).

        Raises:
            MissingInputError: the batch lacks a name that a stage needs.
            RecipeError: a brick fails on the batch (e.g. sizes of connected bricks that do not agree).
        """
        model = self.model
        datamodule = self.datamodule
        if not isinstance(model, LightningBrickCollection) or datamodule is None:
            return
        with preserved_random_state():
            datamodule.prepare_data()
            datamodule.setup("fit")
            batch = next(iter(datamodule.train_dataloader()))
            named_inputs = model.named_inputs_of(batch, Stage.TRAIN)
            # Validation first: it is what Lightning's sanity check would run first.
            for stage in (Stage.VALIDATION, Stage.TRAIN):
                model.brick_collection.check_input_names(stage, list(named_inputs))
            small = _first_samples(named_inputs)
            for stage in (Stage.VALIDATION, Stage.TRAIN):
                _run_once(model.brick_collection, small, stage)


def _first_samples(named_inputs: Mapping[str, Any], n: int = 2) -> dict[str, Any]:
    """The first ``n`` samples of a batch, so that checking a large model on CPU stays cheap.

    Tensors are cut along their first dimension when every tensor of the batch has the same first size; otherwise
    the batch is kept whole.
    """
    sizes = {value.shape[0] for value in named_inputs.values() if isinstance(value, torch.Tensor) and value.ndim}
    if len(sizes) != 1 or next(iter(sizes)) <= n:
        return dict(named_inputs)
    return {
        name: value[:n] if isinstance(value, torch.Tensor) and value.ndim else value
        for name, value in named_inputs.items()
    }


def _run_once(collection: BrickCollection, named_inputs: Mapping[str, Any], stage: Stage) -> None:
    """Run ``stage`` on one batch in eval mode without gradients, then put the modes and the metrics back."""
    training = {module: module.training for module in collection.modules()}
    collection.eval()
    try:
        with torch.no_grad():
            collection(named_inputs, stage)
    except TorchBricksError:
        raise
    except Exception as err:
        notes = " ".join(note for note in getattr(err, "__notes__", []) if note.startswith("While running brick"))
        first_line = (str(err).strip().splitlines() or [""])[0].rstrip(".")
        raise RecipeError(
            f"The bricks fail on the first training samples in stage {stage.value!r}, so training was not started: "
            f"{type(err).__name__}: {first_line}. {notes} Make the sizes of connected bricks agree (e.g. a head's "
            "in_channels with the channels its backbone outputs)."
        ) from err
    finally:
        for module, was_training in training.items():
            module.training = was_training
        collection.reset_metrics(stage)


def _check_ckpt_path(ckpt_path: str | Path) -> None:
    """Raise :class:`CheckpointError` if a ``--ckpt_path`` file is missing or unreadable (Lightning's own values such
    as ``last`` or ``best``, and URLs, pass)."""
    if isinstance(ckpt_path, str) and _LIGHTNING_CKPT_PATHS.search(ckpt_path):
        return
    read_checkpoint(ckpt_path)


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


def _first_recipe_problem(config_file: Path) -> str | None:
    """A message for the first mistake in a YAML recipe that jsonargparse would report unclearly, naming its key.

    The checks, in order: :func:`_first_unimportable_class`, then :func:`_first_brick_problem`.
    """
    try:
        config = yaml.safe_load(config_file.read_text())
    except (OSError, yaml.YAMLError):
        return None  # jsonargparse reports unreadable files itself
    problem = _first_unimportable_class(config) or _first_brick_problem(config)
    return f"{config_file}: {problem}" if problem else None


def _first_unimportable_class(config: Any) -> str | None:
    """A message for the first class path or dotted callable in a recipe that cannot be imported, naming its key.

    It walks the recipe like the checkpoint allowlist does: ``class_path`` entries, and dotted names of callables
    (an optimizer given as ``torch.optim.Adam``) in installed packages.
    """
    for where, class_path in importable_paths(config):
        module_name, _, attribute = class_path.rpartition(".")
        if not module_name:
            continue  # a short name such as 'ModelCheckpoint': LightningCLI resolves those itself
        try:
            module = importlib.import_module(module_name)
        except (ImportError, ValueError):
            return f"{where}: cannot import module {module_name!r} for class_path {class_path!r}."
        if not hasattr(module, attribute):
            names = [name for name in dir(module) if not name.startswith("_")]
            return f"{where}: module {module_name!r} has no class {attribute!r}.{did_you_mean(attribute, names)}"
    return None


def _first_brick_problem(config: Any) -> str | None:
    """A message for the first entry under ``model.brick_collection`` that is not a brick or has an unknown argument.

    jsonargparse reports both as a dump of nested Union failures that leads with an unrelated option, so they are
    checked here first: each entry directly under a brick collection must be a brick, a ``BrickCollection`` or a
    dict of bricks, and every ``init_args`` key (at any depth) must be an argument of its class.
    """
    model = config.get("model") if isinstance(config, Mapping) else None
    bricks = model.get("brick_collection") if isinstance(model, Mapping) else None
    return next(_collection_problems(bricks, "model.brick_collection"), None)


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
    cls = _resolve(node.get("class_path"))
    if cls is None:
        return  # a short name that LightningCLI resolves itself (an unimportable one was reported already)
    allowed: tuple[type, ...] = (BrickInterface, BrickCollection) if brick_allowed else (BrickCollection,)
    if not (inspect.isclass(cls) and issubclass(cls, allowed)):
        class_path = node["class_path"]
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
        cls = _resolve(node["class_path"])
        accepted = _accepted_arguments(cls) if cls is not None else None
        for key in init_args:
            if accepted is not None and key not in accepted:
                yield (
                    f"{where}.init_args.{key}: {node['class_path']} takes no argument {key!r}."
                    f"{did_you_mean(str(key), accepted)} Its arguments are {accepted}."
                )
        for key, value in init_args.items():
            if key != "bricks" or cls is None or not issubclass(cls, BrickCollection):
                yield from _argument_problems(value, f"{where}.init_args.{key}")
    elif "class_path" not in node:
        for key, value in node.items():
            yield from _argument_problems(value, f"{where}.{key}")


def _resolve(class_path: object) -> Any:
    """The object a dotted ``class_path`` names, or None when it is not a dotted path or cannot be imported."""
    if not isinstance(class_path, str):
        return None
    module_name, _, attribute = class_path.rpartition(".")
    if not module_name:
        return None
    try:
        return getattr(importlib.import_module(module_name), attribute, None)
    except (ImportError, ValueError):
        return None


def _accepted_arguments(cls: Any) -> list[str] | None:
    """The keyword arguments of ``cls``'s constructor, or None when it takes ``**kwargs`` or has no signature."""
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
