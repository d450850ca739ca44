"""Lightning's LR finder on a brick module: it tunes ``module.lr``, which the next ``configure_optimizers`` uses for the
default group and the groups with ``lr_scale``; a fit after the search is the fit with that learning rate."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateFinder
from pytorch_lightning.tuner import Tuner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickLoss, BrickTrainable
from torchbricks_lightning.lightning import LightningBrickCollection

N_FEATURES = 5
NUM_CLASSES = 3


def make_module(lr: float | None = None) -> LightningBrickCollection:
    torch.manual_seed(0)
    bricks = {
        "backbone": BrickTrainable(
            nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Dropout(0.2)),
            input_names=["raw"],
            output_names=["features"],
        ),
        "head": BrickTrainable(nn.Linear(16, NUM_CLASSES), input_names=["features"], output_names=["logits"]),
        "aux": BrickTrainable(nn.Linear(16, NUM_CLASSES), input_names=["features"], output_names=["aux_logits"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        "aux_loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["aux_logits", "targets"], output_names=["aux_ce"]),
    }
    return LightningBrickCollection(
        bricks,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9),
        param_groups=[{"bricks": "backbone", "lr_scale": 0.1}, {"bricks": "aux", "lr": 0.005}],
        lr=lr,
    )


def loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(160, N_FEATURES, generator=generator)
    return DataLoader(TensorDataset(raw, raw[:, :NUM_CLASSES].argmax(dim=1)), batch_size=8)


def make_trainer(tmp_path: Path, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    return pl.Trainer(
        callbacks=callbacks,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )


def test_lr_find_tunes_the_base_learning_rate_that_the_groups_follow(tmp_path: Path) -> None:
    module = make_module()
    trainer = make_trainer(tmp_path)
    finder = Tuner(trainer).lr_find(
        module, train_dataloaders=loader(), update_attr=True, num_training=20, min_lr=1e-4, max_lr=1.0
    )
    assert finder is not None
    suggestion = finder.suggestion()
    assert suggestion is not None
    assert module.lr == suggestion
    assert module.hparams["lr"] == suggestion, "saved with the checkpoints' hyperparameters"
    assert not list(tmp_path.glob(".lr_find*.ckpt")), "the finder's temporary checkpoint is gone"
    trainer.fit(module, train_dataloaders=loader())
    (optimizer,) = trainer.optimizers
    assert [(group["name"], group["lr"]) for group in optimizer.param_groups] == [
        ("backbone", suggestion * 0.1),
        ("aux", 0.005),
        ("default", suggestion),
    ]
    # The search leaves nothing behind: the weights, the metrics and the random generators (dropout) are restored,
    # so this fit is the fit of a module built with lr=suggestion.
    direct = make_module(lr=suggestion)
    make_trainer(tmp_path).fit(direct, train_dataloaders=loader())
    tuned, expected = module.state_dict(), direct.state_dict()
    assert all(torch.equal(tuned[name], expected[name]) for name in expected)


def test_the_learning_rate_finder_callback_keeps_each_groups_own_learning_rate(tmp_path: Path) -> None:
    """Lightning's ``LearningRateFinder`` callback (what a recipe uses) sets every group of the optimiser to its
    suggestion; the module's ``GroupLearningRates`` callback gives each group its own learning rate back."""
    module = make_module()
    finder = LearningRateFinder(min_lr=1e-4, max_lr=1.0, num_training_steps=20)
    seen: list[list[tuple[str, float]]] = []

    class Groups(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen.append([(group["name"], group["lr"]) for group in trainer.optimizers[0].param_groups])

    trainer = make_trainer(tmp_path, [finder, Groups()])
    trainer.fit(module, train_dataloaders=loader())
    suggestion = module.lr
    assert suggestion is not None
    assert suggestion == finder.optimal_lr.suggestion()
    assert seen[-1] == [("backbone", suggestion * 0.1), ("aux", 0.005), ("default", suggestion)]
