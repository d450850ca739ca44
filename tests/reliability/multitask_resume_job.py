"""A multi-task training job that ``test_resume_multitask.py`` kills mid-epoch and resumes.

    python tests/reliability/multitask_resume_job.py --out /tmp/run --kill-at-step 22
    python tests/reliability/multitask_resume_job.py --out /tmp/run --resume

Two datasets mixed by ``MultiTaskDataModule`` (temperature sampling, 512 samples per epoch, so 8 steps of 64): the
digits with half of the digit labels missing, and the digits with foreground masks. Three tasks (digit, parity,
foreground) on a backbone with dropout, balanced by ``DynamicWeightAverage``, whose weights change from the third
epoch on. ``--kill-at-step N`` sends SIGKILL to this process when the batch after global step ``N`` starts (the
checkpoints written up to then are on disk); ``--resume`` continues from ``last.ckpt``. Each run writes
``final.pt`` (the module's weights, the balancer's state included) and its CSV log under ``--out``.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from resume_job import KillAtStep, make_trainer
from torch import nn

from torchbricks_lightning import BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_image_classification_head, create_segmentation_head
from torchbricks_lightning.datamodules import DigitsDataModule, MultiTaskDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import DynamicWeightAverage

torch.set_num_threads(1)
STEPS_PER_EPOCH = 8


def build_module() -> LightningBrickCollection:
    bricks = {
        "backbone": BrickTrainable(
            nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.Dropout(0.2)),
            input_names=["raw"],
            output_names=["features"],
        ),
        "digit": create_image_classification_head(10, 12, "features", "targets"),
        "parity": create_image_classification_head(2, 12, "features", "parity"),
        "foreground": create_segmentation_head(2, 12, "features", "foreground"),
    }
    return LightningBrickCollection(
        bricks,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        loss_balancer=DynamicWeightAverage(temperature=2.0),
    )


def build_datamodule() -> MultiTaskDataModule:
    return MultiTaskDataModule(
        {
            "digits": DigitsDataModule(labelled_fraction=0.5, seed=3),
            "masks": DigitsDataModule(with_foreground=True, seed=4),
        },
        batch_size=64,
        sampling="temperature",
        temperature=2.0,
        samples_per_epoch=64 * STEPS_PER_EPOCH,
        seed=5,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    pl.seed_everything(7, verbose=False)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=args.out / "checkpoints", save_last=True, every_n_train_steps=4)
    ]
    if args.kill_at_step is not None:
        callbacks.append(KillAtStep(args.kill_at_step))
    module = build_module()
    trainer = make_trainer(args.out, args.resume, callbacks, max_epochs=args.max_epochs)
    trainer.fit(module, datamodule=build_datamodule(), ckpt_path="last" if args.resume else None)
    torch.save(module.state_dict(), args.out / "final.pt")


if __name__ == "__main__":
    main()
