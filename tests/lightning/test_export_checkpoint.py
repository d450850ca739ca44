"""export_checkpoint: several artefacts from one checkpoint, and example inputs read from a checkpoint are checked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import ExportSpec
from torchbricks_lightning.errors import CheckpointError, ConfigError, ExportError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.export import export_checkpoint
from torchbricks_lightning.lightning.state.example_inputs import EXAMPLE_INPUTS_KEY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fit")
    torch.manual_seed(0)
    features = torch.randn(16, N_FEATURES)
    loader = DataLoader(TensorDataset(features, features[:, :NUM_CLASSES].argmax(dim=1)), batch_size=8)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", default_root_dir=folder, logger=False, enable_progress_bar=False
    )
    trainer.fit(LightningBrickCollection(boring_bricks()), loader)
    path = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    return Path(path)


def _tampered(checkpoint: Path, folder: Path, example_inputs: Any) -> Path:
    content = torch.load(checkpoint, weights_only=True)
    content[EXAMPLE_INPUTS_KEY] = example_inputs
    path = folder / "tampered.ckpt"
    torch.save(content, path)
    return path


def test_several_artefacts_from_one_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    results = export_checkpoint(
        checkpoint,
        [
            ExportSpec(str(tmp_path / "p.onnx"), output_names=["probabilities"]),
            ExportSpec(str(tmp_path / "{head}.pt2")),
        ],
        brick_collection=boring_bricks(),
    )
    assert [(result.path.name, result.output_names) for result in results] == [
        ("p.onnx", ["probabilities"]),
        ("head.pt2", ["probabilities"]),
        ("prediction.pt2", ["class_prediction"]),
    ]
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    for result in results:
        manifest = json.loads(Path(f"{result.path}.json").read_text())
        assert manifest["checkpoint"] == {"path": str(checkpoint), "sha256": digest}
        assert manifest["inputs"][0]["shape"] == ["batch", N_FEATURES]  # the shape recorded from training


def test_a_bad_file_name_fails_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must end with '\.onnx' or '\.pt2'"):
        export_checkpoint(tmp_path / "nowhere.ckpt", tmp_path / "model.pt")


@pytest.mark.parametrize(
    ("example_inputs", "message"),
    [
        ({"raw": {"shape": [1, N_FEATURES], "dtype": "torch.hub"}}, "dtype 'torch.hub', which is not a tensor dtype"),
        ({"raw": {"shape": [1, 10**6, 10**6], "dtype": "torch.float32"}}, "more than the 33,554,432"),
        ({"raw": {"shape": [1, "5"], "dtype": "torch.float32"}}, "which is not a list of sizes"),
        ({"raw": {"shape": [1, -5], "dtype": "torch.float32"}}, "which is not a list of sizes"),
        ({"raw": [1, 5]}, "is not a name with a"),
        (["raw"], "are a list, not a dict"),
    ],
    ids=["unknown-dtype", "huge-shape", "string-size", "negative-size", "not-a-record", "not-a-dict"],
)
def test_example_inputs_from_a_checkpoint_are_checked(
    checkpoint: Path, tmp_path: Path, example_inputs: Any, message: str
) -> None:
    tampered = _tampered(checkpoint, tmp_path, example_inputs)
    with pytest.raises(CheckpointError, match=message) as info:
        export_checkpoint(tampered, tmp_path / "model.onnx", brick_collection=boring_bricks())
    assert "pass named_inputs" in str(info.value).lower()
    assert not (tmp_path / "model.onnx").exists()


def test_the_loss_guard_applies_to_checkpoints(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"bricks are alive in it, 'loss' \(loss\), 'accuracy' \(metric\)"):
        export_checkpoint(checkpoint, tmp_path / "model.onnx", brick_collection=boring_bricks(), stage="validation")


def test_the_manifest_names_the_checkpoint_bytes_that_were_exported(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is replaced after the weights were loaded (while the example inputs are made), before the export."""
    path = tmp_path / "run.ckpt"
    path.write_bytes(checkpoint.read_bytes())
    loaded = hashlib.sha256(path.read_bytes()).hexdigest()
    replacement = torch.load(checkpoint, weights_only=True)
    replacement["epoch"] += 1
    make_inputs = LightningBrickCollection.example_named_inputs

    def replace_the_file_then_make_inputs(self: LightningBrickCollection, *args: Any, **kwargs: Any) -> Any:
        torch.save(replacement, path)
        return make_inputs(self, *args, **kwargs)

    monkeypatch.setattr(LightningBrickCollection, "example_named_inputs", replace_the_file_then_make_inputs)
    (result,) = export_checkpoint(path, tmp_path / "model.pt2", brick_collection=boring_bricks())
    assert hashlib.sha256(path.read_bytes()).hexdigest() != loaded  # the file did change meanwhile
    assert result.manifest["checkpoint"] == {"path": str(path), "sha256": loaded}
    assert json.loads(Path(f"{result.path}.json").read_text())["checkpoint"]["sha256"] == loaded
