"""ONNX: ``export_bricks_as_onnx`` against ``torch.onnx.export(dynamo=True)`` of the equivalent hand-written module.

The model is the small CNN (preprocessor, ``SmallConvNet``, classifier) plus a loss brick that is dead in the export
stage, on a 1x3x64x64 image. The hand-written module calls the same module objects and returns the same tensors
(every tensor the export stage produces, asked for by name: an export's default is the terminal outputs), under the
same input and output names. (This module is not called ``onnx.py`` so that it never shadows the ``onnx`` package.)

Figures:

* export time, ``verify=False``, ratio to the hand-written export (informational), interleaved repeats;
* the largest absolute difference between onnxruntime and eager PyTorch on the bricks export (target <= 1e-5),
  with the hand-written export's as the baseline;
* onnxruntime latency of the bricks export against the hand-written export (target: within 3%), one thread;
* onnxruntime over eager PyTorch (``no_grad``, eval): the speed-up (informational);
* onnxruntime latency of a single-head export against the full export of the demo model (``build_bricks`` of
  ``examples/digits_multitask.py``, on one 8x8 digit): what pruning the graph to one task's outputs saves
  (informational).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    BenchmarkResult,
    Figure,
    Settings,
    interleaved,
    max_abs_difference,
    ratio_figure,
    time_interleaved,
)
from benchmarks.models import cnn_bricks, cnn_modules
from torchbricks_lightning import BrickCollection, BrickLoss, Stage, export_bricks_as_onnx
from torchbricks_lightning import export_bricks as export_artefact
from torchbricks_lightning.core.outputs import head_output_names

__all__ = [
    "EXPORTED_NAMES",
    "MAX_ABS_ERROR",
    "MAX_LATENCY_RATIO",
    "HandWrittenExport",
    "demo_bricks",
    "export_pair",
    "head_latency",
    "run",
]

MAX_ABS_ERROR = 1e-5
MAX_LATENCY_RATIO = 1.03


class HandWrittenExport(nn.Module):
    """The hand-written module for export: tensors in, the tuple of tensors out, calling the same modules."""

    def __init__(self, preprocessor: nn.Module, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        normalized = self.preprocessor(raw)
        features = self.backbone(normalized)
        logits, probabilities, class_prediction = self.classifier(features)
        return normalized, features, logits, probabilities, class_prediction


def export_pair(settings: Settings) -> tuple[BrickCollection, HandWrittenExport, torch.Tensor]:
    """The brick model (with a loss brick, dead at export), its hand-written twin and an example image."""
    size = 16 if settings.quick else 64
    torch.manual_seed(0)
    preprocessor, backbone, classifier = cnn_modules((4,) if settings.quick else (16, 32))
    bricks = BrickCollection(
        {
            **cnn_bricks(preprocessor, backbone, classifier),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"]),
        }
    ).eval()
    handwritten = HandWrittenExport(preprocessor, backbone, classifier).eval()
    return bricks, handwritten, torch.rand(1, 3, size, size)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints its progress and warns about deprecations: keep the report readable."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


EXPORTED_NAMES = ["normalized", "features", "logits", "probabilities", "class_prediction"]
"""Every tensor the export stage produces, as the hand-written module returns them (not only the terminal
outputs, the default of an export), so that both graphs compute and return the same values."""


def export_bricks(path: Path, bricks: BrickCollection, image: torch.Tensor) -> list[str]:
    with _quiet():
        result = export_bricks_as_onnx(
            path, bricks, {"raw": image}, verify=False, output_names=EXPORTED_NAMES, dynamic_batch_size=False
        )
    return result.output_names


def export_handwritten(path: Path, handwritten: nn.Module, image: torch.Tensor, output_names: Sequence[str]) -> None:
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            handwritten,
            (image,),
            str(path),
            input_names=["raw"],
            output_names=list(output_names),
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def session_of(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path))
    return dict(Counter(node.op_type for node in model.graph.node))


def _errors(session: Any, output_names: Sequence[str], image: torch.Tensor, eager: Sequence[torch.Tensor]) -> dict:
    got = session.run(list(output_names), {"raw": image.numpy()})
    floats = [(g, e) for g, e in zip(got, eager, strict=True) if e.is_floating_point()]
    others = [(g, e) for g, e in zip(got, eager, strict=True) if not e.is_floating_point()]
    return {
        "max_abs_error": max_abs_difference([g for g, _ in floats], [e for _, e in floats]),
        "integer_mismatches": int(sum(int((torch.as_tensor(g) != e).sum()) for g, e in others)),
        "shapes_equal": all(tuple(g.shape) == tuple(e.shape) for g, e in zip(got, eager, strict=True)),
    }


def run(settings: Settings | None = None) -> BenchmarkResult:
    settings = settings or Settings.full()
    start = time.perf_counter()
    bricks, handwritten, image = export_pair(settings)
    shape = "x".join(str(s) for s in image.shape)
    details: dict[str, Any] = {"image": shape}
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as folder:
        bricks_path, handwritten_path = Path(folder) / "bricks.onnx", Path(folder) / "handwritten.onnx"
        output_names = export_bricks(bricks_path, bricks, image)  # also the warm-up of the exporter
        export_handwritten(handwritten_path, handwritten, image, output_names)
        details["output_names"] = output_names

        export_samples = interleaved(
            {
                "bricks": lambda: _timed(lambda: export_bricks(bricks_path, bricks, image)),
                "handwritten": lambda: _timed(
                    lambda: export_handwritten(handwritten_path, handwritten, image, output_names)
                ),
            },
            settings.slow_repeats,
        )
        with torch.no_grad():
            eager_bricks = bricks({"raw": image}, Stage.EXPORT)
            eager_handwritten = handwritten(image)
        details["eager_outputs_match"] = max_abs_difference(
            [eager_bricks[name] for name in output_names], eager_handwritten
        )
        session_bricks, session_handwritten = session_of(bricks_path), session_of(handwritten_path)
        errors_bricks = _errors(session_bricks, output_names, image, [eager_bricks[name] for name in output_names])
        errors_handwritten = _errors(session_handwritten, output_names, image, eager_handwritten)
        details["errors"] = {"bricks": errors_bricks, "handwritten": errors_handwritten}
        details["op_counts"] = {"bricks": _op_counts(bricks_path), "handwritten": _op_counts(handwritten_path)}
        details["same_ops"] = details["op_counts"]["bricks"] == details["op_counts"]["handwritten"]
        feeds = {"raw": image.numpy()}
        with torch.no_grad():
            latency = time_interleaved(
                {
                    "bricks_ort": lambda: session_bricks.run(None, feeds),
                    "handwritten_ort": lambda: session_handwritten.run(None, feeds),
                    "bricks_eager": lambda: bricks({"raw": image}, Stage.EXPORT),
                },
                settings,
            )
    details["export_time"] = export_samples
    details["latency"] = latency
    ops = "identical" if details["same_ops"] else "different"
    figures = [
        ratio_figure(
            "onnx: export time (export_bricks_as_onnx, verify=False)",
            export_samples,
            "bricks",
            "handwritten",
            unit="s",
            notes=f"informational; vs torch.onnx.export(dynamo=True) of the hand-written module; small CNN {shape}, "
            f"{export_samples.repeats} interleaved exports each after one warm-up",
        ),
        Figure(
            name="onnx: max abs error, onnxruntime vs eager",
            value=errors_bricks["max_abs_error"],
            baseline=errors_handwritten["max_abs_error"],
            unit="abs",
            comparison=errors_bricks["max_abs_error"],
            comparison_kind="difference",
            comparison_unit="abs",
            target=f"<= {MAX_ABS_ERROR:g}",
            met=errors_bricks["max_abs_error"] <= MAX_ABS_ERROR and errors_bricks["integer_mismatches"] == 0,
            notes=f"over {len(output_names)} outputs {output_names}; class_prediction mismatches: "
            f"{errors_bricks['integer_mismatches']}; baseline: the hand-written export",
        ),
        ratio_figure(
            "onnx: onnxruntime latency, bricks export vs hand-written export",
            latency,
            "bricks_ort",
            "handwritten_ort",
            unit="us/call",
            scale=1e6,
            max_ratio=MAX_LATENCY_RATIO,
            two_sided=True,
            notes=f"1 intra-op thread, sequential; the two graphs have {ops} op counts",
        ),
    ]
    speedup = latency.ratio("bricks_eager", "bricks_ort")
    figures.append(
        Figure(
            name="onnx: onnxruntime over eager PyTorch (bricks), speed-up",
            value=latency.median("bricks_ort") * 1e6,
            baseline=latency.median("bricks_eager") * 1e6,
            unit="us/call",
            comparison=speedup,
            comparison_kind="ratio",
            notes="informational; comparison = eager / onnxruntime (median of paired ratios), eager under no_grad, "
            "EXPORT stage",
        )
    )
    head_figure, details["heads"] = head_latency(settings)
    figures.append(head_figure)
    return BenchmarkResult("onnx", figures, details, time.perf_counter() - start)


def demo_bricks() -> BrickCollection:
    """The demo model's bricks, from ``build_bricks`` of ``examples/digits_multitask.py``."""
    path = Path(__file__).resolve().parents[1] / "examples" / "digits_multitask.py"
    spec = importlib.util.spec_from_file_location("digits_multitask_example", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"Cannot import the demo model from {path}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    bricks: BrickCollection = module.build_bricks()
    return bricks.eval()


def head_latency(settings: Settings) -> tuple[Figure, dict[str, Any]]:
    """onnxruntime latency of the demo model's first head alone against the full export (every head)."""
    bricks = demo_bricks()
    image = torch.rand(1, 1, 8, 8)
    heads = head_output_names(bricks.plan(Stage.EXPORT))
    head, names = next(iter(heads.items()))
    with tempfile.TemporaryDirectory(prefix="bench-onnx-heads-") as folder:
        full_path, head_path = Path(folder) / "full.onnx", Path(folder) / f"{head}.onnx"
        with _quiet():
            full = export_artefact(full_path, bricks, {"raw": image}, verify=False)
            single = export_artefact(head_path, bricks, {"raw": image}, output_names=names, verify=False)
        sessions = {"head": session_of(head_path), "full": session_of(full_path)}
        feeds = {"raw": image.numpy()}
        latency = time_interleaved({name: lambda s=s: s.run(None, feeds) for name, s in sessions.items()}, settings)
        nodes = {name: sum(_op_counts(path).values()) for name, path in (("head", head_path), ("full", full_path))}
    details = {
        "heads": list(heads),
        "head": head,
        "head_outputs": single.output_names,
        "full_outputs": full.output_names,
        "head_bricks": single.manifest["bricks"],
        "full_bricks": full.manifest["bricks"],
        "onnx_nodes": nodes,
        "latency": latency,
    }
    figure = ratio_figure(
        f"onnx: onnxruntime latency, one head ({head!r}) vs the full export, demo model",
        latency,
        "head",
        "full",
        unit="us/call",
        scale=1e6,
        notes=f"informational; examples/digits_multitask.py build_bricks, one 1x1x8x8 digit, 1 intra-op thread; "
        f"{len(heads)} heads {list(heads)}; ONNX nodes {nodes['head']} vs {nodes['full']}",
    )
    return figure, details


def _timed(fn: Any) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin
