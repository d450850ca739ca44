"""Pictures for people, drawn with matplotlib: a shaded matrix, a titled confusion matrix, a captioned prediction
grid, line charts and the brick graph. Texts are read back from the figures (titles, axis titles, tick labels,
legends) and checked complete, inside the picture and apart; the graph's geometry is checked: no edge runs through
a box it does not start or end at, and no label lies on a box or a line."""

from __future__ import annotations

import sys

import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import ClassificationHead, Preprocessor
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.pictures import (
    GraphLayout,
    draw_brick_graph,
    draw_confusion_matrix,
    draw_line_chart,
    draw_prediction_grid,
    layout_brick_graph,
    render_brick_graph,
    render_line_chart,
    render_matrix,
    render_prediction_grid,
)
from torchbricks_lightning.pictures.graph.drawing import BRICK_COLORS, INPUT_COLOR, OUTPUT_COLOR
from torchbricks_lightning.pictures.grid import RIGHT, WRONG

Rect = tuple[float, float, float, float]


def _has_color(image: torch.Tensor, color: str) -> bool:
    pixels = (image * 255).round().to(torch.int64)
    target = torch.tensor([round(v * 255) for v in to_rgb(color)]).view(3, 1, 1)
    return bool((pixels == target).all(dim=0).any())


def _texts(figure: Figure) -> list[tuple[str, Rect]]:
    """Every drawn, non-empty text of the figure with its pixel box (y from the top)."""
    figure.canvas.draw()  # type: ignore[attr-defined]  # places the axis titles and ticks
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    height = figure.bbox.height
    hidden = set()  # tick labels of ticks outside the axes' limits are kept by matplotlib, not drawn
    for axes in figure.axes:
        if not axes.axison:  # an axes drawn without its axes (the brick graph): no tick label is drawn
            hidden |= {id(t) for t in [*axes.get_xticklabels(), *axes.get_yticklabels()]}
            continue
        (x_low, x_high), (y_low, y_high) = sorted(axes.get_xlim()), sorted(axes.get_ylim())
        hidden |= {id(t) for t in axes.get_xticklabels() if not x_low <= t.get_position()[0] <= x_high}
        hidden |= {id(t) for t in axes.get_yticklabels() if not y_low <= t.get_position()[1] <= y_high}
    found = []
    for artist in figure.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if not artist.get_visible() or not artist.get_text() or id(artist) in hidden:
            continue
        hidden.add(id(artist))  # findobj may meet an artist twice
        box = artist.get_window_extent(renderer)
        found.append((artist.get_text(), (box.x0, height - box.y1, box.x1, height - box.y0)))
    return list(dict.fromkeys(found))  # a legend holds its texts twice (as its texts and inside its boxes)


def _overlap(a: Rect, b: Rect, slack: float = 0.5) -> bool:
    return a[0] + slack < b[2] and b[0] + slack < a[2] and a[1] + slack < b[3] and b[1] + slack < a[3]


def _assert_readable(figure: Figure) -> None:
    """Every text lies inside the picture, and no two texts share a pixel."""
    texts = _texts(figure)
    width, height = figure.bbox.width, figure.bbox.height
    for text, (left, top, right, bottom) in texts:
        assert min(left, top) >= 0, (text, (left, top, right, bottom))
        assert right <= width, (text, right, width)
        assert bottom <= height, (text, bottom, height)
    for index, (text, box) in enumerate(texts):
        for other, other_box in texts[index + 1 :]:
            assert not _overlap(box, other_box), (text, other)


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


@pytest.mark.parametrize("class_names", [None, CIFAR], ids=["indices", "names"])
def test_a_confusion_matrix_has_its_title_axis_titles_classes_and_every_count(class_names: list[str] | None) -> None:
    counts = _counts(10)
    figure = draw_confusion_matrix(counts, title="validation/cifar/confusion, epoch 12", class_names=class_names)
    names = class_names or [str(index) for index in range(10)]
    (axes,) = figure.axes
    assert axes.get_title() == "validation/cifar/confusion, epoch 12"
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted class", "true class")
    assert [label.get_text() for label in axes.get_xticklabels()] == names  # the columns
    assert [label.get_text() for label in axes.get_yticklabels()] == names  # the rows
    assert [text.get_text() for text in axes.texts] == [str(int(value)) for value in counts.flatten()]
    _assert_readable(figure)
    # Names wider than a cell turn upright under the columns ("automobile" is wider than a 40-pixel cell).
    assert {label.get_rotation() for label in axes.get_xticklabels()} == ({90.0} if class_names else {0.0})


