"""A grid of images captioned with what the model predicted and what was true, mistakes marked.

Example:
    >>> import torch
    >>> figure = draw_prediction_grid(torch.rand(2, 1, 8, 8), [3, 5], [3, 1], columns=2)
    >>> [text.get_text() for text in figure.texts], [axes.get_xlabel() for axes in figure.axes]
    (['caption: predicted / true', 'right', 'wrong (boxed in red)'], ['3 / 3', '5 / 1'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from torchbricks_lightning.pictures.figures import FONT_SIZE, figure_to_tensor, new_figure, text_size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["RIGHT", "WRONG", "draw_prediction_grid", "render_prediction_grid"]

RIGHT = "#008c00"
WRONG = "#c80000"
_PAD = 6.0


def draw_prediction_grid(
    images: torch.Tensor,
    predictions: Sequence[int] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    columns: int = 8,
    scale: int = 8,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """A grid of images, each captioned ``predicted / true``: green when right, red and boxed in red when wrong.

    A legend on top says so. Each image is stretched to the full grey (or colour) range and enlarged ``scale`` times;
    a caption wider than an image goes on two lines (``predicted /`` over ``true``), and a column widens for a name
    that does not fit on a line.

    Args:
        images: ``(N, C, H, W)`` images, one or three channels.
        predictions: the predicted class of each image.
        targets: the true class of each image.
        columns: images per row.
        scale: how many pixels each image pixel becomes.
        class_names: names of the classes, used in the captions instead of their indices.
    """
    pictures = images.detach().float().cpu()
    if pictures.shape[1] == 1:
        pictures = pictures.repeat(1, 3, 1, 1)
    low, high = pictures.amin(dim=(1, 2, 3), keepdim=True), pictures.amax(dim=(1, 2, 3), keepdim=True)
    pictures = (pictures - low) / (high - low).clamp_min(1e-12)
    height, width = pictures.shape[2] * scale, pictures.shape[3] * scale

    def name(index: int) -> str:
        return str(class_names[index]) if class_names is not None and 0 <= index < len(class_names) else str(index)

    pairs = [(int(predictions[index]), int(targets[index])) for index in range(len(pictures))]
    phrases = [(f"{name(predicted)} /", name(target)) for predicted, target in pairs]
    column_width = max([width, *(text_size(phrase)[0] for pair in phrases for phrase in pair)]) + 2 * _PAD
    captions = [_caption(pair, column_width - 2 * _PAD) for pair in phrases]
    line = text_size("Hg")[1]
    caption_height = max((caption.count("\n") + 1 for caption in captions), default=1) * line + 6
    cell_height = height + caption_height + 2 * _PAD
    legend = [("caption: predicted / true", "black"), ("right", RIGHT), ("wrong (boxed in red)", WRONG)]
    legend_width = sum(text_size(text)[0] + 16 for text, _ in legend) + _PAD
    rows = (len(pictures) + columns - 1) // columns
    legend_height = line + 10
    figure_width = max(min(columns, len(pictures)) * column_width, legend_width, 1.0)
    figure_height = legend_height + rows * cell_height
    figure = new_figure(figure_width, figure_height)
    x = _PAD
    for text, color in legend:
        figure.text(x / figure_width, 1 - 5 / figure_height, text, color=color, fontsize=FONT_SIZE, va="top")
        x += text_size(text)[0] + 16
    for index, picture in enumerate(pictures):
        r, c = divmod(index, columns)
        left = c * column_width + (column_width - width) / 2
        top = legend_height + r * cell_height + _PAD
        axes = figure.add_axes(
            (left / figure_width, 1 - (top + height) / figure_height, width / figure_width, height / figure_height)
        )
        axes.imshow(picture.permute(1, 2, 0).numpy(), interpolation="nearest", aspect="auto")
        axes.set_xticks([])
        axes.set_yticks([])
        predicted, target = pairs[index]
        color = RIGHT if predicted == target else WRONG
        axes.set_xlabel(captions[index], color=color, fontsize=FONT_SIZE, labelpad=3, linespacing=1.0)
        for spine in axes.spines.values():
            spine.set_visible(predicted != target)
            spine.set_color(WRONG)
            spine.set_linewidth(3.0)
    return figure


def _caption(phrases: tuple[str, str], width: float) -> str:
    """``predicted / true`` on one line when it fits, else ``predicted /`` over ``true``."""
    joined = " ".join(phrases)
    return joined if text_size(joined)[0] <= width else "\n".join(phrases)


def render_prediction_grid(
    images: torch.Tensor,
    predictions: Sequence[int] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    columns: int = 8,
    scale: int = 8,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """:func:`draw_prediction_grid` as a ``float32`` image tensor ``(3, H, W)`` in ``[0, 1]``.

    Example:
        >>> import torch
        >>> render_prediction_grid(torch.rand(3, 1, 8, 8), [1, 2, 3], [1, 2, 0], columns=2, scale=2).shape[0]
        3
    """
    return figure_to_tensor(draw_prediction_grid(images, predictions, targets, columns, scale, class_names))
