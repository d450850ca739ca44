"""Pictures for people: a shaded matrix, a captioned prediction grid and a drawing of the brick graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.pictures import render_brick_graph, render_matrix, render_prediction_grid

INPUT_COLOR = (34, 166, 153)
OUTPUT_COLOR = (242, 190, 34)
TRAINABLE_COLOR = (109, 89, 122)
LOSS_COLOR = (92, 103, 125)


def _has_color(image: torch.Tensor, rgb: tuple[int, int, int]) -> bool:
    pixels = (image * 255).round().to(torch.int64)
    target = torch.tensor(rgb).view(3, 1, 1)
    return bool((pixels == target).all(dim=0).any())


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


# ------------------------------------------------------------------------------------------------ prediction grid
@pytest.mark.parametrize(
    ("n", "channels", "columns", "scale", "expected"),
    [
        (3, 1, 2, 2, (3, 2 * (16 + 14), 2 * 16)),
        (8, 3, 8, 8, (3, 64 + 14, 8 * 64)),
        (9, 3, 4, 4, (3, 3 * (32 + 14), 4 * 32)),
    ],
)
def test_render_prediction_grid_shape(
    n: int, channels: int, columns: int, scale: int, expected: tuple[int, int, int]
) -> None:
    image = render_prediction_grid(
        torch.rand(n, channels, 8, 8), list(range(n)), list(range(n)), columns=columns, scale=scale
    )
    assert image.shape == expected
    assert float(image.min()) >= 0
    assert float(image.max()) <= 1


def test_render_prediction_grid_captions_right_green_and_wrong_red() -> None:
    scale, size, caption = 8, 8, 14
    images = torch.rand(2, 1, size, size)
    image = render_prediction_grid(images, [3, 5], [3, 1], columns=2, scale=scale)
    tile = size * scale
    right = image[:, tile : tile + caption, :tile]
    wrong = image[:, tile : tile + caption, tile : 2 * tile]
    assert int(_green(right).sum()) > 5
    assert int(_red(right).sum()) == 0
    assert int(_red(wrong).sum()) > 5
    assert int(_green(wrong).sum()) == 0
    # The tiles themselves are grey (single-channel images), stretched to the full range.
    tiles = image[:, :tile, :]
    assert torch.allclose(tiles[0], tiles[1])
    assert torch.allclose(tiles[1], tiles[2])
    assert float(tiles[:, :, :tile].min()) == 0.0
    assert float(tiles[:, :, :tile].max()) == 1.0


def test_render_prediction_grid_accepts_tensors() -> None:
    image = render_prediction_grid(torch.rand(2, 3, 4, 4), torch.tensor([0, 0]), torch.tensor([1, 1]), columns=2)
    assert image.shape == (3, 4 * 8 + 14, 2 * 4 * 8)
    captions = image[:, 4 * 8 :, :]  # below the (colourful) RGB tiles
    assert int(_red(captions).sum()) > 0
    assert int(_green(captions).sum()) == 0


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


def _expected_width(columns: int) -> int:
    return 2 * 20 + columns * 220 + (columns - 1) * 60


def test_render_brick_graph_shape_and_colors() -> None:
    image = render_brick_graph(_chain(3), Stage.INFERENCE)
    # raw -> pre -> layer1 -> layer2 -> x2: five columns, one row.
    assert image.shape == (3, 2 * 20 + 44, _expected_width(5))
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
    assert large.shape[2] - small.shape[2] == 3 * (220 + 60)
    assert large.shape[1] == small.shape[1]


def test_parallel_branches_give_a_taller_image() -> None:
    chain = render_brick_graph(_chain(2), "inference")
    branches = BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x0"]),
            "a": BrickTrainable(nn.Linear(4, 4), input_names=["x0"], output_names=["a"]),
            "b": BrickTrainable(nn.Linear(4, 4), input_names=["x0"], output_names=["b"]),
            "c": BrickTrainable(nn.Linear(4, 4), input_names=["x0"], output_names=["c"]),
        }
    )
    picture = render_brick_graph(branches, "inference")
    assert picture.shape[2] == chain.shape[2]
    assert picture.shape[1] == 2 * 20 + 3 * (44 + 16) - 16


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
    expected = render_brick_graph(producer_first)
    assert expected.shape == (3, 2 * 20 + 44, _expected_width(4))
    drawn = render_brick_graph(consumer_first)
    assert drawn.shape == expected.shape, "pre and head were not put in successive columns"
    assert torch.equal(drawn, expected)