def test_confusion_matrix_cells_grow_to_fit_their_numbers() -> None:
    figure = draw_confusion_matrix(torch.tensor([[123456789, 2], [3, 987654321]]))
    _assert_readable(figure)
    assert "987654321" in [text.get_text() for text in figure.axes[0].texts]


def test_a_title_wider_than_the_matrix_stays_inside_the_picture() -> None:
    figure = draw_confusion_matrix(torch.eye(2), title="validation/a_rather_long_task_name/confusion, epoch 123")
    _assert_readable(figure)


def test_confusion_matrix_needs_one_name_per_class() -> None:
    with pytest.raises(ConfigError, match=r"one class name per row and column of the 3x3 matrix, but got 2"):
        draw_confusion_matrix(torch.eye(3), class_names=["a", "b"])


# ------------------------------------------------------------------------------------------------ prediction grid
LEGEND = ["caption: predicted / true", "right", "wrong (boxed in red)"]


def _captions(figure: Figure) -> list[str]:
    return [axes.get_xlabel() for axes in figure.axes]


@pytest.mark.parametrize(("n", "channels", "columns", "scale"), [(3, 1, 2, 2), (9, 3, 4, 4)], ids=["small", "big"])
def test_render_prediction_grid_shape(n: int, channels: int, columns: int, scale: int) -> None:
    figure = draw_prediction_grid(torch.rand(n, channels, 8, 8), list(range(n)), list(range(n)), columns, scale)
    image = render_prediction_grid(torch.rand(n, channels, 8, 8), list(range(n)), list(range(n)), columns, scale)
    rows = (n + columns - 1) // columns
    assert image.shape[0] == 3
    assert image.shape[1] > rows * 8 * scale
    assert image.shape[2] >= min(columns, n) * 8 * scale
    assert float(image.min()) >= 0
    assert float(image.max()) <= 1
    assert [text.get_text() for text in figure.texts] == LEGEND
    # 16-pixel images: "predicted /" over "true"; 32-pixel ones have room for one line.
    assert _captions(figure) == [f"{i} /\n{i}" if scale == 2 else f"{i} / {i}" for i in range(n)]
    _assert_readable(figure)


def test_the_grid_legend_and_captions_say_predicted_over_true_and_mark_mistakes() -> None:
    figure = draw_prediction_grid(torch.rand(2, 1, 8, 8), [3, 5], [3, 1], columns=2, scale=8)
    assert [text.get_text() for text in figure.texts] == LEGEND
    assert [text.get_color() for text in figure.texts] == ["black", RIGHT, WRONG]
    right, wrong = figure.axes
    assert (right.get_xlabel(), wrong.get_xlabel()) == ("3 / 3", "5 / 1")
    assert (right.xaxis.label.get_color(), wrong.xaxis.label.get_color()) == (RIGHT, WRONG)
    # The wrong image is boxed in red, the right one is not.
    assert not any(spine.get_visible() for spine in right.spines.values())
    assert all(spine.get_visible() and spine.get_edgecolor()[:3] == to_rgb(WRONG) for spine in wrong.spines.values())
    image = render_prediction_grid(torch.rand(2, 1, 8, 8), [3, 5], [3, 1], columns=2, scale=8)
    red = (image[0] > image[1] + 0.3) & (image[0] > image[2] + 0.3)
    half, legend = int(wrong.get_position().x0 * image.shape[2]) - 4, 24
    assert int(red[legend:, half:].sum()) > 4 * 64 * 2  # a 3-pixel red box around the second image and its caption
    assert int(red[legend:, :half].sum()) == 0  # none around the first (its caption is green)


def test_grid_tiles_are_grey_for_single_channel_images_and_stretched_to_the_full_range() -> None:
    image = render_prediction_grid(torch.rand(1, 1, 8, 8), [0], [0], columns=1, scale=8)
    grey = ((image[0] - image[1]).abs() < 1e-6) & ((image[1] - image[2]).abs() < 1e-6)
    assert int(grey.sum()) > 0.9 * 64 * 64
    assert float(image.min()) == 0.0
    assert float(image.max()) == 1.0


def test_grid_captions_with_class_names_are_complete() -> None:
    figure = draw_prediction_grid(torch.rand(3, 3, 8, 8), [1, 0, 9], [1, 9, 9], columns=3, scale=2, class_names=CIFAR)
    assert _captions(figure) == ["automobile /\nautomobile", "airplane /\ntruck", "truck / truck"]
    _assert_readable(figure)


