"""Quick start: build a brick model, train it briefly, summarise metrics, draw it and export it to ONNX.

Runs in seconds on a CPU with generated data (no download): ``python examples/quickstart.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from torchbricks_lightning import (
    BrickCollection,
    BrickLoss,
    BrickMetricSingle,
    BrickNotTrainable,
    BrickTrainable,
    Stage,
    create_mermaid_dag_graph,
    export_bricks_as_onnx,
)
from torchbricks_lightning.bag_of_bricks import ImageClassifier, Preprocessor

NUM_CLASSES = 4


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class decides which colour channel is brightest (learnable in a few steps)."""
    targets = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    images = torch.rand(n, 3, 16, 16, generator=generator)
    for channel in range(3):
        images[targets == channel, channel] += 0.3
    return images, targets


def build_model() -> BrickCollection:
    backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
            "backbone": BrickTrainable(backbone, input_names=["normalized"], output_names=["features"]),
            "head": {
                "classify": BrickTrainable(
                    ImageClassifier(num_classes=NUM_CLASSES, n_features=32),
                    input_names=["features"],
                    output_names=["./logits", "./probabilities", "./class_prediction"],
                ),
                "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["./logits", "targets"], output_names=["./loss"]),
                "accuracy": BrickMetricSingle(
                    MulticlassAccuracy(num_classes=NUM_CLASSES), input_names=["./class_prediction", "targets"]
                ),
            },
        }
    )


def main(steps: int, output_dir: Path) -> None:
    torch.set_num_threads(1)  # tiny model: one thread avoids OpenMP spin-waiting on small machines
    generator = torch.Generator().manual_seed(0)
    model = build_model()
    print(model)
    print(create_mermaid_dag_graph(model, stage=Stage.TRAIN))

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        images, targets = make_data(32, generator)
        outputs = model({"raw": images, "targets": targets}, stage=Stage.TRAIN)
        loss = model.total_loss(outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    print("train metrics:", {k: round(float(v), 3) for k, v in model.summarize(Stage.TRAIN, reset=True).items()})

    model.eval()
    with torch.no_grad():
        for _ in range(4):
            images, targets = make_data(64, generator)
            model({"raw": images, "targets": targets}, stage=Stage.TEST)
    test_metrics = model.summarize(Stage.TEST, reset=True)
    print("test metrics:", {k: round(float(v), 3) for k, v in test_metrics.items()})

    result = export_bricks_as_onnx(
        output_dir / "quickstart.onnx", model, {"raw": images}, dynamic_batch_size=True, stage=Stage.EXPORT
    )
    worst = max(result.max_abs_diff.values())
    print(f"exported {result.path} inputs={result.input_names} outputs={result.output_names}")
    print(f"onnxruntime matches PyTorch: max abs diff {worst:.2e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output-dir", type=Path, default=Path("build"), help="where to write the ONNX file")
    args = parser.parse_args()
    main(args.steps, args.output_dir)
