"""Which training steps' logged values reach a logger, asked from public Trainer attributes.

Lightning writes the values logged on step to its loggers only at some steps (its logger connector's
``should_update_logs``): every ``log_every_n_steps`` optimizer steps, and at the step where training stops
(``trainer.should_stop``); under ``fast_dev_run``, every step; with ``log_every_n_steps=0``, never
(:func:`loggers_write_step`). A value logged on the other steps reaches no logger, so the module skips logging it,
except at the last batch of an epoch and the last step of training (:func:`step_values_needed`): there the logged
values also become ``trainer.callback_metrics``, which callbacks read at the epoch's end and users after ``fit``, so
every key is there as before. It must be asked from the module's ``on_train_batch_end`` hook: Lightning writes right
after that hook, once the optimizer has stepped (``trainer.global_step`` counts the step) and every callback's
``on_train_batch_end`` has run (a callback that stops training there sets ``should_stop`` first).

A callback that reads a step value itself (``ModelCheckpoint(monitor="train/ce_step")``, a scheduler watching one)
reads it at every step, before the module's hook: :func:`watches_step_keys` tells whether one does.

Example:
    >>> from types import SimpleNamespace
    >>> trainer = SimpleNamespace(fast_dev_run=False, log_every_n_steps=2, global_step=4, should_stop=False,
    ...                           is_last_batch=False, max_steps=-1)
    >>> loggers_write_step(trainer), loggers_write_step(SimpleNamespace(**{**vars(trainer), "global_step": 5}))
    (True, False)
    >>> step_values_needed(SimpleNamespace(**{**vars(trainer), "global_step": 5, "is_last_batch": True}))
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl

__all__ = ["loggers_write_step", "step_values_needed", "watches_step_keys"]

STEP_SUFFIX = "_step"


def loggers_write_step(trainer: pl.Trainer) -> bool:
    """Whether the loggers write the values logged in this training batch (ask from ``on_train_batch_end``)."""
    if getattr(trainer, "fast_dev_run", False):  # the Trainer's arguments, set as attributes by its constructor
        return True
    every = int(getattr(trainer, "log_every_n_steps", 1))
    if not every:
        return False
    return trainer.global_step % every == 0 or bool(trainer.should_stop)


def step_values_needed(trainer: pl.Trainer) -> bool:
    """Whether to log this training batch's step values: the loggers write them, or the batch is the epoch's last
    or training's last (its values stay in ``trainer.callback_metrics``). Ask from ``on_train_batch_end``."""
    if loggers_write_step(trainer) or trainer.is_last_batch:
        return True
    max_steps = trainer.max_steps
    return max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps


def watches_step_keys(callbacks: Iterable[Any], also_watched: Iterable[str] = ()) -> bool:
    """Whether a callback's ``monitor`` (or one of ``also_watched``, e.g. the keys a checkpoint's file name names, or
    the scheduler's monitor) is a step value (``..._step``).

    Example:
        >>> from pytorch_lightning.callbacks import ModelCheckpoint
        >>> watches_step_keys([ModelCheckpoint(monitor="train/ce_step")]), watches_step_keys([ModelCheckpoint()])
        (True, False)
    """
    watched = [getattr(callback, "monitor", None) for callback in callbacks]
    return any(isinstance(key, str) and key.endswith(STEP_SUFFIX) for key in [*watched, *also_watched])
