"""The epoch means of the logged losses, kept as torchmetrics metrics that Lightning logs, syncs and resets.

For every stage that computes losses (train, validation, test), :class:`LossMeans` keeps one :class:`LossMean`
per loss name, plus one for the weighted total under :data:`TOTAL_LOSS`. Each step adds every loss weighted by
its number of samples (the batch size), so an epoch value is the exact mean over the epoch's samples, also when
batches differ in size. ``LightningBrickCollection`` logs the metric objects at each epoch end: Lightning then
computes them (torchmetrics sums the states of every process, so a DDP mean is exact over uneven shards too) and
resets them. Because the epoch sums live in metrics the module owns, a mid-epoch checkpoint carries them like the
bricks' metric states (see :mod:`torchbricks_lightning.lightning.state.resume`), with no access to Lightning's loop
internals.

**Pending sums.** A step does not call the metrics' ``update`` (torchmetrics' wrapper around it costs about as much
as the additions themselves). :meth:`LossMeans.update` adds to plain running sums instead: a tensor of the weighted
sum, and the sum of the weights (a tensor for counted weights, a Python float for a batch size), with the same
in-place operations in the same order as the metric's own update would run. Whatever reads the metrics
(:meth:`LossMeans.metrics`, :meth:`LossMeans.metric`) first writes the running sums into them, so what it gets is
up to date, bit for bit what per-step updates give; the next step starts its running sums from the metric's states
again, so a state written from outside (a resume, Lightning's reset after logging) is continued, not overwritten.

Why :class:`LossMean` rather than ``MeanMetric`` as it is: ``MeanMetric``'s update checks for NaN on every call
(``nan_strategy``): its ``"warn"`` (the default) and ``"ignore"`` drop NaN losses, which would hide a diverging
loss from the epoch mean, ``"error"`` raises, and the check reads the tensor (a device sync per loss and step on a
GPU). ``nan_strategy="disable"`` skips the check but in torchmetrics 1.9 also replaces the weights by ones
(Lightning-AI/torchmetrics#3434), which breaks the weighting by batch size.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from torchbricks_lightning.core.bricks import LOSS_STAGES
from torchbricks_lightning.core.stages import Stage

__all__ = ["TOTAL_LOSS", "LossMean", "LossMeans"]

TOTAL_LOSS = "loss"
"""The name under which the weighted total of a stage's losses is logged (``'{stage}/loss'``)."""


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

        Sums kept elsewhere (what :class:`LossMeans` writes in), here of two steps, are added as they are:

        >>> mean = LossMean()
        >>> mean.update(torch.tensor(5.0), 4.0, summed_steps=2)
        >>> mean.compute(), mean.update_count
        (tensor(1.2500), 2)
    """

    def __init__(self) -> None:
        super().__init__(nan_strategy="disable")  # unused: update below replaces MeanMetric's
        self.summed_steps = 0
        """The steps that updates with ``summed_steps`` stood for, beyond one per update (see update_count)."""

    @property
    def update_count(self) -> int:
        """The number of updates since the last reset, an update with ``summed_steps=n`` counting ``n``."""
        return super().update_count + self.summed_steps

    def reset(self) -> None:
        super().reset()
        self.summed_steps = 0

    def update(
        self, value: float | torch.Tensor, weight: float | torch.Tensor | None = None, *, summed_steps: int = 0
    ) -> None:
        """Add ``value`` (a scalar loss) with ``weight`` (default 1), accumulated in the state's dtype.

        With ``summed_steps=n`` (n > 0), ``value`` is already the weighted sum of ``n`` steps' losses and ``weight``
        the sum of their weights: both are added as they are, and the update counts as ``n``.
        """
        if weight is None:
            weight = 1.0
        if isinstance(value, torch.Tensor):
            value = value.detach()
        if summed_steps:
            self.summed_steps += summed_steps - 1
            self.mean_value.add_(value)
        elif isinstance(weight, torch.Tensor):
            if isinstance(value, torch.Tensor):
                self.mean_value.addcmul_(value, weight)  # one kernel
            else:
                self.mean_value.add_(weight * value)
        else:  # one kernel, computed in the state's dtype (float32 also for a half-precision loss)
            self.mean_value.add_(value, alpha=weight)
        self.weight.add_(weight)


class _RunningSums:
    """The running sums of one loss mean between two reads of its metric.

    ``value`` and ``weight`` start as copies of the metric's states at the first step after a read (None before),
    so they hold the whole epoch's sums; ``float_weight`` holds the Python-number weights added since then.
    """

    __slots__ = ("float_weight", "metric", "updates", "value", "weight")

    def __init__(self, metric: LossMean) -> None:
        self.metric = metric
        self.value: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self.float_weight = 0.0
        self.updates = 0

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.value = self.metric.mean_value.detach().clone()
        self.weight = self.metric.weight.detach().clone()
        return self.value, self.weight

    def flush(self) -> None:
        """Write the running sums into the metric (its states become exactly the sums), and forget them."""
        if self.updates and self.value is not None and self.weight is not None:
            weight = self.weight.add_(self.float_weight) if self.float_weight else self.weight
            steps = self.metric.update_count + self.updates
            self.metric.reset()  # zero states: adding the sums to them gives the sums exactly
            self.metric.update(self.value, weight, summed_steps=steps)
        self.clear()

    def clear(self) -> None:
        self.value = self.weight = None
        self.float_weight = 0.0
        self.updates = 0


class LossMeans(nn.Module):
    """One :class:`LossMean` per stage and loss name, made on first use.

    The metrics are submodules (with generated names, since loss names may hold any character), so they move with
    the LightningModule to its device, and Lightning finds them when they are logged. They hold no parameters and
    add nothing to ``state_dict()``. A step adds to running sums (see the module's docstring); reading the metrics
    writes those sums into them first.

    Example:
        >>> means = LossMeans()
        >>> means.update(Stage.TRAIN, "ce", torch.tensor(2.0), 8.0)
        >>> means.update(Stage.TRAIN, "ce", torch.tensor(1.0), 4.0)
        >>> means.metrics(Stage.TRAIN)["ce"].compute()
        tensor(1.6667)
        >>> means.update(Stage.TRAIN, "ce", torch.tensor(0.0), torch.tensor(3.0))  # a labelled count as weight
        >>> means.metrics(Stage.TRAIN)["ce"].compute()
        tensor(1.3333)
        >>> means.attribute(Stage.TRAIN, "ce")
        'train_0'
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_stage: dict[Stage, dict[str, LossMean]] = {stage: {} for stage in LOSS_STAGES}
        self.attributes: dict[tuple[Stage, str], str] = {}
        self.running: dict[Stage, dict[str, _RunningSums]] = {stage: {} for stage in LOSS_STAGES}

    def metrics(self, stage: Stage) -> dict[str, LossMean]:
        """The metrics of ``stage`` by loss name (the total under :data:`TOTAL_LOSS`), in the order first seen,
        up to date with every step added."""
        for sums in self.running[stage].values():
            sums.flush()
        return self.by_stage[stage]

    def attribute(self, stage: Stage, name: str) -> str:
        """The submodule name of the metric of loss ``name`` in ``stage`` (what ``self.log`` calls
        ``metric_attribute``, relative to this module)."""
        return self.attributes[(stage, name)]

    def metric(self, stage: Stage, name: str, device: torch.device | str) -> LossMean:
        """The metric of loss ``name`` in ``stage`` (up to date), made on ``device`` if it does not exist yet."""
        sums = self.running[stage].get(name)
        if sums is None:
            metric = LossMean().to(device)
            attribute = f"{stage.value}_{len(self.attributes)}"
            self.add_module(attribute, metric)
            self.attributes[(stage, name)] = attribute
            self.by_stage[stage][name] = metric
            sums = self.running[stage][name] = _RunningSums(metric)
        sums.flush()
        return sums.metric

    def update(self, stage: Stage, name: str, value: torch.Tensor, weight: float | torch.Tensor) -> None:
        """Add one step's loss ``name`` of ``stage``, weighted by ``weight`` (its number of samples)."""
        sums = self.running[stage].get(name)
        if sums is None:
            self.metric(stage, name, value.device)
            sums = self.running[stage][name]
        total, weights = sums.value, sums.weight
        if total is None or weights is None or total.device != value.device:  # first since a read, or moved
            sums.flush()
            total, weights = sums.start()
        value = value.detach()
        if isinstance(weight, torch.Tensor):
            if weight.requires_grad:
                weight = weight.detach()
            total.addcmul_(value, weight)  # in the state's dtype, as LossMean.update
            weights.add_(weight)
        else:
            total.add_(value, alpha=weight)
            sums.float_weight += weight
        sums.updates += 1

    def reset(self, stage: Stage) -> None:
        """Start ``stage``'s epoch sums afresh (the metrics and the running sums)."""
        for sums in self.running[stage].values():
            sums.clear()
            sums.metric.reset()
