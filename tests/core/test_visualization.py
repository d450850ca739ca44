"""Visualisation bricks: alive in validation and test by default, in no stage's plan (so forward, export, compile and
the graph drawing never see them), drawn only through ``BrickCollection.visualize`` on the samples asked for; and
the ready-made visualisers' pictures, their texts and where their marks land."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from torchbricks_lightning import (
    BrickCollection,
    BrickTrainable,
    BrickVisualization,
    Stage,
    Visualizer,
    create_mermaid_dag_graph,
)
from torchbricks_lightning.bag_of_bricks import (
    ClassificationVisualizer,
    DepthVisualizer,
    DetectionVisualizer,
    SegmentationVisualizer,
)
from torchbricks_lightning.bag_of_bricks.visualizers.canvas import text_size
from torchbricks_lightning.bag_of_bricks.visualizers.classification import WRONG
from torchbricks_lightning.errors import BrickOutputError, ConfigError, MissingInputError


class Recording(Visualizer):
    """Draws blank 4x4 pictures and records what each call got."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def forward(self, raw: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self.calls.append({"raw": raw, "logits": logits})
        return torch.zeros(len(raw), 3, 4, 4, dtype=torch.uint8)


def same_color(pixel: torch.Tensor, color: tuple[int, int, int]) -> bool:
    """Whether ``pixel`` (3,) is ``color``, to one unit (PNG-free, but the box drawing rounds)."""
    return bool((pixel.int() - torch.tensor(color)).abs().max() <= 1)


def collection_with(visualizer: Any, **kwargs: Any) -> BrickCollection:
    return BrickCollection(
        {
            "head": {"linear": BrickTrainable(nn.Linear(4, 3), input_names=["raw"], output_names=["./logits"])},
            "show": BrickVisualization(visualizer, input_names={"raw": "raw", "logits": "head/logits"}, **kwargs),
        }
    )


def test_alive_in_validation_and_test_only_and_in_no_plan() -> None:
    visualizer = Recording()
    collection = collection_with(visualizer)
    brick = collection["show"]
    assert brick.alive_stages == (Stage.VALIDATION, Stage.TEST)
    assert set(collection.visualization_bricks("validation")) == {"show"}
    assert collection.visualization_bricks("test") == {"show": brick}
    for stage in (Stage.TRAIN, Stage.INFERENCE, Stage.EXPORT):
        assert collection.visualization_bricks(stage) == {}
    for stage in Stage:  # no plan holds it: forward, export and compile see the model alone
        assert [node.path for node in collection.plan(stage).nodes] == ["head/linear"]
        assert "show" not in collection.stage_source(stage)
    outputs = collection({"raw": torch.rand(2, 4)}, "validation")
    assert list(outputs) == ["raw", "head/logits"]
    assert visualizer.calls == []
    assert "show" not in create_mermaid_dag_graph(collection)  # the graph drawing leaves it out (no data name)
    train = collection_with(Recording(), alive_stages=["train", "validation"])
    assert set(train.visualization_bricks("train")) == {"show"}


def test_alive_at_inference_or_export_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cannot be alive in \['export'\].*alive_stages=\['validation', 'test'\]"):
        BrickVisualization(Recording(), input_names=["raw", "logits"], alive_stages=["test", "export"])
    brick = BrickVisualization(Recording(), input_names=["raw", "logits"])
    with pytest.raises(ConfigError, match=r"cannot be alive in \['inference'\]"):
        brick.alive_stages = ["inference"]
    with pytest.raises(ConfigError, match="images_per_epoch of BrickVisualization"):
        BrickVisualization(Recording(), input_names=["raw"], images_per_epoch=-1)


def test_export_selects_the_model_without_the_visualisation() -> None:
    collection = collection_with(Recording())
    exported = collection.select(["head/logits"], "export")  # the graph export builds from the export plan
    assert [path for path, _ in exported.named_bricks()] == ["head/linear"]
    assert collection.output_names("export") == ["head/logits"]
    assert collection.input_names("export") == ["raw"]


def test_compiled_collection_runs_without_the_visualisation() -> None:
    visualizer = Recording()
    collection = collection_with(visualizer)
    compiled = torch.compile(collection, backend="eager", fullgraph=True)
    outputs = compiled({"raw": torch.rand(2, 4)}, "validation")
    assert list(outputs) == ["raw", "head/logits"]
    assert visualizer.calls == []


