"""BrickGraphLogger: a real fit writes the brick graph to TensorBoard, as mermaid text and as a picture."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickCollection, Stage, create_mermaid_dag_graph
from torchbricks_lightning.callbacks import BrickGraphLogger
from torchbricks_lightning.errors import UnknownStageError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.pictures import render_brick_graph


def _loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(16, N_FEATURES, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (16,), generator=generator)
    return DataLoader(TensorDataset(features, targets), batch_size=8)


def _fit(tmp_path: Path, callback: BrickGraphLogger, loggers: list[object]) -> LightningBrickCollection:
    module = LightningBrickCollection(BrickCollection(boring_bricks()))  # type: ignore[arg-type]
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=loggers,  # type: ignore[arg-type]
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    return module


def _events(log_dir: str) -> EventAccumulator:
    accumulator = EventAccumulator(log_dir, size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _text(accumulator: EventAccumulator, tag: str) -> str:
    (event,) = accumulator.Tensors(tag)
    return b"".join(event.tensor_proto.string_val).decode()


def _decode_png(encoded: bytes) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def test_graph_logger_writes_pictures_and_mermaid_to_tensorboard(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    module = _fit(tmp_path, BrickGraphLogger(), [logger])
    events = _events(logger.log_dir)
    tags = events.Tags()

    assert {"graph/train", "graph/inference"} <= set(tags["images"])
    for stage in (Stage.TRAIN, Stage.INFERENCE):
        (picture,) = events.Images(f"graph/{stage.value}")
        assert picture.step == 0
        expected = render_brick_graph(module.brick_collection, stage)
        assert (picture.height, picture.width) == tuple(expected.shape[1:])
        torch.testing.assert_close(_decode_png(picture.encoded_image_string), expected, rtol=0, atol=1.5 / 255)
    train_picture, inference_picture = (events.Images(f"graph/{s}")[0] for s in ("train", "inference"))
    assert train_picture.encoded_image_string != inference_picture.encoded_image_string

    text_tags = [tag for tag in tags["tensors"] if tag.endswith("text_summary")]
    assert sorted(text_tags) == ["graph/inference/text_summary", "graph/train/text_summary"]
    for stage in (Stage.TRAIN, Stage.INFERENCE):
        text = _text(events, f"graph/{stage.value}/text_summary")
        assert "flowchart LR" in text
        assert text.startswith("```mermaid\n")
        assert create_mermaid_dag_graph(module.brick_collection, stage=stage) in text
    assert "loss" in _text(events, "graph/train/text_summary")
    assert "BrickLoss" not in _text(events, "graph/inference/text_summary")


def test_graph_logger_draws_the_stages_asked_for(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    _fit(tmp_path, BrickGraphLogger(stages=["export"]), [logger])
    events = _events(logger.log_dir)
    assert [tag for tag in events.Tags()["images"] if tag.startswith("graph/")] == ["graph/export"]
    assert "flowchart LR" in _text(events, "graph/export/text_summary")


def test_graph_logger_ignores_loggers_without_tensorboard(tmp_path: Path) -> None:
    csv = CSVLogger(tmp_path, name="csv")
    _fit(tmp_path, BrickGraphLogger(), [csv])  # must not fail
    assert not list(Path(csv.log_dir).glob("events.out.tfevents.*"))


def test_graph_logger_falls_back_to_the_mermaid_text_when_drawing_is_impossible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "grandalf.layouts", None)  # as if grandalf were not installed
    logger = TensorBoardLogger(tmp_path, name="tb")
    with pytest.warns(UserWarning, match=r"mermaid text only: drawing it needs grandalf.*pip install"):
        _fit(tmp_path, BrickGraphLogger(), [logger])
    events = _events(logger.log_dir)
    assert not [tag for tag in events.Tags()["images"] if tag.startswith("graph/")]
    for stage in ("train", "inference"):
        assert "flowchart LR" in _text(events, f"graph/{stage}/text_summary")


def test_graph_logger_rejects_unknown_stages() -> None:
    with pytest.raises(UnknownStageError, match="BrickGraphLogger"):
        BrickGraphLogger(stages=["trian"])
