"""Kill-and-resume with the optimisation controls on: parameter groups, an unfreeze schedule and EMA weights.

``finetune_resume_job.py`` (next to this file) freezes the backbone in epochs 0 and 1 and averages the weights with
Lightning's ``EMAWeightAveraging``. A run SIGKILLed at step 30 (epoch 1, the backbone frozen, in eval mode) and
resumed with ``ckpt_path="last"`` must end with the uninterrupted run's weights and log the same values, after it
has crossed the unfreeze at epoch 2: the frozen state is set again when the resumed run starts, the groups and
their optimiser state are the same in both runs, and the EMA state travels in the checkpoint beside the module's
metric and random-generator states.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import same_state
from job_runs import logged_values, run_jobs

JOB = Path(__file__).with_name("finetune_resume_job.py")
KILL_AT_STEP = 30  # epoch 1 of 19 batches per epoch, 2 batches after the checkpoint of step 28


def _initial_weights() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(JOB.parent))
    try:
        import finetune_resume_job
    finally:
        sys.path.remove(str(JOB.parent))
    import pytorch_lightning as pl

    pl.seed_everything(7, verbose=False)
    return finetune_resume_job.build_finetuning_module().state_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune_resume")
    full, crashed = root / "full", root / "crashed"
    uninterrupted, killed = run_jobs(JOB, (full, []), (crashed, ["--kill-at-step", str(KILL_AT_STEP)]))
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-4000:]
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-4000:]
    shutil.copyfile(crashed / "checkpoints" / "last.ckpt", root / "killed.ckpt")
    (resumed,) = run_jobs(JOB, (crashed, ["--resume"]))
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    return {"full": full, "resumed": crashed, "killed": root / "killed.ckpt"}


@pytest.mark.slow
def test_the_checkpoint_of_the_kill_holds_the_average_and_a_frozen_backbone(runs: dict[str, Path]) -> None:
    killed = torch.load(runs["killed"], weights_only=True)
    assert (killed["epoch"], killed["global_step"]) == (1, 28)
    assert killed["torchbricks_resume"]["mid_epoch"]
    groups = [group["name"] for group in killed["optimizer_states"][0]["param_groups"]]
    assert groups == ["backbone", "backbone/no_decay", "default", "default/no_decay"]
    initial, raw, averaged = _initial_weights(), killed["current_model_state"], killed["state_dict"]
    backbone = [name for name in initial if name.startswith("brick_collection.backbone.")]
    assert [name for name in backbone if not torch.equal(raw[name], initial[name])] == [], (
        "frozen in eval mode: weights and batch norm statistics as built"
    )
    head = [name for name in initial if name.startswith("brick_collection.head.")]
    assert all(not torch.equal(averaged[name], raw[name]) for name in head if "weight" in name), "the EMA average"
    final = torch.load(runs["full"] / "final.pt", weights_only=True)
    assert all(not torch.equal(final[name], initial[name]) for name in backbone if "weight" in name), (
        "the backbone trained after its unfreeze"
    )


@pytest.mark.slow
def test_a_run_resumed_across_the_unfreeze_with_ema_ends_as_the_uninterrupted_one(runs: dict[str, Path]) -> None:
    full = torch.load(runs["full"] / "final.pt", weights_only=True)
    resumed = torch.load(runs["resumed"] / "final.pt", weights_only=True)
    different = [name for name in full if not same_state(full[name], resumed[name])]
    assert not different, f"weights differ after the resume: {different}"
    full_log = logged_values(runs["full"] / "logs" / "first")
    resumed_log = logged_values(runs["resumed"] / "logs" / "resumed")
    assert {epoch for _, epoch, _ in resumed_log} == {1, 2, None}, "epochs 1 and 2, and the learning rates"
    assert {"lr-SGD/backbone", "validation/head/accuracy", "train/auroc"} <= {name for name, _, _ in resumed_log}
    mismatched = {key: (full_log.get(key), value) for key, value in resumed_log.items() if full_log.get(key) != value}
    assert not mismatched, f"logged values differ from the uninterrupted run: {mismatched}"
