"""A standalone training job that ``tests/reliability/test_resume.py`` kills mid-epoch and resumes.

    python tests/reliability/resume_job.py --out /tmp/run --kill-at-step 30
    python tests/reliability/resume_job.py --out /tmp/run --resume

It trains a ``LightningBrickCollection`` (``SmallConvNet`` backbone, dropout, a classification head with its
accuracy metric and an AUROC metric, whose states are lists) on :class:`DigitsDataModule` with a real Trainer, a
``ModelCheckpoint(save_last=True, every_n_train_steps=...)`` and a ``CSVLogger`` (nothing else: the module's
checkpoint hooks carry what a resume needs).

``--kill-at-step N`` sends SIGKILL to this very process when the training batch after global step ``N`` starts:
the checkpoints written up to then are on disk, and nothing else is flushed (the CSV log of the run is lost, as
after a real crash). ``--resume`` continues from ``last.ckpt`` with ``trainer.fit(..., ckpt_path="last")``.
``--drop-metric-states`` deletes the interrupted epoch's metric states from ``last.ckpt`` before resuming (what
a resume without them would do). Each run writes ``final.pt`` (the module's weights) and its CSV log under ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torchmetrics.classification import MulticlassAUROC

from torchbricks_lightning import BrickMetricSingle, BrickTrainable
from torchbricks_lightning.bag_of_bricks import SmallConvNet, create_image_classification_head
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.state.resume import RESUME_STATE_KEY

torch.set_num_threads(1)


class KillAtStep(pl.Callback):
    """SIGKILL this process when the training batch after global step ``step`` starts; with ``whole_group``, its
    whole process group (every DDP rank that Lightning started from it, as a cluster's scheduler kills a job): start
    such a job in a session of its own (``test_distributed.Job``), or the group is the caller's too."""

    def __init__(self, step: int, whole_group: bool = False) -> None:
        self.step = step
        self.whole_group = whole_group

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step:
            sys.stdout.flush()
            if self.whole_group:
                os.killpg(os.getpgrp(), signal.SIGKILL)  # this process included
            else:
                os.kill(os.getpid(), signal.SIGKILL)


def build_module(dropout: float) -> LightningBrickCollection:
    backbone = SmallConvNet(in_channels=1, widths=(8, 16))
    bricks = {
        "backbone": BrickTrainable(backbone, input_names=["raw"], output_names=["features"]),
        "dropout": BrickTrainable(nn.Dropout(dropout), input_names=["features"], output_names=["dropped"]),
        "head": create_image_classification_head(10, backbone.n_backbone_features, "dropped", "targets"),
        "auroc": BrickMetricSingle(
            MulticlassAUROC(num_classes=10, thresholds=None),
            input_names=["head/probabilities", "targets"],
            alive_stages=["train", "validation"],
        ),
    }
    return LightningBrickCollection(bricks, optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))


def make_trainer(out: Path, resume: bool, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    """A resume job's Trainer: on CPU, a ``CSVLogger`` row every step under ``out/logs/first`` (``resumed`` when
    ``resume``), no sanity validation, no progress bar or model summary, deterministic; ``kwargs`` add the rest."""
    return pl.Trainer(
        accelerator="cpu",
        logger=CSVLogger(out, name="logs", version="resumed" if resume else "first"),
        callbacks=callbacks,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        **kwargs,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--every-n-train-steps", type=int, default=4)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--drop-metric-states", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--devices", type=int, default=1, help="2 or more: DDP on CPU processes (gloo)")
    args = parser.parse_args(argv)

    pl.seed_everything(7, verbose=False)
    checkpoints = args.out / "checkpoints"
    if args.drop_metric_states and os.environ.get("LOCAL_RANK", "0") == "0":
        path = checkpoints / "last.ckpt"
        checkpoint = torch.load(path, weights_only=True)
        checkpoint[RESUME_STATE_KEY]["metric_states"] = None
        torch.save(checkpoint, path)

    datamodule = DigitsDataModule(batch_size=args.batch_size, num_workers=args.num_workers, seed=3)
    module = build_module(args.dropout)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=checkpoints, save_last=True, every_n_train_steps=args.every_n_train_steps),
    ]
    if args.kill_at_step is not None:
        callbacks.append(KillAtStep(args.kill_at_step))
    strategy = "ddp" if args.devices > 1 else "auto"
    trainer = make_trainer(
        args.out, args.resume, callbacks, max_epochs=args.max_epochs, devices=args.devices, strategy=strategy
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path="last" if args.resume else None)
    if trainer.is_global_zero:
        torch.save(module.state_dict(), args.out / "final.pt")


if __name__ == "__main__":
    main()
