"""Detection under DDP on CPU (gloo, 2 processes) with partial annotations, against the same job on 1 process.

``ddp_jobs/detection_job.py`` trains the detection head on synthetic scenes of which about 30% are not annotated
(NaN boxes), then validates on scenes with 30% not annotated too, so the two processes hold different numbers of
annotated validation images and of detections. Each process normalises its loss by the positives of both, and the
mAP metric gathers every process's rows (flat states, concatenated), so the 2-process run gives the mAP of 1 process
exactly, and the step losses and final parameters to float precision (the same sums in another order: ~1e-6 over
the 24 Adam steps; ``1e-4`` leaves a margin and still catches a loss averaged over each process's own positives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_distributed_multitask import _CLUSTER_PREFIXES, _CLUSTER_VARS, _free_port, _wait

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="kills the job's process group with os.killpg"),
]

JOB = Path(__file__).parent / "ddp_jobs" / "detection_job.py"
TOLERANCE = 1e-4


def _start(devices: int, out: Path) -> subprocess.Popen[str]:
    """The job on ``devices`` processes, in a session of its own, with no cluster variables of the caller's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _CLUSTER_VARS and key != "MASTER_PORT" and not key.startswith(_CLUSTER_PREFIXES)
    }
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONUNBUFFERED="1")
    command = [sys.executable, str(JOB), "--devices", str(devices), "--out", str(out)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    root = tmp_path_factory.mktemp("ddp_detection")
    started = time.monotonic()
    processes = {devices: _start(devices, root / f"devices{devices}") for devices in (1, 2)}
    results = {}
    for devices, process in processes.items():
        log = _wait(process, started)
        out = root / f"devices{devices}"
        results[devices] = {
            "log": log,
            **json.loads((out / "result.json").read_text()),
            "ranks": [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(devices)],
        }
    return results


def test_the_processes_held_different_numbers_of_annotated_images(runs: dict[int, dict[str, Any]]) -> None:
    assert runs[1]["world_size"] == 1
    assert runs[2]["world_size"] == 2
    assert "All distributed processes registered" in runs[2]["log"]
    assert runs[1]["global_step"] == runs[2]["global_step"] == 24
    single = runs[1]["ranks"][0]["annotated_validation_images"]
    per_rank = [rank["annotated_validation_images"] for rank in runs[2]["ranks"]]
    assert sum(per_rank) == single < 48, "some validation images are not annotated"
    assert per_rank[0] != per_rank[1]


def test_two_processes_give_the_map_of_one(runs: dict[int, dict[str, Any]]) -> None:
    single, double = runs[1]["validation"], runs[2]["validation"]
    assert single["validation/det/map_50"] > 0.3, "the comparison is between real detections"
    for key in ("validation/det/map", "validation/det/map_50", "validation/det/map_75"):
        assert double[key] == single[key], key
    assert abs(double["validation/det/loss_detection"] - single["validation/det/loss_detection"]) < TOLERANCE


def test_two_processes_take_the_steps_of_one(runs: dict[int, dict[str, Any]]) -> None:
    single, double = runs[1], runs[2]
    assert len(single["step_losses"]) == len(double["step_losses"]) == 24
    differences = [abs(a - b) for a, b in zip(single["step_losses"], double["step_losses"], strict=True)]
    assert max(differences) < TOLERANCE, differences
    worst = max(
        abs(a - b)
        for name in single["parameters"]
        for a, b in zip(single["parameters"][name], double["parameters"][name], strict=True)
    )
    assert worst < TOLERANCE
