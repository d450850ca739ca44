"""The resume job of ``resume_job.py`` with the optimisation controls on: parameter groups, an unfreeze schedule and
EMA weights (Lightning's ``EMAWeightAveraging``). ``tests/reliability/test_resume_finetuning.py`` kills it mid-epoch
while the backbone is still frozen and resumes it across the unfreeze.

    python tests/reliability/finetune_resume_job.py --out /tmp/run --kill-at-step 30
    python tests/reliability/finetune_resume_job.py --out /tmp/run --resume

The backbone (with batch norm) is frozen in epochs 0 and 1 and trains from epoch 2 at a tenth of the learning rate;
the weights are averaged after every step and validation runs on the average. ``final.pt`` holds the module's
weights after fit (the average) and the CSV log every logged value, learning rates per group included.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from resume_job import KillAtStep, build_module, make_trainer

from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.lightning import LightningBrickCollection

torch.set_num_threads(1)
UNFREEZE_EPOCH = 2


def build_finetuning_module() -> LightningBrickCollection:
    bricks = build_module(dropout=0.3).brick_collection
    return LightningBrickCollection(
        bricks,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-3),
        param_groups=[{"bricks": "backbone", "lr_scale": 0.1}],
        decay_norms_and_biases=False,
        unfreeze={"backbone": UNFREEZE_EPOCH},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    pl.seed_everything(7, verbose=False)
    module = build_finetuning_module()
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=args.out / "checkpoints", save_last=True, every_n_train_steps=4),
        EMAWeightAveraging(decay=0.9),
        LearningRateMonitor(),
    ]
    if args.kill_at_step is not None:
        callbacks.append(KillAtStep(args.kill_at_step))
    trainer = make_trainer(args.out, args.resume, callbacks, max_epochs=args.max_epochs)
    datamodule = DigitsDataModule(batch_size=64, seed=3)
    trainer.fit(module, datamodule=datamodule, ckpt_path="last" if args.resume else None)
    torch.save(module.state_dict(), args.out / "final.pt")


if __name__ == "__main__":
    main()
