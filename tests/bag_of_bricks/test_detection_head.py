"""The detection head trained under a real Trainer on synthetic scenes: mAP, partial annotations, ONNX and .pt2.

One module-scoped fit (32 px scenes of three coloured rectangle classes on noise, a BatchNorm-free backbone of
stride 4) is shared by every test here.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_detection_head
from torchbricks_lightning.bag_of_bricks.detection.scenes import box_scenes
from torchbricks_lightning.core.export import export_bricks
from torchbricks_lightning.lightning import LightningBrickCollection

SIZE, STRIDE, K = 32, 4, 20
CLASSES = ["red", "green", "blue"]
DETECTIONS = ["det/boxes", "det/scores", "det/labels", "det/count"]


class Scenes(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["image"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def detector() -> BrickCollection:
    backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
    return BrickCollection(
        {
            "backbone": BrickTrainable(backbone, input_names=["image"], output_names=["features"]),
            "det": create_detection_head(
                3, 32, "features", "boxes", "labels", STRIDE, max_detections=K, image_name="image", class_names=CLASSES
            ),
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("detection")
    torch.manual_seed(0)
    module = LightningBrickCollection(detector(), optimizer=functools.partial(torch.optim.Adam, lr=0.004))
    train = DataLoader(Scenes(box_scenes(128, size=SIZE, seed=1, not_annotated=0.25)), batch_size=16, shuffle=True)
    validation = DataLoader(Scenes(box_scenes(48, size=SIZE, seed=2)), batch_size=24)
    trainer: pl.Trainer = quiet_trainer(
        folder,
        max_epochs=8,
        logger=CSVLogger(folder, name="fit", version=0),
        check_val_every_n_epoch=8,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train, validation)
    with (folder / "fit" / "version_0" / "metrics.csv").open() as file:
        rows = [{key: value for key, value in row.items() if value} for row in csv.DictReader(file)]
    collection = module.brick_collection.eval()
    return {"collection": collection, "rows": rows, "folder": folder}


def validation_batch(seed: int, count: int = 16, not_annotated: float = 0.0) -> dict[str, torch.Tensor]:
    return box_scenes(count, size=SIZE, seed=seed, not_annotated=not_annotated)


def test_a_trained_head_reaches_map_50_of_one_half_on_its_validation_split(trained: dict[str, Any]) -> None:
    logged = [row for row in trained["rows"] if "validation/det/map_50" in row]
    assert len(logged) == 1
    values = {key: float(value) for key, value in logged[0].items()}
    assert values["validation/det/map_50"] >= 0.5, values
    assert 0.0 < values["validation/det/map"] <= values["validation/det/map_50"]
    assert "validation/det/map_75" in values
    assert any("train/det/loss_detection_epoch" in row for row in trained["rows"])


def _loss_and_map(collection: BrickCollection, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    collection.reset_metrics("validation")
    with torch.no_grad():
        outputs = collection(batch, "validation")
    values = collection.summarize("validation", reset=True)
    return outputs["det/loss_detection"], {key: float(value) for key, value in values.items()}


def test_images_not_annotated_change_neither_the_loss_nor_the_map(trained: dict[str, Any]) -> None:
    collection = trained["collection"]
    annotated = validation_batch(seed=3)
    others = validation_batch(seed=4, count=8, not_annotated=1.0)  # other images, objects shown but not annotated
    assert torch.isnan(others["boxes"]).all()
    mixed = {name: torch.cat([annotated[name][:8], others[name], annotated[name][8:]]) for name in annotated}
    loss, values = _loss_and_map(collection, annotated)
    mixed_loss, mixed_values = _loss_and_map(collection, mixed)
    torch.testing.assert_close(mixed_loss, loss)
    assert mixed_values == values
    assert values["det/map_50"] > 0.3, "the check compares real detections"
    # and the unannotated images' objects would have changed both, had they been annotated
    labelled = box_scenes(8, size=SIZE, seed=4)
    other_loss, _ = _loss_and_map(collection, {name: torch.cat([annotated[name], labelled[name]]) for name in mixed})
    assert not torch.isclose(other_loss, loss)


def test_a_batch_without_annotations_trains_to_a_zero_loss_with_zero_gradients() -> None:
    collection = detector().train()
    batch = validation_batch(seed=5, count=4, not_annotated=1.0)
    outputs = collection(batch, "train")
    loss = collection.total_loss(outputs)
    assert float(outputs["det/loss_detection"]) == 0.0
    assert float(outputs["det/positives"]) == 0.0
    loss.backward()
    gradients = [parameter.grad for parameter in collection.parameters() if parameter.requires_grad]
    assert gradients
    assert all(grad is not None and torch.equal(grad, torch.zeros_like(grad)) for grad in gradients)


def test_detections_have_fixed_shapes_and_documented_padding(trained: dict[str, Any]) -> None:
    outputs = trained["collection"](validation_batch(seed=6, count=5), "inference")
    boxes, scores, labels, count = (outputs[name] for name in DETECTIONS)
    assert (tuple(boxes.shape), tuple(scores.shape), tuple(labels.shape), tuple(count.shape)) == (
        (5, K, 4),
        (5, K),
        (5, K),
        (5,),
    )
    assert labels.dtype == count.dtype == torch.int64
    rows = torch.arange(K).unsqueeze(0) < count.unsqueeze(1)
    assert bool(rows.any()), "some rows are detections"
    assert not bool(rows.all()), "some rows are padding"
    assert bool((scores[~rows] == 0).all())
    assert bool((labels[~rows] == -1).all())
    assert bool((boxes[~rows] == 0).all())
    assert bool((scores[rows] > 0.2).all())
    assert bool((labels[rows] >= 0).all())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), "best first"
    assert "det/loss_detection" not in outputs


def _onnx_outputs(path: Path, images: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(value) for value in session.run(None, {"image": images.numpy()})]


def _assert_matches_eager(actual: list[torch.Tensor], eager: dict[str, torch.Tensor]) -> None:
    boxes, scores, labels, count = actual
    torch.testing.assert_close(boxes, eager["det/boxes"], atol=1e-4, rtol=0.0)
    torch.testing.assert_close(scores, eager["det/scores"], atol=1e-5, rtol=0.0)
    assert torch.equal(labels, eager["det/labels"])
    assert torch.equal(count, eager["det/count"])


def test_the_onnx_export_with_nms_matches_eager_in_onnxruntime(trained: dict[str, Any]) -> None:
    collection = trained["collection"]
    path = trained["folder"] / "det.onnx"
    examples = {"image": validation_batch(seed=7, count=4)["image"]}
    result = export_bricks(path, collection, examples, output_names=DETECTIONS)
    assert result.max_abs_diff["det/labels"] == 0
    images = validation_batch(seed=8, count=6)["image"]  # another batch size: the batch is dynamic
    eager = collection({"image": images}, "export")
    assert int(eager["det/count"].sum()) > 6, "the check compares real detections"
    _assert_matches_eager(_onnx_outputs(path, images), eager)
    manifest = json.loads(result.manifest_path.read_text())  # type: ignore[union-attr]
    assert manifest["metadata"]["det/decode"] == {
        "outputs": DETECTIONS,
        "task": "detection",
        "box_format": "xyxy",
        "box_units": "pixels",
        "stride": STRIDE,
        "max_detections": K,
        "padding": {"score": 0.0, "label": -1, "box": [0.0, 0.0, 0.0, 0.0]},
    }
    assert manifest["class_names"]["det/decode"]["names"] == CLASSES
    shapes = [output["shape"] for output in manifest["outputs"]]
    assert shapes == [["batch", K, 4], ["batch", K], ["batch", K], ["batch"]]


def test_the_pt2_export_with_nms_matches_eager(trained: dict[str, Any]) -> None:
    collection = trained["collection"]
    path = trained["folder"] / "det.pt2"
    export_bricks(path, collection, {"image": validation_batch(seed=7, count=4)["image"]}, output_names=DETECTIONS)
    images = validation_batch(seed=9, count=3)["image"]
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        actual = list(program(images))
    _assert_matches_eager(actual, collection({"image": images}, "export"))
