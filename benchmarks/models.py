"""The models every benchmark compares: a ``BrickCollection`` and the equivalent hand-written ``nn.Module``.

Each pair shares the **same module objects**: the hand-written module calls the modules that the bricks wrap,
straight-line (no Python loop), and returns the same dict the collection returns (a copy of the inputs plus every
output, in the same order). Long chains are generated with ``exec`` from the same list of steps, so the baseline
is exactly what one would write by hand, line by line.
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import ImageClassifier, Preprocessor, SmallConvNet

__all__ = [
    "ArgMax",
    "Pair",
    "Step",
    "cnn_bricks",
    "cnn_modules",
    "cnn_with_loss",
    "generated_module",
    "resnet18_split",
    "small_cnn",
    "trivial_chain",
]

NUM_CLASSES = 10


class ArgMax(nn.Module):
    """The predicted class from logits."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)


@dataclass(frozen=True)
class Step:
    """One brick of a straight-line model: an attribute name, its module, and the data names it reads and writes."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    trainable: bool = True


@dataclass
class Pair:
    """A collection and its hand-written equivalent, with example inputs and the stage to run."""

    name: str
    bricks: BrickCollection
    handwritten: nn.Module
    inputs: dict[str, torch.Tensor]
    stage: Stage = Stage.INFERENCE
    n_bricks: int = 0
    tight: nn.Module | None = None
    """Optionally, the fastest straight-line module (see ``generated_module(tight=True)``)."""

    def run_bricks(self) -> dict[str, Any]:
        return self.bricks(self.inputs, self.stage)

    def run_handwritten(self) -> dict[str, Any]:
        return self.handwritten(self.inputs)

    def to(self, device: str) -> Pair:
        self.bricks.to(device)
        self.handwritten.to(device)
        if self.tight is not None:
            self.tight.to(device)
        self.inputs = {name: value.to(device) for name, value in self.inputs.items()}
        return self


def bricks_of(steps: Sequence[Step]) -> BrickCollection:
    """A collection with one brick per step (trainable bricks, or frozen ones for ``trainable=False``)."""
    bricks: dict[str, Any] = {}
    for step in steps:
        kind = BrickTrainable if step.trainable else BrickNotTrainable
        bricks[step.name] = kind(step.module, input_names=list(step.inputs), output_names=list(step.outputs))
    return BrickCollection(bricks)


def generated_module(steps: Sequence[Step], class_name: str = "HandWritten", tight: bool = False) -> nn.Module:
    """A hand-written-style module, generated: one line per step calling ``self.<name>``, then the output dict.

    With ``tight``, the modules are called through global names bound when the code is generated instead of
    ``self.<name>`` (each of which goes through ``nn.Module.__getattr__``): the fastest straight-line Python,
    for a lower bound rather than what one writes by hand.

    For steps ``pre: raw -> x`` and ``head: x -> (a, b)`` the generated ``forward`` reads::

        def forward(self, named_inputs):
            v0 = named_inputs['raw']
            v1 = self.pre(v0)
            v2, v3 = self.head(v1)
            return {**named_inputs, 'x': v1, 'a': v2, 'b': v3}
    """
    variables: dict[str, str] = {}
    lines = ["def forward(self, named_inputs):"]
    produced: list[str] = []
    for step in steps:
        for name in step.inputs:
            if name not in variables:
                variables[name] = f"v{len(variables)}"
                lines.append(f"    {variables[name]} = named_inputs[{name!r}]")
        for name in step.outputs:
            variables[name] = f"v{len(variables)}"
            produced.append(name)
        if not step.name.isidentifier() or keyword.iskeyword(step.name):
            raise ValueError(f"Step name {step.name!r} is not an attribute name.")
        arguments = ", ".join(variables[name] for name in step.inputs)
        targets = ", ".join(variables[name] for name in step.outputs)
        callee = f"_module_{step.name}" if tight else f"self.{step.name}"
        lines.append(f"    {targets} = {callee}({arguments})")
    items = ", ".join(f"{name!r}: {variables[name]}" for name in produced)
    lines.append(f"    return {{**named_inputs, {items}}}")
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {f"_module_{step.name}": step.module for step in steps} if tight else {}
    exec(compile(source, f"<generated {class_name}>", "exec"), namespace)  # noqa: S102 - our own generated code
    cls = type(class_name, (nn.Module,), {"forward": namespace["forward"], "source": source})
    module = cls()
    for step in steps:
        module.add_module(step.name, step.module)
    return module


# --------------------------------------------------------------------------------------------- trivial chains
def trivial_chain(n_bricks: int) -> Pair:
    """``n_bricks`` ``nn.Identity`` bricks in a chain ``x0 -> x1 -> ... -> xn``: pure dispatch cost."""
    steps = [Step(f"b{i}", nn.Identity(), (f"x{i}",), (f"x{i + 1}",)) for i in range(n_bricks)]
    return Pair(
        name=f"chain{n_bricks}",
        bricks=bricks_of(steps),
        handwritten=generated_module(steps, f"HandWrittenChain{n_bricks}"),
        inputs={"x0": torch.zeros(1)},
        n_bricks=n_bricks,
        tight=generated_module(steps, f"TightChain{n_bricks}", tight=True),
    )


# --------------------------------------------------------------------------------------------- small CNN
class HandWrittenSmallCNN(nn.Module):
    """What one writes by hand for preprocessor -> backbone -> classifier (and optionally the loss)."""

    def __init__(self, preprocessor: nn.Module, backbone: nn.Module, classifier: nn.Module, loss: nn.Module | None):
        super().__init__()
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.classifier = classifier
        self.loss = loss

    def forward(self, named_inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        normalized = self.preprocessor(named_inputs["raw"])
        features = self.backbone(normalized)
        logits, probabilities, class_prediction = self.classifier(features)
        outputs = {
            **named_inputs,
            "normalized": normalized,
            "features": features,
            "logits": logits,
            "probabilities": probabilities,
            "class_prediction": class_prediction,
        }
        if self.loss is not None:
            outputs["loss_ce"] = self.loss(logits, named_inputs["targets"])
        return outputs


def cnn_modules(widths: tuple[int, ...]) -> tuple[nn.Module, nn.Module, nn.Module]:
    """A preprocessor, a ``SmallConvNet`` of ``widths`` and a classifier on its features."""
    backbone = SmallConvNet(in_channels=3, widths=widths)
    return Preprocessor(), backbone, ImageClassifier(num_classes=NUM_CLASSES, n_features=backbone.n_backbone_features)


def cnn_bricks(preprocessor: nn.Module, backbone: nn.Module, classifier: nn.Module) -> dict[str, Any]:
    """The three bricks of the small CNN: ``raw -> normalized -> features -> (logits, probabilities, class)``."""
    return {
        "preprocessor": BrickNotTrainable(preprocessor, input_names=["raw"], output_names=["normalized"]),
        "backbone": BrickTrainable(backbone, input_names=["normalized"], output_names=["features"]),
        "classifier": BrickTrainable(
            classifier, input_names=["features"], output_names=["logits", "probabilities", "class_prediction"]
        ),
    }


def small_cnn(batch_size: int = 8, image_size: int = 32, widths: tuple[int, ...] = (16, 32), seed: int = 0) -> Pair:
    """Three bricks: preprocessor, a small conv backbone, a classifier (logits, probabilities, prediction)."""
    torch.manual_seed(seed)
    preprocessor, backbone, classifier = cnn_modules(widths)
    bricks = BrickCollection(cnn_bricks(preprocessor, backbone, classifier))
    pair = Pair(
        name="small_cnn",
        bricks=bricks.eval(),
        handwritten=HandWrittenSmallCNN(preprocessor, backbone, classifier, loss=None).eval(),
        inputs={"raw": torch.rand(batch_size, 3, image_size, image_size)},
        n_bricks=3,
    )
    return pair


def cnn_with_loss(batch_size: int = 8, image_size: int = 32, widths: tuple[int, ...] = (8,), seed: int = 0) -> Pair:
    """The small CNN plus a cross-entropy ``BrickLoss``, run in the TRAIN stage (inputs ``raw`` and ``targets``)."""
    torch.manual_seed(seed)
    preprocessor, backbone, classifier = cnn_modules(widths)
    loss = nn.CrossEntropyLoss()
    bricks = cnn_bricks(preprocessor, backbone, classifier)
    bricks["loss"] = BrickLoss(loss, input_names=["logits", "targets"], output_names=["loss_ce"])
    return Pair(
        name="cnn_with_loss",
        bricks=BrickCollection(bricks),
        handwritten=HandWrittenSmallCNN(preprocessor, backbone, classifier, loss=loss),
        inputs={
            "raw": torch.rand(batch_size, 3, image_size, image_size),
            "targets": torch.randint(0, NUM_CLASSES, (batch_size,)),
        },
        stage=Stage.TRAIN,
        n_bricks=4,
    )


# --------------------------------------------------------------------------------------------- ResNet-18
def resnet18_steps(seed: int = 0) -> list[Step]:
    """torchvision's ResNet-18 (random weights) as 18 steps: preprocessor, stem (4), 8 blocks, pool, fc, heads."""
    import torchvision

    torch.manual_seed(seed)
    resnet = torchvision.models.resnet18(weights=None)
    steps = [
        Step("preprocessor", Preprocessor(), ("raw",), ("normalized",), trainable=False),
        Step("conv1", resnet.conv1, ("normalized",), ("conv1",)),
        Step("bn1", resnet.bn1, ("conv1",), ("bn1",)),
        Step("relu", resnet.relu, ("bn1",), ("relu",)),
        Step("maxpool", resnet.maxpool, ("relu",), ("stem",)),
    ]
    previous = "stem"
    for layer_index in range(1, 5):
        layer = getattr(resnet, f"layer{layer_index}")
        for block_index, block in enumerate(layer):
            name = f"layer{layer_index}_{block_index}"
            steps.append(Step(name, block, (previous,), (name,)))
            previous = name
    steps += [
        Step("avgpool", resnet.avgpool, (previous,), ("pooled",)),
        Step("flatten", nn.Flatten(1), ("pooled",), ("flat",)),
        Step("fc", resnet.fc, ("flat",), ("logits",)),
        Step("softmax", nn.Softmax(dim=1), ("logits",), ("probabilities",)),
        Step("argmax", ArgMax(), ("logits",), ("class_prediction",)),
    ]
    return steps


def resnet18_split(batch_size: int = 2, image_size: int = 64, seed: int = 0) -> Pair:
    """ResNet-18 split into 18 bricks, against the generated straight-line module calling the same modules."""
    steps = resnet18_steps(seed)
    return Pair(
        name="resnet18",
        bricks=bricks_of(steps).eval(),
        handwritten=generated_module(steps, "HandWrittenResNet18").eval(),
        inputs={"raw": torch.rand(batch_size, 3, image_size, image_size)},
        n_bricks=len(steps),
    )
