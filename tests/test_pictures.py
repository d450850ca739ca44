"""Pictures for people: a shaded matrix, a titled confusion matrix, a captioned prediction grid and a drawing of the
brick graph. Each picture's texts are checked as drawn: complete (never cut off), inside the picture, apart."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import ClassificationHead, Preprocessor
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.pictures import (
    Picture,
    draw_brick_graph,
    draw_confusion_matrix,
    draw_prediction_grid,
    render_brick_graph,
    render_matrix,
    render_prediction_grid,
)

INPUT_COLOR = (34, 166, 153)
OUTPUT_COLOR = (242, 190, 34)
TRAINABLE_COLOR = (109, 89, 122)
LOSS_COLOR = (92, 103, 125)


def _has_color(image: torch.Tensor, rgb: tuple[int, int, int]) -> bool:
    pixels = (image * 255).round().to(torch.int64)
    target = torch.tensor(rgb).view(3, 1, 1)
    return bool((pixels == target).all(dim=0).any())


def _assert_readable(picture: Picture) -> None:
    """Every text lies inside the picture, and no two texts share a pixel."""
    width, height = picture.size
    for label in picture.labels:
        left, top, right, bottom = label.box
        assert min(left, top) >= 0, label
        assert right <= width, label
        assert bottom <= height, label
    for index, label in enumerate(picture.labels):
        for other in picture.labels[index + 1 :]:
            assert not label.overlaps(other), (label, other)


def _green(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image
    return (g > r + 0.2) & (g > b + 0.2)


def _red(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image
    return (r > g + 0.3) & (r > b + 0.3)


# ------------------------------------------------------------------------------------------------ matrix
@pytest.mark.parametrize("cell", [10, 48])
def test_render_matrix_shape_and_range(cell: int) -> None:
    image = render_matrix(torch.tensor([[1, 2, 3], [4, 5, 6]]), cell=cell)
    assert image.shape == (3, 2 * cell, 3 * cell)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0
    assert float(image.max()) <= 1


@pytest.mark.parametrize("cell", [10, 48])
def test_render_matrix_diagonal_cells_are_darker(cell: int) -> None:
    n = 4
    image = render_matrix(torch.diag(torch.tensor([5, 7, 3, 9])), cell=cell)
    brightness = image.mean(dim=0)
    means = torch.tensor(
        [
            [float(brightness[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].mean()) for c in range(n)]
            for r in range(n)
        ]
    )
    diagonal = means.diagonal()
    off_diagonal = means[~torch.eye(n, dtype=torch.bool)]
    assert float(diagonal.max()) < float(off_diagonal.min())
    assert float(off_diagonal.min()) > 0.95  # zero counts stay (nearly) white


def test_render_matrix_shades_by_row_share() -> None:
    # Row 0: 1 of 2 on the diagonal (half); row 1: 10 of 10 (all) -> row 1's diagonal cell is darker.
    image = render_matrix(torch.tensor([[1, 1], [0, 10]]), cell=10).mean(dim=0)
    half, full, empty = float(image[5, 5]), float(image[15, 15]), float(image[15, 5])
    assert full < half < empty


def test_render_matrix_of_negative_values_uses_min_max() -> None:
    image = render_matrix(torch.tensor([[-1.0, 0.0], [0.5, 1.0]]), cell=10).mean(dim=0)
    assert float(image[5, 5]) > float(image[5, 15]) > float(image[15, 5]) > float(image[15, 15])


# ------------------------------------------------------------------------------------------------ confusion matrix
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _counts(n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 5, (n, n), generator=generator) + torch.diag(
        torch.randint(100, 1000, (n,), generator=generator)
    )


@pytest.mark.parametrize("class_names", [None, CIFAR])
def test_a_confusion_matrix_has_its_title_axis_titles_classes_and_every_count(class_names: list[str] | None) -> None:
    counts = _counts(10)
    picture = draw_confusion_matrix(counts, title="validation/cifar/confusion, epoch 12", class_names=class_names)
    names = class_names or [str(index) for index in range(10)]
    texts = picture.texts()
    assert texts[:3] == ["validation/cifar/confusion, epoch 12", "predicted class", "true class"]
    assert texts[3:13] == names  # the columns
    assert texts[13:23] == names  # the rows
    assert texts[23:] == [str(int(value)) for value in counts.flatten()]  # row by row, none shortened
    _assert_readable(picture)
    # Names wider than a cell turn upright above the columns ("automobile" is taller than any line of text).
    _, top, _, bottom = picture.labels[3 + names.index(max(names, key=len))].box
    assert (bottom - top > 40) == (class_names is not None)


def test_confusion_matrix_cells_grow_to_fit_their_numbers() -> None:
    picture = draw_confusion_matrix(torch.tensor([[123456789, 2], [3, 987654321]]))
    _assert_readable(picture)
    assert "987654321" in picture.texts()


def test_confusion_matrix_needs_one_name_per_class() -> None:
    with pytest.raises(ConfigError, match=r"one class name per row and column of the 3x3 matrix, but got 2"):
        draw_confusion_matrix(torch.eye(3), class_names=["a", "b"])


# ------------------------------------------------------------------------------------------------ prediction grid
LEGEND = ["caption: predicted / true", "right", "wrong (boxed in red)"]


@pytest.mark.parametrize(("n", "channels", "columns", "scale"), [(3, 1, 2, 2), (8, 3, 8, 8), (9, 3, 4, 4)])
def test_render_prediction_grid_shape(n: int, channels: int, columns: int, scale: int) -> None:
    picture = draw_prediction_grid(torch.rand(n, channels, 8, 8), list(range(n)), list(range(n)), columns, scale)
    image = picture.tensor()
    rows = (n + columns - 1) // columns
    assert image.shape[0] == 3
    assert image.shape[1] > rows * 8 * scale
    assert image.shape[2] >= min(columns, n) * 8 * scale
    assert float(image.min()) >= 0
    assert float(image.max()) <= 1
    captions = [f"{index} / {index}" for index in range(n)]
    if scale == 2:  # 16-pixel images: "predicted /" over "true"
        captions = [line for index in range(n) for line in (f"{index} /", f"{index}")]
    assert picture.texts() == [*LEGEND, *captions]
    _assert_readable(picture)


def test_the_grid_legend_and_captions_say_predicted_over_true_and_mark_mistakes() -> None:
    picture = draw_prediction_grid(torch.rand(2, 1, 8, 8), [3, 5], [3, 1], columns=2, scale=8)
    assert picture.texts() == [*LEGEND, "3 / 3", "5 / 1"]
    image = picture.tensor()
    right, wrong = (picture.labels[len(LEGEND) + index].box for index in range(2))
    right_caption = image[:, right[1] : right[3], right[0] : right[2]]
    wrong_caption = image[:, wrong[1] : wrong[3], wrong[0] : wrong[2]]
    assert int(_green(right_caption).sum()) > 5
    assert int(_red(right_caption).sum()) == 0
    assert int(_red(wrong_caption).sum()) > 5
    assert int(_green(wrong_caption).sum()) == 0
    # The wrong image is boxed in red, the right one is not: look at the 64-pixel images above the captions.
    for caption, boxed in ((right, False), (wrong, True)):
        center = (caption[0] + caption[2]) // 2
        above = image[:, caption[1] - 8 * 8 - 8 : caption[1] - 2, center - 8 * 4 - 4 : center + 8 * 4 + 4]
        assert (int(_red(above).sum()) > 100) == boxed
    # The legend is coloured as the captions are.
    legend_right, legend_wrong = picture.labels[1].box, picture.labels[2].box
    assert int(_green(image[:, legend_right[1] : legend_right[3], legend_right[0] : legend_right[2]]).sum()) > 5
    assert int(_red(image[:, legend_wrong[1] : legend_wrong[3], legend_wrong[0] : legend_wrong[2]]).sum()) > 5


def test_grid_tiles_are_grey_for_single_channel_images_and_stretched_to_the_full_range() -> None:
    image = render_prediction_grid(torch.rand(1, 1, 8, 8), [0], [0], columns=1, scale=8)
    tile = image[:, image.shape[1] - 8 * 8 - 30 : image.shape[1] - 30, :]
    grey = tile[:, (tile[0] - tile[1]).abs() < 1e-6]
    assert grey.shape[1] > 0.9 * 64 * 64  # nearly every pixel of the tile has r == g == b
    assert float(image.min()) == 0.0
    assert float(image.max()) == 1.0


def test_grid_captions_with_class_names_are_complete() -> None:
    picture = draw_prediction_grid(torch.rand(3, 3, 8, 8), [1, 0, 9], [1, 9, 9], columns=3, scale=2, class_names=CIFAR)
    texts = picture.texts()[len(LEGEND) :]
    assert texts == ["automobile /", "automobile", "airplane /", "truck", "truck / truck"]
    _assert_readable(picture)


def test_render_prediction_grid_accepts_tensors() -> None:
    image = render_prediction_grid(torch.rand(2, 3, 4, 4), torch.tensor([0, 0]), torch.tensor([1, 1]), columns=2)
    assert image.shape[0] == 3
    assert int(_red(image).sum()) > 0


# ------------------------------------------------------------------------------------------------ brick graph
def _chain(n: int, with_loss: bool = False) -> BrickCollection:
    bricks: dict[str, object] = {
        "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x0"]),
    }
    for index in range(1, n):
        bricks[f"layer{index}"] = BrickTrainable(
            nn.Linear(4, 4), input_names=[f"x{index - 1}"], output_names=[f"x{index}"]
        )
    if with_loss:
        bricks["loss"] = BrickLoss(nn.MSELoss(), input_names=[f"x{n - 1}", "targets"], output_names=["loss_mse"])
    return BrickCollection(bricks)  # type: ignore[arg-type]


def _two_heads() -> BrickCollection:
    """The digits example's bricks: a preprocessor, a backbone, and two classification heads with their metrics."""
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(Preprocessor(mean=[0.5], std=[0.5]), ["raw"], ["normalized"]),
            "backbone": BrickTrainable(nn.Conv2d(1, 8, 3), ["normalized"], ["features"]),
            "digit": ClassificationHead(num_classes=10, in_channels=8, with_confusion_matrix=True),
            "parity": ClassificationHead(num_classes=2, in_channels=8, targets_name="parity", loss_weight=0.5),
        }
    )