# ------------------------------------------------------------------------------------------------ line charts
def test_a_line_chart_names_its_axes_puts_nice_ticks_and_shows_every_line() -> None:
    """The task-weights chart had no y-axis title, ticks at 0.465, 0.556, ... and at steps 4, 74, 144, and one line
    hidden under another."""
    steps = range(4, 284, 5)
    curves = {
        "digit": [(step, 0.465 + step / 1000) for step in steps],
        "parity": [(step, 0.5 + step / 2000) for step in steps],
        "foreground": [(step, 0.5 + step / 2000 + 1e-4) for step in steps],  # on parity's line
    }
    figure = draw_line_chart(curves, "Task weights", y_label="weight of the loss")
    (axes,) = figure.axes
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == (
        "Task weights",
        "training step",
        "weight of the loss",
    )
    figure.canvas.draw()  # type: ignore[attr-defined]
    x_ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
    y_ticks = [tick for tick in axes.get_yticks() if axes.get_ylim()[0] <= tick <= axes.get_ylim()[1]]
    assert len(x_ticks) >= 3
    assert all(float(tick).is_integer() for tick in x_ticks)
    assert all(round(tick / 20) * 20 == tick for tick in x_ticks), x_ticks  # 0, 50, 100, ... or 0, 40, 80, ...
    step = y_ticks[1] - y_ticks[0]
    assert len(y_ticks) >= 3
    assert any(abs(step - nice) < 1e-9 for nice in (0.01, 0.02, 0.025, 0.05, 0.1)), y_ticks
    lines = axes.get_lines()
    assert [text.get_text() for text in figure.legends[0].get_texts()] == list(curves)
    styles = [(line.get_color(), str(line.get_linestyle()), line.get_marker()) for line in lines]
    assert len({style[1] for style in styles}) == 3, styles
    assert len({style[2] for style in styles}) == 3, styles
    _assert_readable(figure)


def test_a_chart_of_nothing_says_so() -> None:
    figure = draw_line_chart({}, "Task weights")
    assert "nothing logged" in [text for text, _ in _texts(figure)]
    assert tuple(render_line_chart({"a": []}, "t", size=(200, 100)).shape) == (3, 100, 200)


def test_figures_are_not_left_open_in_pyplot() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    render_line_chart({"a": [(0, 1.0), (1, 2.0)]}, "t", size=(200, 100))
    render_matrix(torch.eye(2), cell=10)
    draw_confusion_matrix(torch.eye(2))
    assert plt.get_fignums() == before


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


