"""The functional core of the depth and surface-normal metrics: pure functions over one batch, and their reductions.

The metrics of :mod:`~torchbricks_lightning.bag_of_bricks.dense_metrics` keep the sums these functions return and
call the same reductions at ``compute``, so a batch computed here and an epoch accumulated there agree exactly.

**Missing pixels.** A depth target is labelled where it is positive: NaN (the missing-label value of floats) is
missing, and so is 0 (raw depth maps and LibMTL's NYUv2 files mark a missing reading with 0; a depth of 0 has no
relative error). A normal target is labelled where none of its three components is NaN and it is not the zero
vector: a NaN in any component is missing, and so is the zero vector (NYUv2's files mark missing normals so).

**Depth** (per pixel, over every labelled pixel of the batch or epoch, as the NYUv2 tables of Eigen et al. report):
``abs_rel = mean(|pred - gt| / gt)``, ``rmse = sqrt(mean((pred - gt)^2))`` (one root over all pixels, not a mean of
per-image roots) and ``delta_k`` = the share of pixels with ``max(pred / gt, gt / pred) < 1.25^k``. A prediction
that is not positive is never within a threshold.

**Normals**: the angle between prediction and target, ``atan2(|p x t|, p . t)`` in degrees (accurate near 0 and
180 degrees, unlike ``acos`` of a rounded cosine, and independent of the vectors' lengths): its mean and median, and
the shares of pixels within 11.25, 22.5 and 30 degrees (shares in [0, 1], like ``delta_k``: multiply by 100 for the
percent of the NYUv2 tables).

Each pixel's values are computed in float32 (or the predictions' dtype where wider; float64 costs 4x on a CPU)
and summed in float64: an angle is exact to 1e-4 degrees (2e-5 measured against float64 near 0, 90 and 180
degrees: ``atan2`` keeps small angles accurate where ``acos`` of a rounded cosine would not), and the sums of an
epoch of pixels do not drift.

Example:
    >>> preds = torch.tensor([[[1.0, 2.0], [4.0, 1.0]]])
    >>> targets = torch.tensor([[[1.0, 1.0], [float("nan"), 0.0]]])
    >>> {name: round(float(value), 4) for name, value in depth_errors(preds, targets).items()}
    {'abs_rel': 0.5, 'rmse': 0.7071, 'delta1': 0.5, 'delta2': 0.5, 'delta3': 0.5}
"""

from __future__ import annotations

import math

import torch

from torchbricks_lightning.errors import ConfigError

__all__ = [
    "ANGLE_THRESHOLDS",
    "DEPTH_VALUES",
    "NORMALS_VALUES",
    "angle_histogram",
    "check_depth_pair",
    "check_normals_pair",
    "depth_error_sums",
    "depth_errors",
    "depth_errors_from_sums",
    "histogram_bins",
    "histogram_median",
    "normal_angles",
    "normal_error_sums",
    "normal_errors",
    "normal_errors_from_sums",
]

DEPTH_VALUES = ("abs_rel", "rmse", "delta1", "delta2", "delta3")
"""The values of the depth metrics, in order."""
NORMALS_VALUES = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
"""The values of the normal metrics, in order."""
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
"""The angles (degrees) of ``within_11_25``, ``within_22_5`` and ``within_30``: shares of pixels strictly below."""
_DELTA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)


# ------------------------------------------------------------------------------------------------ input checks
def _spatial_fix(preds: torch.Tensor, targets: torch.Tensor, where: str) -> ConfigError:
    (h, w), (height, width) = preds.shape[-2:], targets.shape[-2:]
    if preds.shape[0] != targets.shape[0]:
        return ConfigError(
            f"{where}: expected as many target maps as predictions, but got {targets.shape[0]} targets for "
            f"{preds.shape[0]} predictions. Give one target map per sample of the batch."
        )
    if h and w and height % h == 0 and width % w == 0 and height // h == width // w:
        fix = f"multiply the head's upsample by {height // h} (the targets are {height // h}x larger)"
    elif height and width and h % height == 0 and w % width == 0 and h // height == w // width:
        fix = f"divide the head's upsample by {h // height} (the targets are {h // height}x smaller)"
    else:
        fix = (
            "the target size is not a multiple of the feature maps' size, so no upsample fits: resize the inputs or "
            "the targets so that the backbone's stride divides the targets' size"
        )
    return ConfigError(
        f"{where}: the predictions are {h}x{w} pixels (the feature maps times the head's upsample), but the targets "
        f"are {height}x{width}. To fit them, {fix}."
    )


