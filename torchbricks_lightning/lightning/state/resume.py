"""What a checkpoint carries beyond weights and loop counters, so that a resumed run matches an uninterrupted one.

Lightning checkpoints the weights, the optimisers, the loop progress and the state of resumable train loaders
(see :class:`~torchbricks_lightning.datamodules.ResumableDataLoader`). For a run killed mid-epoch and resumed with
``trainer.fit(..., ckpt_path="last")`` to end exactly as an uninterrupted run, a checkpoint written by
:class:`~torchbricks_lightning.lightning.module.LightningBrickCollection` also carries, under
:data:`RESUME_STATE_KEY`:

- **the train metric states of the interrupted epoch**: torchmetrics keeps them out of ``state_dict()``, so the
  train metrics of that epoch would otherwise cover only the batches after the restart. These are the metric
  bricks' states and the loss means' (the weighted sums behind ``train/{loss}_epoch``, kept as torchmetrics
  metrics by the module, see :mod:`~torchbricks_lightning.lightning.logging.losses`);
- **the random number generators** (torch, CUDA, Python's ``random``, NumPy), so dropout and other random
  layers draw the same numbers.

The module's checkpoint hooks call :func:`save_resume_state` and :func:`load_resume_state` (through
:class:`~torchbricks_lightning.lightning.state.checkpoint.CheckpointState`): nothing to add to the Trainer. Only
public Lightning and torchmetrics APIs are used: whether a checkpoint was written in the middle of an epoch is told
by the module's own count of the epoch's training batches, which the resume state carries.

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

from torchbricks_lightning.core.bricks import LOSS_STAGES
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.distributed import global_rank, world_size
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ResumeStateError
from torchbricks_lightning.lightning.logging.losses import LossMeans
from torchbricks_lightning.lightning.state.metric_states import (
    collect_loss_states,
    collect_metric_states,
    restore_loss_states,
    restore_metric_states,
)
from torchbricks_lightning.random_state import capture_random_state, random_state_problems, restore_random_state

__all__ = ["RESUME_STATE_KEY", "load_resume_state", "save_resume_state"]

RESUME_STATE_KEY = "torchbricks_resume"
"""Checkpoint key of the state written by :func:`save_resume_state`."""

_VERSION = 2


# ------------------------------------------------------------------------------------------------ processes
def _gather(local: Any) -> list[Any]:
    """Every process's ``local`` (a picklable object), in rank order. All processes must call it together."""
    world = world_size()
    if world == 1:
        return [local]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def _fitting(trainer: pl.Trainer | None) -> bool:
    return trainer is not None and trainer.state.fn == TrainerFn.FITTING


def _mid_epoch(trainer: pl.Trainer, batches_this_epoch: int) -> bool:
    """Whether the current training epoch has started and has batches left, so a resumed run continues it.

    ``batches_this_epoch`` is the module's own count of the training batches it ran in this epoch (Lightning's loop
    counters are internal). When a checkpoint is written after the last batch of an epoch but before the epoch's end
    (for instance by ``ModelCheckpoint(every_n_train_steps=...)`` on that batch), Lightning resumes at the next epoch
    and does not run the end of that epoch again, so the state of that epoch must not be restored: it would leak into
    the next.
    """
    return _fitting(trainer) and 0 < batches_this_epoch < trainer.num_training_batches


# ------------------------------------------------------------------------------------------------ the module's hooks
def save_resume_state(
    trainer: pl.Trainer | None,
    collection: BrickCollection,
    checkpoint: dict[str, Any],
    loss_means: LossMeans,
    batches_this_epoch: int,
) -> None:
    """Write what a resume needs into ``checkpoint`` (call from ``on_save_checkpoint``, in every process).

    Under DDP each process holds the metric states of its own share of the batches, and its own generators.
    Rather than reducing the metric states into one global state, every process's states are gathered
    (``all_gather_object``) and saved per rank, and each process restores its own on resume. This keeps every
    reduction exact (sums, concatenations in rank order, means, maxima, custom reductions alike: torchmetrics
    later reduces the same per-process states it would have reduced without the crash), and it is also what the
    generators need. Lightning calls ``on_save_checkpoint`` in every process before rank 0 writes the file, so
    the gathering is safe. The cost is that a mid-epoch resume needs the same number of processes.

    Nothing is written outside ``trainer.fit``. Metric and loss-mean states are written only in the middle of an
    epoch; a checkpoint written when the epoch's batches are all done holds none (see :func:`_mid_epoch`).

    Args:
        trainer: the Trainer the module is attached to, or None.
        collection: the bricks.
        checkpoint: the checkpoint being written.
        loss_means: the module's epoch means of the losses.
        batches_this_epoch: the training batches the module has run in the current epoch (saved, so that a resumed
            run goes on counting).
    """
    if trainer is None or not _fitting(trainer):
        return
    mid_epoch = _mid_epoch(trainer, batches_this_epoch)
    local = {
        "metrics": collect_metric_states(collection, Stage.TRAIN) if mid_epoch else None,
        "losses": collect_loss_states(loss_means, Stage.TRAIN) if mid_epoch else None,
        "rng": capture_random_state(),
    }
    per_rank = _gather(local)
    checkpoint[RESUME_STATE_KEY] = {
        "version": _VERSION,
        "epoch": trainer.current_epoch,
        "mid_epoch": mid_epoch,
        "batches_this_epoch": batches_this_epoch if mid_epoch else 0,
        "world_size": len(per_rank),
        "metric_states": [entry["metrics"] for entry in per_rank] if mid_epoch else None,
        "loss_states": [entry["losses"] for entry in per_rank] if mid_epoch else None,
        "rng_states": [entry["rng"] for entry in per_rank],
    }


