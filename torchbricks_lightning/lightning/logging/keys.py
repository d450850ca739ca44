"""The keys ``LightningBrickCollection`` logs, known before training, and the check of the keys callbacks monitor.

The module logs what its bricks declare: each loss as ``{stage}/{loss name}`` (in training also
``train/{name}_step`` and ``train/{name}_epoch``), the total as ``{stage}/loss``, and each metric key of a metric
brick alive in the stage as ``{stage}/{key}``, or one ``{stage}/{key}/class_{i}`` per element of a vector metric
(matrices are drawn, not logged as numbers). So a ``ModelCheckpoint(monitor=...)``, an ``EarlyStopping(monitor=...)``
or an ``lr_scheduler_monitor`` naming anything else is a mistake that Lightning would report only after the first
epoch; :func:`check_monitored_keys` reports it before training, with the closest key.

Whether a metric is a number or a vector shows only once it has computed a value: without values (``metric_values``)
a metric key is taken to be either.

Example:
    >>> from torch import nn
    >>> from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
    >>> collection = BrickCollection({
    ...     "head": BrickTrainable(nn.Linear(4, 3), input_names=["raw"], output_names=["logits"]),
    ...     "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
    ... })
    >>> sorted(logged_keys(collection, ["train", "validation"]).keys)  # doctest: +NORMALIZE_WHITESPACE
    ['train/ce', 'train/ce_epoch', 'train/ce_step', 'train/loss', 'train/loss_epoch', 'train/loss_step',
     'validation/ce', 'validation/loss']
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetrics
from torchbricks_lightning.core.stages import Stage, StageLike, parse_stage
from torchbricks_lightning.errors import ConfigError, did_you_mean
from torchbricks_lightning.lightning.logging.losses import TOTAL_LOSS
from torchbricks_lightning.lightning.logging.metrics import split_metrics

__all__ = [
    "FIT_STAGES",
    "LoggedKeys",
    "check_checkpoint_filenames",
    "check_fit_keys",
    "check_logged_names",
    "check_monitored_keys",
    "logged_keys",
    "monitored_keys",
]

FIT_STAGES = (Stage.TRAIN, Stage.VALIDATION)
"""The stages whose keys exist while ``trainer.fit`` runs."""

_STAGE_PREFIXES = tuple(f"{stage.value}/" for stage in (Stage.TRAIN, Stage.VALIDATION, Stage.TEST))
_CLASS_SUFFIX = re.compile(r"/class_\d+$")


@dataclasses.dataclass(frozen=True)
class LoggedKeys:
    """The keys logged as numbers: ``keys`` for sure, and the metric keys in ``vectors_or_numbers`` either as they
    are or with a ``/class_{i}`` suffix (their values were not computed yet)."""

    keys: frozenset[str]
    vectors_or_numbers: frozenset[str] = frozenset()

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self.keys or key in self.vectors_or_numbers:
            return True
        return _CLASS_SUFFIX.sub("", key) in self.vectors_or_numbers if _CLASS_SUFFIX.search(key) else False

    def names(self) -> list[str]:
        """Every key, sorted; a metric of unknown shape shows as ``key`` and ``key/class_<i>``."""
        return sorted([*self.keys, *self.vectors_or_numbers, *(f"{key}/class_<i>" for key in self.vectors_or_numbers)])


def logged_keys(
    collection: BrickCollection,
    stages: Iterable[StageLike] = FIT_STAGES,
    metric_values: Mapping[Stage, Mapping[str, Any]] | None = None,
) -> LoggedKeys:
    """The keys ``LightningBrickCollection`` logs as numbers in ``stages``.

    Args:
        collection: the bricks.
        stages: the stages to list.
        metric_values: metric values computed per stage (``collection.summarize(stage)``), whose shapes tell numbers
            from per-class vectors and matrices. Metric keys of a stage without values may be either.
    """
    keys: set[str] = set()
    unknown: set[str] = set()
    for stage in (parse_stage(each, where="logged_keys") for each in stages):
        keys.update(_loss_keys(collection, stage))
        metric_keys = _metric_keys(collection, stage)
        values = (metric_values or {}).get(stage)
        if values is None:
            unknown.update(f"{stage.value}/{key}" for key in metric_keys)
            continue
        known = {key: value for key, value in values.items() if key in metric_keys}
        keys.update(split_metrics(stage.value, known).scalars)
        unknown.update(f"{stage.value}/{key}" for key in metric_keys if key not in values)  # no update seen
    return LoggedKeys(frozenset(keys), frozenset(unknown))


def monitored_keys(trainer: pl.Trainer, lr_scheduler_monitor: str | None) -> list[tuple[str, str]]:
    """``(what, key)`` for every key a callback or the scheduler watches during fit, ``what`` naming the watcher.

    The keys a ``ModelCheckpoint``'s ``filename`` names count too (Lightning writes 0 for a key it does not find).
    ``EarlyStopping(strict=False)`` is left out: it accepts a key that is never logged.
    """
    watched: list[tuple[str, str]] = []
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, ModelCheckpoint):
            if callback.monitor:
                watched.append((f"ModelCheckpoint(monitor={callback.monitor!r})", callback.monitor))
            for key in _filename_keys(callback.filename):
                watched.append((f"ModelCheckpoint(filename={callback.filename!r})", key))
        elif isinstance(callback, EarlyStopping) and callback.monitor and callback.strict:
            watched.append((f"EarlyStopping(monitor={callback.monitor!r})", callback.monitor))
    if lr_scheduler_monitor:
        watched.append((f"lr_scheduler_monitor={lr_scheduler_monitor!r}", lr_scheduler_monitor))
    return watched


def check_fit_keys(
    collection: BrickCollection,
    trainer: pl.Trainer,
    lr_scheduler_monitor: str | None,
    metric_values: Mapping[Stage, Mapping[str, Any]] | None = None,
    also_logged: Iterable[str] = (),
) -> None:
    """The checks of the keys ``trainer.fit`` will use: :func:`check_checkpoint_filenames` and
    :func:`check_monitored_keys` over :func:`monitored_keys`. ``also_logged`` are the keys that the module logs
    besides the bricks' losses and metrics (``validation/delta_m``, ``train/balance/{loss}``), or prefixes of keys
    ending in ``/``.

    Raises:
        ConfigError: a key is misspelt or never logged during fit, or a checkpoint file name would make folders.
    """
    check_checkpoint_filenames(trainer.callbacks)  # type: ignore[attr-defined]
    check_monitored_keys(collection, monitored_keys(trainer, lr_scheduler_monitor), metric_values, also_logged)


def check_checkpoint_filenames(callbacks: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` for a Lightning ``ModelCheckpoint`` whose ``filename`` names a key with ``/``.

    Lightning puts the key into the file's path, so ``"{epoch}-{validation/loss:.3f}"`` writes a folder
    ``epoch=3-validation`` holding ``loss=0.123.ckpt``. A subclass that names its files itself (it overrides
    ``format_checkpoint_name``, as ``torchbricks_lightning.callbacks.KeyedModelCheckpoint`` does) is left alone.

    Example:
        >>> check_checkpoint_filenames([ModelCheckpoint(filename="{epoch}-{validation/loss:.3f}")])
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: ModelCheckpoint(filename='{epoch}-{validation/loss:.3f}') names ...
    """
    for callback in callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if type(callback).format_checkpoint_name is not ModelCheckpoint.format_checkpoint_name:
            continue
        keys = [key for key in _filename_keys(callback.filename) if "/" in key]
        if keys:
            raise ConfigError(
                f"{type(callback).__name__}(filename={callback.filename!r}) names {keys[0]!r}, whose '/' Lightning "
                "would put into the checkpoint's path, writing folders. Use "
                "torchbricks_lightning.callbacks.KeyedModelCheckpoint (the same arguments), which writes "
                f"'{keys[0].replace('/', '_')}=...' in the file name."
            )