def test_visualize_draws_only_the_samples_asked_for_on_detached_cpu_values() -> None:
    visualizer = Recording()
    collection = collection_with(visualizer)
    outputs = collection({"raw": torch.rand(5, 4)}, "validation")
    assert outputs["head/logits"].requires_grad
    pictures = collection.visualize(outputs, "validation", max_images=2)
    assert tuple(pictures["show"].shape) == (2, 3, 4, 4)
    assert pictures["show"].dtype == torch.uint8
    (call,) = visualizer.calls
    assert call["raw"].shape[0] == 2
    assert not call["logits"].requires_grad
    assert call["logits"].device.type == "cpu"
    assert collection.visualize(outputs, "validation", max_images={"show": 0}) == {}  # a full budget draws nothing
    assert collection.visualize(outputs, "validation", max_images={}) == {}
    assert len(visualizer.calls) == 1
    assert collection.visualize(outputs, "train") == {}


def test_visualize_errors_name_the_brick_and_the_fix() -> None:
    collection = collection_with(Recording())
    outputs = collection({"raw": torch.rand(2, 4)}, "validation", return_inputs=False)
    with pytest.raises(MissingInputError, match=r"Visualisation brick 'show' reads \['raw'\].*return_inputs=True"):
        collection.visualize(outputs, "validation")

    class WrongShape(Visualizer):
        def forward(self, raw: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(raw), 4, 4)

    collection = collection_with(WrongShape())
    with pytest.raises(BrickOutputError, match=r"WrongShape must return .* \(N, 3, H, W\), but returned shape"):
        collection.visualize(collection({"raw": torch.rand(2, 4)}, "test"), "test")


def test_float_pictures_become_uint8() -> None:
    brick = BrickVisualization(lambda raw: torch.ones(len(raw), 3, 2, 2), input_names=["raw"])
    collection = BrickCollection({"show": brick})
    (pictures,) = collection.visualize({"raw": torch.rand(3, 4)}, "test").values()
    assert pictures.dtype == torch.uint8
    assert int(pictures.min()) == 255


