"""Averaged weights with Lightning's own callbacks (``EMAWeightAveraging``, ``StochasticWeightAveraging``) on brick
modules: validation runs on the averaged weights, checkpoints hold them, and both ONNX exports write them.

``WeightAveraging`` keeps its average in a deep copy of the LightningModule (torch's ``AveragedModel``); the copy's
collection registers itself with the copied bricks (``BrickCollection.__setstate__``), so the module's own plans
still hear of its bricks' changes and the copy's do not interfere.
"""

from __future__ import annotations

import csv
import functools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint, StochasticWeightAveraging
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickLoss, BrickTrainable, ExportResult, Stage
from torchbricks_lightning.callbacks import OnnxExportCallback
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx

N_FEATURES = 5
NUM_CLASSES = 3


def bricks() -> dict[str, Any]:
    return {
        "backbone": BrickTrainable(
            nn.Sequential(nn.Linear(N_FEATURES, 8), nn.BatchNorm1d(8), nn.ReLU()),
            input_names=["raw"],
            output_names=["features"],
        ),
        "head": BrickTrainable(nn.Linear(8, NUM_CLASSES), input_names=["features"], output_names=["logits"]),
        "loss": BrickLoss(
            nn.CrossEntropyLoss(),
            input_names=["logits", "targets"],
            output_names=["ce"],
            alive_stages=["train", "validation"],
        ),
    }


def make_module() -> LightningBrickCollection:
    return LightningBrickCollection(
        bricks(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.2, momentum=0.9),
        param_groups=[{"bricks": "backbone", "lr_scale": 0.5}],
    )


def loader(seed: int = 0) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(48, N_FEATURES, generator=generator)
    targets = raw[:, :NUM_CLASSES].argmax(dim=1)
    return DataLoader(TensorDataset(raw, targets), batch_size=8)


def make_trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "max_epochs": 3,
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "logger": False,
        **kwargs,
    }
    return pl.Trainer(callbacks=callbacks, **options)


def bricks_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value for name, value in state.items() if name.startswith("brick_collection.")}


def validation_loss(tmp_path: Path, state: dict[str, torch.Tensor]) -> float:
    module = make_module()
    module.load_state_dict(state)
    (result,) = make_trainer(tmp_path, []).validate(module, dataloaders=loader(1), verbose=False)
    return float(result["validation/loss"])


def onnx_logits(path: Path, raw: torch.Tensor) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return np.asarray(session.run(None, {"raw": raw.numpy()})[names.index("logits")])


