"""Freeze-then-train schedules (``unfreeze={pattern: epoch}``) with a real Trainer: frozen bricks keep their weights
and batch norm statistics and run in eval mode, then train in train mode with their group's options."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickLoss, BrickTrainable
from torchbricks_lightning.lightning import LightningBrickCollection

N_FEATURES = 5
NUM_CLASSES = 3
BATCHES = 4


def bricks() -> dict[str, Any]:
    """stem -> backbone (batch norm and dropout) -> head -> loss."""
    return {
        "stem": BrickTrainable(nn.Linear(N_FEATURES, 8), input_names=["raw"], output_names=["stemmed"]),
        "backbone": BrickTrainable(
            nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5)),
            input_names=["stemmed"],
            output_names=["features"],
        ),
        "head": BrickTrainable(nn.Linear(8, NUM_CLASSES), input_names=["features"], output_names=["logits"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
    }


def loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(8 * BATCHES, N_FEATURES, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (8 * BATCHES,), generator=generator)
    return DataLoader(TensorDataset(raw, targets), batch_size=8)


def make_trainer(tmp_path: Path, max_epochs: int, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
        **kwargs,
    }
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, **options)


def snapshot(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items() if name.startswith(prefix)}


class Recorder(pl.Callback):
    """Records, at each training batch, the backbone's mode and whether its parameters require gradients, and the
    weights and batch-norm statistics at the end of each epoch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, bool, bool]] = []
        self.epoch_ends: list[dict[str, torch.Tensor]] = []
        self.group_counts: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        backbone = pl_module.brick_collection["backbone"]  # type: ignore[index]
        modes = {module.training for module in backbone.modules()}
        assert len(modes) == 1, "the brick and all its modules are in one mode"
        requires_grad = {parameter.requires_grad for parameter in backbone.parameters()}
        assert len(requires_grad) == 1
        self.batches.append((trainer.current_epoch, modes.pop(), requires_grad.pop()))
        self.group_counts.append(len(trainer.optimizers[0].param_groups))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_ends.append(snapshot(pl_module, "brick_collection."))