def check_monitored_keys(
    collection: BrickCollection,
    watched: Iterable[tuple[str, str]],
    metric_values: Mapping[Stage, Mapping[str, Any]] | None = None,
    also_logged: Iterable[str] = (),
) -> None:
    """Raise :class:`ConfigError` for the first watched key that fit will not log.

    A key is refused when the module never logs it during fit and it is surely meant for the module: it starts with
    a stage (``validation/...``), or it has a ``/`` as the module's keys do and is close to one of them. Others (such
    as ``val_loss``) may come from your own callbacks' ``log`` calls, and are left to Lightning, which says so after
    the first epoch if they never come. ``ModelCheckpoint`` may also watch ``epoch`` and ``step``.

    Args:
        collection: the bricks.
        watched: ``(what, key)`` pairs, as :func:`monitored_keys` gives them.
        metric_values: metric values per stage, if known (see :func:`logged_keys`).
        also_logged: more keys the module logs, or prefixes of them ending in ``/`` (a prefix lets its keys through
            but is not listed as a key).

    Raises:
        ConfigError: a watched key is not logged during fit; the message names the watcher, the closest key and
            the keys that are logged.
    """
    fit = logged_keys(collection, FIT_STAGES, metric_values)
    test = logged_keys(collection, [Stage.TEST], metric_values)
    extra = list(also_logged)
    for what, key in watched:
        if key in fit or (what.startswith("ModelCheckpoint") and key in ("epoch", "step")):
            continue
        if any(key == name or (name.endswith("/") and key.startswith(name)) for name in extra):
            continue
        names = sorted({*fit.names(), *(name for name in extra if not name.endswith("/"))})
        hint = did_you_mean(key, names)
        if not (key.startswith(_STAGE_PREFIXES) or ("/" in key and hint)):
            continue  # perhaps logged by another callback: Lightning says so after the first epoch if not
        matrix = _matrix_shape(key, metric_values)
        if matrix is not None:
            reason = f"{key!r} is a {matrix} matrix, drawn as a picture rather than logged as a number"
        elif key in test:
            reason = f"{key!r} is logged in the test stage only, never during fit"
        else:
            reason = f"LightningBrickCollection never logs {key!r}"
        per_class = " (per-class values end in /class_<i>)" if any("/class_" in name for name in names) else ""
        raise ConfigError(
            f"{what} watches a key that fit does not log: {reason}.{hint} The keys logged during fit are "
            f"{_shortened(names)}. Monitor one of them{per_class}."
        )