def eager_logits(state: dict[str, torch.Tensor], raw: torch.Tensor) -> np.ndarray:
    module = make_module()
    module.load_state_dict(state)
    module.eval()
    with torch.no_grad():
        return module.brick_collection({"raw": raw}, Stage.EXPORT)["logits"].numpy()


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three epochs with ``EMAWeightAveraging``, a checkpoint per epoch, a CSV log and an ONNX export at the end."""
    folder = tmp_path_factory.mktemp("ema")
    module = make_module()
    checkpoints = ModelCheckpoint(dirpath=folder / "checkpoints", save_top_k=-1, filename="{epoch}")
    logger = CSVLogger(folder, name="logs")
    callbacks = [EMAWeightAveraging(decay=0.8), checkpoints, OnnxExportCallback(dirpath=str(folder))]
    make_trainer(folder, callbacks, logger=logger).fit(module, loader(), loader(1))
    with (Path(logger.log_dir) / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    logged = {int(row["epoch"]): float(row["validation/loss"]) for row in rows if row.get("validation/loss")}
    return {"folder": folder, "module": module, "validation": logged}


def test_validation_runs_on_the_averaged_weights_that_the_checkpoints_hold(ema_run: dict[str, Any]) -> None:
    folder: Path = ema_run["folder"]
    assert sorted(ema_run["validation"]) == [0, 1, 2]
    for epoch, logged in ema_run["validation"].items():
        checkpoint = torch.load(folder / "checkpoints" / f"epoch={epoch}.ckpt", weights_only=True)
        assert {"current_model_state", "averaging_state"} <= set(checkpoint), "written by WeightAveraging"
        averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
        assert any(not torch.equal(averaged[name], raw[name]) for name in bricks_of(averaged))
        assert validation_loss(folder, averaged) == pytest.approx(logged, abs=1e-6), f"epoch {epoch}"
        assert validation_loss(folder, raw) != pytest.approx(logged, abs=1e-6), "not the raw weights"


def test_after_fit_the_module_and_both_onnx_exports_hold_the_averaged_weights(
    ema_run: dict[str, Any], tmp_path: Path
) -> None:
    folder: Path = ema_run["folder"]
    module: LightningBrickCollection = ema_run["module"]
    last = torch.load(folder / "checkpoints" / "epoch=2.ckpt", weights_only=True)
    final = bricks_of(module.state_dict())
    assert all(torch.equal(final[name], last["state_dict"][name]) for name in final), "fit ends on the average"
    raw_input = torch.randn(6, N_FEATURES, generator=torch.Generator().manual_seed(5))
    averaged, raw = eager_logits(last["state_dict"], raw_input), eager_logits(last["current_model_state"], raw_input)
    assert not np.allclose(averaged, raw, atol=1e-4)
    np.testing.assert_allclose(onnx_logits(folder / "model.onnx", raw_input), averaged, atol=1e-5)  # the callback's
    exported = tmp_path / "from_checkpoint.onnx"
    export_checkpoint_as_onnx(folder / "checkpoints" / "epoch=2.ckpt", exported, brick_collection=bricks())
    np.testing.assert_allclose(onnx_logits(exported, raw_input), averaged, atol=1e-5)
    loaded = LightningBrickCollection.load_from_checkpoint(
        folder / "checkpoints" / "epoch=2.ckpt", brick_collection=bricks()
    )
    assert all(torch.equal(bricks_of(loaded.state_dict())[name], value) for name, value in final.items())


class KeepingExports(OnnxExportCallback):
    """Keeps a copy of each export."""

    def __init__(self, folder: Path, **kwargs: Any) -> None:
        super().__init__(dirpath=str(folder), **kwargs)
        self.copies: list[Path] = []

    def export(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint_path: str | None = None
    ) -> list[ExportResult]:
        results = super().export(trainer, pl_module, checkpoint_path)
        self.copies.append(Path(self.dirpath or ".") / f"export{len(self.copies)}.onnx")
        shutil.copyfile(results[0].path, self.copies[-1])
        return results


def test_the_on_best_export_holds_the_averaged_weights(tmp_path: Path) -> None:
    """With EMA on, the best checkpoint holds the averaged weights, and so does the artefact exported for it."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path, monitor="validation/loss", filename="best")
    export = KeepingExports(tmp_path, on_best=True)
    trainer = make_trainer(tmp_path, [EMAWeightAveraging(decay=0.5), checkpoints, export], max_epochs=1)
    module = make_module()
    trainer.fit(module, loader(), loader(1))
    assert export.copies, "an artefact was exported for the best checkpoint"
    best = torch.load(tmp_path / "best.ckpt", weights_only=True)
    raw_input = torch.randn(6, N_FEATURES, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(
        onnx_logits(export.copies[-1], raw_input), eager_logits(best["state_dict"], raw_input), atol=1e-5
    )


def test_the_averaged_copy_does_not_take_over_the_bricks(tmp_path: Path) -> None:
    module = make_module()
    ema = EMAWeightAveraging(decay=0.5)
    make_trainer(tmp_path, [ema], max_epochs=1).fit(module, loader())
    head = module.brick_collection["head"]
    assert module.brick_collection.output_names(Stage.INFERENCE) == ["features", "logits"]
    head.output_names = ["scores"]  # a spec change reaches the module's collection, which plans again
    assert module.brick_collection.output_names(Stage.INFERENCE) == ["features", "scores"]


class EpochEnds(pl.Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights.append({name: value.clone() for name, value in bricks_of(pl_module.state_dict()).items()})


def test_stochastic_weight_averaging_runs_with_bricks_and_ends_on_the_average(tmp_path: Path) -> None:
    """Lightning's ``StochasticWeightAveraging`` averages the weights at the starts of epochs ``swa_epoch_start - 1``
    to the last (0-based), validates and checkpoints the raw weights until then, and with batch norm adds an epoch
    that recomputes its statistics for the average."""
    module = make_module()
    ends = EpochEnds()
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)
    trainer = make_trainer(tmp_path, [ends, swa, ModelCheckpoint(dirpath=tmp_path, save_last=True)], max_epochs=3)
    trainer.fit(module, loader(), loader(1))
    assert trainer.current_epoch == 4, "three epochs and the batch norm epoch"
    final = bricks_of(module.state_dict())
    parameters = [name for name, _ in module.named_parameters()]
    for name in parameters:  # the weights at the starts of epochs 1 and 2: the ends of epochs 0 and 1
        torch.testing.assert_close(final[name], (ends.weights[0][name] + ends.weights[1][name]) / 2, msg=name)
    statistics = [name for name in final if "running_" in name]
    assert statistics
    assert all(not torch.equal(final[name], ends.weights[2][name]) for name in statistics), "recomputed"
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert all(torch.equal(last["state_dict"][name], final[name]) for name in final), "written after the swap"