def _check_float_targets(targets: torch.Tensor, where: str) -> None:
    if not targets.is_floating_point():
        raise ConfigError(
            f"{where}: expected float targets with NaN for missing pixels, but got {targets.dtype}. Convert them "
            "with targets.float() and mark missing pixels with float('nan')."
        )


def check_depth_pair(preds: torch.Tensor, targets: torch.Tensor, where: str = "depth") -> None:
    """Check depth predictions and targets: both ``(N, H, W)``, float targets (shape checks only, no device sync).

    Raises:
        ConfigError: a shape or dtype that does not fit, with the fix (squeeze a channel, change ``upsample``).

    Example:
        >>> check_depth_pair(torch.ones(2, 8, 8), torch.ones(2, 1, 8, 8), "DepthLoss")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: DepthLoss: expected depth targets of shape (N, H, W)...
    """
    if targets.ndim != 3:
        hint = " They have a channel of 1: pass targets[:, 0]." if targets.ndim == 4 and targets.shape[1] == 1 else ""
        raise ConfigError(
            f"{where}: expected depth targets of shape (N, H, W), one depth per pixel, but got shape "
            f"{tuple(targets.shape)}.{hint}"
        )
    _check_float_targets(targets, where)
    if preds.ndim != 3:
        raise ConfigError(f"{where}: expected depth predictions of shape (N, H, W), but got {tuple(preds.shape)}.")
    if preds.shape != targets.shape:
        raise _spatial_fix(preds, targets, where)


def check_normals_pair(preds: torch.Tensor, targets: torch.Tensor, where: str = "normals") -> None:
    """Check normal predictions and targets: both ``(N, 3, H, W)``, float targets (shape checks only, no sync).

    Raises:
        ConfigError: a shape or dtype that does not fit, with the fix (move the channels, change ``upsample``).

    Example:
        >>> check_normals_pair(torch.ones(2, 3, 8, 8), torch.ones(2, 8, 8, 3), "NormalsLoss")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: NormalsLoss: expected normal targets of shape (N, 3, H, W)...
    """
    if targets.ndim != 4 or targets.shape[1] != 3:
        hint = (
            " They are channels-last: pass targets.permute(0, 3, 1, 2)."
            if targets.ndim == 4 and targets.shape[-1] == 3
            else ""
        )
        raise ConfigError(
            f"{where}: expected normal targets of shape (N, 3, H, W), a 3-D vector per pixel, but got shape "
            f"{tuple(targets.shape)}.{hint}"
        )
    _check_float_targets(targets, where)
    if preds.ndim != 4 or preds.shape[1] != 3:
        raise ConfigError(f"{where}: expected normal predictions of shape (N, 3, H, W), but got {tuple(preds.shape)}.")
    if preds.shape != targets.shape:
        raise _spatial_fix(preds, targets, where)


