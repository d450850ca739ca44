"""Empty batches: a batch with no samples adds nothing to a stage's losses or metrics, and is not trained on.

The mean loss of an empty batch is NaN (a mean over no elements), and would turn the stage's epoch mean into NaN
even with a weight of zero (``NaN * 0`` is NaN). So :class:`~torchbricks_lightning.lightning.module.
LightningBrickCollection` does not run the bricks on one at all: no loss mean and no metric brick is updated, and
in training the step is skipped (``training_step`` returns None, which Lightning's automatic optimisation skips),
with a warning naming the batch.

With several processes (DDP), a step skipped on one process only leaves the others waiting for its gradients:
there, give every process a non-empty batch (e.g. ``drop_last=True``, or a sampler that never yields an empty one).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.lightning.loss_logging import samples_in

__all__ = ["EmptyBatchWarning", "is_empty_batch", "warn_empty_batch"]


class EmptyBatchWarning(UserWarning):
    """A batch with no samples was skipped."""


def is_empty_batch(named_inputs: Mapping[str, object]) -> bool:
    """Whether a batch has no samples: its first tensor with a batch dimension has length 0 (the batch's weight in
    the epoch means, :func:`~torchbricks_lightning.lightning.loss_logging.samples_in`, is then 0).

    Example:
        >>> import torch
        >>> is_empty_batch({"raw": torch.zeros(0, 3), "targets": torch.zeros(0)})
        True
        >>> is_empty_batch({"raw": torch.zeros(2, 3)}), is_empty_batch({"scale": 2.0})
        (False, False)
    """
    return samples_in(dict(named_inputs)) == 0


def warn_empty_batch(stage: Stage, batch_idx: int) -> None:
    """Warn that the empty batch ``batch_idx`` of ``stage`` was skipped.

    Example:
        >>> import pytest
        >>> with pytest.warns(EmptyBatchWarning, match="batch 3"):
        ...     warn_empty_batch(Stage.TRAIN, 3)
    """
    skipped = "the training step was skipped" if stage is Stage.TRAIN else "it adds nothing to the losses or metrics"
    warnings.warn(
        f"The {stage.value} batch {batch_idx} is empty (no samples): {skipped}. Check the dataloader: a sampler, a "
        "filter or a collate function can leave a batch without samples.",
        EmptyBatchWarning,
        stacklevel=2,
    )
