"""The callbacks the module adds to its Trainer (``configure_callbacks``): made once, attached once, so a second
``trainer.test``/``validate``/``fit`` does not report them as overriding the user's callbacks."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickLoss, BrickTrainable
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.optim.finetuning import UnfreezeSchedule
from torchbricks_lightning.lightning.optim.optimizers import GroupLearningRates

OVERRIDE_NOTICE = "will override existing callbacks"


def _module() -> LightningBrickCollection:
    return LightningBrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(4, 8), input_names=["raw"], output_names=["features"]),
            "head": BrickTrainable(nn.Linear(8, 3), input_names=["features"], output_names=["logits"]),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        },
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        param_groups=[{"bricks": "backbone", "lr_scale": 0.1}],
        unfreeze={"backbone": 1},
    )


def _loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(16, 4, generator=generator), torch.arange(16) % 3), batch_size=8)


def test_a_second_trainer_call_does_not_override_the_module_s_own_callbacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = _module()
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    # Lightning's own logger at INFO, whatever an earlier test left it at: an absence must be able to fail.
    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):
        trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
        trainer.test(module, dataloaders=_loader())
        trainer.validate(module, dataloaders=_loader())
        trainer.fit(module, train_dataloaders=_loader())  # max_epochs reached: nothing to train, callbacks again
    notices = [record.getMessage() for record in caplog.records if OVERRIDE_NOTICE in record.getMessage()]
    assert notices == []
    kinds = [type(callback) for callback in trainer.callbacks]  # type: ignore[attr-defined]
    assert kinds.count(UnfreezeSchedule) == kinds.count(GroupLearningRates) == 1


def test_a_user_s_own_callback_of_the_same_kind_is_still_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lightning's notice stays for what it is meant for: a Trainer callback the module's own replaces."""
    module = _module()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[UnfreezeSchedule({}, module.brick_collection)])
    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):
        trainer.fit(module, train_dataloaders=_loader())
    assert any(OVERRIDE_NOTICE in record.getMessage() for record in caplog.records)