@pytest.mark.parametrize("stage", [Stage.TRAIN, Stage.INFERENCE, None])
def test_every_brick_label_is_complete_and_no_labels_overlap(stage: Stage | None) -> None:
    collection = _two_heads()
    picture = draw_brick_graph(collection, stage)
    texts = picture.texts()
    nodes = collection.plan(stage).nodes if stage else collection.brick_nodes()
    for node in nodes:
        brick = dict(collection.named_bricks())[node.path]
        assert node.path in texts
        description = f"{type(brick).__name__}: {brick.describe_model()}"
        index = texts.index(node.path)
        assert " ".join(texts[index + 1 : index + 3]).startswith(description), (description, texts[index + 1 :])
    if stage is Stage.TRAIN:
        assert (
            "BrickMetricSingle: ['ConfusionMatrixMetrics']" in texts
        )  # was cut to "BrickMetricSingle: [ConfusionMatr"
        # Each name read by a brick is written once, beside the brick that produces it.
        for name in ("normalized", "features", "digit/logits", "digit/class_prediction", "parity/logits"):
            assert texts.count(name) == 1, name
        for name in ("raw", "targets", "parity"):  # inputs, in their own pills
            assert texts.count(name) == 1, name
    _assert_readable(picture)


def test_render_brick_graph_colors() -> None:
    image = render_brick_graph(_chain(3), Stage.INFERENCE)
    assert float(image.min()) >= 0
    assert float(image.max()) <= 1
    assert _has_color(image, INPUT_COLOR)
    assert _has_color(image, OUTPUT_COLOR)
    assert _has_color(image, TRAINABLE_COLOR)
    assert not _has_color(image, LOSS_COLOR)