def _crosses(start: tuple[float, float], end: tuple[float, float], box: Rect, inset: float = 1.0) -> bool:
    """Whether the segment enters the rectangle shrunk by ``inset`` (Liang-Barsky clipping)."""
    left, top, right, bottom = box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset
    (x0, y0), (x1, y1) = start, end
    low, high = 0.0, 1.0
    for p, q in ((x0 - x1, x0 - left), (x1 - x0, right - x0), (y0 - y1, y0 - top), (y1 - y0, bottom - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            low = max(low, t)
        else:
            high = min(high, t)
        if low > high:
            return False
    return True


def _assert_clean(layout: GraphLayout) -> None:
    """No edge runs through a box it does not start or end at, nor through any label; labels touch no box and no
    other label; everything lies inside the picture."""
    boxes = {key: (box.left, box.top, box.right, box.bottom) for key, box in layout.boxes.items()}
    labels = [label.box for label in layout.labels]
    for rect in [*boxes.values(), *labels]:
        assert min(rect[0], rect[1]) >= 0, rect
        assert rect[2] <= layout.width, rect
        assert rect[3] <= layout.height, rect
    for edge in layout.edges:
        for start, end in zip(edge.points, edge.points[1:], strict=False):
            for key, rect in boxes.items():
                if key not in (edge.source, edge.target):
                    assert not _crosses(start, end, rect), (edge.name, edge.source, edge.target, "through", key)
            for label in layout.labels:
                assert not _crosses(start, end, label.box), (edge.name, edge.target, "through label", label.text)
        assert edge.points[0][0] == layout.boxes[edge.source].right  # leaves the source's right side
        assert edge.points[-1][0] == layout.boxes[edge.target].left  # arrives at the target's left side
    rects = list(boxes.values())
    for index, label in enumerate(labels):
        assert not any(_overlap(label, rect, slack=0) for rect in rects), label
        assert not any(_overlap(label, other, slack=0) for other in labels[index + 1 :]), label
    for index, rect in enumerate(rects):
        assert not any(_overlap(rect, other, slack=0) for other in rects[index + 1 :])


def test_the_digits_graph_keeps_edges_out_of_boxes_and_labels_off_lines() -> None:
    """The demo's three-task graph: the `targets` edge seemed to feed `foreground/classify`, edges ran behind
    boxes and labels sat on lines."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "examples"))
    try:
        from digits_multitask import build_bricks
    finally:
        sys.path.pop(0)
    collection = build_bricks()
    layout = layout_brick_graph(collection, Stage.TRAIN)
    _assert_clean(layout)
    targets = {edge.target[1] for edge in layout.edges if edge.name == "targets"}
    assert targets == {"digit/loss", "digit/metrics"}
    # An input sits just left of its first reader, an output nobody reads just right of its producer.
    assert layout.boxes[("input", "targets")].column == layout.boxes[("brick", "digit/loss")].column - 1
    assert layout.boxes[("output", "digit/loss_ce")].column == layout.boxes[("brick", "digit/loss")].column + 1


@pytest.mark.parametrize("stage", [Stage.TRAIN, Stage.INFERENCE, None], ids=["train", "inference", "all"])
def test_every_brick_label_is_complete_and_no_labels_overlap(stage: Stage | None) -> None:
    collection = _two_heads()
    figure = draw_brick_graph(collection, stage)
    texts = [text.get_text() for text in figure.axes[0].texts]
    nodes = collection.plan(stage).nodes if stage else collection.brick_nodes()
    for node in nodes:
        brick = dict(collection.named_bricks())[node.path]
        assert node.path in texts
        description = f"{type(brick).__name__}: {brick.describe_model()}"
        index = texts.index(node.path)
        assert " ".join(texts[index + 1 : index + 3]).startswith(description), (description, texts[index + 1 :])
    if stage is Stage.TRAIN:
        index = texts.index("digit/metrics")  # was cut to "BrickMetricSingle: [ConfusionMatr"
        assert " ".join(texts[index + 1 : index + 3]) == "BrickMetricSingle: ['ConfusionMatrixMetrics']"
        # Each name read by a brick is written once, beside the brick that produces it.
        for name in ("normalized", "features", "digit/logits", "digit/class_prediction", "parity/logits"):
            assert texts.count(name) == 1, name
        for name in ("raw", "targets", "parity"):  # inputs, in their own pills
            assert texts.count(name) == 1, name
    _assert_readable(figure)
    _assert_clean(layout_brick_graph(collection, stage))


def test_render_brick_graph_colors() -> None:
    image = render_brick_graph(_chain(3), Stage.INFERENCE)
    assert float(image.min()) >= 0
    assert float(image.max()) <= 1
    assert _has_color(image, INPUT_COLOR)
    assert _has_color(image, OUTPUT_COLOR)
    assert _has_color(image, BRICK_COLORS["BrickTrainable"])
    assert not _has_color(image, BRICK_COLORS["BrickLoss"])


def test_dead_brick_is_not_drawn() -> None:
    with_loss, without_loss = _chain(3, with_loss=True), _chain(3)
    inference = render_brick_graph(with_loss, Stage.INFERENCE)
    train = render_brick_graph(with_loss, Stage.TRAIN)
    # The loss is dead at inference: the picture is the one of the model without it.
    assert torch.equal(inference, render_brick_graph(without_loss, Stage.INFERENCE))
    assert _has_color(train, BRICK_COLORS["BrickLoss"])
    assert not _has_color(inference, BRICK_COLORS["BrickLoss"])
    # Every brick alive somewhere (stage=None) includes the loss.
    assert _has_color(render_brick_graph(with_loss), BRICK_COLORS["BrickLoss"])


def test_wider_graph_gives_a_wider_layout() -> None:
    small = layout_brick_graph(_chain(2), "inference")
    large = layout_brick_graph(_chain(5), "inference")
    assert large.width > small.width
    assert large.height == small.height


def test_parallel_branches_give_a_taller_layout_with_every_edge_clear() -> None:
    chain = layout_brick_graph(_chain(2), "inference")
    branches = BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x0"]),
            "a": BrickTrainable(nn.Linear(4, 4), input_names=["x0"], output_names=["a"]),
            "b": BrickTrainable(nn.Linear(4, 4), input_names=["x0"], output_names=["b"]),
            "c": BrickTrainable(nn.Linear(4, 4), input_names=["x0", "a"], output_names=["c"]),  # a long edge, x0
        }
    )
    layout = layout_brick_graph(branches, "inference")
    assert layout.height > 2 * chain.height - 40
    _assert_clean(layout)


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
    assert torch.equal(render_brick_graph(consumer_first, "inference"), render_brick_graph(producer_first, "inference"))
    boxes = layout_brick_graph(consumer_first).boxes
    columns = [boxes[key].column for key in (("input", "raw"), ("brick", "pre"), ("brick", "head"), ("output", "y"))]
    assert columns == [0, 1, 2, 3]  # left to right
