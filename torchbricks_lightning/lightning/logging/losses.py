"""The epoch means of the logged losses, kept as torchmetrics metrics that Lightning logs, syncs and resets.

For every stage that computes losses (train, validation, test), :class:`LossMeans` keeps one :class:`LossMean`
per loss name, plus one for the weighted total under :data:`TOTAL_LOSS`. Each step adds every loss weighted by
its number of samples (the batch size), so an epoch value is the exact mean over the epoch's samples, also when
batches differ in size. ``LightningBrickCollection`` logs the metric objects at each epoch end: Lightning then
computes them (torchmetrics sums the states of every process, so a DDP mean is exact over uneven shards too) and
resets them. Because the epoch sums live in metrics the module owns, a mid-epoch checkpoint carries them like the
bricks' metric states (see :mod:`torchbricks_lightning.lightning.state.resume`), with no access to Lightning's loop
internals.

Why :class:`LossMean` rather than ``MeanMetric`` as it is: ``MeanMetric``'s update checks for NaN on every call
(``nan_strategy``): its ``"warn"`` (the default) and ``"ignore"`` drop NaN losses, which would hide a diverging
loss from the epoch mean, ``"error"`` raises, and the check reads the tensor (a device sync per loss and step on a
GPU). ``nan_strategy="disable"`` skips the check but in torchmetrics 1.9 also replaces the weights by ones
(Lightning-AI/torchmetrics#3434), which breaks the weighting by batch size. And the measured cost of its update is
about three times that of two additions (25 against 9 microseconds on a CPU), on the training step's hot path.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from torchbricks_lightning.core.stages import Stage

__all__ = ["LOSS_STAGES", "TOTAL_LOSS", "LossMean", "LossMeans"]

TOTAL_LOSS = "loss"
"""The name under which the weighted total of a stage's losses is logged (``'{stage}/loss'``)."""

LOSS_STAGES = (Stage.TRAIN, Stage.VALIDATION, Stage.TEST)
"""The stages whose losses are logged (inference computes none)."""


class LossMean(MeanMetric):
    """The weighted mean of a scalar loss over an epoch: ``sum(weight * loss) / sum(weight)``.

    A torchmetrics ``MeanMetric`` (same states: ``mean_value`` holds the weighted sum, ``weight`` the sum of the
    weights, both summed across processes) whose update is two in-place additions: no NaN check, so a NaN loss
    makes the epoch mean NaN, as Lightning's own epoch mean of a logged tensor does, and no device sync.

    Example:
        >>> mean = LossMean()
        >>> mean.update(torch.tensor(1.0), 3.0)
        >>> mean.update(torch.tensor(2.0), 1.0)
        >>> mean.compute()
        tensor(1.2500)
        >>> mean.update(torch.tensor(float("nan")), 2.0)
        >>> mean.compute()
        tensor(nan)
    """

    def __init__(self) -> None:
        super().__init__(nan_strategy="disable")  # unused: update below replaces MeanMetric's

    def update(self, value: float | torch.Tensor, weight: float | torch.Tensor | None = None) -> None:
        """Add ``value`` (a scalar loss) with ``weight`` (default 1), accumulated in the state's dtype."""
        if weight is None:
            weight = 1.0
        if isinstance(value, torch.Tensor):
            value = value.detach()
        if isinstance(weight, torch.Tensor):
            if isinstance(value, torch.Tensor):
                self.mean_value.addcmul_(value, weight)  # one kernel
            else:
                self.mean_value.add_(weight * value)
        else:  # one kernel, computed in the state's dtype (float32 also for a half-precision loss)
            self.mean_value.add_(value, alpha=weight)
        self.weight.add_(weight)


class LossMeans(nn.Module):
    """One :class:`LossMean` per stage and loss name, made on first use.

    The metrics are submodules (with generated names, since loss names may hold any character), so they move with
    the LightningModule to its device, and Lightning finds them when they are logged. They hold no parameters and
    add nothing to ``state_dict()``.

    Example:
        >>> means = LossMeans()
        >>> means.update(Stage.TRAIN, "ce", torch.tensor(2.0), 8.0)
        >>> means.update(Stage.TRAIN, "ce", torch.tensor(1.0), 4.0)
        >>> means.metrics(Stage.TRAIN)["ce"].compute()
        tensor(1.6667)
        >>> means.attribute(Stage.TRAIN, "ce")
        'train_0'
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_stage: dict[Stage, dict[str, LossMean]] = {stage: {} for stage in LOSS_STAGES}
        self.attributes: dict[tuple[Stage, str], str] = {}

    def metrics(self, stage: Stage) -> dict[str, LossMean]:
        """The metrics of ``stage`` by loss name (the total under :data:`TOTAL_LOSS`), in the order first seen."""
        return self.by_stage[stage]

    def attribute(self, stage: Stage, name: str) -> str:
        """The submodule name of the metric of loss ``name`` in ``stage`` (what ``self.log`` calls
        ``metric_attribute``, relative to this module)."""
        return self.attributes[(stage, name)]

    def metric(self, stage: Stage, name: str, device: torch.device | str) -> LossMean:
        """The metric of loss ``name`` in ``stage``, made on ``device`` if it does not exist yet."""
        metric = self.by_stage[stage].get(name)
        if metric is None:
            metric = LossMean().to(device)
            attribute = f"{stage.value}_{len(self.attributes)}"
            self.add_module(attribute, metric)
            self.attributes[(stage, name)] = attribute
            self.by_stage[stage][name] = metric
        return metric

    def update(self, stage: Stage, name: str, value: torch.Tensor, weight: float | torch.Tensor) -> None:
        """Add one step's loss ``name`` of ``stage``, weighted by ``weight`` (its number of samples)."""
        metric = self.by_stage[stage].get(name)
        if metric is None:
            metric = self.metric(stage, name, value.device)
        metric.update(value, weight)

    def reset(self, stage: Stage) -> None:
        """Start ``stage``'s epoch sums afresh."""
        for metric in self.by_stage[stage].values():
            metric.reset()