def _working(preds: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both detached, in float32 or the predictions' dtype where wider (float16 / bfloat16 predictions widened)."""
    dtype = torch.promote_types(preds.dtype, torch.float32)
    return preds.detach().to(dtype), targets.detach().to(dtype)


# ------------------------------------------------------------------------------------------------ depth
def depth_error_sums(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sums of one batch, float64 ``(6,)``: ``[sum |p - g| / g, sum (p - g)^2, n_delta1, n_delta2, n_delta3,
    n]`` over the labelled pixels (targets > 0; NaN and 0 are missing). Shapes are not checked here.

    Example:
        >>> depth_error_sums(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, float("nan")]])).tolist()
        [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    """
    preds, targets = _working(preds, targets)
    labelled = targets > 0  # False for NaN
    gt = torch.where(labelled, targets, 1.0)
    difference = torch.where(labelled, preds - gt, 0.0)
    ratio = torch.maximum(preds / gt, gt / preds)
    ratio = torch.where(labelled & (preds > 0), ratio, math.inf)  # a non-positive prediction is within nothing
    sums = [(difference.abs() / gt).sum(dtype=torch.float64), difference.square().sum(dtype=torch.float64)]
    sums += [(ratio < threshold).sum().double() for threshold in _DELTA_THRESHOLDS]
    sums.append(labelled.sum().double())
    return torch.stack(sums)


def depth_errors_from_sums(sums: torch.Tensor) -> dict[str, torch.Tensor]:
    """``abs_rel``, ``rmse``, ``delta1..3`` (float32) from :func:`depth_error_sums`; NaN when no pixel was labelled.

    Example:
        >>> depth_errors_from_sums(torch.zeros(6, dtype=torch.float64))["rmse"]
        tensor(nan)
    """
    count = sums[5]
    means = sums[:5] / count  # 0 / 0 = NaN: no labelled pixel, no value
    values = (means[0], means[1].sqrt(), means[2], means[3], means[4])
    return {name: value.float() for name, value in zip(DEPTH_VALUES, values, strict=True)}


def depth_errors(preds: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The depth metrics of one batch of ``(N, H, W)`` maps (see the module's docstring)."""
    check_depth_pair(preds, targets, "depth_errors")
    return depth_errors_from_sums(depth_error_sums(preds, targets))


# ------------------------------------------------------------------------------------------------ normals
def normal_angles(preds: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(angles, labelled)``: the angle in degrees ``(N, H, W)`` (float32 or wider) between the vectors of
    ``(N, 3, H, W)`` maps, and where the target is labelled (no NaN component, not the zero vector). Angles of
    missing pixels are undefined (may be NaN); mask them with ``labelled``.

    Example:
        >>> angles, labelled = normal_angles(torch.tensor([[1.0, 0.0, 0.0]]).view(1, 3, 1, 1),
        ...                                  torch.tensor([[0.0, 2.0, 0.0]]).view(1, 3, 1, 1))
        >>> float(angles), bool(labelled)
        (90.0, True)
    """
    preds, targets = _working(preds, targets)
    labelled = targets.square().sum(dim=1) > 0  # a NaN component makes the sum NaN: False
    (px, py, pz), (tx, ty, tz) = preds.unbind(dim=1), targets.unbind(dim=1)
    # Component by component: about 20x faster on a CPU than linalg.cross and norm over the channel dimension.
    cross = ((py * tz - pz * ty).square() + (pz * tx - px * tz).square() + (px * ty - py * tx).square()).sqrt()
    dot = px * tx + py * ty + pz * tz
    return torch.rad2deg(torch.atan2(cross, dot)), labelled


def normal_error_sums(angles: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """The sums of one batch, float64 ``(5,)``: ``[sum of angles, n, n < 11.25, n < 22.5, n < 30]`` over labelled
    pixels.

    Example:
        >>> normal_error_sums(torch.tensor([10.0, 25.0, 90.0]), torch.tensor([True, True, False])).tolist()
        [35.0, 2.0, 1.0, 1.0, 2.0]
    """
    angles = torch.where(labelled, angles, 0.0)
    sums = [angles.sum(dtype=torch.float64), labelled.sum().double()]
    sums += [((angles < threshold) & labelled).sum().double() for threshold in ANGLE_THRESHOLDS]
    return torch.stack(sums)


def histogram_bins(bin_width: float) -> int:
    """The number of bins of width ``bin_width`` degrees over [0, 180]; ``bin_width`` must divide 180.

    Example:
        >>> histogram_bins(0.01)
        18000
    """
    bins = round(180.0 / bin_width) if bin_width > 0 else 0
    if bins < 1 or abs(bins * bin_width - 180.0) > 1e-9 * 180.0:
        raise ConfigError(
            f"Expected bin_width to be a positive number of degrees that divides 180 (e.g. 0.01), but got "
            f"{bin_width!r}."
        )
    return bins


def angle_histogram(angles: torch.Tensor, labelled: torch.Tensor, bin_width: float = 0.01) -> torch.Tensor:
    """Counts (int64) of the labelled angles in bins ``[i * bin_width, (i + 1) * bin_width)`` over [0, 180] (180
    itself in the last bin): one bincount of a fixed size, no device sync.

    Example:
        >>> angle_histogram(torch.tensor([0.5, 1.5, 179.0, 180.0]), torch.tensor([True, True, False, True]), 90.0)
        tensor([2, 1])
    """
    bins = histogram_bins(bin_width)
    position = (angles / bin_width).floor().clamp(min=0, max=bins - 1)
    index = torch.where(labelled, position, float(bins)).long()  # missing pixels in an extra bin, dropped
    return torch.bincount(index.reshape(-1), minlength=bins + 1)[:bins]


def histogram_median(histogram: torch.Tensor, bin_width: float = 0.01) -> torch.Tensor:
    """The median angle (float64) estimated from an :func:`angle_histogram`; NaN for an empty histogram.

    Each of the two middle order statistics (the same one for an odd count) is placed inside its bin by linear
    interpolation, as if the bin's ``h`` angles were spread evenly (the ``j``-th at ``(j - 0.5) / h`` of the width),
    and the median is their mean. Each estimate lies in the bin of the angle it stands for, so **the estimate is
    within ``bin_width`` of the exact median** (numpy's, the mean of the two middle angles for an even count) of the
    angles binned (float32 angles, 1e-4 degrees from exact ones, may fall into the neighbouring bin at an edge).

    Example:
        >>> float(histogram_median(torch.tensor([1, 0, 3, 0]), 45.0))  # angles in [0, 45) once, [90, 135) 3 times
        105.0
    """
    counts = histogram.double()
    cumulative = counts.cumsum(0)
    total = cumulative[-1]
    # The two middle ranks (1-based), the same one for an odd count.
    ranks = torch.stack([((total + 1) / 2).floor(), (total / 2).floor() + 1])
    index = torch.searchsorted(cumulative, ranks).clamp(max=histogram.numel() - 1)
    in_bin = counts[index]
    before = cumulative[index] - in_bin
    estimates = (index.double() + (ranks - before - 0.5) / in_bin.clamp(min=1)) * bin_width
    return torch.where(total > 0, estimates.mean(), math.nan)


def normal_errors_from_sums(
    sums: torch.Tensor, histogram: torch.Tensor, bin_width: float = 0.01
) -> dict[str, torch.Tensor]:
    """The normal metrics (float32) from :func:`normal_error_sums` and :func:`angle_histogram`; NaN without a
    labelled pixel. The median is :func:`histogram_median`'s (within ``bin_width`` of the exact one).

    Example:
        >>> empty = normal_errors_from_sums(torch.zeros(5, dtype=torch.float64), torch.zeros(18000, dtype=torch.long))
        >>> [float(value) for value in empty.values()]
        [nan, nan, nan, nan, nan]
    """
    count = sums[1]
    values = (sums[0] / count, histogram_median(histogram, bin_width), *(sums[2:] / count))
    return {name: value.float() for name, value in zip(NORMALS_VALUES, values, strict=True)}


def normal_errors(preds: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The normal metrics of one batch of ``(N, 3, H, W)`` maps, the median exact (a sort of the labelled angles).

    Example:
        >>> preds = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
        >>> targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]]).T.reshape(1, 3, 1, 2)  # 0 and 26.57 degrees
        >>> {name: round(float(value), 2) for name, value in normal_errors(preds, targets).items()}
        {'mean_angle': 13.28, 'median_angle': 13.28, 'within_11_25': 0.5, 'within_22_5': 0.5, 'within_30': 1.0}
    """
    check_normals_pair(preds, targets, "normal_errors")
    angles, labelled = normal_angles(preds, targets)
    chosen = angles[labelled].sort().values
    n = chosen.numel()
    median = (chosen[(n - 1) // 2] + chosen[n // 2]) / 2 if n else torch.tensor(math.nan, dtype=torch.float64)
    sums = normal_error_sums(angles, labelled)
    values = (sums[0] / sums[1], median, *(sums[2:] / sums[1]))
    return {name: value.float() for name, value in zip(NORMALS_VALUES, values, strict=True)}
