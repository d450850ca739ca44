"""OnnxExportCallback: a real ``Trainer.fit`` on a tiny brick model writes a verified ONNX file where it should."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import pytorch_lightning as pl
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickTrainable, ExportResult
from torchbricks_lightning.callbacks import OnnxExportCallback
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, UnknownStageError
from torchbricks_lightning.lightning import LightningBrickCollection


def _loader(n: int = 32, seed: int = 0) -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, N_FEATURES, generator=generator)
    targets = features[:, :NUM_CLASSES].argmax(dim=1)  # learnable, so the validation loss improves
    return DataLoader(TensorDataset(features, targets), batch_size=8)


def _trainer(tmp_path: Path, callbacks: list[pl.Callback], max_epochs: int = 1, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }
    return pl.Trainer(callbacks=callbacks, **options)


def _module() -> LightningBrickCollection:
    return LightningBrickCollection(boring_bricks(), optimizer=lambda parameters: torch.optim.SGD(parameters, lr=0.5))


def _session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class CountingExport(OnnxExportCallback):
    """Records each export: the epoch, whether fit had ended, and the best checkpoint at that time."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[dict[str, Any]] = []
        self._fit_ended = False

    def export(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint_path: str | None = None
    ) -> list[ExportResult]:
        modes_before = {name: module.training for name, module in pl_module.named_modules()}
        weights_before = {name: value.clone() for name, value in pl_module.state_dict().items()}
        results = super().export(trainer, pl_module, checkpoint_path)
        self.calls.append(
            {
                "epoch": trainer.current_epoch,
                "at_fit_end": self._fit_ended,
                "best": getattr(trainer.checkpoint_callback, "best_model_path", None),
                "checkpoint": checkpoint_path,
                "result": results[-1],
                "modes_before": modes_before,
                "modes_after": {name: module.training for name, module in pl_module.named_modules()},
                "weights_kept": all(
                    torch.equal(value, weights_before[name]) for name, value in pl_module.state_dict().items()
                ),
            }
        )
        return results

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ended = True
        super().on_fit_end(trainer, pl_module)


