"""LightningBrickCollection: one generic LightningModule for any brick collection."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable

from torchbricks_lightning.checkpoints.reading import load_module_checkpoint
from torchbricks_lightning.core.bricks import LOSS_STAGES
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError, LossNotFiniteError
from torchbricks_lightning.lightning.batches import (
    add_batch_names_note,
    name_batch,
    no_training_loss_error,
    samples_in,
    warn_empty_batch,
)
from torchbricks_lightning.lightning.brick_arguments import BricksArgument, as_collection, checked_loss_weights
from torchbricks_lightning.lightning.logging import warning_filters
from torchbricks_lightning.lightning.logging.epoch import LossLogging
from torchbricks_lightning.lightning.logging.images import ImageLogging
from torchbricks_lightning.lightning.logging.keys import check_fit_keys, check_logged_names, logged_keys, monitored_keys
from torchbricks_lightning.lightning.logging.losses import LossMeans
from torchbricks_lightning.lightning.optim.optimizers import Optimisation, OptimisationPlan
from torchbricks_lightning.lightning.predictions import PredictionOutputs
from torchbricks_lightning.lightning.state.checkpoint import CheckpointState
from torchbricks_lightning.lightning.state.example_inputs import EXAMPLE_INPUTS_KEY, example_tensors
from torchbricks_lightning.lightning.task_balancing import MultiTask
from torchbricks_lightning.multitask.balancers import LossBalancer
from torchbricks_lightning.multitask.score import DeltaM

__all__ = [
    "DEFAULT_BATCH_NAMES",
    "EXAMPLE_INPUTS_KEY",
    "LightningBrickCollection",
]

DEFAULT_BATCH_NAMES = ("raw", "targets")
_OBJECT_ARGUMENTS = ("brick_collection", "optimizer", "lr_scheduler", "loss_balancer", "delta_m")
"""Arguments that are objects rather than configuration, so never saved as hyperparameters: a checkpoint of a module
built in Python needs ``brick_collection=`` to load. The CLI records their recipe instead (class paths and plain
values), so a checkpoint of a CLI run rebuilds the module alone."""

CompileOption = str | int | float | bool | None  # plain values, so a checkpoint's copy is data, never a class to build
CompileKwargs = Mapping[str, CompileOption | Mapping[str, CompileOption]]


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
    (see :mod:`~torchbricks_lightning.lightning.logging.losses`); a loss that reports its labelled count (a
    :class:`~torchbricks_lightning.multitask.BrickLabelledLoss`, as the heads' losses do) is weighted by that count
    instead, and under DDP its training loss is normalised by the labelled count of all processes (see
    :func:`~torchbricks_lightning.multitask.scale_to_global_counts`). At each epoch end the metrics of the stage are
    summarised, logged as ``{stage}/{metric key}`` and reset. Per-class vectors are logged as one scalar per class;
    matrices (a confusion matrix) and visualisation pictures go to loggers that take images (:mod:`.logging.images`).

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
        param_groups: groups by brick path pattern (first match wins) with optimiser options or ``lr_scale``, e.g.
            ``[{"bricks": "backbone", "lr": 1e-4}]``; see :mod:`~torchbricks_lightning.lightning.optim.param_groups`.
        lr: the default group's learning rate and the base of ``lr_scale``, tuned by Lightning's LR finder
            (``Tuner.lr_find(module)``); None keeps the optimiser's own. See :mod:`.optimizers`.
        decay_norms_and_biases: False puts biases and norm weights in ``"{group}/no_decay"`` groups (no decay).
        unfreeze: ``{brick pattern: epoch}``: those bricks stay frozen, in eval mode, until that epoch (counted from
            0). See :mod:`~torchbricks_lightning.lightning.optim.finetuning`.
        loss_balancer: how the training losses become the optimised total (see
            :mod:`torchbricks_lightning.multitask`): None for the static weights, or e.g. ``UncertaintyWeighting()``,
            ``DynamicWeightAverage()``, ``PCGrad(shared_name="features")``. Its weights are logged as
            ``train/balance/...``; validation and test totals keep the static weights.
        delta_m: a :class:`~torchbricks_lightning.multitask.DeltaM` with per-metric baselines, logged as
            ``validation/delta_m`` at each validation epoch end and ``test/delta_m`` at the end of a test.
        predict_output_names: what ``predict_step`` returns; default: the inference stage's terminal outputs (the
            values no alive brick reads, such as ``head/probabilities``), not the inputs and intermediate tensors.

    The module is a thin orchestrator: its hooks call the components that own the state, :class:`~torchbricks_lightning.
    lightning.logging.epoch.LossLogging` (losses and epoch logs), :class:`~torchbricks_lightning.lightning.optim.
    optimizers.Optimisation` (groups, optimiser, scheduler, unfreeze), :class:`~torchbricks_lightning.lightning.state.
    checkpoint.CheckpointState` (what a checkpoint carries beyond weights) and :class:`~torchbricks_lightning.
    lightning.task_balancing.MultiTask` (balancer, Δm, labelled counts).

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
        brick_collection: BricksArgument,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_monitor: str | None = None,
        batch_names: Sequence[str] = DEFAULT_BATCH_NAMES,
        loss_weights: Mapping[str, float] | None = None,
        check_finite_loss: bool = True,
        compile_model: bool = False,
        compile_kwargs: CompileKwargs | None = None,
        param_groups: Sequence[Mapping[str, Any]] | None = None,
        lr: float | None = None,
        decay_norms_and_biases: bool = True,
        unfreeze: Mapping[str, int] | None = None,
        loss_balancer: LossBalancer | None = None,
        delta_m: DeltaM | None = None,
        predict_output_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(batch_names, tuple):
            batch_names = list(batch_names)  # saved from this frame: hparams.yaml stays plain YAML (yaml.safe_load)
        self.save_hyperparameters(ignore=list(_OBJECT_ARGUMENTS))
        brick_collection = as_collection(brick_collection)
        if isinstance(batch_names, str) or not all(isinstance(name, str) for name in batch_names):
            raise BrickDefinitionError(f"Expected batch_names to be a list of names, but got {batch_names!r}.")
        self.brick_collection = brick_collection
        self.batch_names = tuple(batch_names)
        self.loss_weights = checked_loss_weights(brick_collection, loss_weights)
        check_logged_names(brick_collection)  # a loss named 'loss', a metric named like a loss
        self.lr = lr  # read and set by Lightning's LR finder
        self.optimisation = Optimisation(
            brick_collection,
            optimizer,
            lr_scheduler,
            lr_scheduler_interval,
            lr_scheduler_monitor,
            param_groups,
            lr,
            decay_norms_and_biases,
            unfreeze,
        )
        self.check_finite_loss = check_finite_loss
        self.compile_model = compile_model
        self.compile_kwargs: dict[str, Any] = dict(compile_kwargs or {})
        self.predict_outputs = PredictionOutputs(brick_collection, predict_output_names)
        self.checkpoint_state = CheckpointState()
        self.loss_means = LossMeans()  # a submodule: moves with the module; logged as Metric objects from it
        self.loss_logging = LossLogging(self.loss_means, "loss_means", self.loss_weights)
        self.image_logging = ImageLogging()  # the visualisation bricks' pictures, a few per epoch
        self.multitask = MultiTask(brick_collection, self.loss_weights, loss_balancer, delta_m)
        self.loss_balancer = loss_balancer  # a submodule: its parameters and buffers are trained and checkpointed
        self.delta_m = delta_m
        self.__dict__["_compiled"] = None

    @property
    def example_inputs(self) -> dict[str, dict[str, Any]]:
        """The shape and dtype of each export input seen in training (recorded in checkpoints)."""
        return self.checkpoint_state.example_inputs

    @example_inputs.setter
    def example_inputs(self, value: dict[str, dict[str, Any]]) -> None:
        self.checkpoint_state.example_inputs = value

    @property
    def optimisation_plan(self) -> OptimisationPlan:
        """The parameter groups and unfreeze schedule, checked at construction."""
        return self.optimisation.plan

    @property
    def lr_scheduler_monitor(self) -> str | None:
        """The logged value the scheduler watches."""
        return self.optimisation.lr_scheduler_monitor

    # ---------------------------------------------------------------------------------------- running
    def _run(self, named_inputs: Mapping[str, Any], stage: Stage) -> dict[str, Any]:
        if not self.compile_model:
            return self.brick_collection(named_inputs, stage)
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            compiled = torch.compile(self.brick_collection, **self.compile_kwargs)
            self.__dict__["_compiled"] = compiled
        # The metric updates (not traceable) run eagerly after the compiled call, so the stage stays one graph.
        named_outputs: dict[str, Any] = compiled(named_inputs, stage, update_metrics=False)
        self.brick_collection.update_metrics(named_outputs, stage)
        return named_outputs

    def named_inputs_of(self, batch: Any, stage: Stage) -> dict[str, Any]:
        """Map a batch to named inputs: dicts pass through, tuples and lists are named by ``batch_names``."""
        return name_batch(batch, self.batch_names, stage)

    def forward(self, named_inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the ``INFERENCE`` stage."""
        return self._run(named_inputs, Stage.INFERENCE)

    def _shared_step(
        self, batch: Any, stage: Stage, batch_idx: int
    ) -> tuple[dict[str, Any], torch.Tensor | None] | None:
        named_inputs = self.named_inputs_of(batch, stage)
        collection = self.brick_collection
        samples = samples_in(named_inputs)
        if samples == 0:  # an empty batch: its mean losses are NaN, skip it (lightning/batches.py)
            self.checkpoint_state.see_batch(collection, None, training=stage is Stage.TRAIN)
            warn_empty_batch(stage, batch_idx)
            return None
        self.checkpoint_state.see_batch(collection, named_inputs, training=stage is Stage.TRAIN)
        try:
            if stage is Stage.TRAIN:
                with self.multitask.training_pass():  # a gradient-level balancer branches the shared tensor here
                    named_outputs = self._run(named_inputs, stage)
            else:
                named_outputs = self._run(named_inputs, stage)
        except Exception as err:
            add_batch_names_note(err, batch, self.batch_names, collection)  # how a tuple batch was named
            raise
        self.image_logging.add_step(collection, stage, named_outputs)  # nothing once the epoch's pictures are drawn
        losses = collection.extract_losses(named_outputs)
        if not losses:
            return named_outputs, None
        counts = self.multitask.labelled_counts(collection, named_outputs)
        optimised, total = self.multitask.total(collection, stage, losses, counts)
        self.loss_logging.add_step(self, stage, losses, optimised, total, samples, counts)
        return named_outputs, total

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        step = self._shared_step(batch, Stage.TRAIN, batch_idx)
        if step is None:
            return None  # an empty batch: Lightning skips the optimisation step
        named_outputs, total = step
        if total is None:
            raise no_training_loss_error(self.brick_collection)
        if self.check_finite_loss and not math.isfinite(total.item()):  # one sync, as bool(isfinite) would be
            losses = self.brick_collection.extract_losses(named_outputs)
            bad = {name: float(value.detach()) for name, value in losses.items() if not bool(torch.isfinite(value))}
            raise LossNotFiniteError(
                f"Training loss is not finite at step {self.global_step} (batch {batch_idx}): "
                f"{bad or float(total.detach())}. " + self.multitask.non_finite_hint()
            )
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, Stage.VALIDATION, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, Stage.TEST, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        try:
            named_outputs = self._run(self.named_inputs_of(batch, Stage.INFERENCE), Stage.INFERENCE)
        except Exception as err:
            add_batch_names_note(err, batch, self.batch_names, self.brick_collection)
            raise
        return self.predict_outputs.pick(self.brick_collection, named_outputs)

    def setup(self, stage: str) -> None:
        own = logged_keys(self.brick_collection, LOSS_STAGES)  # Lightning's sync advice is wrong for these only
        warning_filters.install([*own.keys, *self.multitask.also_logged_keys()], per_class=own.vectors_or_numbers)
        if stage == "fit":  # a typo in a monitored key, found before training rather than after the first epoch
            trainer = self.trainer
            check_fit_keys(
                self.brick_collection, trainer, self.lr_scheduler_monitor, also_logged=self.also_logged_keys()
            )
            watched = [key for _, key in monitored_keys(trainer, self.lr_scheduler_monitor)]
            self.loss_logging.watch(trainer.callbacks, watched)  # type: ignore[attr-defined]

    def also_logged_keys(self) -> list[str]:
        """The keys logged during fit besides the bricks' losses and metrics (``train/balance/{loss}``,
        ``validation/delta_m``), for the key checks."""
        return self.multitask.also_logged_keys()

    # ---------------------------------------------------------------------------------------- metrics
    # Each stage starts its epoch from empty metrics and loss means, so a run that stopped mid-epoch in this process
    # (an exception, an interrupted notebook cell) leaves nothing behind. A mid-epoch resume does not call
    # on_train_epoch_start, so the states restored from the checkpoint are kept.
    def on_train_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.TRAIN)
        self.loss_logging.start_epoch(Stage.TRAIN)
        self.image_logging.start_epoch(self.trainer, self.brick_collection, Stage.TRAIN)
        self.checkpoint_state.start_train_epoch()
        self.multitask.start_train_epoch()

    def on_validation_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.VALIDATION)
        self.loss_logging.start_epoch(Stage.VALIDATION)
        self.image_logging.start_epoch(self.trainer, self.brick_collection, Stage.VALIDATION)

    def on_test_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.TEST)
        self.loss_logging.start_epoch(Stage.TEST)
        self.image_logging.start_epoch(self.trainer, self.brick_collection, Stage.TEST)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After every callback's on_train_batch_end, right before Lightning writes the step's logs.
        self.loss_logging.log_step_values(self, self.trainer)
        self.multitask.log_step(self, self.trainer)

    def on_train_epoch_end(self) -> None:
        self.loss_logging.end_epoch(self, self.trainer, self.brick_collection, Stage.TRAIN)
        self.multitask.end_train_epoch(self, self.loss_means)
        self.image_logging.end_epoch(self.trainer, Stage.TRAIN)

    def on_validation_epoch_end(self) -> None:
        metrics = self.loss_logging.end_epoch(self, self.trainer, self.brick_collection, Stage.VALIDATION)
        self.multitask.log_delta_m(self, metrics)
        self.image_logging.end_epoch(self.trainer, Stage.VALIDATION)

    def on_test_epoch_end(self) -> None:
        metrics = self.loss_logging.end_epoch(self, self.trainer, self.brick_collection, Stage.TEST)
        self.multitask.log_delta_m(self, metrics, Stage.TEST)
        self.image_logging.end_epoch(self.trainer, Stage.TEST)

    # ---------------------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> Any:
        return self.optimisation.optimizers(self, self.brick_collection, self.lr)  # groups, tuned lr, scheduler

    def configure_callbacks(self) -> list[pl.Callback]:
        return self.optimisation.callbacks(self.brick_collection, self._attached_trainer())  # unfreeze, group lrs

    # ---------------------------------------------------------------------------------------- checkpoints
    def _attached_trainer(self) -> pl.Trainer | None:
        """The Trainer this module is attached to, or None (``load_from_checkpoint``, used without a Trainer)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's public property raises when no Trainer is attached
            return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self._attached_trainer()
        self.checkpoint_state.save(trainer, self.brick_collection, self.loss_means, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.multitask.drop_unused_state(checkpoint)  # training state a module built for inference does not hold
        trainer, collection = self._attached_trainer(), self.brick_collection
        self.checkpoint_state.load(trainer, collection, self.loss_means, checkpoint, self.device, self.strict_loading)

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

        The file is read once with ``weights_only=True`` (no pickled code runs), and what its recipe asks to build
        must be classes of the kinds recipes use, defined in torchbricks_lightning, torch, torchvision or
        torchmetrics, or in packages you add to ``trusted_class_prefixes`` (the trust model:
        :mod:`~torchbricks_lightning.checkpoints.trust`). A module created by the CLI is rebuilt from the checkpoint
        alone; one built in Python needs ``brick_collection=`` (built as it was for training). See
        :func:`~torchbricks_lightning.checkpoints.reading.load_module_checkpoint`.

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
            owner=cls,
            **kwargs,
        )

    def example_named_inputs(self, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs shaped like the export inputs seen in training (recorded in checkpoints).

        They come from a private generator seeded with ``seed``, never from the global one (see
        :func:`~torchbricks_lightning.lightning.state.example_inputs.example_tensors`).

        Raises:
            ConfigError: no batch was seen and the checkpoint held no example inputs.
        """
        return example_tensors(self.example_inputs, batch_size=batch_size, seed=seed)
