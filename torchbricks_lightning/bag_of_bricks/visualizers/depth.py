"""Depth: the predicted and the true depth maps in a colour map, with a colour bar giving its scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from torchbricks_lightning.core.visualization import Visualizer
from torchbricks_lightning.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DepthVisualizer"]

MISSING_COLOR = "lightgrey"


def _maps(values: torch.Tensor) -> np.ndarray:
    """``(N, 1, H, W)`` or ``(N, H, W)`` depth maps as a float array ``(N, H, W)``."""
    values = values.detach().cpu().float()
    if values.ndim == 4 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 3:
        raise ConfigError(f"Expected depth maps (N, 1, H, W) or (N, H, W), but got shape {tuple(values.shape)}.")
    return values.numpy()


class DepthVisualizer(Visualizer):
    """The predicted depth (and the true depth, beside it) in one colour map, with a colour bar of its values.

    Both maps share one scale: ``min_depth`` to ``max_depth`` when given, else the range of the image's true depth
    (of the prediction, without a target). Missing true pixels (NaN) are drawn light grey, and the true map's title
    says so. Each picture is a matplotlib figure rendered to pixels, all of one size.

    Arguments of the call (name them in the brick's ``input_names`` dict):
        predictions: ``(N, 1, H, W)`` or ``(N, H, W)`` predicted depth.
        targets: the true depth, same shape, NaN where missing (optional).

    Args:
        colormap: a matplotlib colormap (a sequential one: ``viridis``, ``magma``, ``turbo``).
        unit: the unit shown on the colour bar, e.g. ``"m"``.
        min_depth: the scale's lowest value, or None for the image's own.
        max_depth: the scale's highest value, or None for the image's own.
        height: the height of each picture in inches (at ``dpi``); the width follows from the maps' aspect.
        dpi: pixels per inch.

    Example:
        >>> import torch
        >>> visualizer = DepthVisualizer(unit="m")
        >>> figure = visualizer.figure(torch.rand(8, 8), torch.full((8, 8), float("nan")))
        >>> [axes.get_title() for axes in figure.axes]
        ['predicted', 'true: not annotated', '']
        >>> figure.axes[2].get_ylabel()
        'depth (m)'
        >>> tuple(visualizer(torch.rand(2, 1, 8, 8)).shape)[:2]
        (2, 3)
    """

    def __init__(
        self,
        colormap: str = "viridis",
        unit: str = "",
        min_depth: float | None = None,
        max_depth: float | None = None,
        height: float = 2.6,
        dpi: int = 100,
    ) -> None:
        super().__init__()
        import matplotlib

        if colormap not in matplotlib.colormaps:
            raise ConfigError(f"Unknown matplotlib colormap {colormap!r} for DepthVisualizer; e.g. 'viridis'.")
        self.colormap = colormap
        self.unit = unit
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.height = float(height)
        self.dpi = int(dpi)

    def scale(self, prediction: np.ndarray, target: np.ndarray | None) -> tuple[float, float]:
        """The colour scale ``(low, high)`` of one image."""
        reference = target if target is not None and np.isfinite(target).any() else prediction
        finite = reference[np.isfinite(reference)]
        low = self.min_depth if self.min_depth is not None else float(finite.min()) if finite.size else 0.0
        high = self.max_depth if self.max_depth is not None else float(finite.max()) if finite.size else 1.0
        return low, high if high > low else low + 1e-6

    def figure(self, prediction: torch.Tensor, target: torch.Tensor | None = None) -> Figure:
        """The figure of one image: ``prediction`` (and ``target``), ``(H, W)`` each, and the colour bar."""
        import matplotlib
        from matplotlib.figure import Figure

        predicted = _maps(prediction.reshape(1, *prediction.shape[-2:]))[0]
        true = None if target is None else _maps(target.reshape(1, *target.shape[-2:]))[0]
        low, high = self.scale(predicted, true)
        rows, columns = predicted.shape
        panels = 1 if true is None else 2
        width = self.height * (panels * columns / rows) * 0.85 + 1.2
        figure = Figure(figsize=(width, self.height), dpi=self.dpi, layout="constrained")
        axes = figure.subplots(1, panels, squeeze=False)[0]
        cmap = matplotlib.colormaps[self.colormap].with_extremes(bad=MISSING_COLOR)
        shown = [("predicted", predicted)]
        if true is not None:
            annotated = bool(np.isfinite(true).any())
            missing = bool(np.isnan(true).any())
            title = (
                "true" + (" (grey: missing)" if missing and annotated else "") if annotated else "true: not annotated"
            )
            shown.append((title, true))
        images = []
        for each, (title, values) in zip(axes, shown, strict=True):
            masked = np.ma.masked_invalid(values)
            images.append(each.imshow(masked, cmap=cmap, vmin=low, vmax=high, interpolation="nearest"))
            each.set_title(title, fontsize=11)
            each.set_xticks([])
            each.set_yticks([])
        bar = figure.colorbar(images[0], ax=list(axes), shrink=0.9)
        bar.set_label(f"depth ({self.unit})" if self.unit else "depth", fontsize=10)
        bar.ax.tick_params(labelsize=9)
        return figure

    def render(self, figure: Figure) -> torch.Tensor:
        """A figure as a ``uint8`` image ``(3, H, W)``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        return torch.from_numpy(np.asarray(canvas.buffer_rgba())[..., :3].copy()).permute(2, 0, 1)

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        predicted = predictions.detach().cpu()
        count = predicted.shape[0]
        pictures = [
            self.render(self.figure(predicted[index], None if targets is None else targets[index].detach().cpu()))
            for index in range(count)
        ]
        return torch.stack(pictures) if pictures else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
