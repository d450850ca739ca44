"""Partial labels: the missing-label convention, the loss brick that reports its labelled count, and DDP scaling.

**The convention.** A missing class label is ``ignore_index`` (default :data:`IGNORE_INDEX`, -100, as in
``torch.nn.CrossEntropyLoss``); a missing float target is NaN. The losses of
:mod:`~torchbricks_lightning.bag_of_bricks.losses` average over the labelled elements only, and give exactly 0,
still connected to the graph, for a batch without labels.

**The labelled count.** A loss averaged over the labelled elements of a batch needs a weight for the epoch mean
(a batch with 3 labels must not weigh as much as one with 60), and, under DDP, a normalisation by the labelled
count of all processes. A :class:`BrickLabelledLoss` says so explicitly: its module returns ``(loss, count)``, and
the brick declares its two outputs, the loss and the count, as data names like any other. The count is an
ordinary output of the stage (a float tensor, no device sync, nothing hidden in module state, so ``torch.compile``
traces it), and :func:`labelled_count_names` maps each loss name to its count name for the Lightning layer.

Example:
    >>> from torch import nn
    >>> from torchbricks_lightning import BrickCollection, BrickTrainable
    >>> from torchbricks_lightning.bag_of_bricks import MaskedCrossEntropyLoss
    >>> collection = BrickCollection({"head": {
    ...     "classify": BrickTrainable(nn.Linear(4, 3), input_names=["features"], output_names=["./logits"]),
    ...     "loss": BrickLabelledLoss(MaskedCrossEntropyLoss(return_count=True),
    ...                               input_names=["./logits", "targets"], output_names=["./loss_ce", "./labelled"]),
    ... }})
    >>> labelled_count_names(collection)
    {'head/loss_ce': 'head/labelled'}
    >>> outputs = collection({"features": torch.ones(4, 4), "targets": torch.tensor([0, -100, 2, -100])}, "train")
    >>> float(outputs["head/labelled"])
    2.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from torchbricks_lightning.core.bricks import LOSS_STAGES, BrickLoss
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.distributed import world_size
from torchbricks_lightning.core.names import InputNames
from torchbricks_lightning.core.stages import AliveStages
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError

__all__ = [
    "IGNORE_INDEX",
    "BrickLabelledLoss",
    "check_ignore_index",
    "labelled_count_names",
    "scale_to_global_counts",
]

IGNORE_INDEX = -100
"""The default missing class label, as ``torch.nn.CrossEntropyLoss``'s ``ignore_index``."""


def check_ignore_index(ignore_index: object, num_classes: int, where: str) -> int:
    """Return ``ignore_index`` if it can mark missing labels of ``num_classes`` classes: an int outside ``[0, C)``.

    Example:
        >>> check_ignore_index(-100, 10, "head")
        -100
        >>> check_ignore_index(3, 10, "head")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: head: ignore_index 3 is a valid class index of its 10 classes, ...
    """
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise BrickDefinitionError(f"{where}: expected ignore_index to be an int, but got {ignore_index!r}.")
    if 0 <= ignore_index < num_classes:
        raise ConfigError(
            f"{where}: ignore_index {ignore_index} is a valid class index of its {num_classes} classes, so the labels "
            f"of class {ignore_index} would be dropped as missing. Mark missing labels with a value outside "
            f"[0, {num_classes}), e.g. the default {IGNORE_INDEX} (255 is common for segmentation masks)."
        )
    return ignore_index


class BrickLabelledLoss(BrickLoss):
    """A loss brick whose module returns ``(loss, labelled count)``: a loss averaged over labelled elements only.

    The first output name is the loss, the second its labelled count (the number of elements, samples or pixels,
    that carried a label in the batch). ``LightningBrickCollection`` weighs the loss's epoch mean by that count,
    and under DDP normalises the training loss by the count of all processes, so a run on two processes takes the
    same steps as one process on the whole batch.

    Args:
        model: a module returning ``(loss, count)``, e.g. ``MaskedCrossEntropyLoss(return_count=True)``.
        input_names: see :class:`~torchbricks_lightning.core.bricks.BrickInterface`.
        output_names: two names: the loss, then its count (relative names allowed).
        alive_stages: see :class:`~torchbricks_lightning.core.bricks.BrickLoss`.
        loss_weight: the weight of the loss in the total.

    Raises:
        BrickDefinitionError: ``output_names`` does not hold exactly two names.

    Example:
        >>> from torchbricks_lightning.bag_of_bricks import MaskedCrossEntropyLoss
        >>> BrickLabelledLoss(MaskedCrossEntropyLoss(return_count=True), input_names=["logits", "targets"],
        ...                   output_names=["loss_ce", "labelled"]).loss_output_names
        ['loss_ce']
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = LOSS_STAGES,
        loss_weight: float = 1.0,
    ) -> None:
        names = [output_names] if isinstance(output_names, str) else list(output_names)
        if len(names) != 2:
            raise BrickDefinitionError(
                f"BrickLabelledLoss needs two output_names, the loss and its labelled count (e.g. ['./loss_ce', "
                f"'./labelled']), but got {names!r}."
            )
        super().__init__(
            model,
            input_names=input_names,
            output_names=names,
            alive_stages=alive_stages,
            loss_output_names=names[:1],
            loss_weight=loss_weight,
        )

    def labelled_count_name(self, path: str) -> tuple[str, str]:
        """``(loss name, count name)`` as absolute data names, for this brick placed at ``path``."""
        outputs = self.brick_node(path, 0).output_names
        if len(outputs) != 2:
            raise BrickDefinitionError(
                f"BrickLabelledLoss {path!r} has output_names {list(outputs)}; it needs exactly two, the loss and its "
                "labelled count."
            )
        return outputs[0], outputs[1]


def labelled_count_names(collection: BrickCollection) -> dict[str, str]:
    """``{loss name: count name}`` of every :class:`BrickLabelledLoss` in ``collection``."""
    pairs: dict[str, str] = {}
    for path, brick in collection.named_bricks():
        if isinstance(brick, BrickLabelledLoss):
            loss, count = brick.labelled_count_name(path)
            pairs[loss] = count
    return pairs


def scale_to_global_counts(
    losses: Mapping[str, torch.Tensor], counts: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Under DDP, rescale each counted loss from a mean over this process's labels to its share of the global mean.

    A counted loss is ``sum_local / max(n_local, 1)``. DDP averages gradients over the ``W`` processes, so the
    loss that gives the single-process gradient is ``sum_local * W / N`` with ``N`` the labelled count of all
    processes: each loss is multiplied by ``n_local * W / max(N, 1)`` (one ``all_reduce`` of the counts per step,
    as DETR normalises by the number of boxes). Without a process group, or without counts, ``losses`` is returned
    unchanged. Every process must call it at the same step (training steps are, evaluation steps are not).

    Example:
        >>> scale_to_global_counts({"ce": torch.tensor(2.0)}, {"ce": torch.tensor(3.0)})
        {'ce': tensor(2.)}
    """
    world = world_size()
    if world == 1 or not counts:
        return dict(losses)
    names = [name for name in losses if name in counts]
    local = torch.stack([counts[name].detach().to(torch.float32) for name in names])
    total = local.clone()
    torch.distributed.all_reduce(total)
    factors = local * world / total.clamp(min=1.0)
    scaled = dict(losses)
    for index, name in enumerate(names):
        scaled[name] = losses[name] * factors[index].to(losses[name].dtype)
    return scaled