# ------------------------------------------------------------------------------------------------ visualisers
def test_classification_captions_name_the_classes_and_frame_mistakes() -> None:
    visualizer = ClassificationVisualizer(class_names=["cat", "dog", "bird"])
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    targets = torch.tensor([0, 1, -100])
    assert visualizer.captions(probabilities, targets) == [
        ("predicted: cat (0.70)", "true: cat"),
        ("predicted: bird (0.80)", "true: dog"),
        ("predicted: dog (0.60)", "true: not labelled"),
    ]
    assert visualizer.captions(torch.tensor([2]), None) == [("predicted: bird", "true: not given")]
    images = torch.rand(3, 1, 8, 8)
    pictures = visualizer.draw(images, probabilities, targets)
    assert [picture.texts() for picture in pictures][1] == ["predicted: bird (0.80)", "true: dog"]
    for picture in pictures:  # the captions are inside the picture, below the image
        width, height = picture.size
        assert all(label.box[0] >= 0 and label.box[2] <= width and label.box[3] <= height for label in picture.labels)
    stacked = visualizer(images, probabilities, targets)
    assert stacked.dtype == torch.uint8
    assert stacked.shape[:2] == (3, 3)
    assert min(stacked.shape[2:]) >= 192
    frame = stacked[:, :, 3, stacked.shape[3] // 2]  # the top edge of the frame, above the image's middle
    assert frame[1].tolist() == list(WRONG)
    assert frame[0].tolist() != list(WRONG)


def test_segmentation_colours_the_classes_and_explains_them() -> None:
    visualizer = SegmentationVisualizer(num_classes=3, class_names=["ground", "ink", "shadow"], background_index=0)
    assert visualizer.legend() == ["ground (not coloured)", "ink", "shadow"]
    images = torch.zeros(2, 1, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, :4] = 1  # the top half is 'ink'
    targets = masks.clone()
    targets[1] = -100
    pictures = visualizer.draw(images, masks, targets)
    assert pictures[0].texts() == ["predicted", "true", "ground (not coloured)", "ink", "shadow"]
    assert pictures[1].texts()[:2] == ["predicted", "true: not annotated"]
    stacked = visualizer(images, masks, targets)
    assert stacked.dtype == torch.uint8
    assert stacked.shape[:2] == (2, 3)
    ink = torch.tensor(visualizer.colors[1], dtype=torch.float) * visualizer.alpha  # blended over a black image
    image_top = 6 + text_size("Hg", 16)[1]  # under the title; each input pixel is 24 x 24 (8 pixels made 192)
    top, bottom = stacked[0, :, image_top + 40, 6 + 96].float(), stacked[0, :, image_top + 150, 6 + 96].float()
    assert torch.allclose(top, ink, atol=2)
    assert bottom.tolist() == [0, 0, 0]


def test_detection_labels_and_boxes_land_where_expected() -> None:
    visualizer = DetectionVisualizer(class_names=["zero", "one", "two"], score_threshold=0.5, min_size=64)
    boxes = torch.tensor([[[4.0, 4.0, 12.0, 12.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]]] * 2)
    scores = torch.tensor([[0.9, 0.4, 0.0]] * 2)
    labels = torch.tensor([[2, 1, -1]] * 2)
    count = torch.tensor([2, 2])
    target_boxes = torch.tensor([[[4.0, 4.0, 12.0, 12.0], [0.0, 0.0, 0.0, 0.0]], [[float("nan")] * 4] * 2])
    target_labels = torch.tensor([[2, -100], [-100, -100]])
    assert visualizer.box_labels(boxes, scores, labels, count) == [["two 0.90"], ["two 0.90"]]  # below 0.5: not drawn
    assert visualizer.true_labels(target_boxes, target_labels) == [["two"], None]
    images = torch.zeros(2, 3, 16, 16)
    pictures = visualizer.draw(images, boxes, scores, labels, count, target_boxes, target_labels)
    assert pictures[0].texts() == ["predicted: 1 (score >= 0.50)", "two 0.90", "true: 1", "two"]
    assert pictures[1].texts() == ["predicted: 1 (score >= 0.50)", "two 0.90", "true: not annotated"]
    stacked = visualizer(images, boxes, scores, labels, count, target_boxes, target_labels)
    color = visualizer.colors[2]
    top, left = 6 + text_size("Hg", 14)[1] + 4, 6  # the predicted image's corner; each input pixel is 4 x 4
    assert same_color(stacked[0, :, top + 47, left + 32], color)  # the bottom edge of the box at y = 12 * 4
    assert same_color(stacked[0, :, top + 32, left + 17], color)  # its left edge at x = 4 * 4
    assert stacked[0, :, top + 42, left + 32].tolist() == [0, 0, 0]  # inside, below its label: the image
    assert stacked[0, :, top + 8, left + 8].tolist() == [0, 0, 0]  # the box scored 0.4 is not drawn
    true_left = 2 * 6 + 64
    assert same_color(stacked[0, :, top + 47, true_left + 32], color)  # the true box, at the same place
    assert stacked[1, :, top : top + 64, true_left : true_left + 64].amax() == 0  # not annotated: nothing drawn


def test_two_detections_of_one_box_show_both_labels_and_the_best_box_on_top() -> None:
    visualizer = DetectionVisualizer(class_names=["zero", "one", "two"], score_threshold=0.3, min_size=64)
    boxes = torch.tensor([[[1.0, 1.0, 15.0, 15.0], [1.0, 1.0, 15.0, 15.0]]])  # one digit, read two ways
    scores, labels, count = torch.tensor([[0.8, 0.4]]), torch.tensor([[2, 1]]), torch.tensor([2])
    picture = visualizer.draw(torch.zeros(1, 3, 16, 16), boxes, scores, labels, count)[0]
    best, second = (label for label in picture.labels if label.text in ("two 0.80", "one 0.40"))
    assert (best.text, second.text) == ("two 0.80", "one 0.40")
    assert not best.overlaps(second), "the second label moves below the first instead of hiding it"
    assert second.box[1] > best.box[1]
    stacked = visualizer(torch.zeros(1, 3, 16, 16), boxes, scores, labels, count)
    top, left = 6 + text_size("Hg", 14)[1] + 4, 6
    assert same_color(stacked[0, :, top + 59, left + 32], visualizer.colors[2]), "the best box's colour is on top"


def test_depth_has_a_colour_bar_with_its_scale() -> None:
    visualizer = DepthVisualizer(unit="m", min_depth=0.0, max_depth=10.0)
    target = torch.linspace(1, 9, 64).reshape(1, 8, 8)
    target[0, 0, 0] = float("nan")
    figure = visualizer.figure(target + 0.5, target)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[:2] == ["predicted", "true (grey: missing)"]
    bar = figure.axes[2]
    assert bar.get_ylabel() == "depth (m)"
    assert bar.get_ylim() == (0.0, 10.0)
    assert visualizer.scale(np.ones((2, 2)), None) == (0.0, 10.0)
    own = DepthVisualizer().scale(np.array([2.0, 5.0]), np.array([np.nan, 3.0, 4.0]))
    assert own == (3.0, 4.0)  # the true depth's range when it has one
    pictures = visualizer(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))
    assert pictures.dtype == torch.uint8
    assert pictures.shape[:2] == (2, 3)
    assert min(pictures.shape[2:]) >= 200
