"""The depth and surface-normal metrics and their functional core, against references computed here with numpy.

The data are random maps with missing pixels (NaN), an image without a labelled pixel and a batch without one.
References are per pixel over all the data, as the metrics document. The DDP property: the states of two metric
objects, each updated on half of the data, merged (``merge_state``, which adds ``dist_reduce_fx="sum"`` states as
a process-group reduction does), equal one pass over all of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from torchbricks_lightning.bag_of_bricks import DepthMetrics, NormalsMetrics
from torchbricks_lightning.bag_of_bricks.dense_functional import (
    angle_histogram,
    depth_errors,
    histogram_median,
    normal_angles,
    normal_errors,
)
from torchbricks_lightning.errors import ConfigError

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _depth_batches(seed: int) -> Batches:
    """Four batches of (N, H, W) depths in metres: ~30% missing, image 1 of batch 0 and all of batch 2 missing."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(4):
        targets = 0.5 + 9.5 * torch.rand(3, 6, 7, generator=generator)
        preds = targets * torch.exp(0.3 * torch.randn(3, 6, 7, generator=generator))  # deltas of every size
        targets[torch.rand(3, 6, 7, generator=generator) < 0.3] = float("nan")
        targets[0, 0, :3] = 0.0  # a missing reading in raw depth maps
        if index == 0:
            targets[1] = float("nan")
        if index == 2:
            targets[:] = float("nan")
        batches.append((preds, targets))
    return batches


