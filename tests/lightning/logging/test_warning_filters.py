"""The warning filters: none at import, and under DDP Lightning's sync advice is hidden for the module's own keys
only, never for a user's own ``self.log`` calls."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from conftest import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from torchbricks_lightning import BrickLoss, BrickMetricSingle, BrickTrainable
from torchbricks_lightning.lightning import LightningBrickCollection

IMPORTS_AND_FILTERS = """
import warnings
import pytorch_lightning, torch, torchmetrics  # what they install themselves is not the library's
before = list(warnings.filters)
import torchbricks_lightning, torchbricks_lightning.lightning
import torchbricks_lightning.cli, torchbricks_lightning.callbacks
print(before == list(warnings.filters))
"""


def test_importing_the_package_leaves_the_warning_filters_alone() -> None:
    done = subprocess.run([sys.executable, "-c", IMPORTS_AND_FILTERS], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True", done.stderr


class LogsItsOwn(LightningBrickCollection):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        total = super().training_step(batch, batch_idx)
        assert total is not None
        self.log("train/mine", total.detach(), on_step=False, on_epoch=True)  # no sync_dist: Lightning advises it
        return total


def test_a_user_s_own_epoch_value_still_gets_lightning_s_sync_advice(tmp_path: Path) -> None:
    module = LogsItsOwn(
        {
            "head": BrickTrainable(nn.Linear(4, 3), input_names=["raw"], output_names=["logits"]),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
            "accuracy": BrickMetricSingle(MulticlassAccuracy(num_classes=3), input_names=["logits", "targets"]),
        }
    )
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.arange(16) % 3), batch_size=8)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    # A process group of one: Lightning gives its advice only when one is initialised.
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    finally:
        torch.distributed.destroy_process_group()
    advice = [str(w.message) for w in caught if "sync_dist=True" in str(w.message)]
    assert any("'train/mine'" in message for message in advice), advice
    assert [message for message in advice if "'train/mine'" not in message] == []  # the module's own: hidden
