"""Multi-task DDP on CPU (gloo, 2 processes) with partial labels and PCGrad, against the same job on 1 process.

``ddp_jobs/multitask_job.py`` trains three tasks (a digit with 30% of its labels missing, parity, an intensity
regression with 30% NaN targets) with ``PCGrad`` on the shared features; under 2 processes rank 1's first batch has
no digit label at all. Each process normalises its losses by the labelled count of both processes and PCGrad sums
its Gram matrix over them, so the 2-process run takes the 1-process steps: the logged step losses, the logged PCGrad
coefficients and conflicts, the epoch and validation values and the final parameters agree to float precision (the
same sums in another order: ~1e-7 relative over the 8 SGD steps; ``1e-5`` leaves a margin and catches real faults,
e.g. a mean over each process's own labels moves the losses by 1e-2).

The same jobs then train with two more Gramian balancers, in the same processes: MGDA on the shared tensor (the
Gram matrices summed over the processes) and UPGrad on the backbone's parameters (the per-task Jacobians averaged
over the processes before ``G = J J^T``); their coefficients, step losses and final parameters agree too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="kills the job's process group with os.killpg"),
]

JOB = Path(__file__).parent / "ddp_jobs" / "multitask_job.py"
TIMEOUT_S = 240
TOLERANCE = 1e-5
_CLUSTER_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR")
_CLUSTER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "LSB_", "JSM_", "OMPI_", "PMI_", "PL_TRAINER_", "PL_GLOBAL_SEED")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(devices: int, out: Path, balancers: tuple[str, ...]) -> subprocess.Popen[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _CLUSTER_VARS and key != "MASTER_PORT" and not key.startswith(_CLUSTER_PREFIXES)
    }
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONUNBUFFERED="1")
    command = [sys.executable, str(JOB), "--devices", str(devices), "--out", str(out), "--balancers", *balancers]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _wait(process: subprocess.Popen[str], started: float) -> str:
    try:
        log, _ = process.communicate(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the session this job started, nothing else
        log, _ = process.communicate()
        pytest.fail(f"{process.args} did not finish in {TIMEOUT_S} s (hung collective?).\n{log[-6000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.returncode != 0:
        pytest.fail(f"{process.args} exited with {process.returncode}.\n{log[-6000:]}")
    return log


BALANCERS = ("pcgrad", "mgda", "upgrad_parameters")  # trained one after the other by each job


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    """Every balancer's results on 1 and on 2 processes; the two jobs run at once."""
    root = tmp_path_factory.mktemp("ddp_multitask")
    started = time.monotonic()
    processes = {devices: _start(devices, root / f"devices{devices}", BALANCERS) for devices in (1, 2)}
    results = {}
    for devices, process in processes.items():
        log = _wait(process, started)
        for balancer in BALANCERS:
            out = root / f"devices{devices}" / balancer
            results[balancer, devices] = {
                "log": log,
                **json.loads((out / "result.json").read_text()),
                "ranks": [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(devices)],
            }
    return results


