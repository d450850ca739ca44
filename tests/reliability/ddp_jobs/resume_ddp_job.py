"""A 2-process DDP training job (gloo, CPU) that ``tests/reliability/test_resume_ddp.py`` kills mid-epoch and
resumes.

    python tests/reliability/ddp_jobs/resume_ddp_job.py --devices 2 --out /tmp/run --kill-at-step 9
    python tests/reliability/ddp_jobs/resume_ddp_job.py --devices 2 --out /tmp/run --resume

A BatchNorm-free backbone with dropout, ``create_image_classification_head`` and an AUROC metric (list states) on
:class:`SyntheticImageDataModule` images, a third of whose targets are missing (-100): the head's loss counts the
labelled samples of both processes, and the loss means behind ``train/{loss}_epoch`` are weighted by those counts.
``ModelCheckpoint(save_last=True, every_n_train_steps=...)`` and a ``CSVLogger``, as in ``resume_job.py``; with
``--devices 2`` the Trainer uses ``DDPStrategy`` (gloo), and Lightning starts this script again with
``LOCAL_RANK=1``. Each rank seeds its generators with ``7 + rank``, so the ranks' dropout masks differ and a rank
that restored another rank's generators would train differently.

``--kill-at-step N`` SIGKILLs the whole process group (both ranks) when the training batch after global step ``N``
starts (:class:`KillAtStep` with ``whole_group``); ``--resume`` continues from ``last.ckpt`` with
``trainer.fit(..., ckpt_path="last")`` in a fresh 2-process run.

Files under ``--out``, as the DDP jobs write them: every rank writes ``rank{N}.json`` (the training loss it computed
at each global step, keyed by the step) and ``final{N}.pt`` (its module's state dict); rank 0 writes
``result.json`` (the global step and the CSV log's folder).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.classification import MulticlassAUROC

from torchbricks_lightning import BrickMetricSingle, BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_image_classification_head
from torchbricks_lightning.datamodules import SyntheticImageDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import IGNORE_INDEX

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/reliability, for resume_job
from ddp_job import IMAGE_SIZE, NUM_CLASSES, CollectiveTimeout, leave_process_group  # this script's own folder
from resume_job import KillAtStep, make_trainer

FEATURES = 16


class PartlyLabelledImages(SyntheticImageDataModule):
    """:class:`SyntheticImageDataModule` (4 classes, 8x8 images, as in ``ddp_job.py``) with every third target of
    each split missing (``IGNORE_INDEX``)."""

    def __init__(self, n_train: int, batch_size: int) -> None:
        super().__init__(NUM_CLASSES, IMAGE_SIZE, n_train, n_val=24, n_test=8, batch_size=batch_size, seed=1)

    def setup(self, stage: str | None = None) -> None:
        made = set(self.sizes) - set(self.datasets)
        super().setup(stage)
        for split in made:
            images, targets = self.datasets[split].tensors
            missing = torch.arange(len(targets)) % 3 == 0
            self.datasets[split] = TensorDataset(images, targets.masked_fill(missing, IGNORE_INDEX))


def build_module() -> LightningBrickCollection:
    torch.manual_seed(0)  # the same initial weights in every process and run
    bricks: dict[str, Any] = {
        "backbone": BrickTrainable(
            nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, FEATURES), nn.ReLU(), nn.Dropout(0.3)),
            input_names=["raw"],
            output_names=["features"],
        ),
        "head": create_image_classification_head(NUM_CLASSES, FEATURES, "features", "targets"),
        "auroc": BrickMetricSingle(
            MulticlassAUROC(NUM_CLASSES, thresholds=None, ignore_index=IGNORE_INDEX),
            input_names=["head/probabilities", "targets"],
            alive_stages=["train", "validation"],
        ),
    }
    return LightningBrickCollection(bricks, optimizer=functools.partial(torch.optim.SGD, lr=0.2, momentum=0.9))


class RecordStepLosses(pl.Callback):
    """This process's own training loss at each global step (``train/loss_step`` logs the mean over processes)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--every-n-train-steps", type=int, default=4)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--collective-timeout", type=float, default=30.0, help="once every process has joined")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # one node: the global rank is the local rank
    pl.seed_everything(7 + rank, verbose=False)

    datamodule = PartlyLabelledImages(args.n_train, batch_size=args.global_batch // args.devices)
    recorder = RecordStepLosses()
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=args.out / "checkpoints", save_last=True, every_n_train_steps=args.every_n_train_steps),
        CollectiveTimeout(args.collective_timeout),
        recorder,
    ]
    if args.kill_at_step is not None:
        callbacks.append(KillAtStep(args.kill_at_step, whole_group=True))
    strategy: Any = "auto"
    if args.devices > 1:
        strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=120))
    trainer = make_trainer(
        args.out, args.resume, callbacks, max_epochs=args.max_epochs, devices=args.devices, strategy=strategy
    )
    module = build_module()
    trainer.fit(module, datamodule=datamodule, ckpt_path="last" if args.resume else None)

    torch.save(module.state_dict(), args.out / f"final{rank}.pt")
    (args.out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "step_losses": recorder.losses}))
    if trainer.is_global_zero:
        result = {"global_step": trainer.global_step, "log_dir": trainer.logger.log_dir}  # type: ignore[union-attr]
        (args.out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    finally:
        leave_process_group()
