"""The detection benchmark in quick mode: every figure is produced, the export matches eager, threads are reported."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root, beside the library
    sys.path.insert(0, str(ROOT))

from benchmarks import detection  # noqa: E402
from benchmarks.common import Settings  # noqa: E402
from benchmarks.run import BENCHMARKS  # noqa: E402


def test_the_quick_detection_benchmark_reports_step_time_and_onnx_latency_against_baselines() -> None:
    assert BENCHMARKS["detection"] is detection.run
    result = detection.run(Settings.fast())
    figures = {figure.name: figure for figure in result.figures}
    step = figures["detection: training step (bricks vs hand-written)"]
    latency = figures["detection: inference latency, onnxruntime vs eager PyTorch"]
    for figure in (step, latency, figures["detection: eager inference latency (bricks vs hand-written)"]):
        assert figure.value is not None
        assert figure.value > 0
        assert figure.baseline is not None
        assert figure.baseline > 0
        assert "thread(s)" in figure.notes
    error = figures["detection: onnxruntime vs eager, max abs box error"]
    assert error.met, error
    assert result.details["detections"] > 0, "the export check compared real detections"
    assert result.details["handwritten_matches"] == 0.0, "the hand-written baseline computes the same detections"
    assert result.details["threads"] >= 1
