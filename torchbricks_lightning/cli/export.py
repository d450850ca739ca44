"""The ``export`` subcommand: one checkpoint to one or several checked artefacts.

::

    torchbricks-lightning export --ckpt_path best.ckpt --output model.onnx
    torchbricks-lightning export --ckpt_path best.ckpt --output digit.onnx --output_names digit/probabilities \\
        --format onnx --dtype float16
    torchbricks-lightning export --ckpt_path best.ckpt --output 'exports/{head}.pt2'          # one per head
    torchbricks-lightning export --ckpt_path best.ckpt \\
        --artefacts '[{path: digit.onnx, output_names: [digit/probabilities]}, {path: parity.pt2, dtype: float32}]'

Each artefact is checked against PyTorch (onnxruntime for ONNX, ``torch.export.load`` for ``.pt2``) before it is
moved into place, and gets a JSON manifest beside it. The checkpoint alone rebuilds the module (the CLI recorded its
recipe), read safely, once for all artefacts (see :func:`~torchbricks_lightning.lightning.export.export_checkpoint`).
The options may also come from a YAML file: ``--config export.yaml``. Their defaults are those of
:class:`~torchbricks_lightning.core.export.ExportOptions`. ``--config`` may be the training recipe itself: export
reads its ``model``, ``data`` and ``trainer`` sections for nothing but the classes they name by ``class_path``,
which the checkpoint may then build (see :func:`~torchbricks_lightning.checkpoints.trust.recipe_class_prefixes`).

A checkpoint of a module built in Python holds the weights but not the bricks, and the command line cannot rebuild
bricks built in Python: ``--bricks my_module:build_bricks`` names the function of yours that builds them (called
with no arguments, imported from the current folder), or the message shows the same export as a Python call.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from torchbricks_lightning.checkpoints.trust import recipe_class_prefixes
from torchbricks_lightning.cli.config_files import check_config_files
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.export import ExportOptions, ExportResult, ExportSpec
from torchbricks_lightning.core.stages import parse_stage
from torchbricks_lightning.errors import (
    BricksNotStoredError,
    ConfigError,
    TorchBricksError,
    command_line_message,
    did_you_mean,
)
from torchbricks_lightning.lightning.export import export_checkpoint

__all__ = ["bricks_from_function", "bricks_not_stored_message", "describe_result", "export_parser", "run_export"]

RECIPE_SECTIONS = ("seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler")
"""Sections of a training recipe that ``export --config recipe.yaml`` accepts and reads only for their classes."""


def export_parser() -> ArgumentParser:
    """The arguments of the ``export`` subcommand.

    Example:
        >>> arguments = export_parser().parse_args(["--ckpt_path", "run.ckpt", "--output", "model.onnx",
        ...                                         "--output_names", "digit/probabilities", "digit/class_prediction"])
        >>> arguments.stage, arguments.verify, arguments.output_names, arguments.dtype
        ('export', True, ['digit/probabilities', 'digit/class_prediction'], 'float32')
    """
    defaults = ExportOptions()
    parser = ArgumentParser(
        prog="torchbricks-lightning export",
        description="Export a checkpoint to checked ONNX or .pt2 artefacts, each with a JSON manifest.",
    )
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="A YAML file with these options, or the training recipe: the classes it names are trusted.",
    )
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="Checkpoint written by the fit subcommand.")
    parser.add_argument(
        "--bricks",
        type=str | None,
        default=None,
        help="module:function of yours that builds the bricks, for a checkpoint trained from Python.",
    )
    parser.add_argument(
        "--output",
        type=str | None,
        default=None,
        help="The artefact to write, .onnx or .pt2; '{head}' in it writes one artefact per head.",
    )
    parser.add_argument(
        "--output_names", type=str, nargs="+", default=None, help="The outputs of --output (default: terminal ones)."
    )
    parser.add_argument(
        "--format", type=Literal["onnx", "pt2"] | None, default=defaults.format, help="Default: the suffix's."
    )
    parser.add_argument("--dtype", type=Literal["float32", "float16"], default=defaults.dtype, help="Precision.")
    parser.add_argument(
        "--artefacts",
        type=list[ExportSpec] | None,
        default=None,
        help="Several artefacts: a list of {path, output_names, format, dtype} (left out: the options above).",
    )
    parser.add_argument("--stage", type=str, default=defaults.stage.value, help="The stage to export.")
    parser.add_argument(
        "--dynamic_batch_size", type=bool, default=defaults.dynamic_batch_size, help="Make the batch dimension dynamic."
    )
    parser.add_argument(
        "--dynamic_spatial", type=bool, default=defaults.dynamic_spatial, help="Make image sizes dynamic."
    )
    parser.add_argument(
        "--opset", type=int | None, default=defaults.opset, help="The ONNX opset (default: the exporter's)."
    )
    parser.add_argument("--trusted_class_prefixes", type=list[str], default=[], help="More trusted packages.")
    parser.add_argument("--verify", type=bool, default=defaults.verify, help="Check each artefact against PyTorch.")
    for section in RECIPE_SECTIONS:  # a training recipe given as --config: read for its classes only
        parser.add_argument(f"--{section}", type=Any, default=None, help=argparse.SUPPRESS)
    return parser


def describe_result(result: ExportResult) -> list[str]:
    """The lines ``export`` prints about one artefact: where it went, its inputs and outputs, and its check."""

    def shapes(entries: list[dict[str, object]]) -> str:
        return ", ".join(f"{entry['name']} {entry['dtype']}{entry['shape']}" for entry in entries)

    lines = [
        f"Wrote {result.path} ({result.format}, {result.dtype}) and its manifest {result.manifest_path}",
        f"  inputs:  {shapes(result.manifest.get('inputs', []))}",
        f"  outputs: {shapes(result.manifest.get('outputs', []))}",
    ]
    verification = result.manifest.get("verification")
    if verification:
        worst = max(result.max_abs_diff.values(), default=0.0)
        reference = "PyTorch" if result.dtype == "float32" else "the float32 model"  # a float16 artefact's drift
        lines.append(f"  checked in {verification['runtime']} against {reference}: max abs diff {worst:.2e}")
    else:
        lines.append("  not verified")
    return lines


def run_export(argv: Sequence[str]) -> int:
    """Run ``export`` with the arguments after the subcommand; print what was written and return the exit code.

    A mistake (a missing or untrusted checkpoint, an unknown output, a stage with a loss alive, a path that is not
    ``.onnx`` or ``.pt2``) prints ``error: ...`` without a traceback and returns 2; argument errors exit with 2
    through the parser.
    """
    parser = export_parser()
    try:
        check_config_files(argv)  # a checkpoint given as --config: refused before jsonargparse reads it
    except TorchBricksError as err:
        print(f"error: {command_line_message(err)}", file=sys.stderr)
        return 2
    arguments = parser.parse_args(list(argv))
    if arguments.ckpt_path is None:
        parser.error("Give --ckpt_path, the checkpoint to export (after a --config that sets ckpt_path: null).")
    if (arguments.output is None) == (arguments.artefacts is None):
        parser.error("Give either --output (one artefact, or one per head with '{head}') or --artefacts (several).")
    if arguments.artefacts is not None and arguments.output_names is not None:
        parser.error("--output_names goes with --output; give each item of --artefacts its own output_names.")
    artefacts = None
    if arguments.artefacts is not None:  # jsonargparse gives each item as a Namespace
        artefacts = [
            item if isinstance(item, ExportSpec) else ExportSpec(**item.as_dict()) for item in arguments.artefacts
        ]
    try:
        trusted = [*arguments.trusted_class_prefixes, *recipe_class_prefixes(arguments.config or [])]
        bricks = None if arguments.bricks is None else bricks_from_function(arguments.bricks)
        options = ExportOptions(
            stage=parse_stage(arguments.stage, where="the export command"),
            output_names=arguments.output_names,
            format=arguments.format,
            dtype=arguments.dtype,
            dynamic_batch_size=arguments.dynamic_batch_size,
            dynamic_spatial=arguments.dynamic_spatial,
            opset=arguments.opset,
            verify=arguments.verify,
        )
        results = export_checkpoint(
            arguments.ckpt_path,
            arguments.output if artefacts is None else artefacts,
            options,
            brick_collection=bricks,
            trusted_class_prefixes=trusted,
        )
    except BricksNotStoredError as err:
        first = arguments.output if artefacts is None else artefacts[0].path
        print(f"error: {bricks_not_stored_message(err.checkpoint_path, str(first), argv)}", file=sys.stderr)
        return 2
    except TorchBricksError as err:
        print(f"error: {command_line_message(err)}", file=sys.stderr)
        return 2
    for result in results:
        print("\n".join(describe_result(result)))
    return 0


def bricks_from_function(spec: str) -> BrickCollection | Mapping[str, Any]:
    """The bricks that ``--bricks module:function`` builds: the function, imported, called with no arguments.

    Raises:
        ConfigError: ``spec`` is not ``module:function``, the module cannot be imported, it has no such function,
            or the function returns something other than a ``BrickCollection`` or a dict of bricks.

    Example:
        >>> bricks_from_function("collections:OrderedDict")
        OrderedDict()
        >>> bricks_from_function("build_bricks")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: --bricks 'build_bricks' is not module:function, ...
    """
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name.isidentifier():
        raise ConfigError(
            f"--bricks {spec!r} is not module:function, e.g. --bricks my_bricks:build_bricks for a function "
            "build_bricks() in my_bricks.py in the current folder."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"--bricks {spec!r}: cannot import module {module_name!r} ({err}). Run the command from the folder that "
            f"holds {module_name.split('.')[0]}.py, or add that folder to PYTHONPATH."
        ) from err
    function = getattr(module, function_name, None)
    if not callable(function):
        names = [name for name in dir(module) if not name.startswith("_") and callable(getattr(module, name))]
        raise ConfigError(
            f"--bricks {spec!r}: module {module_name!r} has no function {function_name!r}."
            f"{did_you_mean(function_name, names)}"
        )
    bricks = function()
    if not isinstance(bricks, (BrickCollection, Mapping)):
        raise ConfigError(
            f"--bricks {spec!r} returned a {type(bricks).__name__}; it must return the bricks, as a BrickCollection "
            "or a dict of bricks by name."
        )
    return bricks


def bricks_not_stored_message(checkpoint_path: str, output: str, argv: Sequence[str]) -> str:
    """What ``export`` says about a checkpoint trained from Python: the command line cannot rebuild its bricks; the
    same export with ``--bricks``, and as Python calls, each ready to paste.

    Example:
        >>> print(bricks_not_stored_message("run.ckpt", "model.onnx", ["--ckpt_path", "run.ckpt", "--output",
        ...                                 "model.onnx"]))  # doctest: +NORMALIZE_WHITESPACE
        Checkpoint 'run.ckpt' was trained from a LightningBrickCollection built in Python: it holds the weights but not
        the bricks, and the command line cannot rebuild bricks built in Python. Name the function of yours that builds
        them (in a module of the current folder, called with no arguments):
            torchbricks-lightning export --ckpt_path run.ckpt --output model.onnx --bricks my_bricks:build_bricks
        or export from Python:
            from torchbricks_lightning import LightningBrickCollection, export_bricks
            module = LightningBrickCollection.load_from_checkpoint('run.ckpt', brick_collection=build_bricks())
            export_bricks('model.onnx', module.brick_collection, module.example_named_inputs())
    """
    command = shlex.join(["torchbricks-lightning", "export", *argv, "--bricks", "my_bricks:build_bricks"])
    return (
        f"Checkpoint {checkpoint_path!r} was trained from a LightningBrickCollection built in Python: it holds the "
        "weights but not the bricks, and the command line cannot rebuild bricks built in Python. Name the function of "
        "yours that builds them (in a module of the current folder, called with no arguments):\n"
        f"    {command}\n"
        "or export from Python:\n"
        "    from torchbricks_lightning import LightningBrickCollection, export_bricks\n"
        f"    module = LightningBrickCollection.load_from_checkpoint({checkpoint_path!r}, "
        "brick_collection=build_bricks())\n"
        f"    export_bricks({output!r}, module.brick_collection, module.example_named_inputs())"
    )
