"""Depth and surface-normal metrics (the NYUv2 setup): torchmetrics ``Metric`` objects over sums, one pass an epoch.

Each metric keeps sums only (float64 sums and counts, and for the median an int64 histogram), all with
``dist_reduce_fx="sum"``: the states of two processes (or of two halves of the data, :meth:`Metric.merge_state`)
add up to the state of one pass over all of it, so the values under DDP equal those of one process. The math is
:mod:`~torchbricks_lightning.bag_of_bricks.dense_functional`'s: ``update`` adds its batch sums, ``compute`` calls
its reductions.

Every value is per pixel over the epoch (all labelled pixels of all images and processes weigh the same; the RMSE
is one root of the epoch's mean squared error, not a mean of per-image RMSEs). LibMTL's NYUv2 code averages
per-batch means weighted by batch size instead, which differs slightly when batches have different numbers of
labelled pixels. Shares (``delta_k``, ``within_*``) are in [0, 1], not percent.

A task without a labelled pixel in the epoch reports NaN for every value (missing, not 0), as the other metrics of
the bag of bricks do; an image or a batch without a labelled pixel adds nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torchmetrics import Metric

from torchbricks_lightning.bag_of_bricks.dense_functional import (
    DEPTH_VALUES,
    NORMALS_VALUES,
    angle_histogram,
    check_depth_pair,
    check_normals_pair,
    depth_error_sums,
    depth_errors_from_sums,
    histogram_bins,
    normal_angles,
    normal_error_sums,
    normal_errors_from_sums,
)

__all__ = ["DepthMetrics", "NormalsMetrics"]


class DepthMetrics(Metric):
    """AbsRel, RMSE and the shares δ < 1.25, 1.25², 1.25³ of depth maps ``(N, H, W)``, over the labelled pixels.

    ``compute()`` returns a dict with ``abs_rel``, ``rmse``, ``delta1``, ``delta2`` and ``delta3``; a metric brick
    reports them beside itself (``'depth/abs_rel'`` ...). Targets that are NaN (or not positive) are missing. See
    :mod:`~torchbricks_lightning.bag_of_bricks.dense_functional` for the definitions.

    Args:
        where: how error messages name the metric (the heads pass their description).
        **kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> metric = DepthMetrics()
        >>> metric.update(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[1.0, float("nan")]]]))
        >>> metric.update(torch.tensor([[[3.0, 1.0]]]), torch.tensor([[[2.0, 1.0]]]))
        >>> {name: round(float(value), 4) for name, value in metric.compute().items()}
        {'abs_rel': 0.1667, 'rmse': 0.5774, 'delta1': 0.6667, 'delta2': 1.0, 'delta3': 1.0}
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False
    value_higher_is_better: ClassVar[dict[str, bool]] = {
        "abs_rel": False,
        "rmse": False,
        "delta1": True,
        "delta2": True,
        "delta3": True,
    }
    sums: torch.Tensor

    def __init__(self, where: str = "DepthMetrics", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.where = str(where)
        self.value_names: tuple[str, ...] = DEPTH_VALUES
        self.add_state("sums", torch.zeros(6, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch of predicted depths and targets, both ``(N, H, W)``."""
        check_depth_pair(preds, targets, self.where)
        self.sums.add_(depth_error_sums(preds, targets))

    def compute(self) -> dict[str, torch.Tensor]:
        """The values over every labelled pixel so far (float32; NaN before the first labelled pixel)."""
        return depth_errors_from_sums(self.sums)


class NormalsMetrics(Metric):
    """Mean and median angle (degrees) and the shares within 11.25, 22.5 and 30 degrees, of normal maps
    ``(N, 3, H, W)``, over the labelled pixels.

    ``compute()`` returns a dict with ``mean_angle``, ``median_angle``, ``within_11_25``, ``within_22_5`` and
    ``within_30`` (shares in [0, 1]). Targets with a NaN component (or the zero vector) are missing.

    The mean and the shares are exact. **The median is estimated from a histogram** of the angles in bins of
    ``bin_width`` degrees over [0, 180] (18000 int64 counts at the default 0.01, about 141 KiB), with linear
    interpolation inside the bin: one pass, summable across processes, memory independent of the epoch's size, and
    **within ``bin_width`` degrees of the exact median** (numpy's) of the same angles. An exact median would need
    every angle of the epoch (a state that grows with it, gathered across processes).

    Args:
        bin_width: the width of the median's bins, in degrees; it must divide 180.
        where: how error messages name the metric (the heads pass their description).
        **kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ConfigError: ``bin_width`` is not positive or does not divide 180.

    Example:
        >>> x, y = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
        >>> metric = NormalsMetrics()
        >>> metric.update(torch.stack([x, x, x], 1).view(1, 3, 1, 3), torch.stack([x, y, x + y], 1).view(1, 3, 1, 3))
        >>> {name: round(float(value), 1) for name, value in metric.compute().items()}
        {'mean_angle': 45.0, 'median_angle': 45.0, 'within_11_25': 0.3, 'within_22_5': 0.3, 'within_30': 0.3}
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False
    value_higher_is_better: ClassVar[dict[str, bool]] = {
        "mean_angle": False,
        "median_angle": False,
        "within_11_25": True,
        "within_22_5": True,
        "within_30": True,
    }
    sums: torch.Tensor
    histogram: torch.Tensor

    def __init__(self, bin_width: float = 0.01, where: str = "NormalsMetrics", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bins = histogram_bins(bin_width)
        self.bin_width = float(bin_width)
        self.where = str(where)
        self.value_names: tuple[str, ...] = NORMALS_VALUES
        self.add_state("sums", torch.zeros(5, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("histogram", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch of predicted normals and targets, both ``(N, 3, H, W)``."""
        check_normals_pair(preds, targets, self.where)
        angles, labelled = normal_angles(preds, targets)
        self.sums.add_(normal_error_sums(angles, labelled))
        self.histogram.add_(angle_histogram(angles, labelled, self.bin_width))

    def compute(self) -> dict[str, torch.Tensor]:
        """The values over every labelled pixel so far (float32; NaN before the first labelled pixel)."""
        return normal_errors_from_sums(self.sums, self.histogram, self.bin_width)
