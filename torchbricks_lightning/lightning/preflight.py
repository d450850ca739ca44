"""The pre-fit check: real batches through the training and validation graphs, before anything is written.

A recipe whose bricks do not fit together (a head's ``in_channels`` that differ from the channels of its backbone,
a data name the batches lack) or do not fit the data (a head of 5 classes on ten-class labels) otherwise fails
minutes into a run, after the sanity check or the first epoch, with log and checkpoint folders already written.
:func:`check_one_batch` finds it from a few samples, before ``trainer.fit``; the CLI runs it before every ``fit``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, RecipeError, TorchBricksError
from torchbricks_lightning.lightning.batches import add_batch_names_note, failing_brick, no_training_loss_error
from torchbricks_lightning.lightning.logging.keys import check_fit_keys
from torchbricks_lightning.lightning.module import LightningBrickCollection
from torchbricks_lightning.random_state import preserved_random_state

__all__ = ["check_one_batch"]

_CHECKED_STAGES = (Stage.VALIDATION, Stage.TRAIN)
"""Validation first: it is what Lightning's sanity check would run first."""


def check_one_batch(
    module: LightningBrickCollection,
    datamodule: pl.LightningDataModule,
    samples: int = 2,
    trainer: pl.Trainer | None = None,
) -> bool:
    """Run the first training batch through the training graph and the first validation batch through the
    validation graph, metrics included, and check the keys that ``trainer``'s callbacks monitor.

    The datamodule is prepared and set up for ``"fit"``. Each stage's first batch (from the training loader, and from
    the validation loader when it has a batch, else the training batch again) is compared with the inputs the stage
    needs, and a few of its samples run through every brick alive in the stage, in eval mode and without gradients:
    the first ``samples``, and for every integer tensor (class labels) the samples holding its smallest and largest
    values, so that labels outside a head's classes show. The losses are summed and the metrics computed, as at the
    end of an epoch. The batches are not moved: call it before ``fit``, while the module is on the CPU. Only a few
    samples run through the bricks, besides the datamodule's own ``prepare_data`` and ``setup``.

    With ``trainer``, the keys its ``ModelCheckpoint`` and ``EarlyStopping`` callbacks monitor, and the module's
    ``lr_scheduler_monitor``, are checked against the keys the module will log (the computed metrics tell numbers
    from per-class vectors), so a typo is reported now rather than after the first epoch.

    It leaves no trace: the random generators are restored (training draws the same numbers with or without the
    check), the metrics of both stages are reset, every module's train/eval mode is put back, batch-norm statistics
    are not updated (eval mode), and nothing is written.

    It runs in the process of global rank 0 only (``rank_zero_only.rank == 0``) and returns ``False`` elsewhere,
    without touching the datamodule. Every process runs the same recipe, so one check finds its mistakes, and only
    one process calls ``prepare_data`` (which may download) before ``fit``. Under Lightning's DDP launcher,
    rank 0 runs this before ``trainer.fit`` starts the other processes; ``fit`` then prepares the data again where
    Lightning does (once per node), which for a downloaded dataset finds it in place.

    Args:
        module: the module to check.
        datamodule: the datamodule it will be fitted on.
        samples: how many samples of each batch to run besides those holding the extreme labels (all of them when
            the tensors disagree on the batch size).
        trainer: the trainer that will fit, whose monitored keys to check.

    Returns:
        Whether the check ran (``False`` on processes other than rank 0).

    Raises:
        MissingInputError: a batch lacks a name that a stage needs.
        RecipeError: a brick fails on a batch (e.g. sizes of connected bricks that do not agree, labels outside a
            head's classes); the message names the brick and the stage, and for a tuple batch how its items were
            named.
        ConfigError: no loss is alive in training, a loader yields no batch, or a monitored key is never logged
            during fit.
        BrickDefinitionError: ``module`` is not a :class:`LightningBrickCollection`.
    """
    if not isinstance(module, LightningBrickCollection):
        raise BrickDefinitionError(
            f"Expected module to be a LightningBrickCollection, but got {type(module).__name__}."
        )
    if _global_rank() != 0:
        return False
    collection = module.brick_collection
    with preserved_random_state():
        datamodule.prepare_data()
        datamodule.setup("fit")
        train_batch = _first_training_batch(datamodule.train_dataloader())
        validation_batch = _first_validation_batch(datamodule)
        batches = {Stage.TRAIN: (train_batch, "training"), Stage.VALIDATION: (train_batch, "training")}
        if validation_batch is not None:
            batches[Stage.VALIDATION] = (validation_batch, "validation")
        named = {stage: module.named_inputs_of(batch, stage) for stage, (batch, _) in batches.items()}
        for stage in _CHECKED_STAGES:
            collection.check_input_names(stage, list(named[stage]))
        metric_values = {
            stage: _run_once(
                collection,
                module.loss_weights,
                module.batch_names,
                _informative_samples(named[stage], samples),
                stage,
                *batches[stage],
            )
            for stage in _CHECKED_STAGES
        }
    if trainer is not None:
        check_fit_keys(
            collection, trainer, module.lr_scheduler_monitor, metric_values, also_logged=module.also_logged_keys()
        )
    return True


