"""Multi-task training: partial labels, task balancing and the multi-task score Δm.

- :mod:`~torchbricks_lightning.multitask.labels`: the missing-label convention and :class:`BrickLabelledLoss`, the
  loss brick that reports how many elements were labelled;
- :mod:`~torchbricks_lightning.multitask.balancers`: :class:`StaticWeights`, :class:`UncertaintyWeighting`,
  :class:`DynamicWeightAverage`;
- :mod:`~torchbricks_lightning.multitask.gradient`: :class:`PCGrad` on a shared tensor, in a single backward pass;
- :mod:`~torchbricks_lightning.multitask.score`: :class:`DeltaM`;
- :mod:`~torchbricks_lightning.multitask.functional`: pure functions from the Gram matrix of the task gradients to
  their combination coefficients (MGDA, IMTL-G, Aligned-MTL, CAGrad, Nash-MTL, UPGrad, PCGrad).

``LightningBrickCollection(loss_balancer=..., delta_m=...)`` calls into it. It never imports Lightning.
"""

from torchbricks_lightning.multitask import functional
from torchbricks_lightning.multitask.balancers import (
    DynamicWeightAverage,
    LossBalancer,
    StaticWeights,
    UncertaintyWeighting,
)
from torchbricks_lightning.multitask.gradient import PCGrad, pcgrad_coefficients, readers_by_task
from torchbricks_lightning.multitask.labels import (
    IGNORE_INDEX,
    BrickLabelledLoss,
    check_ignore_index,
    labelled_count_names,
    scale_to_global_counts,
)
from torchbricks_lightning.multitask.score import DeltaM

__all__ = [
    "IGNORE_INDEX",
    "BrickLabelledLoss",
    "DeltaM",
    "DynamicWeightAverage",
    "LossBalancer",
    "PCGrad",
    "StaticWeights",
    "UncertaintyWeighting",
    "check_ignore_index",
    "functional",
    "labelled_count_names",
    "pcgrad_coefficients",
    "readers_by_task",
    "scale_to_global_counts",
]