def test_dead_brick_is_not_drawn() -> None:
    with_loss, without_loss = _chain(3, with_loss=True), _chain(3)
    inference = render_brick_graph(with_loss, Stage.INFERENCE)
    train = render_brick_graph(with_loss, Stage.TRAIN)
    # The loss is dead at inference: the picture is the one of the model without it.
    assert torch.equal(inference, render_brick_graph(without_loss, Stage.INFERENCE))
    assert train.shape != inference.shape or not torch.equal(train, inference)
    assert _has_color(train, LOSS_COLOR)
    assert not _has_color(inference, LOSS_COLOR)
    # Every brick alive somewhere (stage=None) includes the loss.
    assert _has_color(render_brick_graph(with_loss), LOSS_COLOR)


def test_wider_graph_gives_a_wider_image() -> None:
    small = render_brick_graph(_chain(2), "inference")
    large = render_brick_graph(_chain(5), "inference")
    assert large.shape[2] > small.shape[2]
    assert large.shape[1] == small.shape[1]


def test_parallel_branches_give_a_taller_image() -> None:
    chain = draw_brick_graph(_chain(2), "inference")
    branches = BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x0"]),
            "a": BrickTrainable(nn.Linear(4, 4), input_names=["x0"], output_names=["a"]),
            "b": BrickTrainable(nn.Linear(4, 4), input_names=["x0"], output_names=["b"]),
            "c": BrickTrainable(nn.Linear(4, 4), input_names=["x0"], output_names=["c"]),
        }
    )
    picture = draw_brick_graph(branches, "inference")
    assert picture.size[1] > 2.5 * chain.size[1] - 40
    _assert_readable(picture)


def test_graph_of_every_stage_is_laid_out_by_dependencies_not_definition_order() -> None:
    """stage=None draws every brick; a brick defined before its producer must still sit right of it."""
    producer_first = BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x"]),
            "head": BrickTrainable(nn.Linear(4, 4), input_names=["x"], output_names=["y"]),
        }
    )
    consumer_first = BrickCollection(
        {
            "head": BrickTrainable(nn.Linear(4, 4), input_names=["x"], output_names=["y"]),
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x"]),
        }
    )
    # With a stage, the execution plan orders the bricks: both draw the chain raw -> pre -> head -> y.
    assert torch.equal(render_brick_graph(consumer_first, "inference"), render_brick_graph(producer_first, "inference"))
    expected = draw_brick_graph(producer_first)
    drawn = draw_brick_graph(consumer_first)
    assert drawn.size == expected.size, "pre and head were not put in successive columns"
    assert torch.equal(drawn.tensor(), expected.tensor())
    boxes = {label.text: label.box for label in drawn.labels}
    assert boxes["raw"][0] < boxes["pre"][0] < boxes["head"][0] < boxes["y"][0]  # left to right
