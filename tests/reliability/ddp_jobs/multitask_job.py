"""A multi-task Lightning job with partial labels and Gramian balancers, run by ``test_distributed_multitask.py`` on 1
and 2 CPU processes (gloo).

    python tests/reliability/ddp_jobs/multitask_job.py --devices 2 --out /tmp/run2 --balancers pcgrad mgda

Three tasks on one BatchNorm-free backbone, on 64 training images of scikit-learn's digits:

- ``digit`` (10 classes) with about 30% of its labels missing (-100), among them every image that rank 1 gets in the
  first step under DDP, so that process has a batch without a single digit label;
- ``parity`` (every image labelled);
- ``ink``, a regression of the image's mean intensity, with about 30% of its targets missing (NaN).

Each balancer named by ``--balancers`` trains in turn, from the same initial weights, in the same processes:
``pcgrad`` projects the tasks' gradients on ``features``, ``mgda`` is MGDA on ``features``, ``upgrad_parameters``
UPGrad on the backbone's parameters. With ``--devices 2`` each process trains on half of each step's batch (the
training loader shards one ``(seed, epoch)`` order as ``order[rank::2]``), the labelled counts are summed over the
processes and the balancer's Gram matrix too (the Jacobians averaged, on the parameters), so the run should take
the single-process steps. Rank 0 writes ``{balancer}/result.json``: the logged per-step losses, the logged balancer
values, the epoch and validation values and the final parameters.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.utils.data import Dataset

from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_image_classification_head, create_regression_head
from torchbricks_lightning.datamodules import ResumableSampler, Split, SplitDataModule
from torchbricks_lightning.datamodules.digits import load_digits_tensors
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import MGDA, LossBalancer, PCGrad, UPGrad

N_TRAIN, N_VAL, SEED = 64, 30, 1
BALANCERS: dict[str, Callable[[], LossBalancer]] = {
    "pcgrad": lambda: PCGrad("features"),
    "mgda": MGDA,  # on the representation (MGDA-UB): the Gram matrices summed over the processes
    "upgrad_parameters": lambda: UPGrad(source="parameters"),  # the shared parameters: the Jacobians averaged
}


class _Named(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["raw"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


class PartialDigits(SplitDataModule):
    """Digits with partial ``digit`` and ``ink`` labels; rank 1's first batch under 2 processes has no digit label."""

    def __init__(self, batch_size: int, global_batch: int) -> None:
        super().__init__(batch_size=batch_size, seed=SEED)
        images, digits = load_digits_tensors()
        generator = torch.Generator().manual_seed(0)
        splits = {"train": slice(0, N_TRAIN), "val": slice(N_TRAIN, N_TRAIN + N_VAL)}
        self.splits: dict[str, dict[str, torch.Tensor]] = {}
        for split, rows in splits.items():
            raw, digit = images[rows], digits[rows].clone()
            ink = raw.mean(dim=(1, 2, 3)) * 2
            digit[torch.rand(len(digit), generator=generator) < 0.3] = -100
            ink[torch.rand(len(ink), generator=generator) < 0.3] = float("nan")
            self.splits[split] = {"raw": raw, "digit": digit, "parity": digits[rows] % 2, "ink": ink}
        # Epoch 0's order: positions 1, 3, 5, ... of the first global batch go to rank 1 under 2 processes.
        first_step = ResumableSampler(range(N_TRAIN), seed=SEED, num_replicas=1, rank=0).order(0)[:global_batch]
        self.splits["train"]["digit"][first_step[1::2]] = -100
        self.rank1_first_batch = first_step[1::2]

    def split_dataset(self, split: Split) -> Dataset[Any]:
        return _Named(self.splits["val" if split == "test" else split])


def bricks() -> BrickCollection:
    torch.manual_seed(0)
    return BrickCollection(
        {
            "backbone": BrickTrainable(
                nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.Tanh()),
                input_names=["raw"],
                output_names=["features"],
            ),
            "digit": create_image_classification_head(10, 24, "features", "digit"),
            "parity": create_image_classification_head(2, 24, "features", "parity"),
            "ink": create_regression_head(1, 24, "features", "ink"),
        }
    )


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--balancers", nargs="+", choices=sorted(BALANCERS), default=["pcgrad"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for balancer in args.balancers:  # one fit after the other, in the same processes (and process group)
        fit(args.devices, args.global_batch, args.epochs, balancer, args.out / balancer)


def fit(devices: int, global_batch: int, epochs: int, balancer: str, out: Path) -> None:
    """Train with ``balancer`` and write what rank 0 logged to ``out/result.json``."""
    out.mkdir(parents=True, exist_ok=True)
    datamodule = PartialDigits(batch_size=global_batch // devices, global_batch=global_batch)
    module = LightningBrickCollection(
        bricks(), optimizer=functools.partial(torch.optim.SGD, lr=0.1), loss_balancer=BALANCERS[balancer]()
    )
    strategy: Any = "auto"
    if devices > 1:
        strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=120))
    rank1_labels: list[int] = []

    class FirstBatch(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == 0:
                rank1_labels.append(int((batch["digit"] != -100).sum()))

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=epochs,
        logger=CSVLogger(save_dir=str(out / "logs"), name="fit", version=0),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[FirstBatch()],
    )
    trainer.fit(module, datamodule=datamodule)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    (out / f"rank{rank}.json").write_text(json.dumps({"digit_labels_in_first_batch": rank1_labels[0]}))
    if trainer.is_global_zero:
        rows = read_csv(Path(trainer.logger.log_dir) / "metrics.csv")  # type: ignore[union-attr]
        steps = [row for row in rows if "train/loss_step" in row]
        result = {
            "world_size": trainer.world_size,
            "step_losses": {
                key: [row[key] for row in steps]
                for key in (
                    "train/loss_step",
                    "train/digit/loss_ce_step",
                    "train/parity/loss_ce_step",
                    "train/ink/loss_mse_step",
                )
            },
            "balance": {
                key: [row[key] for row in rows if key in row]
                for key in (
                    "train/balance/digit/loss_ce",
                    "train/balance/parity/loss_ce",
                    "train/balance/ink/loss_mse",
                    "train/balance/conflicts",
                )
            },
            "epoch_values": [
                {key: value for key, value in row.items() if key.endswith("_epoch") or key.startswith("validation/")}
                for row in rows
                if "train/loss_epoch" in row or "validation/loss" in row
            ],
            "parameters": {name: value.tolist() for name, value in module.brick_collection.state_dict().items()},
            "global_step": trainer.global_step,
        }
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    finally:
        # Join gloo's threads before the interpreter exits; without it, a process may abort at exit with
        # "terminate called without an active exception" after a successful fit.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
