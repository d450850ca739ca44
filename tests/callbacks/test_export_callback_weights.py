"""OnnxExportCallback exports the weights of the checkpoint ModelCheckpoint marked best, with the checkpoints' file
mode, and with the same options as export_bricks."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import pytorch_lightning as pl
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickCollection, Stage, load_brick_collection_weights
from torchbricks_lightning.callbacks import OnnxExportCallback
from torchbricks_lightning.core.export import ExportSpec
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection


def _loader(n: int = 32, seed: int = 0) -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, N_FEATURES, generator=generator)
    targets = features[:, :NUM_CLASSES].argmax(dim=1)
    return DataLoader(TensorDataset(features, targets), batch_size=8)


def _fit(folder: Path, callbacks: list[pl.Callback], max_epochs: int = 3) -> LightningBrickCollection:
    torch.manual_seed(0)
    module = LightningBrickCollection(boring_bricks(), optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=folder,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(module, _loader(), _loader(16, seed=1))
    return module


def _session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _probabilities(collection: BrickCollection, raw: torch.Tensor) -> np.ndarray:
    collection.eval()
    with torch.no_grad():
        return collection({"raw": raw}, Stage.EXPORT)["probabilities"].numpy()


@pytest.mark.parametrize("averaging", [False, True], ids=["plain", "ema"])
def test_on_best_exports_the_weights_of_the_best_checkpoint_not_the_last_epochs(
    tmp_path: Path, averaging: bool
) -> None:
    """ModelCheckpoint keeps the epoch with the highest validation loss, the first: the loss falls as it trains. The
    artefact must hold that checkpoint's weights, not those of the last epoch. With EMA weight averaging a checkpoint
    holds the averaged weights, which are not the module's: the artefact must hold the checkpoint's all the same."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="validation/loss", mode="max")
    callbacks: list[pl.Callback] = [checkpoint, OnnxExportCallback(on_best=True)]
    if averaging:
        callbacks.append(EMAWeightAveraging(decay=0.5))
    module = _fit(tmp_path, callbacks)

    best = Path(checkpoint.best_model_path)
    assert best.name.startswith("epoch=0-"), best
    from_checkpoint = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    load_brick_collection_weights(from_checkpoint, best)
    raw = torch.randn(6, N_FEATURES, generator=torch.Generator().manual_seed(7))
    artefact = tmp_path / "checkpoints" / "model.onnx"
    (probabilities, _) = _session(artefact).run(None, {"raw": raw.numpy()})

    np.testing.assert_allclose(probabilities, _probabilities(from_checkpoint, raw), atol=1e-5, rtol=1e-4)
    last = _probabilities(module.brick_collection, raw)
    assert np.abs(probabilities - last).max() > 1e-3, "the artefact holds the last epoch's weights"
    manifest = json.loads((tmp_path / "checkpoints" / "model.onnx.json").read_text())
    assert manifest["checkpoint"] == {"path": str(best), "sha256": hashlib.sha256(best.read_bytes()).hexdigest()}


def test_exported_files_get_the_mode_of_lightnings_checkpoints(tmp_path: Path) -> None:
    """(fsspec, which writes Lightning's checkpoints, reads the umask once per process, so the umask is left as it is
    here; tests/core/test_export_artefacts.py sets another one.)"""
    _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "checkpoints"), OnnxExportCallback()], max_epochs=1)
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    mode = stat.S_IMODE(checkpoint.stat().st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    for name in ("model.onnx", "model.onnx.json"):
        assert stat.S_IMODE((tmp_path / "checkpoints" / name).stat().st_mode) == mode, name


def test_the_callback_takes_the_export_options(tmp_path: Path) -> None:
    callback = OnnxExportCallback(
        artefacts=[
            ExportSpec("probabilities.pt2", output_names=["probabilities"]),
            ExportSpec("half.onnx", output_names=["logits"], dtype="float16"),
        ],
        opset=18,
    )
    _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "checkpoints"), callback], max_epochs=1)
    results = {result.path.name: result for result in callback.last_results}
    assert set(results) == {"probabilities.pt2", "half.onnx"}
    assert results["probabilities.pt2"].format == "pt2"
    assert results["probabilities.pt2"].output_names == ["probabilities"]
    assert results["half.onnx"].manifest["dtype"] == "float16"
    assert results["half.onnx"].manifest["artefact"]["opset"] == 18
    program = torch.export.load(str(tmp_path / "checkpoints" / "probabilities.pt2"))
    (probabilities,) = program.module()(torch.randn(3, N_FEATURES))
    assert probabilities.shape == (3, NUM_CLASSES)


def test_one_artefact_per_head_from_a_recipe_style_filename(tmp_path: Path) -> None:
    callback = OnnxExportCallback(filename="{head}.onnx")
    _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "checkpoints"), callback], max_epochs=1)
    # boring_bricks' terminal outputs come from two top-level bricks: 'head' (probabilities), 'prediction'.
    outputs: dict[str, Any] = {result.path.name: result.output_names for result in callback.last_results}
    assert outputs == {"head.onnx": ["probabilities"], "prediction.onnx": ["class_prediction"]}


def test_unknown_outputs_fail_before_training(tmp_path: Path) -> None:
    callback = OnnxExportCallback(output_names=["probabilites"])
    with pytest.raises(ConfigError, match="Did you mean 'probabilities'"):
        _fit(tmp_path, [callback], max_epochs=1)
    assert not list(tmp_path.rglob("*.ckpt"))
