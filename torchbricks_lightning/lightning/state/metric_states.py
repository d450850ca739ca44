"""The accumulated states of torchmetrics metrics, copied out of a run and put back: what a mid-epoch checkpoint
carries of the metric bricks and the loss means (see :mod:`~torchbricks_lightning.lightning.state.resume`).

**How a metric state is restored.** Each metric is reset, then given the saved values of its states through their
public attributes (the names of ``metric.metric_state``, declared with ``add_state``). Its update count is not
restored (torchmetrics has no public setter), so ``update_called`` stays False until the next update. That next
update always comes before any compute: a checkpoint holds metric states only when written in the middle of an
epoch, with batches left (see :func:`~torchbricks_lightning.lightning.state.resume.save_resume_state`), so the
resumed run updates the metrics at least once before the epoch end computes them. What else reads the count:
torchmetrics' ``compute`` (it warns when no update was made), the bricks' summaries (they skip metrics without
updates), both satisfied by that next update; and ``forward`` and ``merge_state`` average states declared with
``dist_reduce_fx="mean"`` by the count, which only matters for such a state that varies from batch to batch, in a
metric brick with ``return_metrics=True``; torchmetrics' own mean states are constants (PSNR's ``data_range``). The
count is still written to the checkpoint, for information.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import Metric

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetrics
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ResumeStateError
from torchbricks_lightning.lightning.logging.losses import LossMeans

__all__ = [
    "MetricState",
    "MetricStates",
    "collect_loss_states",
    "collect_metric_states",
    "restore_loss_states",
    "restore_metric_states",
]

MetricState = dict[str, Any]
"""``{"update_count": int, "state": {state name: tensor or list of tensors}}``."""
MetricStates = dict[str, dict[str, MetricState]]
"""``{brick path: {metric name: MetricState}}``."""


def _stage_metrics(brick: BrickMetrics, stage: Stage) -> dict[str, Metric]:
    if stage not in brick.alive_stages:
        return {}
    return {str(name): metric for name, metric in brick.metrics_for(stage).items(keep_base=False, copy_state=False)}


def _copy(value: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """A detached CPU copy of a metric state (a tensor, or a list of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return [item.detach().cpu().clone() for item in value]


def _metric_state(metric: Metric) -> MetricState:
    return {
        "update_count": int(metric.update_count),
        "state": {key: _copy(value) for key, value in metric.metric_state.items()},
    }


def collect_metric_states(collection: BrickCollection, stage: Stage = Stage.TRAIN) -> MetricStates:
    """This process's accumulated metric states of ``stage``, copied to the CPU (for a checkpoint).

    Every metric of the bricks alive in ``stage`` is included, also one without updates: a metric restored from a
    checkpoint has no update count until its next update (see the module's docstring), and its state must still
    be carried over if a checkpoint is written before that.

    Args:
        collection: the bricks.
        stage: the stage whose metric copies to read.

    Returns:
        ``{brick path: {metric name: {"update_count": n, "state": {state name: value}}}}``.

    Example:
        >>> from torchmetrics.aggregation import SumMetric
        >>> from torchbricks_lightning import BrickMetricSingle
        >>> collection = BrickCollection({"total": BrickMetricSingle(SumMetric(), input_names=["x"])})
        >>> _ = collection({"x": torch.tensor([1.0, 2.0])}, Stage.TRAIN)
        >>> collect_metric_states(collection)
        {'total': {'SumMetric': {'update_count': 1, 'state': {'sum_value': tensor(3.)}}}}
    """
    states: MetricStates = {}
    for path, brick in collection.named_bricks():
        if isinstance(brick, BrickMetrics):
            saved = {name: _metric_state(metric) for name, metric in _stage_metrics(brick, stage).items()}
            if saved:
                states[path] = saved
    return states


def restore_metric_states(
    collection: BrickCollection, states: Mapping[str, Mapping[str, Mapping[str, Any]]], stage: Stage = Stage.TRAIN
) -> None:
    """Put states from :func:`collect_metric_states` back into the ``stage`` metrics of ``collection``.

    Every metric named in ``states`` is reset and then given the saved states, so that after its next update it
    holds what it would hold had the states never left it. Metrics that ``states`` does not name are left alone.

    Raises:
        ResumeStateError: ``states`` names a brick, metric or state that the collection does not have, or a state of
            another shape (the bricks changed since the checkpoint).

    Example:
        >>> from torchmetrics.aggregation import SumMetric
        >>> from torchbricks_lightning import BrickMetricSingle
        >>> collection = BrickCollection({"total": BrickMetricSingle(SumMetric(), input_names=["x"])})
        >>> _ = collection({"x": torch.tensor([1.0, 2.0])}, Stage.TRAIN)
        >>> saved = collect_metric_states(collection)
        >>> collection.reset_metrics()
        >>> restore_metric_states(collection, saved)
        >>> _ = collection({"x": torch.tensor([4.0])}, Stage.TRAIN)  # the resumed epoch's next batch
        >>> collection.summarize(Stage.TRAIN)
        {'total': tensor(7.)}
    """
    bricks = {path: brick for path, brick in collection.named_bricks() if isinstance(brick, BrickMetrics)}
    for path, saved_metrics in states.items():
        brick = bricks.get(path)
        live = _stage_metrics(brick, stage) if brick is not None else {}
        if not live:
            raise ResumeStateError(
                f"The checkpoint holds {stage.value!r} metric states of brick {path!r}, but this collection has no "
                f"metric brick alive in {stage.value!r} there (its metric bricks: {sorted(bricks)}). Resume with the "
                "bricks the checkpoint was trained with."
            )
        for name, saved in saved_metrics.items():
            metric = live.get(name)
            if metric is None:
                raise ResumeStateError(
                    f"The checkpoint holds the state of metric {name!r} of brick {path!r}, which has {sorted(live)}. "
                    "Resume with the bricks the checkpoint was trained with."
                )
            _load_metric(metric, saved, where=f"{path}/{name}")


def collect_loss_states(loss_means: LossMeans, stage: Stage = Stage.TRAIN) -> dict[str, MetricState]:
    """This process's loss-mean states of ``stage`` by loss name, copied to the CPU (for a checkpoint).

    Example:
        >>> means = LossMeans()
        >>> means.update(Stage.TRAIN, "ce", torch.tensor(0.5), 4.0)
        >>> collect_loss_states(means)
        {'ce': {'update_count': 1, 'state': {'mean_value': tensor(2.), 'weight': tensor(4.)}}}
    """
    return {name: _metric_state(metric) for name, metric in loss_means.metrics(stage).items()}


def restore_loss_states(
    loss_means: LossMeans,
    states: Mapping[str, Mapping[str, Any]],
    stage: Stage = Stage.TRAIN,
    device: torch.device | str = "cpu",
) -> None:
    """Put states from :func:`collect_loss_states` back, making the loss means they name (on ``device``).

    Raises:
        ResumeStateError: a saved state does not fit a loss mean.

    Example:
        >>> means = LossMeans()
        >>> means.update(Stage.TRAIN, "ce", torch.tensor(0.5), 4.0)
        >>> fresh = LossMeans()
        >>> restore_loss_states(fresh, collect_loss_states(means))
        >>> fresh.update(Stage.TRAIN, "ce", torch.tensor(2.0), 1.0)
        >>> fresh.metrics(Stage.TRAIN)["ce"].compute()
        tensor(0.8000)
    """
    for name, saved in states.items():
        _load_metric(loss_means.metric(stage, name, device), saved, where=f"loss mean {name!r}")


def _load_metric(metric: Metric, saved: Mapping[str, Any], where: str) -> None:
    state = saved.get("state")
    if not isinstance(state, Mapping):
        raise ResumeStateError(f"The checkpoint's state of metric {where!r} is malformed: {sorted(saved)}.")
    expected = set(metric.metric_state)
    if set(state) != expected:
        raise ResumeStateError(
            f"The checkpoint's metric {where!r} has the states {sorted(state)}, but the metric now has "
            f"{sorted(expected)}. Resume with the metric the checkpoint was trained with."
        )
    metric.reset()
    for name, value in state.items():
        current = getattr(metric, name)
        if isinstance(current, torch.Tensor):
            if not isinstance(value, torch.Tensor) or value.shape != current.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ResumeStateError(
                    f"The checkpoint's state {name!r} of metric {where!r} is {shape}, but the metric holds "
                    f"{tuple(current.shape)} (e.g. another number of classes). Resume with the same metric."
                )
            setattr(metric, name, value.to(device=current.device, dtype=current.dtype))
        else:
            setattr(metric, name, [item.to(device=metric.device) for item in value])