def test_a_brick_is_frozen_in_eval_mode_until_its_epoch_then_trains(tmp_path: Path) -> None:
    module = LightningBrickCollection(
        bricks(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.01),
        param_groups=[{"bricks": "backbone", "lr": 0.01}],
        unfreeze={"backbone": 2},
    )
    initial = snapshot(module, "brick_collection.")
    recorder = Recorder()
    fit = make_trainer(tmp_path, max_epochs=3, callbacks=[recorder], limit_val_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert not [w for w in caught if "eval mode at the start of training" in str(w.message)]
    assert recorder.batches == [(epoch, epoch >= 2, epoch >= 2) for epoch in range(3) for _ in range(BATCHES)], (
        "frozen (eval mode, no gradients) in epochs 0 and 1, also after each validation; trained from epoch 2"
    )
    assert set(recorder.group_counts) == {2}, "the groups never change"
    backbone = [name for name in initial if ".backbone." in name]
    assert any("running_mean" in name for name in backbone)
    for epoch in (0, 1):
        frozen = [name for name in backbone if not torch.equal(recorder.epoch_ends[epoch][name], initial[name])]
        assert not frozen, f"epoch {epoch}: the frozen backbone's weights and batch norm statistics changed: {frozen}"
        moved = [name for name in initial if ".stem." in name or ".head." in name]
        assert all(not torch.equal(recorder.epoch_ends[epoch][name], initial[name]) for name in moved), (
            "the stem before the frozen brick gets gradients through it, the head after it trains"
        )
    unchanged = [name for name in backbone if torch.equal(recorder.epoch_ends[2][name], recorder.epoch_ends[1][name])]
    assert not unchanged, f"epoch 2 trains the backbone and updates its batch norm statistics: {unchanged}"
    (optimizer,) = fit.optimizers
    assert [(group["name"], group["lr"]) for group in optimizer.param_groups] == [("backbone", 0.01), ("default", 0.1)]
    backbone_brick = module.brick_collection["backbone"]
    assert backbone_brick.training
    assert all(p.requires_grad for p in backbone_brick.parameters())


@pytest.mark.filterwarnings("ignore:unfreeze")  # frozen for the whole (short) run, on purpose
def test_a_run_stopped_while_frozen_leaves_the_bricks_as_built(tmp_path: Path) -> None:
    module = LightningBrickCollection(bricks(), unfreeze={"backbone": 2})
    make_trainer(tmp_path, max_epochs=1, callbacks=[]).fit(module, train_dataloaders=loader())
    backbone = module.brick_collection["backbone"]
    assert backbone.training
    assert all(parameter.requires_grad for parameter in backbone.parameters())

    class Crash(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            assert not backbone.training, "frozen while the run lasts"
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        make_trainer(tmp_path, max_epochs=3, callbacks=[Crash()]).fit(module, train_dataloaders=loader())
    assert backbone.training
    assert all(parameter.requires_grad for parameter in backbone.parameters())


def test_an_unfreeze_epoch_the_run_never_reaches_warns_before_anything_is_written(tmp_path: Path) -> None:
    module = LightningBrickCollection(bricks(), unfreeze={"backbone": 3, "head": 1})
    logs = tmp_path / "logs"
    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[], logger=pl.loggers.CSVLogger(logs))
    message = (
        r"unfreeze: \{'backbone': 3\} start training at an epoch the run never reaches \(max_epochs=3, so epochs 0 "
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="unfreeze")  # stops fit where the warning is emitted
        with pytest.raises(UserWarning, match=message + r"to 2\).*raise max_epochs"):
            trainer.fit(module, train_dataloaders=loader())
    assert not logs.exists(), "the warning comes before the logger writes"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="unfreeze")  # step-based: the last epoch is unknown, no warning
        make_trainer(tmp_path, max_epochs=-1, max_steps=2, callbacks=[]).fit(module, train_dataloaders=loader())


def test_without_a_trainer_nothing_is_frozen_and_the_callback_comes_with_the_module() -> None:
    module = LightningBrickCollection(bricks(), unfreeze={"back*": 1})
    assert module.optimisation_plan.scheduled == {
        "backbone": (1, ("model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias"))
    }
    (callback,) = module.configure_callbacks()
    assert type(callback).__name__ == "UnfreezeSchedule"
    assert LightningBrickCollection(bricks()).configure_callbacks() == []
    optimizer = module.configure_optimizers()
    assert [group["name"] for group in optimizer.param_groups] == ["default"]
    assert len(optimizer.param_groups[0]["params"]) == len(list(module.parameters())), "frozen ones included"


def test_a_frozen_brick_with_untrained_batch_norm_gets_one_warning_and_a_pretrained_one_none(tmp_path: Path) -> None:
    """Freezing a randomly initialised backbone learned nothing, with no hint (issue 22): its batch norm statistics
    stay at their initial 0 and 1 while it is frozen (eval mode). One warning now names the brick and the fix."""
    message = "Frozen bricks with batch norm statistics at their initial values"
    module = LightningBrickCollection(bricks(), unfreeze={"backbone": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, max_epochs=2, callbacks=[], limit_train_batches=2).fit(module, loader())
    (warning,) = [w for w in caught if message in str(w.message)]  # once, though two epochs ran
    text = str(warning.message)
    assert "'backbone' (model.1)" in text
    assert "randomly initialised rather than pretrained" in text
    assert "TorchvisionBackbone(weights='DEFAULT')" in text
    assert "leave it out of unfreeze" in text

    pretrained = LightningBrickCollection(bricks(), unfreeze={"backbone": 1})
    batch_norm = pretrained.brick_collection["backbone"].model[1]
    batch_norm.running_mean.fill_(0.2)  # statistics as loaded from a trained model
    batch_norm.running_var.fill_(0.7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, max_epochs=2, callbacks=[], limit_train_batches=2).fit(pretrained, loader())
    assert not [w for w in caught if message in str(w.message)]
