"""Kill-and-resume under 2-process DDP (gloo, CPU): the resumed run is bit-identical to an uninterrupted one.

``ddp_jobs/resume_ddp_job.py`` trains a small model with partial labels (a third of the targets are -100) for 3
epochs of 6 steps, with a checkpoint every 4 steps. One run goes through; another has its whole process group
SIGKILLed (both ranks at once, as a scheduler kills a job) at the start of step 10, in epoch 1, one step after the
mid-epoch checkpoint of step 8, and a fresh 2-process run resumes it with ``trainer.fit(..., ckpt_path="last")``.
Each process restores its own share of the interrupted epoch: its metric and loss-mean states, its generators (the
ranks' dropout masks differ) and its place in the data. The resumed run must end with the uninterrupted weights in
both processes and log the same values, exactly: the per-step losses after the resume point, and the interrupted
epoch's and the later epochs' losses and metrics (read back from the CSV logs).

The jobs run with the DDP tests' runner (:class:`test_distributed.Job`: a session of its own, killed as a whole
after a time limit) and are read with the resume tests' CSV reader (:func:`job_runs.logged_values`).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from job_runs import logged_values
from test_distributed import Job

from torchbricks_lightning.lightning.state.resume import RESUME_STATE_KEY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="kills the job's process group with os.killpg"),
]

JOB = Path(__file__).parent / "ddp_jobs" / "resume_ddp_job.py"
WORLD_SIZE = 2
STEPS_PER_EPOCH = 6  # 96 images, 8 per process and step
CHECKPOINT_STEP = 8  # every 4 steps: epoch 1, after 2 of its 6 batches
KILL_AT_STEP = 9  # the batch after step 9 starts: step 9's work is lost
INTERRUPTED_EPOCH = 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("resume_ddp")
    full, crashed = root / "full", root / "crashed"
    jobs = [Job(WORLD_SIZE, full, job=JOB), Job(WORLD_SIZE, crashed, "--kill-at-step", str(KILL_AT_STEP), job=JOB)]
    uninterrupted, killed = (job.wait(check=check) for job, check in zip(jobs, (True, False), strict=True))
    # wait() returns once every process holding the job's output has exited: both ranks are dead.
    assert killed["returncode"] == -signal.SIGKILL, killed["log"][-4000:]
    assert not list(crashed.glob("final*.pt")), "the killed run must not have finished"
    last = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = Job(WORLD_SIZE, crashed, "--resume", job=JOB).wait()
    return {"full": full, "resumed": crashed, "last": last, "runs": (uninterrupted, resumed)}


def _weights(folder: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(folder / f"final{rank}.pt", weights_only=True)


def test_the_kill_came_right_after_a_mid_epoch_checkpoint_of_both_ranks(runs: dict[str, Any]) -> None:
    last = runs["last"]
    assert (last["global_step"], last["epoch"]) == (CHECKPOINT_STEP, INTERRUPTED_EPOCH)
    state = last[RESUME_STATE_KEY]
    assert (state["mid_epoch"], state["world_size"]) == (True, WORLD_SIZE)
    assert state["batches_this_epoch"] == CHECKPOINT_STEP - STEPS_PER_EPOCH
    assert len(state["loss_states"]) == len(state["metric_states"]) == len(state["rng_states"]) == WORLD_SIZE
    sums = [float(states["loss"]["state"]["mean_value"]) for states in state["loss_states"]]
    assert sums[0] != sums[1], "each process saved the loss sums of its own share of the epoch"
    (loader,) = last["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader["epoch"], loader["batches"], loader["num_replicas"]) == (1, 2, WORLD_SIZE)
    uninterrupted, resumed = runs["runs"]
    assert "distributed_backend=gloo" in uninterrupted["log"]
    assert uninterrupted["result"]["global_step"] == resumed["result"]["global_step"] == 3 * STEPS_PER_EPOCH


def test_both_ranks_end_with_the_uninterrupted_weights(runs: dict[str, Any]) -> None:
    expected = _weights(runs["full"], 0)
    for folder in (runs["full"], runs["resumed"]):
        for rank in range(WORLD_SIZE):
            weights = _weights(folder, rank)
            assert weights.keys() == expected.keys()
            different = [name for name in expected if not torch.equal(weights[name], expected[name])]
            assert not different, f"rank {rank} of {folder.name}: weights differ from the uninterrupted run's"


def test_each_rank_computes_the_uninterrupted_losses_after_the_resume_point(runs: dict[str, Any]) -> None:
    uninterrupted, resumed = runs["runs"]
    for rank in range(WORLD_SIZE):
        expected = uninterrupted["ranks"][rank]["step_losses"]
        losses = resumed["ranks"][rank]["step_losses"]
        assert sorted(map(int, losses)) == list(range(CHECKPOINT_STEP + 1, 3 * STEPS_PER_EPOCH + 1))
        mismatched = {step: (expected[step], loss) for step, loss in losses.items() if expected[step] != loss}
        assert not mismatched, f"rank {rank}: (uninterrupted, resumed) losses by step: {mismatched}"
    assert uninterrupted["ranks"][0]["step_losses"] != uninterrupted["ranks"][1]["step_losses"]


def test_the_resumed_run_logs_the_uninterrupted_values_including_the_interrupted_epoch(runs: dict[str, Any]) -> None:
    full = logged_values(runs["full"] / "logs" / "first")
    resumed = logged_values(runs["resumed"] / "logs" / "resumed")
    assert {epoch for _, epoch, _ in resumed} == {INTERRUPTED_EPOCH, 2}
    interrupted = {name for name, epoch, _ in resumed if epoch == INTERRUPTED_EPOCH}
    train = {"train/loss_epoch", "train/head/loss_ce_epoch", "train/head/accuracy", "train/auroc"}
    assert train | {"validation/loss", "validation/head/accuracy", "validation/auroc"} <= interrupted
    # The CSV's step of a training row is the global step before that batch's optimizer step.
    steps = sorted(step for name, _, step in resumed if name == "train/loss_step")
    expected = sorted(step for name, _, step in full if name == "train/loss_step" and step >= CHECKPOINT_STEP)
    assert steps == expected
    assert len(steps) == 3 * STEPS_PER_EPOCH - CHECKPOINT_STEP
    mismatched = {key: (full.get(key), value) for key, value in resumed.items() if full.get(key) != value}
    assert not mismatched, f"(uninterrupted, resumed) logged values: {mismatched}"
