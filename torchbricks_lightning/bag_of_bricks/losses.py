"""Losses for partially labelled batches: averaged over the labelled elements only, never NaN.

The convention (see :mod:`torchbricks_lightning.multitask.labels`): a missing class label is ``ignore_index``
(default -100), a missing float target is NaN. Each loss here is ``sum over labelled elements / max(count, 1)``:

- with labels, the mean over the labelled elements (as ``CrossEntropyLoss(ignore_index=...)`` computes it);
- without any label in the batch, exactly 0, computed from the predictions, so it stays connected to the graph
  and every parameter gets a (zero) gradient: no NaN, no ``LossNotFiniteError``, and no "parameters that were not
  used in producing the loss" error from DDP.

With ``return_count=True`` a loss returns ``(loss, count)``, the number of labelled elements as a float tensor,
for :class:`~torchbricks_lightning.multitask.BrickLabelledLoss` (the heads of the bag of bricks use it). There is no
branch on the data and no device sync.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from torchbricks_lightning.errors import BrickDefinitionError, ConfigError
from torchbricks_lightning.multitask.labels import IGNORE_INDEX

__all__ = ["MaskedCrossEntropyLoss", "MaskedRegressionLoss"]

LossOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class MaskedCrossEntropyLoss(nn.Module):
    """Cross-entropy averaged over the labelled elements; 0 (connected to the graph) for a batch without labels.

    Works for classification (``logits (N, C)``, ``targets (N,)``) and per-pixel classification (``logits (N, C, H,
    W)``, ``targets (N, H, W)``), as ``torch.nn.functional.cross_entropy``.

    Args:
        ignore_index: the target value of a missing label.
        label_smoothing: as in ``torch.nn.CrossEntropyLoss``.
        return_count: return ``(loss, number of labelled elements)`` instead of the loss alone.

    Example:
        >>> loss = MaskedCrossEntropyLoss(return_count=True)
        >>> logits = torch.zeros(3, 4, requires_grad=True)
        >>> value, count = loss(logits, torch.tensor([1, -100, 2]))
        >>> round(float(value.detach()), 4), float(count)
        (1.3863, 2.0)
        >>> value, count = loss(logits, torch.full((3,), -100))
        >>> float(value.detach()), float(count), value.requires_grad
        (0.0, 0.0, True)
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0, return_count: bool = False):
        super().__init__()
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise BrickDefinitionError(f"Expected ignore_index to be an int, but got {ignore_index!r}.")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"Expected label_smoothing in [0, 1], but got {label_smoothing!r}.")
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.return_count = bool(return_count)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        total = F.cross_entropy(
            logits,
            targets,
            ignore_index=self.ignore_index,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        count = (targets != self.ignore_index).sum().to(torch.float32)
        loss = total / count.clamp(min=1.0).to(total.dtype)
        return (loss, count) if self.return_count else loss

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


class MaskedRegressionLoss(nn.Module):
    """Mean squared (``"mse"``) or absolute (``"l1"``) error over the targets that are not NaN.

    Args:
        kind: ``"mse"`` or ``"l1"``.
        return_count: return ``(loss, number of labelled elements)`` instead of the loss alone.

    Raises:
        ConfigError: ``kind`` is unknown, or (when called) predictions and targets differ in shape.

    Example:
        >>> loss = MaskedRegressionLoss("l1", return_count=True)
        >>> value, count = loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, float("nan"), 5.0]))
        >>> float(value), float(count)
        (1.5, 2.0)
    """

    def __init__(self, kind: Literal["mse", "l1"] = "mse", return_count: bool = False) -> None:
        super().__init__()
        if kind not in ("mse", "l1"):
            raise ConfigError(f"Expected kind to be 'mse' or 'l1', but got {kind!r}.")
        self.kind = kind
        self.return_count = bool(return_count)

    def forward(self, preds: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        if preds.shape != targets.shape:
            raise ConfigError(
                f"MaskedRegressionLoss expected predictions and targets of the same shape, but got "
                f"{tuple(preds.shape)} and {tuple(targets.shape)}. Reshape the targets (or set the head's "
                "num_outputs) so that they match; broadcasting would compare every prediction with every target."
            )
        labelled = ~torch.isnan(targets)
        difference = torch.where(labelled, preds - torch.nan_to_num(targets.to(preds.dtype)), 0.0)
        errors = difference.square() if self.kind == "mse" else difference.abs()
        count = labelled.sum().to(torch.float32)
        loss = errors.sum() / count.clamp(min=1.0).to(errors.dtype)
        return (loss, count) if self.return_count else loss

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