def _normals_batches(seed: int) -> Batches:
    """Four batches of (N, 3, H, W) normals, angles over 0-90 degrees, missing pixels as for depth (any component)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(4):
        targets = torch.nn.functional.normalize(torch.randn(3, 3, 6, 7, generator=generator), dim=1)
        preds = targets + torch.rand(3, 1, 6, 7, generator=generator) * torch.randn(3, 3, 6, 7, generator=generator)
        channel = torch.randint(0, 3, (3, 6, 7), generator=generator)
        missing = torch.rand(3, 6, 7, generator=generator) < 0.3
        targets.permute(0, 2, 3, 1)[missing, channel[missing]] = float("nan")  # one NaN component is enough
        targets[0, :, 0, :2] = 0.0  # the zero vector is missing too
        if index == 0:
            targets[1] = float("nan")
        if index == 2:
            targets[:] = float("nan")
        batches.append((preds, targets))
    return batches


def _numpy(batches: Batches, axis: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    return (
        np.concatenate([preds.double().numpy() for preds, _ in batches], axis=axis),
        np.concatenate([targets.double().numpy() for _, targets in batches], axis=axis),
    )


def _depth_reference(batches: Batches) -> dict[str, float]:
    preds, targets = _numpy(batches, axis=0)
    labelled = ~np.isnan(targets) & (np.nan_to_num(targets) > 0)
    p, g = preds[labelled], targets[labelled]
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
        **{f"delta{k}": float(np.mean(ratio < 1.25**k)) for k in (1, 2, 3)},
    }


def _reference_angles(batches: Batches) -> NDArray[np.float64]:
    preds, targets = _numpy(batches, axis=0)
    labelled = ~np.isnan(targets).any(axis=1) & ((np.nan_to_num(targets) ** 2).sum(axis=1) > 0)
    p = preds / np.linalg.norm(preds, axis=1, keepdims=True)
    t = targets / np.linalg.norm(np.nan_to_num(targets), axis=1, keepdims=True).clip(min=1e-300)
    return np.degrees(np.arccos(np.clip((p * t).sum(axis=1), -1.0, 1.0)))[labelled]


def _normals_reference(batches: Batches) -> dict[str, float]:
    angles = _reference_angles(batches)
    return {
        "mean_angle": float(angles.mean()),
        "median_angle": float(np.median(angles)),
        "within_11_25": float(np.mean(angles < 11.25)),
        "within_22_5": float(np.mean(angles < 22.5)),
        "within_30": float(np.mean(angles < 30.0)),
    }


def _values(computed: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in computed.items()}


# ------------------------------------------------------------------------------------------------ depth
@pytest.mark.parametrize("seed", [0, 1])
def test_depth_metrics_over_an_epoch_equal_numpy(seed: int) -> None:
    batches = _depth_batches(seed)
    metric = DepthMetrics()
    for preds, targets in batches:
        metric.update(preds, targets)
    assert _values(metric.compute()) == pytest.approx(_depth_reference(batches), rel=1e-5)


def test_depth_functional_core_of_one_batch_equals_numpy() -> None:
    batch = _depth_batches(2)[0]
    assert _values(depth_errors(*batch)) == pytest.approx(_depth_reference([batch]), rel=1e-5)


def test_a_depth_prediction_that_is_not_positive_is_within_no_threshold() -> None:
    values = _values(depth_errors(torch.tensor([[[-1.0, 0.0, 1.0]]]), torch.tensor([[[1.0, 1.0, 1.0]]])))
    assert values["delta3"] == pytest.approx(1 / 3)
    assert values["abs_rel"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ normals
@pytest.mark.parametrize("bin_width", [0.01, 1.0, 7.5], ids=["0.01deg", "1deg", "7.5deg"])
def test_normals_metrics_over_an_epoch_equal_numpy_with_the_median_within_a_bin(bin_width: float) -> None:
    batches = _normals_batches(0)
    metric = NormalsMetrics(bin_width=bin_width)
    for preds, targets in batches:
        metric.update(preds, targets)
    values, reference = _values(metric.compute()), _normals_reference(batches)
    median, exact = values.pop("median_angle"), reference.pop("median_angle")
    assert values == pytest.approx(reference, rel=1e-5)
    assert abs(median - exact) <= bin_width + 1e-4, "the documented bound: within one bin width"


def test_the_functional_core_of_normals_has_the_exact_median() -> None:
    batch = _normals_batches(1)[0]
    assert _values(normal_errors(*batch)) == pytest.approx(_normals_reference([batch]), rel=1e-5)
    angles, labelled = normal_angles(*batch)
    np.testing.assert_allclose(angles[labelled].numpy(), _reference_angles([batch]), atol=1e-4)


@pytest.mark.parametrize("count", [1, 2, 5, 6, 1001], ids=lambda count: f"n{count}")
def test_the_histogram_median_is_within_a_bin_of_numpys_for_odd_and_even_counts(count: int) -> None:
    angles = torch.rand(count, generator=torch.Generator().manual_seed(count), dtype=torch.float64) * 180
    labelled = torch.ones(count, dtype=torch.bool)
    for bin_width in (0.01, 2.0, 30.0):
        estimate = float(histogram_median(angle_histogram(angles, labelled, bin_width), bin_width))
        assert abs(estimate - float(np.median(angles.numpy()))) <= bin_width


def test_bin_widths_that_do_not_divide_180_are_refused() -> None:
    for bin_width in (0.0, -1.0, 0.7):
        with pytest.raises(ConfigError, match="bin_width to be a positive number of degrees that divides 180"):
            NormalsMetrics(bin_width=bin_width)


# ------------------------------------------------------------------------------------------------ missing pixels
@pytest.mark.parametrize(
    ("make_metric", "make_batches"),
    [(DepthMetrics, _depth_batches), (NormalsMetrics, _normals_batches)],
    ids=["depth", "normals"],
)
def test_a_batch_without_a_labelled_pixel_adds_nothing_and_an_epoch_of_them_is_nan(
    make_metric: type[DepthMetrics | NormalsMetrics], make_batches: object
) -> None:
    batches = make_batches(0)  # type: ignore[operator]
    unlabelled = batches[2]
    assert bool(torch.isnan(unlabelled[1]).all())
    alone = make_metric()
    alone.update(*unlabelled)
    values = _values(alone.compute())
    assert len(values) == 5
    assert all(np.isnan(value) for value in values.values()), values
    with_it, without_it = make_metric(), make_metric()
    for index, batch in enumerate(batches):
        with_it.update(*batch)
        if index != 2:
            without_it.update(*batch)
    assert _values(with_it.compute()) == _values(without_it.compute())


# ------------------------------------------------------------------------------------------------ DDP property
@pytest.mark.parametrize(
    ("make_metric", "make_batches"),
    [(DepthMetrics, _depth_batches), (lambda: NormalsMetrics(bin_width=0.5), _normals_batches)],
    ids=["depth", "normals"],
)
def test_states_of_two_halves_merged_equal_one_pass(make_metric: object, make_batches: object) -> None:
    batches = make_batches(3)  # type: ignore[operator]
    whole, first, second = (make_metric() for _ in range(3))  # type: ignore[operator]
    for index, batch in enumerate(batches):
        whole.update(*batch)
        (first if index % 2 else second).update(*batch)
    summed = {name: getattr(first, name) + getattr(second, name) for name in whole.metric_state}
    first.merge_state(second)
    for name, state in whole.metric_state.items():
        torch.testing.assert_close(getattr(first, name), state, rtol=1e-12, atol=0)
        torch.testing.assert_close(summed[name], state, rtol=1e-12, atol=0)
    merged, one_pass = _values(first.compute()), _values(whole.compute())
    assert merged == pytest.approx(one_pass, rel=1e-9)
