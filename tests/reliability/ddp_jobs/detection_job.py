"""A detection job with partial annotations, run by ``test_distributed_detection.py`` on 1 and 2 CPU processes (gloo).

    python tests/reliability/ddp_jobs/detection_job.py --devices 2 --out /tmp/run2

The detection head of the bag of bricks on a BatchNorm-free backbone of stride 4, trained on 96 synthetic 32 px
scenes (``box_scenes``) of which about 30% are not annotated (NaN boxes), then validated on 48 scenes of which about
30% are not annotated too. Under 2 processes each holds half of each step's batch and half of the validation images,
so the processes hold different numbers of annotated images and of detections: the mAP metric must gather them all
(and not hang), the loss must be normalised by the positives of both processes. Rank 0 writes ``result.json``: the
logged per-step losses, the validation values and the final parameters; every rank writes how many annotated
validation images it saw.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
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
from torchbricks_lightning.bag_of_bricks import create_detection_head
from torchbricks_lightning.bag_of_bricks.detection.scenes import box_scenes
from torchbricks_lightning.datamodules import Split, SplitDataModule
from torchbricks_lightning.lightning import LightningBrickCollection

N_TRAIN, N_VAL, SIZE, SEED = 96, 48, 32, 1


class _Named(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["image"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


class PartialScenes(SplitDataModule):
    """Scenes with about 30% of the images not annotated, in training and validation."""

    def __init__(self, batch_size: int) -> None:
        super().__init__(batch_size=batch_size, seed=SEED)
        self.splits = {
            "train": box_scenes(N_TRAIN, size=SIZE, seed=1, not_annotated=0.3),
            "val": box_scenes(N_VAL, size=SIZE, seed=2, not_annotated=0.3),
        }

    def split_dataset(self, split: Split) -> Dataset[Any]:
        return _Named(self.splits["val" if split == "test" else split])


def bricks() -> BrickCollection:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
    return BrickCollection(
        {
            "backbone": BrickTrainable(backbone, input_names=["image"], output_names=["features"]),
            "det": create_detection_head(3, 32, "features", "boxes", "labels", 4, max_detections=20),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    datamodule = PartialScenes(batch_size=args.global_batch // args.devices)
    module = LightningBrickCollection(bricks(), optimizer=functools.partial(torch.optim.Adam, lr=0.005))
    strategy: Any = "auto"
    if args.devices > 1:
        strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=120))
    annotated: list[int] = []

    class CountAnnotated(pl.Callback):
        def on_validation_batch_start(
            self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
        ) -> None:
            annotated.append(int((~torch.isnan(batch["boxes"]).flatten(1).all(dim=1)).sum()))

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy,
        max_epochs=args.epochs,
        logger=CSVLogger(save_dir=str(args.out / "logs"), name="fit", version=0),
        log_every_n_steps=1,
        check_val_every_n_epoch=args.epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[CountAnnotated()],
    )
    trainer.fit(module, datamodule=datamodule)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    (args.out / f"rank{rank}.json").write_text(json.dumps({"annotated_validation_images": sum(annotated)}))
    if trainer.is_global_zero:
        with (Path(trainer.logger.log_dir) / "metrics.csv").open(newline="") as handle:  # type: ignore[union-attr]
            rows = [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]
        result = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "step_losses": [
                row["train/det/loss_detection_step"] for row in rows if "train/det/loss_detection_step" in row
            ],
            "validation": next(
                {key: value for key, value in row.items() if key.startswith("validation/")}
                for row in rows
                if "validation/det/map" in row
            ),
            "parameters": {
                name: value.flatten().tolist() for name, value in module.brick_collection.state_dict().items()
            },
        }
        (args.out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    finally:
        # Join gloo's threads before the interpreter exits (see multitask_job.py).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
