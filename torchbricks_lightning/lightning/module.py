"""LightningBrickCollection: one generic LightningModule for any brick collection."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.loggers import TensorBoardLogger

from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, LossNotFiniteError
from torchbricks_lightning.lightning.checkpoints import brick_state_dict, check_state_fits, load_module_checkpoint
from torchbricks_lightning.lightning.example_inputs import (
    EXAMPLE_INPUTS_KEY,
    example_tensors,
    record_example_inputs,
    stored_example_inputs,
)
from torchbricks_lightning.lightning.loss_logging import TOTAL_LOSS, LossMeans, samples_in
from torchbricks_lightning.lightning.metric_logging import render_matrix, split_metrics, warn_once
from torchbricks_lightning.lightning.predictions import PredictionOutputs
from torchbricks_lightning.lightning.resume import attached_trainer, load_resume_state, save_resume_state

__all__ = [
    "DEFAULT_BATCH_NAMES",
    "EXAMPLE_INPUTS_KEY",
    "LightningBrickCollection",
    "LossNotFiniteError",
]

DEFAULT_BATCH_NAMES = ("raw", "targets")
_OBJECT_ARGUMENTS = ("brick_collection", "optimizer", "lr_scheduler")
"""Arguments that are objects rather than configuration, so never saved as hyperparameters: a checkpoint of a module
built in Python needs ``brick_collection=`` to load. The CLI records their recipe instead (class paths and plain
values), so a checkpoint of a CLI run rebuilds the module alone."""

BrickValue = BrickInterface | BrickCollection | Mapping[str, BrickInterface | BrickCollection]


def _adam(parameters: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=1e-3)


class LightningBrickCollection(pl.LightningModule):
    """Train, validate, test and predict any :class:`BrickCollection` with Lightning, without subclassing.

    Lightning's steps map to stages: ``training_step`` runs ``Stage.TRAIN``, ``validation_step``
    ``Stage.VALIDATION``, ``test_step`` ``Stage.TEST`` and ``predict_step`` ``Stage.INFERENCE`` (which returns
    ``predict_output_names`` and computes no loss). Every loss is logged as ``{stage}/{loss name}`` and the optimised
    total as ``{stage}/loss``: in training each step's value as ``train/{name}_step`` and the epoch mean as
    ``train/{name}_epoch`` (also ``train/{name}`` for callbacks such as ``ModelCheckpoint(monitor=...)``), in
    validation and test the epoch mean. Epoch means weigh each batch by its number of samples, over all processes
    (see :mod:`~torchbricks_lightning.lightning.loss_logging`). At each epoch end the metrics of the stage are
    summarised, logged as ``{stage}/{metric key}`` and reset. Per-class vectors are logged as one scalar per class,
    and matrices (a confusion matrix) are drawn as pictures on loggers that show images (TensorBoard).

    Args:
        brick_collection: the bricks, as a ``BrickCollection`` or a (nested) dict of bricks.
        optimizer: a factory ``parameters -> Optimizer`` (Lightning's ``OptimizerCallable``), e.g.
            ``functools.partial(torch.optim.SGD, lr=0.1)``. Default: Adam with lr 1e-3. Frozen parameters
            are not passed to it.
        lr_scheduler: an optional factory ``optimizer -> LRScheduler`` (``LRSchedulerCallable``).
        lr_scheduler_interval: step the scheduler every ``"epoch"`` or every ``"step"``.
        lr_scheduler_monitor: the logged value a ``ReduceLROnPlateau`` watches, e.g. ``"validation/loss"``.
        batch_names: the data names of the items of a tuple or list batch; dict batches pass through.
        loss_weights: weights by loss name that override the loss bricks' own.
        check_finite_loss: raise :class:`LossNotFiniteError` when a training loss is NaN or infinite (this
            reads the loss value, one device sync per step).
        compile_model: compile the collection with ``torch.compile``; each stage gets its own graph, so alternating
            training and validation does not recompile.
        compile_kwargs: extra arguments for ``torch.compile``.
        predict_output_names: what ``predict_step`` returns; default: the inference stage's terminal outputs (the
            values no alive brick reads, such as ``head/probabilities``), not the inputs and intermediate tensors.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickLoss, BrickTrainable
        >>> module = LightningBrickCollection({
        ...     "head": BrickTrainable(nn.Linear(4, 3), input_names=["raw"], output_names=["logits"]),
        ...     "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        ... })
        >>> type(module.brick_collection).__name__, module.batch_names
        ('BrickCollection', ('raw', 'targets'))
    """

    def __init__(
        self,
        brick_collection: BrickCollection | Mapping[str, BrickValue],
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_monitor: str | None = None,
        batch_names: Sequence[str] = DEFAULT_BATCH_NAMES,
        loss_weights: Mapping[str, float] | None = None,
        check_finite_loss: bool = True,
        compile_model: bool = False,
        compile_kwargs: Mapping[str, Any] | None = None,
        predict_output_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(_OBJECT_ARGUMENTS))
        if isinstance(brick_collection, Mapping) and not isinstance(brick_collection, BrickCollection):
            brick_collection = BrickCollection(brick_collection)
        if not isinstance(brick_collection, BrickCollection):
            raise BrickDefinitionError(
                "Expected brick_collection to be a BrickCollection or a dict of bricks, but got "
                f"{type(brick_collection).__name__}."
            )
        if isinstance(batch_names, str) or not all(isinstance(name, str) for name in batch_names):
            raise BrickDefinitionError(f"Expected batch_names to be a list of names, but got {batch_names!r}.")
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ConfigError(
                f"Expected lr_scheduler_interval to be 'epoch' or 'step', but got {lr_scheduler_interval!r}."
            )
        self.brick_collection = brick_collection
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.batch_names = tuple(batch_names)
        self.loss_weights = dict(loss_weights) if loss_weights else None
        if self.loss_weights:
            known = brick_collection.loss_weights()
            unknown = [name for name in self.loss_weights if name not in known]
            if unknown:
                raise ConfigError(
                    f"loss_weights names unknown losses {unknown}; the collection's losses are {list(known)}."
                )
        if TOTAL_LOSS in brick_collection.loss_weights():
            raise ConfigError(
                f"A loss is named {TOTAL_LOSS!r}, the name under which the total loss is logged ('train/loss', ...). "
                "Give the loss brick another output name."
            )
        self.check_finite_loss = check_finite_loss
        self.compile_model = compile_model
        self.compile_kwargs = dict(compile_kwargs or {})
        self.predict_outputs = PredictionOutputs(brick_collection, predict_output_names)
        self.example_inputs: dict[str, dict[str, Any]] = {}
        self.loss_means = LossMeans()
        self._warned: set[str] = set()
        self.__dict__["_compiled"] = None

    # ---------------------------------------------------------------------------------------- running
    def _run(self, named_inputs: Mapping[str, Any], stage: Stage) -> dict[str, Any]:
        if not self.compile_model:
            return self.brick_collection(named_inputs, stage)
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            compiled = torch.compile(self.brick_collection, **self.compile_kwargs)
            self.__dict__["_compiled"] = compiled
        return compiled(named_inputs, stage)

    def named_inputs_of(self, batch: Any, stage: Stage) -> dict[str, Any]:
        """Map a batch to named inputs: dicts pass through, tuples and lists are named by ``batch_names``."""
        if isinstance(batch, Mapping):
            return dict(batch)
        if isinstance(batch, torch.Tensor):
            batch = (batch,)
        if isinstance(batch, (tuple, list)):
            if len(batch) > len(self.batch_names):
                raise ConfigError(
                    f"A {stage.value} batch has {len(batch)} items, but batch_names names {len(self.batch_names)}: "
                    f"{list(self.batch_names)}. Pass batch_names with one name per item, or return a dict batch."
                )
            return dict(zip(self.batch_names, batch, strict=False))
        raise BrickDefinitionError(
            f"Expected a {stage.value} batch to be a dict, a tuple/list or a tensor, but got {type(batch).__name__}. "
            "Return a dict of named tensors from the dataloader, or a tuple named by batch_names."
        )

    def forward(self, named_inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the ``INFERENCE`` stage."""
        return self._run(named_inputs, Stage.INFERENCE)

    def _shared_step(self, batch: Any, stage: Stage) -> tuple[dict[str, Any], torch.Tensor | None]:
        named_inputs = self.named_inputs_of(batch, stage)
        if not self.example_inputs:
            self.example_inputs = record_example_inputs(self.brick_collection, named_inputs)
        named_outputs = self._run(named_inputs, stage)
        losses = self.brick_collection.extract_losses(named_outputs)
        if not losses:
            return named_outputs, None
        total = self.brick_collection.total_loss(losses, self.loss_weights)  # the losses only, found once
        self._log_losses(stage, losses, total, samples_in(named_inputs))
        return named_outputs, total

    def _log_losses(self, stage: Stage, losses: Mapping[str, torch.Tensor], total: torch.Tensor, weight: float) -> None:
        """Add the step's losses to the stage's epoch means, each batch weighted by ``weight``; in training, log
        each step's values too (averaged over the processes, as the step's batch is split across them).

        Every loss gets the batch's number of samples as its weight; ``LossMeans.update`` takes one weight per loss
        and call, so a loss averaged over fewer elements (e.g. the labelled samples of a partially labelled batch)
        can be given its own count instead.
        """
        means = self.loss_means
        if stage is Stage.TRAIN:
            for name, value in losses.items():
                self.log(f"train/{name}_step", value, on_step=True, on_epoch=False, sync_dist=True)
                means.update(stage, name, value, weight)
            self.log("train/loss_step", total, on_step=True, on_epoch=False, sync_dist=True, prog_bar=True)
        else:
            for name, value in losses.items():
                means.update(stage, name, value, weight)
        means.update(stage, TOTAL_LOSS, total, weight)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        named_outputs, total = self._shared_step(batch, Stage.TRAIN)
        if total is None:
            raise ConfigError(
                "No loss is alive in the 'train' stage, so there is nothing to optimise. Add a BrickLoss alive in "
                f"'train' (the collection produces {self.brick_collection.output_names(Stage.TRAIN)})."
            )
        if self.check_finite_loss and not math.isfinite(total.item()):  # one sync, as bool(isfinite) would be
            losses = self.brick_collection.extract_losses(named_outputs)
            bad = {name: float(value.detach()) for name, value in losses.items() if not bool(torch.isfinite(value))}
            raise LossNotFiniteError(
                f"Training loss is not finite at step {self.global_step} (batch {batch_idx}): "
                f"{bad or float(total.detach())}. "
                "Lower the learning rate, check the inputs for NaN, or add gradient clipping."
            )
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, Stage.VALIDATION)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, Stage.TEST)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        named_outputs = self._run(self.named_inputs_of(batch, Stage.INFERENCE), Stage.INFERENCE)
        return self.predict_outputs.pick(self.brick_collection, named_outputs)

    # ---------------------------------------------------------------------------------------- metrics
    # Each stage starts its epoch from empty metrics and loss means, so a run that stopped mid-epoch in this process
    # (an exception, an interrupted notebook cell) leaves nothing behind. A mid-epoch resume does not call
    # on_train_epoch_start, so the states restored from the checkpoint are kept.
    def on_train_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.TRAIN)
        self.loss_means.reset(Stage.TRAIN)

    def on_validation_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.VALIDATION)
        self.loss_means.reset(Stage.VALIDATION)

    def on_test_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.TEST)
        self.loss_means.reset(Stage.TEST)

    def on_train_epoch_end(self) -> None:
        self._log_epoch(Stage.TRAIN)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(Stage.VALIDATION)

    def on_test_epoch_end(self) -> None:
        self._log_epoch(Stage.TEST)

    def _log_epoch(self, stage: Stage) -> None:
        if self.trainer.world_size > 1:
            # Lightning's progress bar (rank 0 only) computes the epoch's logged values before this hook, and the
            # other ranks would compute them after it. A value logged with sync_dist=True, or a Metric, takes one
            # collective to compute, and the metrics' sync below takes more: compute the logged values here on every
            # rank first, so that each rank runs the collectives in the same order (otherwise DDP deadlocks,
            # Lightning-AI/pytorch-lightning#21264).
            _ = self.trainer.callback_metrics
        metrics = self.brick_collection.summarize(stage, reset=True)
        if self.trainer.sanity_checking:
            self.loss_means.reset(stage)
            return
        self._log_loss_means(stage)
        if not metrics:
            return
        split = split_metrics(stage.value, metrics)
        if split.scalars:
            # torchmetrics has already synchronised the states across processes in compute().
            self.log_dict({name: value.float() for name, value in split.scalars.items()}, sync_dist=False)
        for name, matrix in split.matrices.items():
            self._log_matrix(name, matrix)

    def _log_loss_means(self, stage: Stage) -> None:
        """Log the epoch means of the losses as Metric objects: Lightning computes them (torchmetrics syncs their
        states across processes) after the epoch hooks, and resets them."""
        for name, metric in self.loss_means.metrics(stage).items():
            if not metric.update_called:
                continue  # this stage ran no step with this loss (every process alike: each gets batches)
            attribute = f"loss_means.{self.loss_means.attribute(stage, name)}"
            key = f"{stage.value}/{name}"
            total = name == TOTAL_LOSS
            if stage is Stage.TRAIN:
                self.log(f"{key}_epoch", metric, on_epoch=True, prog_bar=total, metric_attribute=attribute)
                self.log(key, metric, on_epoch=True, logger=False, metric_attribute=attribute)  # for monitors
            else:
                self.log(key, metric, on_epoch=True, prog_bar=total, metric_attribute=attribute)

    def _log_matrix(self, name: str, matrix: torch.Tensor) -> None:
        image_loggers = [logger for logger in self.loggers if isinstance(logger, TensorBoardLogger)]
        if image_loggers and self.trainer.is_global_zero:
            image = render_matrix(matrix)
            for logger in image_loggers:
                logger.experiment.add_image(name, image, global_step=self.global_step)
        others = [type(logger).__name__ for logger in self.loggers if not isinstance(logger, TensorBoardLogger)]
        if others:
            hint = (
                "It is shown as an image in TensorBoard only."
                if image_loggers
                else "Add a TensorBoardLogger to see it as an image."
            )
            warn_once(
                f"Metric {name!r} is a {tuple(matrix.shape)} matrix; {', '.join(others)} cannot show pictures, so it "
                f"is not logged there. {hint}",
                self._warned,
                name,
            )

    # ---------------------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> Any:
        parameters = [parameter for parameter in self.parameters() if parameter.requires_grad]
        optimizer = self.optimizer_factory(parameters)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.lr_scheduler_monitor or "validation/loss"
        elif self.lr_scheduler_monitor:
            config["monitor"] = self.lr_scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    # ---------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.example_inputs:
            checkpoint[EXAMPLE_INPUTS_KEY] = self.example_inputs
        # The interrupted epoch's train metric and loss-mean states, and the random generators (lightning/resume.py).
        save_resume_state(self, self.brick_collection, checkpoint, self.loss_means)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = attached_trainer(self)
        if trainer is not None and "state_dict" in checkpoint:
            # A Trainer restoring ckpt_path loads the weights right after this hook, with torch's own error for a
            # checkpoint of other bricks; say which names and shapes differ first. (load_from_checkpoint checks
            # the weights itself, before this hook.)
            check_state_fits(
                self.brick_collection,
                brick_state_dict(checkpoint),
                strict=self.strict_loading,
                source=str(trainer.ckpt_path or "ckpt_path"),
            )
        self.example_inputs = stored_example_inputs(checkpoint)
        # Only when trainer.fit resumes: load_from_checkpoint and validate/test/predict leave metrics and RNGs alone.
        load_resume_state(self, self.brick_collection, checkpoint, self.loss_means)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike[str],
        map_location: Any = None,
        strict: bool | None = None,
        *,
        trusted_class_prefixes: Sequence[str] = (),
        **kwargs: Any,
    ) -> LightningBrickCollection:
        """Rebuild a module from a checkpoint, safely.

        The file is read with ``weights_only=True`` (no arbitrary code runs), and the classes its configuration
        asks for must come from torchbricks_lightning, torch, torchvision or torchmetrics, unless you add prefixes
        to ``trusted_class_prefixes``. A module created by the CLI is rebuilt from the checkpoint alone; one built
        in Python needs ``brick_collection=`` (built as it was for training). See
        :func:`~torchbricks_lightning.lightning.checkpoints.load_module_checkpoint`.

        Raises:
            CheckpointError: the file is unreadable or truncated, or does not fit the bricks.
            UntrustedCheckpointError: the checkpoint holds code or names an untrusted class.
        """
        return load_module_checkpoint(
            super().load_from_checkpoint,
            checkpoint_path,
            map_location=map_location,
            strict=strict,
            trusted_class_prefixes=trusted_class_prefixes,
            hyper_parameters_key=cls.CHECKPOINT_HYPER_PARAMS_KEY,
            owner=cls,
            **kwargs,
        )

    def example_named_inputs(self, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs shaped like the export inputs seen in training (recorded in checkpoints).

        They come from a private generator seeded with ``seed``, never from the global one (see
        :func:`~torchbricks_lightning.lightning.example_inputs.example_tensors`).

        Raises:
            ConfigError: no batch was seen and the checkpoint held no example inputs.
        """
        return example_tensors(self.example_inputs, batch_size=batch_size, seed=seed)