def check_logged_names(collection: BrickCollection) -> None:
    """Raise :class:`ConfigError` when two things the module logs would get the same key.

    Lightning refuses a second ``self.log`` of a key within a step or an epoch, so a loss named ``loss`` (the name
    of the total), or a metric key equal to a loss name, would stop training at the first validation step.

    Raises:
        ConfigError: naming the bricks and the key, and how to rename.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss
        >>> check_logged_names(BrickCollection({"mse": BrickLoss(nn.MSELoss(), ["x", "y"], ["loss"])}))
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: A loss is named 'loss' (an output of brick 'mse'), ...
    """
    losses = {name: node.path for node in collection.brick_nodes() for name in node.loss_names}
    if TOTAL_LOSS in losses:
        raise ConfigError(
            f"A loss is named {TOTAL_LOSS!r} (an output of brick {losses[TOTAL_LOSS]!r}), the name under which the "
            f"total loss is logged ('train/{TOTAL_LOSS}', 'validation/{TOTAL_LOSS}', 'test/{TOTAL_LOSS}'). Give the "
            f"loss brick another output name, e.g. output_names=['{TOTAL_LOSS}_mse'] (a nested loss such as "
            f"'head/{TOTAL_LOSS}' is fine)."
        )
    for stage in (Stage.TRAIN, Stage.VALIDATION, Stage.TEST):
        loss_keys = set(_loss_keys(collection, stage))
        for path, brick in collection.named_bricks():
            if not (isinstance(brick, BrickMetrics) and stage in brick.alive_stages):
                continue
            for key in brick.metric_keys(path):
                if f"{stage.value}/{key}" in loss_keys:
                    raise ConfigError(
                        f"Metric brick {path!r} reports {key!r}, which is also the name of a loss (or of its "
                        f"'_step'/'_epoch' values), so both would be logged as '{stage.value}/{key}'. Rename the "
                        "metric brick (or give it a metric_name), or rename the loss."
                    )


def _loss_keys(collection: BrickCollection, stage: Stage) -> Iterator[str]:
    names = collection.loss_names(stage)
    if not names:
        return
    for name in (*names, TOTAL_LOSS):
        key = f"{stage.value}/{name}"
        yield key
        if stage is Stage.TRAIN:
            yield f"{key}_step"
            yield f"{key}_epoch"


def _metric_keys(collection: BrickCollection, stage: Stage) -> list[str]:
    return [
        key
        for path, brick in collection.named_bricks()
        if isinstance(brick, BrickMetrics) and stage in brick.alive_stages
        for key in brick.metric_keys(path)
    ]


def _filename_keys(filename: str | None) -> list[str]:
    """The keys a checkpoint filename template names, as Lightning reads them (``epoch`` and ``step`` excepted)."""
    keys = re.findall(r"\{([^{}:]+)", filename or "")
    return [key for key in dict.fromkeys(keys) if key not in ("epoch", "step")]


def _matrix_shape(key: str, metric_values: Mapping[Stage, Mapping[str, Any]] | None) -> tuple[int, ...] | None:
    stage, _, metric_key = key.partition("/")
    for each, values in (metric_values or {}).items():
        value = values.get(metric_key) if each.value == stage else None
        if isinstance(value, torch.Tensor) and value.ndim >= 2:
            return tuple(value.shape)
    return None


def _shortened(names: list[str], limit: int = 30) -> str:
    if len(names) <= limit:
        return str(names)
    return f"{names[:limit]} and {len(names) - limit} more"
