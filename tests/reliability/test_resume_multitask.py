"""Kill-and-resume with a task balancer and MultiTaskDataModule: the resumed run is bit-identical.

``multitask_resume_job.py`` (next to this file) mixes two datasets with temperature sampling and balances three
tasks with ``DynamicWeightAverage``. A run is SIGKILLed in its third epoch (the first whose DWA weights are not 1),
two steps after a mid-epoch checkpoint, and resumed with ``trainer.fit(..., ckpt_path="last")``. It must end with
the uninterrupted run's weights, the balancer's state included, and log the same values (losses, metrics, the DWA
weights) for the interrupted epoch and the epochs after it, read back from the CSV logs.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from conftest import same_state
from job_runs import logged_values, run_jobs

pytestmark = pytest.mark.slow

JOB = Path(__file__).with_name("multitask_resume_job.py")
KILL_AT_STEP = 22  # epoch 2 (8 steps per epoch), 2 steps after the checkpoint of step 20
INTERRUPTED_EPOCH = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume_multitask")
    full, crashed = root / "full", root / "crashed"
    uninterrupted, killed = run_jobs(JOB, (full, []), (crashed, ["--kill-at-step", str(KILL_AT_STEP)]))
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-4000:]
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-4000:]
    last = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == KILL_AT_STEP - 2, "the last checkpoint is 2 steps before the kill, mid-epoch"
    assert last["epoch"] == INTERRUPTED_EPOCH
    (resumed,) = run_jobs(JOB, (crashed, ["--resume"]))
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    return {"full": full, "resumed": crashed}


def test_the_resumed_run_ends_with_the_uninterrupted_weights_and_balancer_state(runs: dict[str, Path]) -> None:
    full = torch.load(runs["full"] / "final.pt", weights_only=True)
    resumed = torch.load(runs["resumed"] / "final.pt", weights_only=True)
    assert full.keys() == resumed.keys()
    assert {"loss_balancer.history", "loss_balancer.lambdas", "loss_balancer.epochs_seen"} <= set(full)
    different = [name for name in full if not same_state(full[name], resumed[name])]
    assert not different, f"weights differ after the resume: {different}"


def test_the_resumed_run_logs_the_uninterrupted_values_and_dwa_weights(runs: dict[str, Path]) -> None:
    full = logged_values(runs["full"] / "logs" / "first")
    resumed = logged_values(runs["resumed"] / "logs" / "resumed")
    epochs = {epoch for _, epoch, _ in resumed}
    assert epochs == {INTERRUPTED_EPOCH, INTERRUPTED_EPOCH + 1}
    interrupted = {name for name, epoch, _ in resumed if epoch == INTERRUPTED_EPOCH}
    assert {
        "train/balance/digit/loss_ce",
        "train/digit/loss_ce_epoch",
        "train/foreground/mean_iou",
        "validation/foreground/mean_iou",
    } <= interrupted
    weights = [value for (name, epoch, _), value in full.items() if name == "train/balance/digit/loss_ce"]
    assert weights[:2] == [1.0, 1.0]
    assert weights[2] != 1.0, "the interrupted epoch already has DWA weights of its own"
    mismatched = {key: (full.get(key), value) for key, value in resumed.items() if full.get(key) != value}
    assert not mismatched, f"logged values differ from the uninterrupted run: {mismatched}"