def test_default_export_goes_next_to_the_checkpoints_at_fit_end(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    callback = CountingExport()
    module = _module()
    trainer = _trainer(tmp_path, [ModelCheckpoint(dirpath=checkpoints), callback])
    trainer.fit(module, _loader())

    path = checkpoints / "model.onnx"
    assert path.is_file()
    assert [call["at_fit_end"] for call in callback.calls] == [True]  # on_best is off: only at the end of fit
    result = callback.last_result
    assert result is not None
    assert result.path == path
    assert result.input_names == ["raw"]  # targets feed only losses and metrics, which are dead in export
    assert result.output_names == ["probabilities", "class_prediction"]  # the terminal outputs
    assert set(result.max_abs_diff) == {"probabilities", "class_prediction"}
    assert max(result.max_abs_diff.values()) < 1e-4
    assert not [child for child in checkpoints.iterdir() if ".tmp" in child.name]

    session = _session(path)
    assert [value.name for value in session.get_inputs()] == ["raw"]
    output_names = [value.name for value in session.get_outputs()]
    assert output_names == result.output_names
    raw = torch.randn(7, N_FEATURES)  # another batch size than in training: the batch dimension is dynamic
    onnx_outputs = dict(zip(output_names, session.run(None, {"raw": raw.numpy()}), strict=True))
    module.eval()
    with torch.no_grad():
        eager = module({"raw": raw})
    np.testing.assert_allclose(onnx_outputs["probabilities"], eager["probabilities"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(onnx_outputs["class_prediction"], eager["class_prediction"].numpy())


def test_export_during_fit_keeps_training_mode_and_weights(tmp_path: Path) -> None:
    """An on-best export in the middle of fit runs in eval mode and no_grad, then puts the module back."""
    callback = CountingExport(on_best=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="train/loss", mode="min")
    _trainer(tmp_path, [checkpoint, callback], max_epochs=2).fit(_module(), _loader())

    during_fit = [call for call in callback.calls if not call["at_fit_end"]]
    assert during_fit
    for call in during_fit:
        assert call["modes_before"]["brick_collection"] is True  # the export happened while training
        assert call["modes_after"] == call["modes_before"]
        assert call["weights_kept"]


def test_on_best_exports_each_new_best_checkpoint_before_fit_ends(tmp_path: Path) -> None:
    callback = CountingExport(on_best=True)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", monitor="validation/loss", mode="min", save_top_k=1, save_last=True
    )
    trainer = _trainer(tmp_path, [checkpoint, callback], max_epochs=3)
    trainer.fit(_module(), _loader(), _loader(16, seed=1))

    during_fit = [call for call in callback.calls if not call["at_fit_end"]]
    assert during_fit, "on_best=True did not export before the end of fit"
    # The first checkpoint is always a new best; it is exported once written, before epoch 1 trains.
    assert during_fit[0]["epoch"] == 1
    assert Path(during_fit[0]["checkpoint"]).name == "epoch=0-step=4.ckpt"
    exported = [call["checkpoint"] for call in callback.calls]
    assert len(set(exported)) == len(exported), f"exported twice for the same best checkpoint (save_last): {exported}"
    assert len(exported) <= 3
    assert exported[-1] == checkpoint.best_model_path  # the last export is the best checkpoint, never the last epoch
    assert [call["at_fit_end"] for call in callback.calls].count(True) <= 1
    assert callback.last_result is callback.calls[-1]["result"]
    assert (tmp_path / "checkpoints" / "model.onnx").is_file()


def test_on_best_without_a_monitor_exports_once_per_new_checkpoint(tmp_path: Path) -> None:
    callback = CountingExport(on_best=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints")  # keeps the latest epoch as "best"
    trainer = _trainer(tmp_path, [checkpoint, callback], max_epochs=2)
    trainer.fit(_module(), _loader())

    assert [Path(call["checkpoint"]).name for call in callback.calls] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert [call["at_fit_end"] for call in callback.calls] == [False, True]  # the last one once written, at fit end


def test_dirpath_and_filename(tmp_path: Path) -> None:
    exports = tmp_path / "exports" / "nested"
    callback = OnnxExportCallback(dirpath=str(exports), filename="net.onnx")
    checkpoints = tmp_path / "checkpoints"
    _trainer(tmp_path, [ModelCheckpoint(dirpath=checkpoints), callback]).fit(_module(), _loader())

    assert (exports / "net.onnx").is_file()
    assert callback.last_result is not None
    assert callback.last_result.path == exports / "net.onnx"
    assert not list(checkpoints.glob("*.onnx"))
    assert _session(exports / "net.onnx").get_inputs()[0].name == "raw"


def test_without_checkpointing_or_logger_the_file_goes_to_the_root_dir(tmp_path: Path) -> None:
    callback = OnnxExportCallback()
    _trainer(tmp_path, [callback], enable_checkpointing=False).fit(_module(), _loader())
    assert (tmp_path / "model.onnx").is_file()
    assert callback.last_result is not None
    assert callback.last_result.path == tmp_path / "model.onnx"


def test_static_batch_size_and_another_stage(tmp_path: Path) -> None:
    callback = OnnxExportCallback(dynamic_batch_size=False, stage="inference", filename="static.onnx")
    _trainer(tmp_path, [callback], enable_checkpointing=False).fit(_module(), _loader())
    session = _session(tmp_path / "static.onnx")
    assert session.get_inputs()[0].shape == [2, N_FEATURES]  # example inputs have batch size 2
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session.run(None, {"raw": np.zeros((3, N_FEATURES), dtype=np.float32)})


@pytest.mark.parametrize("filename", ["model.pt", "model", "model.onnx.tmp", "model.ONNX.bak"])
def test_filename_must_end_with_onnx_or_pt2(filename: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(filename)) + r".*must end with '\.onnx' or '\.pt2'"):
        OnnxExportCallback(filename=filename)


def test_unknown_stage_is_refused_up_front() -> None:
    with pytest.raises(UnknownStageError, match="Did you mean 'export'"):
        OnnxExportCallback(stage="exprt")


class PlainModule(pl.LightningModule):
    """A LightningModule that is not a LightningBrickCollection."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(N_FEATURES, NUM_CLASSES)
        self.steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        features, targets = batch
        return nn.functional.cross_entropy(self.layer(features), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_model_that_is_not_a_brick_collection_gets_a_clear_error(tmp_path: Path) -> None:
    module = PlainModule()
    trainer = _trainer(tmp_path, [OnnxExportCallback()], enable_checkpointing=False)
    with pytest.raises(BrickDefinitionError, match="needs a LightningBrickCollection, but the model is PlainModule"):
        trainer.fit(module, _loader())
    assert not (tmp_path / "model.onnx").exists()


def test_a_model_that_is_not_a_brick_collection_is_refused_before_training(tmp_path: Path) -> None:
    """The mismatch is known when fit starts; it should not surface only after the whole training has run."""
    module = PlainModule()
    trainer = _trainer(tmp_path, [OnnxExportCallback()], enable_checkpointing=False, max_epochs=2)
    with pytest.raises(BrickDefinitionError, match="needs a LightningBrickCollection"):
        trainer.fit(module, _loader())
    assert module.steps == 0, f"the error came after {module.steps} training steps"


def test_callback_state_round_trips() -> None:
    callback = OnnxExportCallback(on_best=True)
    assert callback.state_dict() == {"best_path": None}
    callback.load_state_dict({"best_path": "/runs/epoch=3.ckpt"})
    assert callback.state_dict() == {"best_path": "/runs/epoch=3.ckpt"}
    fresh = OnnxExportCallback(on_best=True)
    fresh.load_state_dict(callback.state_dict())
    assert fresh.state_dict() == callback.state_dict()


def _dropout_module() -> LightningBrickCollection:
    torch.manual_seed(0)
    bricks = boring_bricks()
    bricks["dropout"] = BrickTrainable(nn.Dropout(0.5), input_names=["processed"], output_names=["dropped"])
    bricks["backbone"].input_names = ["dropped"]  # type: ignore[attr-defined]
    return LightningBrickCollection(bricks, optimizer=lambda parameters: torch.optim.SGD(parameters, lr=0.5))


def test_exporting_during_fit_does_not_change_the_training(tmp_path: Path) -> None:
    """Exports at each new best checkpoint draw their example inputs from a private generator: the global one, which
    dropout draws from, is left alone, so the run ends with the weights of a run without exports."""
    final_weights = []
    exports = []
    for name, with_export in (("plain", False), ("exporting", True)):
        checkpoint = ModelCheckpoint(dirpath=tmp_path / name, monitor="train/loss", mode="min")
        callbacks: list[pl.Callback] = [checkpoint]
        if with_export:
            callbacks.append(CountingExport(on_best=True, filename="best.onnx"))
        module = _dropout_module()
        torch.manual_seed(1)
        _trainer(tmp_path / name, callbacks, max_epochs=3).fit(module, _loader(64))
        final_weights.append(module.state_dict())
        exports.append([call for call in getattr(callbacks[-1], "calls", []) if not call["at_fit_end"]])
    assert len(exports[1]) >= 2  # the loss improves: several exports in the middle of fit
    plain, exporting = final_weights
    assert plain.keys() == exporting.keys()
    assert all(torch.equal(plain[key], exporting[key]) for key in plain)
