"""LightningBrickCollection: one generic LightningModule for any brick collection."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable

from torchbricks_lightning.checkpoints.reading import brick_state_dict, check_state_fits, load_module_checkpoint
from torchbricks_lightning.core.collection import BrickCollection, BrickTree
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, LossNotFiniteError
from torchbricks_lightning.lightning.batches import (
    add_batch_names_note,
    is_empty_batch,
    name_batch,
    samples_in,
    warn_empty_batch,
)
from torchbricks_lightning.lightning.brick_arguments import BricksArgument
from torchbricks_lightning.lightning.logging.epoch import log_epoch, log_step_losses
from torchbricks_lightning.lightning.logging.keys import check_fit_keys, check_logged_names
from torchbricks_lightning.lightning.logging.losses import LossMeans
from torchbricks_lightning.lightning.optim.optimizers import configure_optimizers as configure_brick_optimizers
from torchbricks_lightning.lightning.optim.optimizers import optimisation_callbacks, plan_optimisation
from torchbricks_lightning.lightning.predictions import PredictionOutputs
from torchbricks_lightning.lightning.state.example_inputs import (
    EXAMPLE_INPUTS_KEY,
    example_tensors,
    record_example_inputs,
    stored_example_inputs,
)
from torchbricks_lightning.lightning.state.resume import attached_trainer, load_resume_state, save_resume_state
from torchbricks_lightning.lightning.task_balancing import (
    LabelledCounts,
    check_multitask_arguments,
    drop_balancer_state,
    end_balancer_epoch,
    log_balance,
)
from torchbricks_lightning.multitask.balancers import LossBalancer
from torchbricks_lightning.multitask.labels import scale_to_global_counts
from torchbricks_lightning.multitask.score import DeltaM

__all__ = [
    "DEFAULT_BATCH_NAMES",
    "EXAMPLE_INPUTS_KEY",
    "LightningBrickCollection",
    "LossNotFiniteError",
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
            ``validation/delta_m`` at each validation epoch end.
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
        if isinstance(brick_collection, Mapping) and not isinstance(brick_collection, BrickCollection):
            brick_collection = BrickCollection(cast(BrickTree, brick_collection))  # it checks each value itself
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
        check_logged_names(brick_collection)  # a loss named 'loss', a metric named like a loss
        self.lr = lr  # read and set by Lightning's LR finder
        self.optimisation_plan = plan_optimisation(
            brick_collection, optimizer, param_groups, lr, decay_norms_and_biases, unfreeze
        )
        self.check_finite_loss = check_finite_loss
        self.compile_model = compile_model
        self.compile_kwargs: dict[str, Any] = dict(compile_kwargs or {})
        self.predict_outputs = PredictionOutputs(brick_collection, predict_output_names)
        self.example_inputs: dict[str, dict[str, Any]] = {}
        self.loss_means = LossMeans()
        check_multitask_arguments(brick_collection, self.loss_weights, loss_balancer, delta_m)
        self.loss_balancer = loss_balancer  # a submodule: its parameters and buffers are trained and checkpointed
        self.delta_m = delta_m
        self.labelled_counts = LabelledCounts()
        self.warned_keys: set[str] = set()  # keys already warned about (one warning each)
        self.__dict__["_compiled"] = None

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
        if is_empty_batch(named_inputs):  # its mean losses are NaN: skip it (lightning/batches.py)
            warn_empty_batch(stage, batch_idx)
            return None
        if not self.example_inputs:
            self.example_inputs = record_example_inputs(self.brick_collection, named_inputs)
        balancer = self.loss_balancer
        try:
            if stage is Stage.TRAIN and balancer is not None:
                with balancer.training_pass():  # a gradient-level balancer branches the shared tensor in this pass
                    named_outputs = self._run(named_inputs, stage)
            else:
                named_outputs = self._run(named_inputs, stage)
        except Exception as err:
            add_batch_names_note(err, batch, self.batch_names, self.brick_collection)  # how a tuple batch was named
            raise
        losses = self.brick_collection.extract_losses(named_outputs)
        if not losses:
            return named_outputs, None
        counts = self.labelled_counts(self.brick_collection, named_outputs)
        optimised = scale_to_global_counts(losses, counts) if stage is Stage.TRAIN and counts else losses
        if stage is Stage.TRAIN and balancer is not None:
            total = balancer(optimised)
        else:
            total = self.brick_collection.total_loss(optimised, self.loss_weights)  # the losses only, found once
        log_step_losses(self, stage, losses, optimised, total, samples_in(named_inputs), counts)
        return named_outputs, total

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        step = self._shared_step(batch, Stage.TRAIN, batch_idx)
        if step is None:
            return None  # an empty batch: Lightning skips the optimisation step
        named_outputs, total = step
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
        if stage == "fit":  # a typo in a monitored key, found before training rather than after the first epoch
            check_fit_keys(
                self.brick_collection, self.trainer, self.lr_scheduler_monitor, also_logged=self.also_logged_keys()
            )

    def also_logged_keys(self) -> list[str]:
        """Keys (or prefixes ending in ``/``) logged besides the bricks' losses and metrics, for the key checks."""
        return [
            *(["train/balance/"] if self.loss_balancer is not None else []),
            *(["validation/delta_m"] if self.delta_m is not None else []),
        ]

    # ---------------------------------------------------------------------------------------- metrics
    # Each stage starts its epoch from empty metrics and loss means, so a run that stopped mid-epoch in this process
    # (an exception, an interrupted notebook cell) leaves nothing behind. A mid-epoch resume does not call
    # on_train_epoch_start, so the states restored from the checkpoint are kept.
    def on_train_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.TRAIN)
        self.loss_means.reset(Stage.TRAIN)
        if self.loss_balancer is not None:
            self.loss_balancer.on_train_epoch_start()

    def on_validation_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.VALIDATION)
        self.loss_means.reset(Stage.VALIDATION)

    def on_test_epoch_start(self) -> None:
        self.brick_collection.reset_metrics(Stage.TEST)
        self.loss_means.reset(Stage.TEST)

    def on_train_epoch_end(self) -> None:
        log_epoch(self, Stage.TRAIN)
        if self.loss_balancer is not None:
            end_balancer_epoch(self, self.loss_balancer, self.loss_means)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.loss_balancer is not None and self.loss_balancer.log_every_step:
            log_balance(self, self.loss_balancer, on_step=True)

    def on_validation_epoch_end(self) -> None:
        log_epoch(self, Stage.VALIDATION)

    def on_test_epoch_end(self) -> None:
        log_epoch(self, Stage.TEST)

    # ---------------------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> Any:
        return configure_brick_optimizers(self)  # groups by brick path, the tuned lr, the scheduler: optimizers.py

    def configure_callbacks(self) -> list[pl.Callback]:
        return optimisation_callbacks(self)  # the unfreeze schedule, group lrs after the LR finder: optimizers.py

    # ---------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.example_inputs:
            checkpoint[EXAMPLE_INPUTS_KEY] = self.example_inputs
        # The interrupted epoch's train metric and loss-mean states, and the random generators (state/resume.py).
        save_resume_state(self, self.brick_collection, checkpoint, self.loss_means)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.loss_balancer is None:
            drop_balancer_state(checkpoint)  # training state a module built for inference or export does not hold
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