def load_resume_state(
    trainer: pl.Trainer | None,
    collection: BrickCollection,
    checkpoint: Mapping[str, Any],
    loss_means: LossMeans,
    device: torch.device | str = "cpu",
) -> int:
    """Restore what :func:`save_resume_state` wrote (call from ``on_load_checkpoint``).

    It acts only when ``trainer.fit`` resumes from the checkpoint. ``load_from_checkpoint`` (no trainer) and
    ``trainer.validate/test/predict(ckpt_path=...)`` leave the metrics and the generators alone, so loading a
    checkpoint for inference changes nothing but the weights. When resuming, every metric of every stage is reset
    (states left by an earlier run in this process must not leak in), then this process's train metric and
    loss-mean states of the interrupted epoch and its generators are restored.

    Returns:
        The number of training batches the interrupted epoch had run (0 when it was not interrupted).

    Raises:
        ResumeStateError: the checkpoint's resume state is malformed, stopped mid-epoch with another number of
            processes, or its metric states do not fit the bricks.
    """
    if trainer is None or not _fitting(trainer):
        return 0
    collection.reset_metrics()
    for stage in LOSS_STAGES:
        loss_means.reset(stage)
    state = checkpoint.get(RESUME_STATE_KEY)
    if state is None:
        return 0  # written outside trainer.fit
    state = _checked(state)
    world, rank = world_size(), global_rank()
    saved_world = state["world_size"]
    batches = 0
    if state["mid_epoch"]:
        if saved_world != world:
            raise ResumeStateError(
                f"The checkpoint stopped in the middle of epoch {state['epoch']} with {saved_world} processes, and "
                f"this run has {world}: each process's share of that epoch's batches and metric states is gone. "
                f"Resume with {saved_world} processes, or from a checkpoint written at the end of an epoch."
            )
        if state.get("metric_states") is not None:
            restore_metric_states(collection, state["metric_states"][rank], Stage.TRAIN)
        restore_loss_states(loss_means, state["loss_states"][rank], Stage.TRAIN, device)
        batches = state["batches_this_epoch"]
    rng_states = state["rng_states"]
    if len(rng_states) == world:
        restore_random_state(rng_states[rank])
    else:
        warnings.warn(
            f"The checkpoint holds the random generator states of {len(rng_states)} processes and this run has "
            f"{world}, so they are not restored: random layers (dropout) will draw other numbers than an "
            "uninterrupted run would.",
            stacklevel=2,
        )
    return batches


_FIELDS: dict[str, type] = {
    "epoch": int,
    "mid_epoch": bool,
    "batches_this_epoch": int,
    "world_size": int,
    "rng_states": list,
}


def _checked(state: object) -> Mapping[str, Any]:
    """``state`` if it is a resume state this version reads, with every field it needs; else raise.

    Example:
        >>> _checked({"version": _VERSION, "epoch": 0, "mid_epoch": True, "world_size": 1, "rng_states": []})
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ResumeStateError: The checkpoint's 'torchbricks_resume' entry is malformed: ...
    """
    fix = (
        "It was written by another torchbricks_lightning version or altered: resume with that version, or delete "
        "the entry to resume without the interrupted epoch's metric states."
    )
    if not isinstance(state, Mapping) or state.get("version") != _VERSION:
        raise ResumeStateError(
            f"The checkpoint's {RESUME_STATE_KEY!r} entry is not a resume state of version [{_VERSION}]. {fix}"
        )
    problems = [
        f"{name!r} is missing" if name not in state else f"{name!r} is a {type(state[name]).__name__}"
        for name, kind in _FIELDS.items()
        if name not in state or type(state[name]) is not kind  # exact: a bool is not a count
    ]
    if not problems:
        problems = [
            f"{name!r} is {state[name]}, below {low}"
            for name, low in (("epoch", 0), ("batches_this_epoch", 0), ("world_size", 1))
            if state[name] < low
        ]
    if not problems and state["mid_epoch"]:
        problems = [
            f"{name!r} does not hold the states of {state['world_size']} processes"
            for name in ("metric_states", "loss_states")
            if not (name == "metric_states" and state.get(name) is None)  # None: restore no metric states
            and (
                not isinstance(state.get(name), list)
                or len(state[name]) != state["world_size"]
                or not all(isinstance(entry, Mapping) for entry in state[name])
            )
        ]
    if not problems:
        problems = [
            f"the random generator states of rank {rank}: {'; '.join(found)}"
            for rank, entry in enumerate(state["rng_states"])
            if (found := random_state_problems(entry))
        ]
    if problems:
        problem = "; ".join(problems)
        raise ResumeStateError(f"The checkpoint's {RESUME_STATE_KEY!r} entry is malformed: {problem}. {fix}")
    return state
