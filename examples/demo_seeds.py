"""The README's demo figures: the demo's training (steps 1 to 3 of ``demo.py``, the same functions) with several
seeds, summarised as the mean and spread of each figure in a JSON file and a Markdown table.

Each seed draws the split, which training images keep their digit label, the weights' initialisation and the
training order. A single run of the demo (seed 0) on another CPU gives other figures than here, by floating-point
rounding that the training amplifies; the spread over seeds says by how much a figure moves. The README quotes the
table, and the demo's test checks that the demo's own figures lie within :func:`tolerance` of the mean.

Run: ``python examples/demo_seeds.py`` (5 seeds, two at a time; 188 s measured on 2 shared cores). Writes
``docs/demo_figures.json`` and ``docs/demo_figures.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from demo import LABELS, compare
from digits_multitask import LABELLED_FRACTION, TASKS

from torchbricks_lightning.core.atomic_files import write_atomically, write_json_atomically

SEEDS = (0, 1, 2, 3, 4)
OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "demo_figures"
FLOOR = 0.5
"""The least tolerance of a figure, in percentage points: a spread of five seeds can be near zero by chance."""
TASK_NAMES = {"digit": "digit", "parity": "parity", "foreground": "foreground mask"}


def tolerance(summary: dict[str, float]) -> float:
    """How far one run's figure (in percent, see :func:`flatten`) may lie from the mean over the seeds: three
    standard deviations, at least :data:`FLOOR`."""
    return max(3 * summary["sd"], FLOOR)


def run_seed(seed: int, max_epochs: int, labelled_fraction: float) -> dict[str, Any]:
    """The demo's figures for one seed, trained in a temporary folder."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|Checkpoint directory).*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        comparison = compare(Path(folder), seed, max_epochs, labelled_fraction, say=lambda _: None, progress=False)
    return comparison.figures()


def flatten(figures: dict[str, Any]) -> dict[str, float]:
    """One seed's figures by name, all in percent: ``alone/{task}``, ``together/{task}``, ``gain/{task}`` (in
    percentage points), ``delta_m`` and ``digit_accuracy``."""
    flat = {"delta_m": figures["delta_m"], "digit_accuracy": 100 * figures["digit_accuracy"]}
    for task in TASKS:
        flat[f"alone/{task}"] = 100 * figures["alone"][task]
        flat[f"together/{task}"] = 100 * figures["together"][task]
        flat[f"gain/{task}"] = flat[f"together/{task}"] - flat[f"alone/{task}"]
    return flat


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation (over seeds, n - 1), least and greatest value of every figure (in percent)."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for name, value in flatten(run).items():
            values.setdefault(name, []).append(value)
    return {
        name: {"mean": statistics.fmean(seen), "sd": statistics.stdev(seen), "min": min(seen), "max": max(seen)}
        for name, seen in values.items()
    }


def markdown(result: dict[str, Any]) -> str:
    """The README's table of the figures: mean ± standard deviation over the seeds, in percent."""
    summary, runs = result["summary"], result["runs"]

    def cell(name: str) -> str:
        return f"{summary[name]['mean']:.2f}% ± {summary[name]['sd']:.2f}"

    def gain(task: str) -> str:
        return f"{summary[f'gain/{task}']['mean']:+.2f} ± {summary[f'gain/{task}']['sd']:.2f}"

    fraction = f"{result['labelled_fraction']:.0%} of the training labels"
    lines = [
        "| task | test figure | alone | three tasks (uncertainty weighting) | change |",
        "|---|---|---|---|---|",
    ]
    for task in TASKS:
        better = sum(flatten(run)[f"gain/{task}"] > 0 for run in runs)
        name = f"{TASK_NAMES[task]} ({fraction})" if task == "digit" else TASK_NAMES[task]
        lines.append(
            f"| {name} | {LABELS[task].replace('macro accuracy', 'accuracy (macro)')} | {cell(f'alone/{task}')} "
            f"| {cell(f'together/{task}')} | {gain(task)} points (better in {better} of {len(runs)}) |"
        )
    positive = sum(run["delta_m"] > 0 for run in runs)
    delta = summary["delta_m"]
    lines.append(
        f"| Δm (all three) | % of the baselines | | {delta['mean']:+.2f}% ± {delta['sd']:.2f} | "
        f"(above 0 in {positive} of {len(runs)}) |"
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--max-epochs", type=int, default=15, help="the demo's (the figures are of the demo)")
    parser.add_argument("--labelled-fraction", type=float, default=LABELLED_FRACTION)
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained at once (one thread each)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="writes OUTPUT.json and OUTPUT.md")
    parser.add_argument("--table-only", action="store_true", help="rewrite OUTPUT.md from OUTPUT.json, no training")
    args = parser.parse_args()
    if args.table_only:
        result = json.loads(args.output.with_suffix(".json").read_text())
        write(args.output, {**result, "summary": summarise(result["runs"])})
        return 0
    if len(args.seeds) < 2:
        parser.error("give at least two seeds: the spread needs them")
    start = time.perf_counter()
    # Spawned workers (a fresh interpreter each, as the demo runs): fork would copy this process's torch threads.
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_seed, seed, args.max_epochs, args.labelled_fraction) for seed in args.seeds]
        runs = []
        for future in futures:
            runs.append(future.result())
            print(f"seed {runs[-1]['seed']}: {json.dumps(flatten(runs[-1]))}", flush=True)
    result = {
        "seeds": args.seeds,
        "max_epochs": args.max_epochs,
        "labelled_fraction": args.labelled_fraction,
        "machine": f"{platform.machine()}, {platform.system()}, torch {torch.__version__}",
        "wall_seconds": round(time.perf_counter() - start, 1),
        "summary": summarise(runs),
        "runs": runs,
    }
    write(args.output, result)
    print(markdown(result))
    print(f"({result['wall_seconds']:.0f} s)")
    return 0


def write(output: Path, result: dict[str, Any]) -> None:
    """``output.json`` (every seed's figures and their summary) and ``output.md`` (the README's table)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output.with_suffix(".json"), result, what="figures")
    write_atomically(output.with_suffix(".md"), lambda file: file.write(markdown(result).encode()), what="table")
    print(f"Wrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
