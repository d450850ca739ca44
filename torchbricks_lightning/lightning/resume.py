"""What a checkpoint needs beyond weights and loop counters so that a resumed run matches an uninterrupted one.

Lightning checkpoints the weights, the optimisers, the loop progress and the state of resumable train loaders
(see :class:`~torchbricks_lightning.datamodules.ResumableDataLoader`). Three things are missing for a run killed
mid-epoch and resumed with ``trainer.fit(..., ckpt_path="last")`` to end exactly as an uninterrupted run:

- **the metric states of the interrupted epoch**: torchmetrics keeps them out of ``state_dict()``, so the train
  metrics of that epoch would cover only the batches after the restart;
- **the random number generators** (torch, CUDA, Python's ``random``, NumPy), so dropout and other random
  layers draw the same numbers;
- **the epoch sums of values logged with** ``self.log(..., on_epoch=True)`` in training (the ``train/loss``
  epoch means), which Lightning keeps in its loop and does not checkpoint: :class:`ResumableEpochLogs`.

:class:`~torchbricks_lightning.lightning.module.LightningBrickCollection` calls :func:`save_resume_state` and
:func:`load_resume_state` from its checkpoint hooks, so the first two are automatic; add
``ResumableEpochLogs()`` to the Trainer's callbacks for the third.

Only the train metrics are saved. Lightning never writes a checkpoint in the middle of validation (its
``ModelCheckpoint`` saves on train batch end, on train epoch end or on validation end, when the validation
metrics are already computed and reset), and a resumed run validates from the first validation batch, so the
validation and test metrics start empty after a resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics import Metric

from torchbricks_lightning.core.bricks import BrickMetrics
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ResumeStateError
from torchbricks_lightning.random_state import capture_random_state, restore_random_state

__all__ = [
    "RESUME_STATE_KEY",
    "ResumableEpochLogs",
    "ResumeStateError",
    "attached_trainer",
    "collect_metric_states",
    "load_resume_state",
    "restore_metric_states",
    "save_resume_state",
]

RESUME_STATE_KEY = "torchbricks_resume"
"""Checkpoint key of the state written by :func:`save_resume_state`."""

_VERSION = 1
MetricStates = dict[str, dict[str, dict[str, Any]]]
"""``{brick path: {metric name: {"update_count": int, "state": {state name: tensor or list of tensors}}}}``."""


# ------------------------------------------------------------------------------------------------ processes
def _world() -> tuple[int, int]:
    """``(world size, rank)`` of the initialised process group, or ``(1, 0)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _gather(local: Any) -> list[Any]:
    """Every process's ``local`` (a picklable object), in rank order. All processes must call it together."""
    world, _ = _world()
    if world == 1:
        return [local]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The Trainer ``module`` is attached to, or None (``load_from_checkpoint``, a module used without a Trainer).

    Example:
        >>> attached_trainer(pl.LightningModule()) is None
        True
    """
    try:
        return module.trainer
    except RuntimeError:  # Lightning's public property raises when no Trainer is attached
        return None


def _fitting(trainer: pl.Trainer | None) -> bool:
    return trainer is not None and trainer.state.fn == TrainerFn.FITTING


def _mid_epoch(trainer: pl.Trainer) -> bool:
    """Whether the current training epoch has started and has batches left, so a resumed run continues it.

    When a checkpoint is written after the last batch of an epoch but before the epoch's end (for instance by
    ``ModelCheckpoint(every_n_train_steps=...)`` on that batch), Lightning resumes at the next epoch and does not
    run the end of that epoch again, so the state of that epoch must not be restored: it would leak into the next.
    """
    current = trainer.fit_loop.epoch_loop.batch_progress.current  # a _ProcessedTracker, typed as its base
    processed = int(getattr(current, "processed", current.completed))
    return _fitting(trainer) and 0 < processed < trainer.num_training_batches


# ------------------------------------------------------------------------------------------------ metric states
def _stage_metrics(brick: BrickMetrics, stage: Stage) -> dict[str, Metric]:
    if stage not in brick.alive_stages:
        return {}
    return {str(name): metric for name, metric in brick.metrics_for(stage).items(keep_base=False, copy_state=False)}


def _copy(value: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """A detached CPU copy of a metric state (a tensor, or a list of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return [item.detach().cpu().clone() for item in value]


def collect_metric_states(collection: BrickCollection, stage: Stage = Stage.TRAIN) -> MetricStates:
    """This process's accumulated metric states of ``stage``, copied to the CPU (for a checkpoint).

    Args:
        collection: the bricks.
        stage: the stage whose metric copies to read.

    Returns:
        ``{brick path: {metric name: {"update_count": n, "state": {state name: value}}}}`` for the metrics that
        saw at least one update.

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
        if not isinstance(brick, BrickMetrics):
            continue
        saved = {
            name: {
                "update_count": int(metric.update_count),
                "state": {key: _copy(value) for key, value in metric.metric_state.items()},
            }
            for name, metric in _stage_metrics(brick, stage).items()
            if metric.update_called
        }
        if saved:
            states[path] = saved
    return states


def restore_metric_states(
    collection: BrickCollection, states: Mapping[str, Mapping[str, Mapping[str, Any]]], stage: Stage = Stage.TRAIN
) -> None:
    """Put states from :func:`collect_metric_states` back into the ``stage`` metrics of ``collection``.

    Every metric named in ``states`` is reset and then given the saved state and update count, so computing it
    gives what it gave when the states were collected. Metrics that ``states`` does not name are left alone.

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
        >>> collection.summarize(Stage.TRAIN)
        {'total': tensor(3.)}
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


def _load_metric(metric: Metric, saved: Mapping[str, Any], where: str) -> None:
    state = saved.get("state")
    if not isinstance(state, Mapping) or "update_count" not in saved:
        raise ResumeStateError(f"The checkpoint's state of metric {where!r} is malformed: {sorted(saved)}.")
    expected = set(metric.metric_state)
    if set(state) != expected:
        raise ResumeStateError(
            f"The checkpoint's metric {where!r} has the states {sorted(state)}, but the metric now has "
            f"{sorted(expected)}. Resume with the metric the checkpoint was trained with."
        )
    if not hasattr(metric, "_update_count"):
        raise ResumeStateError(
            f"Cannot restore the update count of metric {where!r}: this torchmetrics version has no "
            "Metric._update_count. Use a torchmetrics version supported by torchbricks_lightning."
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
    # No public setter exists: compute() and the bricks' summaries skip metrics whose count is 0.
    metric._update_count = int(saved["update_count"])


# ------------------------------------------------------------------------------------------------ the module's hooks
def save_resume_state(module: pl.LightningModule, collection: BrickCollection, checkpoint: dict[str, Any]) -> None:
    """Write what a resume needs into ``checkpoint`` (call from ``on_save_checkpoint``, in every process).

    Under DDP each process holds the metric states of its own share of the batches, and its own generators.
    Rather than reducing the metric states into one global state, every process's states are gathered
    (``all_gather_object``) and saved per rank, and each process restores its own on resume. This keeps every
    reduction exact (sums, concatenations in rank order, means, maxima, custom reductions alike: torchmetrics
    later reduces the same per-process states it would have reduced without the crash), and it is also what the
    generators need. Lightning calls ``on_save_checkpoint`` in every process before rank 0 writes the file, so
    the gathering is safe. The cost is that a mid-epoch resume needs the same number of processes.

    Nothing is written outside ``trainer.fit``. Metric states are written only in the middle of an epoch; a
    checkpoint written when the epoch's batches are all done holds none (see :func:`_mid_epoch`).
    """
    trainer = attached_trainer(module)
    if trainer is None or not _fitting(trainer):
        return
    mid_epoch = _mid_epoch(trainer)
    local = {
        "metrics": collect_metric_states(collection, Stage.TRAIN) if mid_epoch else None,
        "rng": capture_random_state(),
    }
    per_rank = _gather(local)
    checkpoint[RESUME_STATE_KEY] = {
        "version": _VERSION,
        "epoch": trainer.current_epoch,
        "mid_epoch": mid_epoch,
        "world_size": len(per_rank),
        "metric_states": [entry["metrics"] for entry in per_rank] if mid_epoch else None,
        "rng_states": [entry["rng"] for entry in per_rank],
    }


def load_resume_state(module: pl.LightningModule, collection: BrickCollection, checkpoint: Mapping[str, Any]) -> None:
    """Restore what :func:`save_resume_state` wrote (call from ``on_load_checkpoint``).

    It acts only when ``trainer.fit`` resumes from the checkpoint. ``load_from_checkpoint`` (no trainer) and
    ``trainer.validate/test/predict(ckpt_path=...)`` leave the metrics and the generators alone, so loading a
    checkpoint for inference changes nothing but the weights. When resuming, every metric of every stage is reset
    (states left by an earlier run in this process must not leak in), then this process's train metric states
    of the interrupted epoch and its generators are restored.

    Raises:
        ResumeStateError: the checkpoint stopped mid-epoch with another number of processes, or its metric states
            do not fit the bricks.
    """
    trainer = attached_trainer(module)
    if trainer is None or not _fitting(trainer):
        return
    collection.reset_metrics()
    state = checkpoint.get(RESUME_STATE_KEY)
    if state is None:
        return  # a checkpoint written before resume states existed, or outside trainer.fit
    if not isinstance(state, Mapping) or int(state.get("version", -1)) != _VERSION:
        raise ResumeStateError(
            f"The checkpoint's {RESUME_STATE_KEY!r} entry is not a version-{_VERSION} resume state. It was written by "
            "another torchbricks_lightning version: resume with that version, or delete the entry to resume without "
            "the interrupted epoch's metric states."
        )
    world, rank = _world()
    saved_world = int(state["world_size"])
    metric_states = state.get("metric_states")
    if metric_states is not None:
        if saved_world != world:
            raise ResumeStateError(
                f"The checkpoint stopped in the middle of epoch {state['epoch']} with {saved_world} processes, and "
                f"this run has {world}: each process's share of that epoch's batches and metric states is gone. "
                f"Resume with {saved_world} processes, or from a checkpoint written at the end of an epoch."
            )
        restore_metric_states(collection, metric_states[rank], Stage.TRAIN)
    rng_states = state.get("rng_states") or []
    if len(rng_states) == world:
        restore_random_state(rng_states[rank])
    else:
        warnings.warn(
            f"The checkpoint holds the random generator states of {len(rng_states)} processes and this run has "
            f"{world}, so they are not restored: random layers (dropout) will draw other numbers than an "
            "uninterrupted run would.",
            stacklevel=2,
        )


# ------------------------------------------------------------------------------------------------ logged epoch sums
_REDUCTIONS = ("mean", "sum", "max", "min")


def _reduction(result: Any) -> str | None:
    meta = result.meta
    for name in _REDUCTIONS:
        if getattr(meta, f"is_{name}_reduction", False):
            return name
    return None


def _training_results(trainer: pl.Trainer) -> dict[str, Any] | None:
    """Lightning's running sums of values logged in training; None (with one warning) when it has none to offer."""
    results = getattr(trainer.fit_loop.epoch_loop, "_results", None)
    if not isinstance(results, dict):
        rank_zero_warn(
            "ResumableEpochLogs cannot find Lightning's training results (fit_loop.epoch_loop._results) in this "
            f"pytorch_lightning ({pl.__version__}): after a mid-epoch resume, the epoch values logged in training "
            "will cover only the batches after the restart. Weights, metrics and data order still resume exactly.",
        )
        return None
    return results


class ResumableEpochLogs(pl.Callback):
    """Carry the epoch sums of values logged in training across a mid-epoch resume.

    ``self.log(name, value, on_epoch=True)`` in ``training_step`` (the ``train/loss`` of
    ``LightningBrickCollection``) accumulates a running sum in Lightning's training loop, which Lightning does not
    checkpoint: after a resume the epoch value would average only the batches after the restart. This callback
    saves each process's running sums (mean, sum, max and min reductions) with the checkpoint, and adds them back
    after the first batch of the resumed run, so the epoch value is that of an uninterrupted run.

    Values logged only in hooks that a resumed run does not call again (``on_train_epoch_start``) cannot be
    carried over; a warning names them.

    Example:
        >>> trainer = pl.Trainer(callbacks=[ResumableEpochLogs()], logger=False, enable_progress_bar=False)
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or not _mid_epoch(trainer):
            return {"version": _VERSION, "epoch": -1, "per_rank": None}
        results = _training_results(trainer)
        if results is None:
            return {"version": _VERSION, "epoch": -1, "per_rank": None}
        local: dict[str, dict[str, Any]] = {}
        for key, result in results.items():
            reduction = _reduction(result)
            if not result.is_tensor or not result.meta.on_epoch or reduction is None or not result.update_called:
                continue
            local[key] = {
                "reduction": reduction,
                "value": _copy(result.value),
                "cumulated_batch_size": _copy(result.cumulated_batch_size) if reduction == "mean" else None,
                "update_count": int(result.update_count),
            }
        return {"version": _VERSION, "epoch": trainer.current_epoch, "per_rank": _gather(local)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict) if state_dict.get("per_rank") is not None else None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pending, self._pending = self._pending, None
        if pending is None or int(pending["epoch"]) != trainer.current_epoch:
            return
        world, rank = _world()
        per_rank = pending["per_rank"]
        if len(per_rank) != world:
            warnings.warn(
                f"The checkpoint holds the logged epoch sums of {len(per_rank)} processes and this run has {world}; "
                "the epoch values logged in training cover only the batches after the resume.",
                stacklevel=2,
            )
            return
        results = _training_results(trainer)
        if results is None:
            return
        lost = []
        for key, saved in per_rank[rank].items():
            result = results.get(key)
            if result is None or not result.is_tensor or _reduction(result) != saved["reduction"]:
                lost.append(key)
                continue
            value = saved["value"].to(result.value.device)
            if saved["reduction"] in ("mean", "sum"):
                result.value = result.value + value  # the order of an uninterrupted run's sum: (a + b) == (b + a)
            else:
                result.value = (
                    torch.maximum(result.value, value)
                    if saved["reduction"] == "max"
                    else torch.minimum(result.value, value)
                )
            if saved["cumulated_batch_size"] is not None:
                size = saved["cumulated_batch_size"].to(result.cumulated_batch_size.device)
                result.cumulated_batch_size = result.cumulated_batch_size + size
            result._update_count = result.update_count + int(saved["update_count"])
            result._computed = None
        if lost:
            warnings.warn(
                f"ResumableEpochLogs could not carry {lost} over the resume (logged in hooks the resumed run has not "
                "called again); their epoch values cover only the batches after the resume.",
                stacklevel=2,
            )
