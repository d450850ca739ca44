"""A grid of images captioned with what the model predicted and what was true, mistakes marked.

Example:
    >>> import torch
    >>> picture = draw_prediction_grid(torch.rand(2, 1, 8, 8), [3, 5], [3, 1], columns=2)
    >>> picture.texts()
    ['caption: predicted / true', 'right', 'wrong (boxed in red)', '3 / 3', '5 / 1']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchbricks_lightning.pictures.canvas import Canvas, Color, Picture, text_size

__all__ = ["draw_prediction_grid", "render_prediction_grid"]

RIGHT = (0, 140, 0)
WRONG = (200, 0, 0)
_PAD = 4


def draw_prediction_grid(
    images: torch.Tensor,
    predictions: Sequence[int] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    columns: int = 8,
    scale: int = 8,
    class_names: Sequence[str] | None = None,
) -> Picture:
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
    from PIL import Image

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
    wrapped = [_lines(pair, column_width - 2 * _PAD) for pair in phrases]
    line = text_size("Hg")[1]
    caption_height = max((len(lines) for lines in wrapped), default=1) * line + 4
    cell_height = height + caption_height + 2 * _PAD
    legend: list[tuple[str, Color]] = [
        ("caption: predicted / true", "black"),
        ("right", RIGHT),
        ("wrong (boxed in red)", WRONG),
    ]
    legend_width = sum(text_size(text)[0] + 16 for text, _ in legend)
    rows = (len(pictures) + columns - 1) // columns
    legend_height = line + 8
    canvas = Canvas(
        max(min(columns, len(pictures)) * column_width, legend_width, 1), legend_height + rows * cell_height
    )
    x = _PAD
    for text, color in legend:
        x = canvas.text((x, 4), text, fill=color).box[2] + 16
    for index, picture in enumerate(pictures):
        r, c = divmod(index, columns)
        left, top = c * column_width, legend_height + r * cell_height
        tile = Image.fromarray((picture.permute(1, 2, 0).numpy() * 255).astype("uint8"))
        image_left = left + (column_width - width) // 2
        canvas.image.paste(tile.resize((width, height), Image.Resampling.NEAREST), (image_left, top + _PAD))
        predicted, target = pairs[index]
        color = RIGHT if predicted == target else WRONG
        if predicted != target:
            box = [image_left - 3, top + _PAD - 3, image_left + width + 2, top + _PAD + height + 2]
            canvas.shape("rectangle", box, outline=WRONG, width=3)
        for number, text in enumerate(wrapped[index]):
            y = top + _PAD + height + 3 + number * line
            canvas.text((left + column_width // 2, y), text, fill=color, anchor="ma")
    return canvas.picture()


def _lines(phrases: tuple[str, str], width: int) -> list[str]:
    """``predicted / true`` on one line when it fits, else ``predicted /`` over ``true``."""
    joined = " ".join(phrases)
    return [joined] if text_size(joined)[0] <= width else list(phrases)


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
    return draw_prediction_grid(images, predictions, targets, columns, scale, class_names).tensor()
