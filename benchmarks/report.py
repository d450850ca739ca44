"""Write the results: ``results.json`` (everything, samples included) and ``results.md`` (one row per figure)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkResult, _jsonable
from torchbricks_lightning.core.atomic_files import write_atomically

__all__ = ["TABLE_HEADER", "build_report", "markdown", "write_report"]

TABLE_HEADER = ("Figure", "Measured", "Baseline", "Ratio / difference", "Target", "Met", "Notes")


def build_report(
    results: Sequence[BenchmarkResult],
    environment: Mapping[str, Any],
    method: Mapping[str, Any],
    total_seconds: float,
) -> dict[str, Any]:
    """The JSON document: method, machine, every figure (flat) and each benchmark's details."""
    benchmarks = [result.as_dict() for result in results]
    figures = [figure for benchmark in benchmarks for figure in benchmark["figures"]]
    with_target = [figure for figure in figures if figure["met"] is not None]
    return _jsonable(
        {
            "method": dict(method),
            "environment": dict(environment),
            "total_seconds": total_seconds,
            "summary": {
                "figures": len(figures),
                "with_target": len(with_target),
                "met": sum(1 for figure in with_target if figure["met"]),
                "missed": [figure["name"] for figure in with_target if not figure["met"]],
            },
            "figures": figures,
            "benchmarks": benchmarks,
        }
    )


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if isinstance(value, float) and value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def _with_unit(value: Any, unit: str) -> str:
    text = _number(value)
    return f"{text} {unit}" if text and unit else text


def _comparison(figure: Mapping[str, Any]) -> str:
    value = figure["comparison"]
    if value is None or figure["comparison_kind"] == "none":
        return ""
    if figure["comparison_kind"] == "ratio":
        return f"{value:.3f}x"
    text = _number(value)
    if isinstance(value, (int, float)) and value > 0 and not text.startswith("+"):
        text = f"+{text}"
    unit = figure.get("comparison_unit") or ""
    return f"{text} {unit}".strip()


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: Mapping[str, Any]) -> str:
    """The markdown page: method and machine first, then one table row per figure."""
    env = report["environment"]
    method = report["method"]
    summary = report["summary"]
    lines = [
        "# torchbricks_lightning benchmarks",
        "",
        "## Method",
        "",
        f"- Every figure is compared with a baseline measured side by side in the same run: "
        f"{method.get('interleaving', 'interleaved repeats')}.",
        f"- Fast calls: median of {method.get('repeats')} repeats, each sample at least "
        f"{1e3 * float(method.get('min_sample_s', 0)):.0f} ms of calls timed with time.perf_counter_ns "
        "(garbage collector off). Slow one-shot measurements (compiles, exports, subprocesses): median of "
        f"{method.get('slow_repeats')} repeats; training runs: median of {method.get('fit_repeats')} repeats.",
        "- Ratio = median of the paired ratios (candidate / baseline of the same repeat); difference = median of the "
        "paired differences. Measured and baseline columns are the medians of each side.",
        f"- Threads: torch {env.get('torch_threads')} intra-op / {env.get('torch_interop_threads')} inter-op, "
        f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS')}, MKL_NUM_THREADS={env.get('MKL_NUM_THREADS')}.",
        f"- Mode: {'quick (code paths only, timings meaningless)' if method.get('quick') else 'full'}; "
        f"total run time {report['total_seconds']:.0f} s.",
        "",
        "## Machine",
        "",
        f"- CPU: {env.get('cpu_model')}, {env.get('cpu_count')} cores ({env.get('cpu_affinity')} usable); "
        f"GPU: {env.get('gpu') or 'none'}; load average at start: {env.get('load_average_at_start', 'n/a')}",
        f"- Python {env.get('python')}, torch {env.get('torch')}, torchvision {env.get('torchvision')}, "
        f"pytorch-lightning {env.get('pytorch_lightning')}, torchmetrics {env.get('torchmetrics')}, "
        f"onnx {env.get('onnx')}, onnxruntime {env.get('onnxruntime')}, onnxscript {env.get('onnxscript')}, "
        f"torchbricks-lightning {env.get('torchbricks_lightning')}",
        f"- {env.get('platform')}",
        "",
        "## Results",
        "",
        f"{summary['met']} of {summary['with_target']} targets met"
        + (f"; missed: {', '.join(summary['missed'])}." if summary["missed"] else "."),
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join("---" for _ in TABLE_HEADER) + "|",
    ]
    for figure in report["figures"]:
        met = "" if figure["met"] is None else ("yes" if figure["met"] else "**no**")
        row = (
            figure["name"],
            _with_unit(figure["value"], figure["unit"]),
            _with_unit(figure["baseline"], figure["unit"]),
            _comparison(figure),
            figure["target"] or "n/a",
            met or "n/a",
            figure["notes"],
        )
        lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    lines.append("")
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], output: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``output``; returns their paths."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output / "results.json", output / "results.md"
    # Each file whole or the previous one (a killed or failed write keeps the last good report).
    encoded = (json.dumps(report, indent=2, allow_nan=False) + "\n").encode("utf-8")
    write_atomically(json_path, lambda file: file.write(encoded), what="benchmark report")
    table = markdown(report).encode("utf-8")
    write_atomically(markdown_path, lambda file: file.write(table), what="benchmark report")
    return json_path, markdown_path
