"""Run the benchmarks and write ``results.json`` and ``results.md``.

Usage::

    python -m benchmarks.run --output build/benchmarks            # everything (a few minutes on 2 cores)
    python -m benchmarks.run --output /tmp/bench --quick          # every code path, tiny sizes (seconds)
    python -m benchmarks.run --only dispatch,metrics              # a subset

With CUDA available, the dispatch, compile and Lightning parity benchmarks run on the GPU as well (figures marked
``[cuda]``).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks import balancers, build, detection, dispatch, lightning_parity, metrics, onnx_export
from benchmarks import compile as compile_benchmark
from benchmarks.common import BenchmarkResult, Figure, Settings, environment, pin_threads
from benchmarks.report import build_report, write_report

__all__ = ["BENCHMARKS", "main", "run_benchmarks"]

BENCHMARKS: dict[str, Callable[[Settings], BenchmarkResult]] = {
    "dispatch": dispatch.run,
    "build": build.run,
    "metrics": metrics.run,
    "lightning_parity": lightning_parity.run,
    "onnx": onnx_export.run,
    "compile": compile_benchmark.run,
    "balancers": balancers.run,
    "detection": detection.run,
}
ON_CUDA_TOO = ("dispatch", "lightning_parity", "compile")


def run_benchmarks(
    names: Sequence[str], settings: Settings, cuda: bool, log: Callable[[str], None] = print
) -> list[BenchmarkResult]:
    """Run the named benchmarks (then, with ``cuda``, their CUDA versions); a failure becomes a failed figure."""
    plan = [(name, settings) for name in names]
    if cuda:
        cuda_settings = Settings(**{**settings.__dict__, "device": "cuda"})
        plan += [(name, cuda_settings) for name in names if name in ON_CUDA_TOO]
    results = []
    for name, each in plan:
        label = name if each.device == "cpu" else f"{name} [{each.device}]"
        log(f"== {label}")
        start = time.perf_counter()
        try:
            result = BENCHMARKS[name](each)
        except Exception as err:  # one broken benchmark must not hide the others' figures
            result = BenchmarkResult(
                name,
                [
                    Figure(
                        name=f"{label}: benchmark failed",
                        value=None,
                        baseline=None,
                        unit="",
                        comparison=None,
                        comparison_kind="none",
                        target="runs",
                        met=False,
                        notes=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300],
                    )
                ],
                {"error": traceback.format_exc()},
            )
            log(traceback.format_exc())
        result.seconds = time.perf_counter() - start
        if each.device != "cpu":
            result.name = f"{name}[{each.device}]"
        for figure in result.figures:
            met = "" if figure.met is None else ("  [met]" if figure.met else "  [MISSED]")
            log(f"   {figure.name}: {figure.comparison if figure.comparison is not None else figure.value}{met}")
        log(f"   ({result.seconds:.1f} s)")
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("build/benchmarks"), help="folder for the results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and iterations: code paths only")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--no-cuda", action="store_true", help="do not run the CUDA figures even with a GPU")
    args = parser.parse_args(argv)

    names = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    threads = pin_threads(args.threads)
    settings = Settings.fast() if args.quick else Settings.full()
    cuda = torch.cuda.is_available() and not args.no_cuda
    env = environment("cuda" if cuda else "cpu")
    print(f"torch {env['torch']} with {threads} thread(s) on {env['cpu_model']} ({env['cpu_count']} cores)")
    start = time.perf_counter()
    results = run_benchmarks(names, settings, cuda)
    total = time.perf_counter() - start
    method = {
        "interleaving": "interleaved repeats, candidate and baseline alternating in each repeat (order flipped "
        "every repeat)",
        "quick": settings.quick,
        "repeats": settings.repeats,
        "slow_repeats": settings.slow_repeats,
        "fit_repeats": settings.fit_repeats,
        "min_sample_s": settings.min_sample_s,
        "statistic": "median (of paired ratios / differences)",
        "timer": "time.perf_counter_ns",
        "threads": threads,
        "benchmarks": names,
        "cuda": cuda,
    }
    report = build_report(results, env, method, total)
    json_path, markdown_path = write_report(report, args.output)
    summary = report["summary"]
    print(f"\n{summary['met']} of {summary['with_target']} targets met in {total:.0f} s.")
    for name in summary["missed"]:
        print(f"  missed: {name}")
    print(f"Wrote {json_path} and {markdown_path}")
    failed = any("error" in result.details for result in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
