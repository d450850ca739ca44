"""The ``export`` subcommand: ``torchbricks-lightning export --ckpt_path run.ckpt --output model.onnx``.

It turns a checkpoint written by ``fit`` into an ONNX file, checked against PyTorch with onnxruntime. The checkpoint
alone rebuilds the module (the CLI recorded its recipe), read safely (see
:func:`~torchbricks_lightning.lightning.export.export_checkpoint_as_onnx`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from torchbricks_lightning.errors import TorchBricksError, command_line_message
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx

__all__ = ["export_parser", "run_export"]


def export_parser() -> ArgumentParser:
    """The arguments of the ``export`` subcommand.

    Example:
        >>> arguments = export_parser().parse_args(["--ckpt_path", "run.ckpt", "--output", "model.onnx"])
        >>> arguments.stage, arguments.verify
        ('export', True)
    """
    parser = ArgumentParser(prog="torchbricks-lightning export", description="Export a checkpoint to ONNX.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint written by the fit subcommand.")
    parser.add_argument("--output", type=str, required=True, help="The .onnx file to write.")
    parser.add_argument("--stage", type=str, default="export", help="The stage to export.")
    parser.add_argument("--dynamic_batch_size", type=bool, default=True, help="Make the batch dimension dynamic.")
    parser.add_argument("--trusted_class_prefixes", type=list[str], default=[], help="More trusted packages.")
    parser.add_argument("--verify", type=bool, default=True, help="Check the file with onnxruntime.")
    return parser


def run_export(argv: Sequence[str]) -> int:
    """Run ``export`` with the arguments after the subcommand; print what was written and return the exit code.

    A mistake (a missing or untrusted checkpoint, a stage that needs targets, an output that is not ``.onnx``)
    prints ``error: ...`` without a traceback and returns 2; argument errors exit with 2 through the parser.
    """
    arguments = export_parser().parse_args(list(argv))
    try:
        result = export_checkpoint_as_onnx(
            arguments.ckpt_path,
            arguments.output,
            dynamic_batch_size=arguments.dynamic_batch_size,
            stage=arguments.stage,
            trusted_class_prefixes=arguments.trusted_class_prefixes,
            verify=arguments.verify,
        )
    except TorchBricksError as err:
        print(f"error: {command_line_message(err)}", file=sys.stderr)
        return 2
    worst = max(result.max_abs_diff.values(), default=0.0)
    print(f"Wrote {result.path}")
    print(f"  inputs:  {result.input_names}")
    print(f"  outputs: {result.output_names}")
    print(f"  onnxruntime vs PyTorch: max abs diff {worst:.2e}" if arguments.verify else "  not verified")
    return 0
