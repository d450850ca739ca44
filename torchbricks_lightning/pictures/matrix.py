"""Matrices as pictures: a shaded grid of numbers, and a confusion matrix with its title, axis titles and classes.

Example:
    >>> import torch
    >>> picture = draw_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), title="validation/head/confusion, epoch 2",
    ...                                 class_names=["cat", "dog"])
    >>> picture.texts()[:6]
    ['validation/head/confusion, epoch 2', 'predicted class', 'true class', 'cat', 'dog', 'cat']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.pictures.canvas import Canvas, Picture, text_size

__all__ = ["draw_confusion_matrix", "render_confusion_matrix", "render_matrix"]

_LOW, _HIGH = np.array([255, 255, 255]), np.array([8, 48, 107])
_MARGIN = 10


def render_matrix(matrix: torch.Tensor, cell: int = 48) -> torch.Tensor:
    """Draw a 2-D matrix as a grid of shaded, numbered cells, without titles (see :func:`render_confusion_matrix`).

    Non-negative matrices are shaded by row share (a confusion matrix's recall per class).

    Example:
        >>> import torch
        >>> tuple(render_matrix(torch.tensor([[3, 1], [0, 4]]), cell=10).shape)
        (3, 20, 20)
    """
    values = _as_matrix(matrix)
    rows, columns = values.shape
    canvas = Canvas(columns * cell, rows * cell)
    _draw_cells(canvas, values, (0, 0), cell, numbers=cell >= 16, size=10)
    return canvas.picture().tensor()


def draw_confusion_matrix(
    matrix: torch.Tensor,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
    axis_titles: tuple[str, str] = ("true class", "predicted class"),
) -> Picture:
    """Draw a confusion matrix: rows are true classes, columns predicted ones, each row shaded by its share.

    The picture has the ``title`` on top, the axis titles, and each row and column named by ``class_names`` (by the
    class index when None). Cells grow to fit their numbers and column names turn upright when they are wider than a
    cell, so no text is cut off.

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
    cell = max(40, widest_number + 12)
    line = text_size("Hg")[1]
    upright = max(text_size(name)[0] for name in column_names) > cell - 6
    header = max(text_size(name)[0] for name in column_names) + 8 if upright else line + 4
    row_header = max(text_size(name)[0] for name in row_names) + 10
    title_height = line + 8 if title else 0
    grid_left = _MARGIN + line + 6 + row_header
    grid_top = _MARGIN + title_height + line + 6 + header
    width = max(grid_left + columns * cell + _MARGIN, text_size(title or "")[0] + 2 * _MARGIN)
    height = grid_top + rows * cell + _MARGIN
    canvas = Canvas(width, height)
    if title:
        canvas.text((width // 2, _MARGIN), title, anchor="mt")
    grid_width, grid_height = columns * cell, rows * cell
    canvas.text((grid_left + grid_width // 2, _MARGIN + title_height), axis_titles[1], fill=(60, 60, 60), anchor="mt")
    canvas.vertical_text((_MARGIN + line // 2, grid_top + grid_height // 2), axis_titles[0], fill=(60, 60, 60))
    for index, name in enumerate(column_names):
        center = grid_left + index * cell + cell // 2
        if upright:
            canvas.vertical_text((center, grid_top - 4 - header // 2), name)
        else:
            canvas.text((center, grid_top - 4), name, anchor="md")
    for index, name in enumerate(row_names):
        canvas.text((grid_left - 6, grid_top + index * cell + cell // 2), name, anchor="rm")
    _draw_cells(canvas, values, (grid_left, grid_top), cell, numbers=True, size=None)
    return canvas.picture()


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
    return draw_confusion_matrix(matrix, title, class_names, axis_titles).tensor()


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


def _draw_cells(
    canvas: Canvas, values: torch.Tensor, origin: tuple[int, int], cell: int, numbers: bool, size: int | None
) -> None:
    rows, columns = values.shape
    if bool((values >= 0).all()):
        shade = values / values.sum(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        shade = (values - values.min()) / (values.max() - values.min()).clamp_min(1e-12)
    integer = bool(torch.all(values == values.round()))
    left, top = origin
    for r in range(rows):
        for c in range(columns):
            share = float(shade[r, c])
            fill = tuple(int(v) for v in _LOW + (_HIGH - _LOW) * share)
            x, y = left + c * cell, top + r * cell
            canvas.shape("rectangle", [x, y, x + cell - 1, y + cell - 1], fill=fill)
            if not numbers:
                continue
            text = _number(float(values[r, c]), integer)
            color = "white" if share > 0.5 else "black"
            if size is None:
                canvas.text((x + cell // 2, y + cell // 2), text, fill=color, anchor="mm")
            else:
                canvas.text((x + 3, y + cell // 2 - 5), text, fill=color, size=size)
