"""Kill-and-resume for real with the stateful balancers (FAMO, GradNorm, UPGrad on the shared parameters).

``balancer_resume_job.py`` (next to this file) trains each balancer in a process that is SIGKILLed two steps after a
mid-epoch checkpoint, then resumes it with ``trainer.fit(..., ckpt_path="last")`` in another process (the job's
parent, which forked the killed one), beside an uninterrupted run of the same job. Each resumed run
must end bit-identical to an uninterrupted run: the weights and the balancer's state (FAMO's logits, Adam moments
and last losses; GradNorm's task weights and initial losses; the step counters), and log the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import same_state
from job_runs import logged_values, run_jobs

pytestmark = pytest.mark.slow

JOB = Path(__file__).with_name("balancer_resume_job.py")
KILL_AT_STEP = 5  # epoch 1 (4 steps per epoch), 2 steps after the checkpoint of step 3 (mid-epoch 0)
NAMES = ("famo", "gradnorm", "upgrad_parameters")
STATE = {
    "famo": {"loss_balancer._extra_state"},  # logits, Adam's moments and counts, the last step's losses and labels
    "gradnorm": {"loss_balancer.task_weights", "loss_balancer.initial_losses", "loss_balancer.steps"},
    "upgrad_parameters": {"loss_balancer.steps"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("balancer_resume")
    full, crashed = root / "full", root / "crashed"
    uninterrupted, killed = run_jobs(JOB, (full, []), (crashed, ["--kill-at-step", str(KILL_AT_STEP)]))
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-4000:]
    assert killed.returncode == 0, killed.stdout[-4000:]
    ends = json.loads((crashed / "ends.json").read_text())
    resumed_from = [0, KILL_AT_STEP - 2]  # mid-epoch 0
    expected = {"end": "SIGKILL", "resumed_from": resumed_from, "final_before_resume": False}
    assert ends == {name: expected for name in NAMES}, killed.stdout[-4000:]
    return {"full": full, "resumed": crashed}


@pytest.mark.parametrize("name", NAMES)
def test_the_resumed_run_ends_with_the_uninterrupted_weights_and_balancer_state(
    runs: dict[str, Path], name: str
) -> None:
    full = torch.load(runs["full"] / name / "final.pt", weights_only=True)
    resumed = torch.load(runs["resumed"] / name / "final.pt", weights_only=True)
    assert full.keys() == resumed.keys()
    assert STATE[name] <= set(full), sorted(key for key in full if key.startswith("loss_balancer."))
    if name == "famo":
        assert full["loss_balancer._extra_state"]["famo"][3].min() > 0, "every logit was updated"
    else:
        assert int(full["loss_balancer.steps"]) > 0
    different = [key for key in full if not same_state(full[key], resumed[key])]
    assert not different, f"{name}: differs from the uninterrupted run after the resume: {different}"


@pytest.mark.parametrize("name", NAMES)
def test_the_resumed_run_logs_the_uninterrupted_weights(runs: dict[str, Path], name: str) -> None:
    full = logged_values(runs["full"] / name / "logs" / "first")
    resumed = logged_values(runs["resumed"] / name / "logs" / "resumed")
    balance = {key: value for key, value in resumed.items() if key[0].startswith("train/balance/")}
    assert {step for _, _, step in balance} == set(range(KILL_AT_STEP - 2, 8)), "every step after the checkpoint"
    mismatched = {key: (full.get(key), value) for key, value in balance.items() if full.get(key) != value}
    assert not mismatched, f"{name}: logged weights differ from the uninterrupted run: {mismatched}"