def _global_rank() -> int:
    """This process's global rank, which Lightning reads from the launcher's environment variables at import (0 when
    there is a single process). The process group does not exist yet before ``fit``, so it cannot be asked."""
    return int(getattr(rank_zero_only, "rank", 0))


def _first_validation_batch(datamodule: pl.LightningDataModule) -> Any:
    """The first batch of the datamodule's (first) validation loader, or None when it has no loader or no batch."""
    try:
        loader = datamodule.val_dataloader()
    except (MisconfigurationException, NotImplementedError):
        return None  # LightningDataModule's own val_dataloader: the datamodule defines none
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    elif isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    return None if loader is None else next(iter(loader), None)


def _first_training_batch(loader: Any) -> Any:
    try:
        return next(iter(loader))
    except StopIteration:
        raise ConfigError(
            "The training loader yields no batch, so there is nothing to train on. Check the dataset's size against "
            "the batch size (and drop_last)."
        ) from None


def _informative_samples(named_inputs: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of a batch, and for every integer tensor the samples holding its smallest and largest
    values (class labels, where a label outside a head's classes shows), so that checking a large model on CPU stays
    cheap.

    Tensors are cut along their first dimension when every tensor of the batch has the same first size; otherwise
    the batch is kept whole.
    """
    tensors = {name: value for name, value in named_inputs.items() if isinstance(value, torch.Tensor) and value.ndim}
    sizes = {value.shape[0] for value in tensors.values()}
    if len(sizes) != 1 or next(iter(sizes)) <= n:
        return dict(named_inputs)
    chosen = set(range(n))
    for value in tensors.values():
        if value.is_floating_point() or value.is_complex() or value.dtype is torch.bool or not value.numel():
            continue
        per_sample = value.reshape(value.shape[0], -1)
        chosen.update((int(per_sample.amax(dim=1).argmax()), int(per_sample.amin(dim=1).argmin())))
    index = torch.tensor(sorted(chosen))
    return {
        name: value.index_select(0, index.to(value.device)) if name in tensors else value
        for name, value in named_inputs.items()
    }


def _run_once(
    collection: BrickCollection,
    loss_weights: Mapping[str, float] | None,
    batch_names: Sequence[str],
    named_inputs: Mapping[str, Any],
    stage: Stage,
    batch: Any,
    loader: str,
) -> dict[str, torch.Tensor]:
    """Run ``stage`` on some samples in eval mode without gradients, sum its losses and compute its metrics, then put
    the modes and the metrics back. Returns the computed metrics."""
    training = {submodule: submodule.training for submodule in collection.modules()}
    collection.eval()
    try:
        with torch.no_grad():
            named_outputs = collection(named_inputs, stage)
            losses = collection.extract_losses(named_outputs)
            if losses:
                collection.total_loss(losses, loss_weights)
            elif stage is Stage.TRAIN:
                raise no_training_loss_error(collection)
            return collection.summarize(stage)
    except Exception as err:
        brick = failing_brick(err, collection)
        if isinstance(err, TorchBricksError) and brick is None:
            raise  # the collection's own checks name the brick, the name and the stage
        note = add_batch_names_note(err, batch, batch_names, collection)
        raise _recipe_error(err, stage, loader, brick, note) from err
    finally:
        for submodule, was_training in training.items():
            submodule.training = was_training
        collection.reset_metrics(stage)


def _recipe_error(err: Exception, stage: Stage, loader: str, brick: str | None, batch_note: str | None) -> RecipeError:
    notes = [note for note in getattr(err, "__notes__", []) if note.startswith("While running brick")]
    if brick is not None and not notes:
        notes.append(f"While running brick {brick!r} in stage {stage.value!r}.")
    if batch_note is not None:
        notes.append(batch_note)
    first_line = (str(err).strip().splitlines() or [""])[0].rstrip(".")
    fix = (
        ""
        if isinstance(err, TorchBricksError)  # its message says what to do
        else " Make the sizes of connected bricks agree (e.g. a head's in_channels with the channels its backbone "
        "outputs), and the data fit the bricks."
    )
    return RecipeError(
        f"The bricks fail on samples of the first {loader} batch in stage {stage.value!r}, so training was "
        f"not started: {type(err).__name__}: {first_line}. {' '.join(notes)}{fix}"
    )
