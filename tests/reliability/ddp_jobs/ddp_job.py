"""A standalone Lightning job, run by ``tests/reliability/test_distributed.py`` with 1 and with 2 CPU processes.

    python tests/reliability/ddp_jobs/ddp_job.py --devices 2 --out /tmp/run2

With ``--devices 2`` the Trainer uses ``DDPStrategy`` (gloo): Lightning's subprocess launcher starts this same
script again with ``LOCAL_RANK=1``, so everything below runs once in every process. ``--devices 1`` runs plain
single-process Lightning (``strategy="auto"``), the reference.

Two phases, each with its own Trainer and CSVLogger:

1. **eval**: ``validate`` and ``test`` of a seeded model (preprocessor, ``SmallConvNet``,
   ``create_image_classification_head`` with a confusion matrix, plus per-class and micro accuracy and AUROC),
   first trained for 20 plain-PyTorch SGD steps so that it predicts every class. The data come from
   :class:`SyntheticImageDataModule` as the package provides it: its loaders' samplers are used as they are (Lightning
   injects its padding ``DistributedSampler`` only into loaders without a distributed one). Validation has
   ``--n-val`` images, test ``--n-test`` (37 by default: not divisible by the world size, uneven last batches on
   every rank). Every rank also computes a reference with torchmetrics' functional API on all the images in one
   batch, outside Lightning and without any process group. Then the test images are validated once more through
   :class:`UnpaddedDistributedSampler` (defined here), which separates what Lightning and the module do with uneven
   shards from what the datamodule's sampler does.
2. **fit**: a BatchNorm-free model trained with SGD on :class:`SyntheticImageDataModule` with a per-device batch
   of ``--global-batch / devices``. The datamodule's training loader gives rank ``r`` of ``W`` the share
   ``order[r::W]`` of one ``(seed, epoch)`` order, so a step sees the same samples in both runs, and DDP's
   averaged gradient equals the single-process gradient up to float rounding.

The progress bar is off unless ``--progress-bar`` is given. ``--collective-timeout`` shortens the timeout of the
collectives once every process has joined, so that a deadlock fails in seconds.

Rank 0 writes ``result.json`` (logged metrics, matrices, references, per-step losses, final parameters); every
rank writes ``rank{N}.json`` (which samples it evaluated, a checksum of its parameters).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
)

from torchbricks_lightning import BrickMetrics, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import Preprocessor, SmallConvNet, create_image_classification_head
from torchbricks_lightning.datamodules import SyntheticImageDataModule
from torchbricks_lightning.lightning import LightningBrickCollection

NUM_CLASSES = 4
IMAGE_SIZE = 8
WIDTHS = (8, 16)


# --------------------------------------------------------------------------------------------------- models
def eval_bricks() -> dict[str, Any]:
    """Preprocessor, a small conv backbone and a classification head with several synchronised metrics."""
    torch.manual_seed(0)
    head: dict[str, Any] = create_image_classification_head(
        NUM_CLASSES, WIDTHS[-1], features_name="features", targets_name="targets", with_confusion_matrix=True
    )
    # Sum states (per-class accuracy) and list states gathered with uneven lengths across ranks (AUROC).
    head["more"] = BrickMetrics(
        {
            "accuracy_per_class": MulticlassAccuracy(NUM_CLASSES, average="none"),
            "accuracy_micro": MulticlassAccuracy(NUM_CLASSES, average="micro"),
            "auroc": MulticlassAUROC(NUM_CLASSES, thresholds=None),
        },
        input_names=["./probabilities", "targets"],
    )
    return {
        "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
        "backbone": BrickTrainable(
            SmallConvNet(in_channels=3, widths=WIDTHS), input_names=["normalized"], output_names=["features"]
        ),
        "head": head,
    }


def pretrain(module: LightningBrickCollection, dataset: TensorDataset, steps: int = 20) -> None:
    """A few full-batch SGD steps in plain PyTorch, so predictions vary (an untrained net predicts one class).

    Single-threaded and seeded, so every process of both runs ends with the same weights (and Lightning's
    ``validate``/``test`` broadcast rank 0's parameters and buffers anyway)."""
    raw, targets = dataset.tensors
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    for _ in range(steps):
        outputs = module.brick_collection({"raw": raw, "targets": targets}, Stage.TRAIN)
        loss = module.brick_collection.total_loss(outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.brick_collection.reset_metrics()


def fit_bricks() -> dict[str, Any]:
    """No BatchNorm: its batch statistics would differ between a per-device batch of 8 and one of 16."""
    torch.manual_seed(0)
    return {
        "backbone": BrickTrainable(
            nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, 16), nn.ReLU()),
            input_names=["raw"],
            output_names=["features"],
        ),
        "head": create_image_classification_head(NUM_CLASSES, 16, features_name="features", targets_name="targets"),
    }


