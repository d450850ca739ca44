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
:class:`~torchbricks_lightning.core.export.ExportOptions`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from torchbricks_lightning.core.export import ExportOptions, ExportResult, ExportSpec
from torchbricks_lightning.core.stages import parse_stage
from torchbricks_lightning.errors import TorchBricksError, command_line_message
from torchbricks_lightning.lightning.export import export_checkpoint

__all__ = ["describe_result", "export_parser", "run_export"]


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
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with these options.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint written by the fit subcommand.")
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
    arguments = parser.parse_args(list(argv))
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
            trusted_class_prefixes=arguments.trusted_class_prefixes,
        )
    except TorchBricksError as err:
        print(f"error: {command_line_message(err)}", file=sys.stderr)
        return 2
    for result in results:
        print("\n".join(describe_result(result)))
    return 0
