"""Kill-and-resume of the stateful balancers, for ``test_balancer_kill_resume.py``: FAMO, GradNorm and
UPGrad(source="parameters"), each training the digits model in turn.

    python tests/reliability/balancer_resume_job.py --out /tmp/run                    # uninterrupted
    python tests/reliability/balancer_resume_job.py --out /tmp/run --kill-at-step 5   # each killed, then resumed

Each balancer trains in ``--out/{name}`` (2 epochs of 4 batches, a checkpoint every 3 steps: mid-epoch 0). With
``--kill-at-step N`` the job forks one child per balancer, which SIGKILLs itself when the batch after global step
``N`` starts; the parent (a process that never trained that balancer) then resumes it from its ``last.ckpt`` with
``trainer.fit(..., ckpt_path="last")``, and writes each child's end (``"SIGKILL"`` or its exit code) and the epoch
and step of the checkpoint it resumed from to ``--out/ends.json``. A finished run writes ``final.pt`` (the module's
weights, the balancer's state included) and its CSV log (``logs/first``; ``logs/resumed`` after the resume).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from resume_job import KillAtStep, make_trainer
from torch import nn

from torchbricks_lightning import BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_image_classification_head
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import FAMO, GradNorm, LossBalancer, UPGrad

torch.set_num_threads(1)
BALANCERS: dict[str, Callable[[], LossBalancer]] = {
    "famo": FAMO,
    "gradnorm": GradNorm,
    "upgrad_parameters": functools.partial(UPGrad, source="parameters"),
}
STEPS, BATCHES, EVERY = 8, 4, 3


def train(name: str, out: Path, resume: bool, kill_at_step: int | None) -> None:
    pl.seed_everything(7, verbose=False)
    bricks = {
        "backbone": BrickTrainable(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.1)),
            input_names=["raw"],
            output_names=["features"],
        ),
        "digit": create_image_classification_head(10, 16, "features", "targets"),
        "parity": create_image_classification_head(2, 16, "features", "parity"),
    }
    module = LightningBrickCollection(
        bricks, loss_balancer=BALANCERS[name](), optimizer=functools.partial(torch.optim.Adam, lr=0.05)
    )
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, every_n_train_steps=EVERY)
    ]
    if kill_at_step is not None:
        callbacks.append(KillAtStep(kill_at_step))
    trainer = make_trainer(out, resume, callbacks, max_steps=STEPS, limit_train_batches=BATCHES, limit_val_batches=0)
    datamodule = DigitsDataModule(batch_size=32, labelled_fraction=0.5, seed=2)
    trainer.fit(module, datamodule=datamodule, ckpt_path="last" if resume else None)
    torch.save(module.state_dict(), out / "final.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kill-at-step", type=int, default=None)
    args = parser.parse_args()
    ends: dict[str, dict[str, object]] = {}
    for name in BALANCERS:
        if args.kill_at_step is None:
            train(name, args.out / name, False, None)
            continue
        child = os.fork()
        if child == 0:  # the child trains until it kills itself; it never returns to the loop
            try:
                train(name, args.out / name, False, args.kill_at_step)
            finally:
                os._exit(1)
        _, status = os.waitpid(child, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        last = torch.load(args.out / name / "checkpoints" / "last.ckpt", weights_only=True)
        ends[name] = {
            "end": "SIGKILL" if killed else f"exit {os.waitstatus_to_exitcode(status)}",
            "resumed_from": [last["epoch"], last["global_step"]],
            "final_before_resume": (args.out / name / "final.pt").exists(),
        }
        train(name, args.out / name, True, None)
    if ends:
        (args.out / "ends.json").write_text(json.dumps(ends))


if __name__ == "__main__":
    main()