@pytest.fixture(scope="module")
def runs(all_runs: dict[tuple[str, int], dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {devices: all_runs["pcgrad", devices] for devices in (1, 2)}


def _close(name: str, single: list[float], double: list[float]) -> list[str]:
    if len(single) != len(double):
        return [f"{name}: {len(single)} values on 1 process, {len(double)} on 2"]
    return [
        f"{name}[{index}]: {a!r} on 1 process, {b!r} on 2"
        for index, (a, b) in enumerate(zip(single, double, strict=True))
        if abs(a - b) > TOLERANCE * max(1.0, abs(a))
    ]


def test_the_jobs_ran_as_intended(runs: dict[int, dict[str, Any]]) -> None:
    assert runs[1]["world_size"] == 1
    assert runs[2]["world_size"] == 2
    assert runs[1]["global_step"] == runs[2]["global_step"] == 8
    assert [rank["digit_labels_in_first_batch"] for rank in runs[2]["ranks"]][1] == 0, "rank 1: no digit label"
    assert runs[2]["ranks"][0]["digit_labels_in_first_batch"] > 0
    assert any(value > 0 for value in runs[1]["balance"]["train/balance/conflicts"]), "PCGrad had conflicts to fix"


def test_no_advice_to_sync_values_that_torchmetrics_has_synchronised(runs: dict[int, dict[str, Any]]) -> None:
    """Lightning's "use sync_dist=True" advice is wrong for the module's epoch metrics; no user can act on it."""
    assert "All distributed processes registered" in runs[2]["log"], "the log is that of a DDP run"
    assert "sync_dist=True" not in runs[2]["log"]


def test_logged_step_losses_are_those_of_one_process(runs: dict[int, dict[str, Any]]) -> None:
    problems = [
        problem
        for name, single in runs[1]["step_losses"].items()
        for problem in _close(name, single, runs[2]["step_losses"][name])
    ]
    assert not problems, "\n".join(problems)


def test_logged_pcgrad_coefficients_and_conflicts_are_those_of_one_process(runs: dict[int, dict[str, Any]]) -> None:
    problems = [
        problem
        for name, single in runs[1]["balance"].items()
        for problem in _close(name, single, runs[2]["balance"][name])
    ]
    assert len(runs[1]["balance"]["train/balance/digit/loss_ce"]) == 8
    assert not problems, "\n".join(problems)


def test_epoch_and_validation_values_are_those_of_one_process(runs: dict[int, dict[str, Any]]) -> None:
    single, double = runs[1]["epoch_values"], runs[2]["epoch_values"]
    assert [sorted(row) for row in single] == [sorted(row) for row in double]
    assert any("validation/ink/mae" in row for row in single)
    problems = [
        problem for a, b in zip(single, double, strict=True) for key in a for problem in _close(key, [a[key]], [b[key]])
    ]
    assert not problems, "\n".join(problems)


def test_final_parameters_are_those_of_one_process(runs: dict[int, dict[str, Any]]) -> None:
    def flat(value: Any) -> list[float]:
        return [x for item in value for x in flat(item)] if isinstance(value, list) else [float(value)]

    single, double = runs[1]["parameters"], runs[2]["parameters"]
    assert single.keys() == double.keys()
    problems = [problem for name in single for problem in _close(name, flat(single[name]), flat(double[name]))]
    assert not problems, "\n".join(problems[:20])


# ------------------------------------------------------------------------------------------------ Gramian methods
@pytest.mark.parametrize("balancer", ["mgda", "upgrad_parameters"])  # on the shared tensor, on the parameters
def test_gramian_coefficients_and_final_parameters_are_those_of_one_process(
    all_runs: dict[tuple[str, int], dict[str, Any]], balancer: str
) -> None:
    single, double = all_runs[balancer, 1], all_runs[balancer, 2]
    assert double["world_size"] == 2
    assert double["ranks"][1]["digit_labels_in_first_batch"] == 0, "rank 1: no digit label in its first batch"
    assert len(single["balance"]["train/balance/digit/loss_ce"]) == 8
    assert len(set(single["balance"]["train/balance/digit/loss_ce"])) > 1, "coefficients that follow the gradients"
    problems = [
        problem
        for name, values in single["balance"].items()
        for problem in _close(name, values, double["balance"][name])
    ]
    problems += [
        problem
        for name, values in single["step_losses"].items()
        for problem in _close(name, values, double["step_losses"][name])
    ]

    def flat(value: Any) -> list[float]:
        return [x for item in value for x in flat(item)] if isinstance(value, list) else [float(value)]

    parameters = single["parameters"]
    problems += [
        problem
        for name in parameters
        for problem in _close(name, flat(parameters[name]), flat(double["parameters"][name]))
    ]
    assert not problems, "\n".join(problems[:20])
