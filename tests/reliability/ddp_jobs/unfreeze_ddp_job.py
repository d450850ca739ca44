"""An unfreeze schedule under DDP (gloo, 2 CPU processes), run by ``tests/reliability/test_unfreeze_ddp.py``.

    python tests/reliability/ddp_jobs/unfreeze_ddp_job.py --out /tmp/run

A stem, a backbone with batch norm frozen in epoch 0 (``unfreeze={"backbone": 1}``) and a head, trained for two
epochs with ``strategy="ddp_find_unused_parameters_true"``. Every rank writes ``rank{N}.json``: at each epoch end, a
checksum of its parameters and whether the backbone's weights and statistics are still those it was built with.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickLoss, BrickTrainable
from torchbricks_lightning.lightning import LightningBrickCollection

torch.set_num_threads(1)


class Record(pl.Callback):
    def __init__(self, built: dict[str, torch.Tensor]) -> None:
        self.built = built
        self.epochs: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = pl_module.state_dict()
        backbone = [name for name in state if ".backbone." in name]
        checksum = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in pl_module.parameters()))
        self.epochs.append(
            {
                "parameters": checksum.hexdigest(),
                "backbone_as_built": all(torch.equal(state[name], self.built[name]) for name in backbone),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)
    bricks = {
        "stem": BrickTrainable(nn.Linear(5, 8), input_names=["raw"], output_names=["stemmed"]),
        "backbone": BrickTrainable(
            nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)), input_names=["stemmed"], output_names=["features"]
        ),
        "head": BrickTrainable(nn.Linear(8, 3), input_names=["features"], output_names=["logits"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
    }
    module = LightningBrickCollection(
        bricks, optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), unfreeze={"backbone": 1}
    )
    record = Record({name: value.clone() for name, value in module.state_dict().items()})
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(64, 5, generator=generator)
    targets = torch.randint(0, 3, (64,), generator=generator)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, DataLoader(TensorDataset(raw, targets), batch_size=8))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record.epochs))


if __name__ == "__main__":
    try:
        main()
    finally:
        # Join gloo's threads before the interpreter exits; without it, a process may abort at exit with
        # "terminate called without an active exception" after a successful fit.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