# --------------------------------------------------------------------------------------------------- data
class UnpaddedDistributedSampler(DistributedSampler[Any]):
    """``indices[rank::num_replicas]``, without the padding of ``DistributedSampler``: ranks may get one sample
    fewer. A ``DistributedSampler`` subclass, so Lightning keeps it instead of injecting its own."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Any:
        return iter(range(self.rank, self.total_size, self.num_replicas))


# --------------------------------------------------------------------------------------------------- recording
def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class RecordEpochEnd(pl.Callback):
    """Before the module summarises and resets its metrics, keep the matrices (not logged as scalars) and count
    the samples this rank evaluated. Callbacks' epoch-end hooks run before the LightningModule's."""

    def __init__(self) -> None:
        self.matrices: dict[str, dict[str, Any]] = {}
        self.samples_seen: dict[str, int] = {}
        self.loaders: dict[str, dict[str, Any]] = {}

    def _count(self, stage: Stage, batch: Any) -> None:
        raw = batch["raw"] if isinstance(batch, dict) else batch[0]
        self.samples_seen[stage.value] = self.samples_seen.get(stage.value, 0) + int(raw.shape[0])

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        if not trainer.sanity_checking:
            self._count(Stage.VALIDATION, batch)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        self._count(Stage.TEST, batch)

    def _record(self, trainer: pl.Trainer, pl_module: Any, stage: Stage) -> None:
        if trainer.sanity_checking:
            return
        # compute() syncs the torchmetrics states across ranks (every rank runs this hook); the value is cached,
        # so the module's own summarize() that follows returns the same tensors.
        values = pl_module.brick_collection.summarize(stage)
        self.matrices[stage.value] = {key: value.tolist() for key, value in values.items() if value.ndim == 2}
        loader = trainer.test_dataloaders if stage is Stage.TEST else trainer.val_dataloaders
        self.loaders[stage.value] = loader_indices(loader)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._record(trainer, pl_module, Stage.VALIDATION)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._record(trainer, pl_module, Stage.TEST)


class CollectiveTimeout(pl.Callback):
    """Shorten the timeout of the collectives once the process group exists (its rendezvous keeps the long one,
    so a rank that is still importing under load is waited for), so a deadlock fails in seconds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            set_timeout = getattr(torch.distributed, "set_timeout", None)
            if set_timeout is None:  # older torch has only the private name
                set_timeout = torch.distributed.distributed_c10d._set_pg_timeout
            set_timeout(timedelta(seconds=self.seconds))


def loader_indices(loader: Any) -> dict[str, Any]:
    """Which dataset indices this rank's loader yields, and the sampler Lightning ended up with."""
    if isinstance(loader, (list, tuple)):
        loader = loader[0]
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    indices = [int(index) for batch in loader.batch_sampler for index in batch]
    return {"sampler": f"{type(sampler).__module__}.{type(sampler).__qualname__}", "indices": indices}


@torch.no_grad()
def reference_metrics(module: LightningBrickCollection, dataset: TensorDataset) -> dict[str, Any]:
    """Loss and metrics on every sample at once, with torchmetrics' functional API (no process group involved)."""
    module.eval()
    images, targets = dataset.tensors
    outputs = module.brick_collection({"raw": images}, Stage.INFERENCE)
    logits, probabilities = outputs["head/logits"], outputs["head/probabilities"]
    return {
        "n": len(targets),
        "loss": float(F.cross_entropy(logits, targets)),
        "accuracy": float(multiclass_accuracy(probabilities, targets, NUM_CLASSES)),
        "accuracy_micro": float(multiclass_accuracy(probabilities, targets, NUM_CLASSES, average="micro")),
        "accuracy_per_class": multiclass_accuracy(probabilities, targets, NUM_CLASSES, average="none").tolist(),
        "auroc": float(multiclass_auroc(probabilities, targets, NUM_CLASSES)),
        "confusion": multiclass_confusion_matrix(probabilities, targets, NUM_CLASSES).tolist(),
        "predicted_classes": sorted(set(probabilities.argmax(dim=1).tolist())),
    }


def parameter_checksum(module: nn.Module) -> float:
    return float(sum(parameter.detach().double().abs().sum() for parameter in module.parameters()))


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]


