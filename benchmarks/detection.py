"""Detection: the detection head's training step and its ONNX latency, each against a hand-written baseline.

The model is a BatchNorm-free backbone of stride 4 and ``create_detection_head`` (3 classes, ``K = 100``) on
synthetic 64x64 scenes (``box_scenes``), batch 16 for training and 1 image for latency; one thread (the report
says how many). The hand-written module calls the same module objects (backbone, ``DetectionNetwork``,
``DetectionLoss``, ``DetectionDecoder``) directly, without bricks, so the difference is what the brick collection
costs.

Figures:

* training step (forward in ``train``, total loss, backward, Adam step): bricks against the hand-written module
  (informational), interleaved repeats;
* inference latency, onnxruntime of the export with its NMS against eager PyTorch of the same model (``no_grad``,
  eval), with the hand-written eager module as a second baseline (informational);
* the largest difference between onnxruntime and eager on the boxes, and the labels that differ (target: boxes
  <= 1e-4, no label different).
"""

from __future__ import annotations

import contextlib
import functools
import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import BenchmarkResult, Figure, Settings, max_abs_difference, ratio_figure, time_interleaved
from torchbricks_lightning import BrickCollection, BrickTrainable, Stage, export_bricks
from torchbricks_lightning.bag_of_bricks import create_detection_head
from torchbricks_lightning.bag_of_bricks.detection.scenes import box_scenes

__all__ = ["DETECTIONS", "MAX_BOX_ERROR", "HandWrittenDetector", "detector_pair", "run"]

MAX_BOX_ERROR = 1e-4
DETECTIONS = ["det/boxes", "det/scores", "det/labels", "det/count"]


class HandWrittenDetector(nn.Module):
    """The same modules called by hand: the training loss, and the decoded detections at inference."""

    def __init__(self, backbone: nn.Module, network: nn.Module, loss: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.backbone, self.network, self.loss, self.decoder = backbone, network, loss, decoder

    def training_loss(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, distances, centerness = self.network(self.backbone(image), image)
        loss, _ = self.loss(logits, distances, centerness, boxes, labels)
        return loss

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, distances, centerness = self.network(self.backbone(image), image)
        return self.decoder(logits, distances, centerness)


def detector_pair(settings: Settings) -> tuple[BrickCollection, HandWrittenDetector]:
    """The brick model and its hand-written twin, sharing their modules."""
    torch.manual_seed(0)
    width = 8 if settings.quick else 32
    backbone = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
    head = create_detection_head(3, width, "features", "boxes", "labels", 4, image_name="image", hidden_channels=width)
    bricks = BrickCollection(
        {"backbone": BrickTrainable(backbone, input_names=["image"], output_names=["features"]), "det": head}
    )
    named = dict(bricks.named_bricks())
    modules = [named[f"det/{name}"].model for name in ("network", "loss", "decode")]  # type: ignore[attr-defined]
    return bricks, HandWrittenDetector(backbone, *modules)


def _train_step(loss_of: Any, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_of().backward()
    optimizer.step()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _trained(bricks: BrickCollection, scenes: dict[str, torch.Tensor], steps: int) -> None:
    """A few steps, so that the export compares real detections rather than near-equal scores of an untrained
    model (whose order the two runtimes may break differently)."""
    optimizer = torch.optim.Adam(bricks.parameters(), lr=0.004)
    bricks.train()
    for step in range(steps):
        batch = {name: tensor[(step % 4) * 16 : (step % 4 + 1) * 16] for name, tensor in scenes.items()}
        _train_step(lambda batch=batch: bricks.total_loss(bricks(batch, Stage.TRAIN)), optimizer)
    bricks.eval()


def run(settings: Settings | None = None) -> BenchmarkResult:
    settings = settings or Settings.full()
    size, batch = (32, 4) if settings.quick else (64, 16)
    bricks, handwritten = detector_pair(settings)
    scenes = box_scenes(64, size=size, seed=1, not_annotated=0.25)
    _trained(bricks, scenes, steps=30 if settings.quick else 80)
    train_batch = {name: tensor[:batch] for name, tensor in scenes.items()}
    threads = torch.get_num_threads()
    details: dict[str, Any] = {"image": f"{batch}x3x{size}x{size}", "threads": threads, "max_detections": 100}

    bricks.train()
    optimizer = torch.optim.SGD(bricks.parameters(), lr=0.0)  # lr 0: the same weights at every repeat
    step = time_interleaved(
        {
            "bricks": functools.partial(
                _train_step, lambda: bricks.total_loss(bricks(train_batch, Stage.TRAIN)), optimizer
            ),
            "handwritten": functools.partial(
                _train_step, lambda: handwritten.training_loss(*train_batch.values()), optimizer
            ),
        },
        settings,
    )
    bricks.eval()
    image = scenes["image"][batch : batch + 1]
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as folder, _quiet():
        path = Path(folder) / "det.onnx"
        # quick: no second shape and no check by the exporter (this benchmark compares the outputs itself)
        quick = {"verify": False, "dynamic_batch_size": False} if settings.quick else {}
        export_bricks(path, bricks, {"image": image}, output_names=DETECTIONS, **quick)  # type: ignore[arg-type]
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {"image": image.numpy()}
        with torch.no_grad():
            eager = bricks({"image": image}, Stage.INFERENCE)
            onnx_outputs = session.run(None, feeds)
            details["box_error"] = max_abs_difference([onnx_outputs[0]], [eager["det/boxes"]])
            details["labels_differing"] = int((torch.from_numpy(onnx_outputs[2]) != eager["det/labels"]).sum())
            details["detections"] = int(eager["det/count"].sum())
            details["handwritten_matches"] = max_abs_difference(handwritten(image), [eager[n] for n in DETECTIONS])
            latency = time_interleaved(
                {
                    "onnxruntime": lambda: session.run(None, feeds),
                    "eager": lambda: bricks({"image": image}, Stage.INFERENCE),
                    "handwritten": lambda: handwritten(image),
                },
                settings,
            )
    details["train_step"], details["latency"] = step, latency
    shape = details["image"]
    figures = [
        ratio_figure(
            "detection: training step (bricks vs hand-written)",
            step,
            "bricks",
            "handwritten",
            unit="ms",
            scale=1e3,
            notes=f"informational; FCOS-style head, batch {shape}, forward+loss+backward+step, {threads} thread(s)",
        ),
        ratio_figure(
            "detection: inference latency, onnxruntime vs eager PyTorch",
            latency,
            "onnxruntime",
            "eager",
            unit="ms",
            scale=1e3,
            notes=f"informational; 1 image {size}x{size}, decoding and NMS inside, K=100, {threads} thread(s); "
            f"hand-written eager: {latency.median('handwritten') * 1e3:.3f} ms",
        ),
        ratio_figure(
            "detection: eager inference latency (bricks vs hand-written)",
            latency,
            "eager",
            "handwritten",
            unit="ms",
            scale=1e3,
            notes=f"informational; what the brick collection costs at inference, {threads} thread(s)",
        ),
        Figure(
            name="detection: onnxruntime vs eager, max abs box error",
            value=details["box_error"],
            baseline=None,
            unit="abs",
            comparison=None,
            comparison_kind="none",
            target=f"<= {MAX_BOX_ERROR:g} and no label different",
            met=details["box_error"] <= MAX_BOX_ERROR and details["labels_differing"] == 0,
            notes=f"{details['detections']} detections compared; {details['labels_differing']} labels differ",
        ),
    ]
    return BenchmarkResult("detection", figures, details)
