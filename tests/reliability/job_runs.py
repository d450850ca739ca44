"""Running the kill-and-resume jobs of the resume tests, and reading back what they logged (not a test module)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 240


def run_jobs(
    job: Path, *runs: tuple[Path, list[str]], timeout_s: float = TIMEOUT_S
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``job`` once per ``(out folder, extra arguments)``, all at once (pass two: one per core); single-threaded,
    warnings off. A job still running after ``timeout_s`` is killed, so a hung job fails the test instead of
    outliving it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(job), "--out", str(out), *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for out, extra in runs
    ]
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout_s)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def logged_values(folder: Path) -> dict[tuple[str, int | None, int], float]:
    """``{(name, epoch, step): value}`` of a CSVLogger's metrics.csv (``LearningRateMonitor`` rows have no epoch:
    None)."""
    values = {}
    with (folder / "metrics.csv").open() as file:
        for row in csv.DictReader(file):
            epoch = int(row["epoch"]) if row.get("epoch") else None
            for name, value in row.items():
                if name not in ("epoch", "step") and value != "":
                    values[(name, epoch, int(row["step"]))] = float(value)
    return values