# --------------------------------------------------------------------------------------------------- main
def make_trainer(args: argparse.Namespace, out: Path, name: str, callbacks: list[Any], **kwargs: Any) -> pl.Trainer:
    if args.collective_timeout:
        callbacks = [*callbacks, CollectiveTimeout(args.collective_timeout)]
    strategy: Any = "auto"
    if args.devices > 1:
        strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=args.dist_timeout))
    return pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        num_nodes=1,
        strategy=strategy,
        logger=CSVLogger(save_dir=str(out / "logs"), name=name, version=0),
        callbacks=callbacks,
        enable_progress_bar=args.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def run_eval(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    datamodule = SyntheticImageDataModule(
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        n_train=64,
        n_val=args.n_val,
        n_test=args.n_test,
        batch_size=args.eval_batch,
    )
    module = LightningBrickCollection(eval_bricks())
    datamodule.setup()
    pretrain(module, datamodule.datasets["train"])
    recorder = RecordEpochEnd()
    trainer = make_trainer(args, out, "eval", [recorder])
    (validated,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    (tested,) = trainer.test(module, datamodule=datamodule, verbose=False)
    shared = {
        "validate": validated,
        "test": tested,
        "matrices": recorder.matrices,
        "reference": {
            "validation": reference_metrics(module, datamodule.datasets["val"]),
            "test": reference_metrics(module, datamodule.datasets["test"]),
        },
        "world_size": trainer.world_size,
    }
    per_rank = {
        "samples_seen": recorder.samples_seen,
        "loaders": recorder.loaders,
        "parameter_checksum": parameter_checksum(module),
    }

    # The same test images through an unpadded sampler of this file (not the datamodule's loader), with batches
    # of 2 so that the ranks even run different numbers of batches (19 images: 10 batches, 18: 9).
    unpadded_recorder = RecordEpochEnd()
    trainer = make_trainer(args, out, "eval_unpadded", [unpadded_recorder])
    # A new Trainer knows its rank only once it runs; the process group of the first Trainer still stands.
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world_size, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if distributed else (1, 0)
    test_set = datamodule.datasets["test"]
    loader = DataLoader(
        test_set,
        batch_size=args.unpadded_batch,
        sampler=UnpaddedDistributedSampler(test_set, num_replicas=world_size, rank=rank),
    )
    (shared["unpadded"],) = trainer.validate(module, dataloaders=loader, verbose=False)
    shared["unpadded_matrices"] = unpadded_recorder.matrices["validation"]
    per_rank["unpadded_loader"] = unpadded_recorder.loaders["validation"]
    return shared, per_rank


def run_fit(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if args.global_batch % args.devices:
        raise ValueError(f"--global-batch {args.global_batch} is not divisible by --devices {args.devices}.")
    # The datamodule's training loader shards its (seed, epoch) order as order[rank::world_size], so with the
    # per-device batch = global batch / world size the ranks' batches of a step together are the single-process
    # batch of that step. Its validation set (32) splits evenly, so this phase checks training alone.
    datamodule = SyntheticImageDataModule(
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        n_train=args.n_train,
        n_val=32,
        n_test=8,
        batch_size=args.global_batch // args.devices,
        seed=1,
    )
    module = LightningBrickCollection(fit_bricks(), optimizer=functools.partial(torch.optim.SGD, lr=args.lr))
    trainer = make_trainer(args, out, "fit", [], max_epochs=args.epochs, log_every_n_steps=1)
    trainer.fit(module, datamodule=datamodule)
    shared: dict[str, Any] = {}
    if trainer.is_global_zero:
        rows = read_csv(Path(trainer.logger.log_dir) / "metrics.csv")  # type: ignore[union-attr]
        shared = {
            "step_losses": [row["train/loss_step"] for row in rows if "train/loss_step" in row],
            "epoch_rows": [
                {key: value for key, value in row.items() if not key.endswith("_step")}
                for row in rows
                if "train/loss_epoch" in row or "validation/loss" in row
            ],
            "callback_metrics": {key: float(value) for key, value in trainer.callback_metrics.items()},
            "parameters": {name: value.tolist() for name, value in module.brick_collection.state_dict().items()},
            "global_step": trainer.global_step,
        }
    per_rank = {"parameter_checksum": parameter_checksum(module), "global_step": trainer.global_step}
    return shared, per_rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phases", default="eval,fit", help="comma-separated: eval, fit")
    parser.add_argument("--n-val", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=37)
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--unpadded-batch", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--progress-bar", action="store_true", help="keep Lightning's default progress bar (TQDMProgressBar)"
    )
    parser.add_argument("--dist-timeout", type=float, default=120.0, help="seconds before a stuck collective fails")
    parser.add_argument(
        "--collective-timeout", type=float, default=None, help="a shorter timeout once all processes have joined"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    shared: dict[str, Any] = {"devices": args.devices}
    per_rank: dict[str, Any] = {}
    for phase in args.phases.split(","):
        phase_shared, phase_rank = {"eval": run_eval, "fit": run_fit}[phase](args, out)
        shared[phase], per_rank[phase] = phase_shared, phase_rank

    rank = int(os.environ.get("LOCAL_RANK", "0"))  # one node: the global rank is the local rank
    per_rank["rank"] = rank
    (out / f"rank{rank}.json").write_text(json.dumps(_plain(per_rank)))
    if rank == 0:
        if not all(math.isfinite(value) for value in shared.get("fit", {}).get("step_losses", [])):
            raise RuntimeError("non-finite training loss")
        (out / "result.json").write_text(json.dumps(_plain(shared)))


def leave_process_group() -> None:
    """Join gloo's threads before the interpreter exits; without it, a process may abort at exit with "terminate
    called without an active exception" after a successful fit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    finally:
        leave_process_group()
