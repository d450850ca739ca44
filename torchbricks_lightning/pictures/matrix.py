"""Matrices as pictures: a shaded grid of numbers, and a confusion matrix with its title, axis titles and classes.

Example:
    >>> import torch
    >>> figure = draw_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), title="validation/head/confusion, epoch 2",
    ...                                class_names=["cat", "dog"])
    >>> axes = figure.axes[0]
    >>> axes.get_title(), axes.get_xlabel(), axes.get_ylabel()
    ('validation/head/confusion, epoch 2', 'predicted class', 'true class')
    >>> [label.get_text() for label in axes.get_yticklabels()], [text.get_text() for text in axes.texts]
    (['cat', 'dog'], ['3', '1', '0', '4'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.pictures.figures import FONT_SIZE, figure_to_tensor, new_figure, text_size

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["draw_confusion_matrix", "render_confusion_matrix", "render_matrix"]

_LOW, _HIGH = np.array([1.0, 1.0, 1.0]), np.array([8, 48, 107]) / 255  # white to dark blue
_MARGIN = 10.0


def render_matrix(matrix: torch.Tensor, cell: int = 48) -> torch.Tensor:
    """Draw a 2-D matrix as a grid of shaded, numbered cells of ``cell`` pixels, without titles.

    Non-negative matrices are shaded by row share (a confusion matrix's recall per class), others from their
    minimum (white) to their maximum. See :func:`draw_confusion_matrix` for a picture with titles and classes.

    Example:
        >>> import torch
        >>> tuple(render_matrix(torch.tensor([[3, 1], [0, 4]]), cell=10).shape)
        (3, 20, 20)
    """
    values = _as_matrix(matrix)
    rows, columns = values.shape
    figure = new_figure(columns * cell, rows * cell)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    _draw_cells(axes, values, numbers=cell >= 16, size=min(FONT_SIZE, cell * 0.22))
    return figure_to_tensor(figure)


def draw_confusion_matrix(
    matrix: torch.Tensor,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
    axis_titles: tuple[str, str] = ("true class", "predicted class"),
) -> Figure:
    """Draw a confusion matrix: rows are true classes, columns predicted ones, each row shaded by its share.

    The figure has the ``title`` on top, the axis titles, each row and column named by ``class_names`` (by the
    class index when None) and each cell's count. Cells grow to fit their numbers, column names turn upright when
    they are wider than a cell, and the figure is made as large as its texts, so no text is cut off.

    Args:
        matrix: a ``(C, C)`` matrix of counts (or any 2-D matrix: rows and columns are then named by index).
        title: the text above the matrix, e.g. the metric's key and the epoch.
        class_names: one name per row (and column).
        axis_titles: the titles of the rows and of the columns.

    Raises:
        ConfigError: ``class_names`` does not have one name per row and column.
    """
    values = _as_matrix(matrix)
    rows, columns = values.shape
    row_names, column_names = _names(rows, columns, class_names)
    integer = bool(torch.all(values == values.round()))
    widest_number = max(text_size(_number(float(value), integer))[0] for value in values.flatten().tolist())
    cell = max(40.0, widest_number + 12)
    line = text_size("Hg")[1]
    widest_column = max(text_size(name)[0] for name in column_names)
    upright = widest_column > cell - 6
    left = _MARGIN + line + 8 + max(text_size(name)[0] for name in row_names) + 8
    bottom = _MARGIN + line + 8 + (widest_column if upright else line) + 8
    top = _MARGIN + (line + 10 if title else 0.0)
    grid_width, grid_height = columns * cell, rows * cell
    half_title = text_size(title or "")[0] / 2 + _MARGIN
    left = max(left, half_title - grid_width / 2)  # a title wider than the grid stays inside the picture
    width = max(left + grid_width + _MARGIN, left + grid_width / 2 + half_title)
    height = top + grid_height + bottom
    figure = new_figure(width, height)
    axes = figure.add_axes((left / width, bottom / height, grid_width / width, grid_height / height))
    _draw_cells(axes, values, numbers=True, size=FONT_SIZE)
    axes.set_xticks(range(columns), column_names, rotation=90 if upright else 0, fontsize=FONT_SIZE)
    axes.set_yticks(range(rows), row_names, fontsize=FONT_SIZE)
    axes.tick_params(length=0)
    axes.set_xlabel(axis_titles[1], fontsize=FONT_SIZE, color="#3c3c3c")
    axes.set_ylabel(axis_titles[0], fontsize=FONT_SIZE, color="#3c3c3c")
    if title:
        axes.set_title(title, fontsize=FONT_SIZE)
    return figure


def render_confusion_matrix(
    matrix: torch.Tensor,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
    axis_titles: tuple[str, str] = ("true class", "predicted class"),
) -> torch.Tensor:
    """:func:`draw_confusion_matrix` as a ``float32`` image tensor ``(3, H, W)`` in ``[0, 1]``.

    Example:
        >>> import torch
        >>> render_confusion_matrix(torch.eye(3), title="validation/head/confusion, epoch 0").shape[0]
        3
    """
    return figure_to_tensor(draw_confusion_matrix(matrix, title, class_names, axis_titles))


def _as_matrix(matrix: torch.Tensor) -> torch.Tensor:
    values = matrix.detach().double().cpu()  # counts above 2**24 stay exact
    if values.ndim != 2:
        values = values.reshape(-1, values.shape[-1])
    return values


def _names(rows: int, columns: int, class_names: Sequence[str] | None) -> tuple[list[str], list[str]]:
    if class_names is None:
        return [str(index) for index in range(rows)], [str(index) for index in range(columns)]
    names = [str(name) for name in class_names]
    if len(names) != rows or rows != columns:
        raise ConfigError(
            f"Expected one class name per row and column of the {rows}x{columns} matrix, but got {len(names)}: {names}."
        )
    return names, names


def _number(value: float, integer: bool) -> str:
    return f"{int(value)}" if integer else f"{value:.2f}"


def _draw_cells(axes: Axes, values: torch.Tensor, numbers: bool, size: float) -> None:
    """The cells as an image (one data unit per cell, row 0 on top) and, with ``numbers``, each cell's value."""
    rows, columns = values.shape
    if bool((values >= 0).all()):
        shade = values / values.sum(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        shade = (values - values.min()) / (values.max() - values.min()).clamp_min(1e-12)
    shares = shade.numpy()
    colours = _LOW + (_HIGH - _LOW) * shares[..., None]
    axes.imshow(colours, interpolation="nearest", extent=(-0.5, columns - 0.5, rows - 0.5, -0.5), aspect="auto")
    if not numbers:
        return
    integer = bool(torch.all(values == values.round()))
    for r in range(rows):
        for c in range(columns):
            color = "white" if shares[r, c] > 0.5 else "black"
            text = _number(float(values[r, c]), integer)
            axes.text(c, r, text, ha="center", va="center", color=color, fontsize=size)
