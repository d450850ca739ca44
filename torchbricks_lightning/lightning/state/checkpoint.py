"""What the module's checkpoints carry beyond weights: :class:`CheckpointState`, the component that owns the example
inputs for export (:mod:`.example_inputs`) and the count of the epoch's training batches behind the resume state
(:mod:`.resume`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from torchbricks_lightning.checkpoints.reading import brick_state_dict, check_state_fits
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.lightning.logging.losses import LossMeans
from torchbricks_lightning.lightning.state.example_inputs import (
    EXAMPLE_INPUTS_KEY,
    ExampleInputs,
    record_example_inputs,
    stored_example_inputs,
)
from torchbricks_lightning.lightning.state.resume import load_resume_state, save_resume_state

__all__ = ["CheckpointState"]


class CheckpointState:
    """The example inputs seen in training and the resume state of an interrupted epoch, written into and read from
    checkpoints by the module's checkpoint hooks.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickTrainable
        >>> collection = BrickCollection({"net": BrickTrainable(nn.Linear(3, 2), ["raw"], ["logits"])})
        >>> state = CheckpointState()
        >>> state.see_batch(collection, {"raw": torch.zeros(8, 3)}, training=True)
        >>> state.example_inputs, state.batches_this_epoch
        ({'raw': {'shape': [1, 3], 'dtype': 'torch.float32'}}, 1)
        >>> checkpoint = {}
        >>> state.save(None, collection, LossMeans(), checkpoint)  # outside a Trainer: the example inputs only
        >>> list(checkpoint)
        ['torchbricks_example_inputs']
    """

    def __init__(self) -> None:
        self.example_inputs: ExampleInputs = {}
        self.batches_this_epoch = 0
        """The training batches run in the current epoch, empty ones included (as Lightning counts them)."""
        self.loaded_epoch: int | None = None
        """The epoch of the checkpoint the weights were last read from; None once training goes on (or never read)."""

    def start_train_epoch(self) -> None:
        self.batches_this_epoch = 0
        self.loaded_epoch = None

    def see_batch(self, collection: BrickCollection, named_inputs: Mapping[str, Any] | None, training: bool) -> None:
        """Count a training batch, and record the example inputs from the first batch with samples (``named_inputs``;
        None for an empty batch)."""
        if training:
            self.batches_this_epoch += 1
        if named_inputs is not None and not self.example_inputs:
            self.example_inputs = record_example_inputs(collection, named_inputs)

    def save(
        self, trainer: pl.Trainer | None, collection: BrickCollection, loss_means: LossMeans, checkpoint: dict[str, Any]
    ) -> None:
        """Write the example inputs and (in ``trainer.fit``) the resume state into ``checkpoint``."""
        if self.example_inputs:
            checkpoint[EXAMPLE_INPUTS_KEY] = self.example_inputs
        # The interrupted epoch's train metric and loss-mean states, and the random generators (resume.py).
        save_resume_state(trainer, collection, checkpoint, loss_means, self.batches_this_epoch)

    def load(
        self,
        trainer: pl.Trainer | None,
        collection: BrickCollection,
        loss_means: LossMeans,
        checkpoint: Mapping[str, Any],
        device: torch.device | str,
        strict: bool = True,
    ) -> None:
        """Check that a Trainer's checkpoint fits the bricks, read the example inputs, and when ``trainer.fit``
        resumes, the resume state (metrics, loss means and random generators of the interrupted epoch, and its count
        of batches). Validate, test and predict (and ``load_from_checkpoint``) leave metrics and generators alone.

        Raises:
            CheckpointError: the weights do not fit the bricks (``strict``: names and shapes; else shapes).
            ResumeStateError: the resume state is malformed or does not fit.
        """
        if trainer is not None and "state_dict" in checkpoint:
            # A Trainer restoring ckpt_path loads the weights right after this hook, with torch's own error for a
            # checkpoint of other bricks; say which names and shapes differ first. (load_from_checkpoint checks
            # the weights itself, before this hook.)
            source = str(trainer.ckpt_path or "ckpt_path")
            check_state_fits(collection, brick_state_dict(checkpoint), strict=strict, source=source)
        self.example_inputs = stored_example_inputs(checkpoint)
        epoch = checkpoint.get("epoch")
        self.loaded_epoch = epoch if isinstance(epoch, int) else None
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            self.batches_this_epoch = load_resume_state(trainer, collection, checkpoint, loss_means, device)
