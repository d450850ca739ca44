"""Multi-task training: partial labels, task balancing and the multi-task score Δm.

- :mod:`~torchbricks_lightning.multitask.labels`: the missing-label convention and :class:`BrickLabelledLoss`, the
  loss brick that reports how many elements were labelled;
- :mod:`~torchbricks_lightning.multitask.balancers`: the base :class:`LossBalancer`, :class:`StaticWeights`,
  :class:`DynamicWeightAverage`; :mod:`~torchbricks_lightning.multitask.uncertainty`: :class:`UncertaintyWeighting`;
- :mod:`~torchbricks_lightning.multitask.famo` and :mod:`~torchbricks_lightning.multitask.loss_level`: :class:`FAMO`,
  :class:`RandomLossWeighting`, :class:`GeometricLossStrategy`;
- :mod:`~torchbricks_lightning.multitask.gramian`: :class:`GramianBalancer`, the gradient-level mechanism (weights
  from the Gram matrix of the task gradients, on the shared tensor or the shared parameters), with
  :mod:`~torchbricks_lightning.multitask.branching` its wiring; the methods :class:`MGDA`, :class:`IMTLG`,
  :class:`AlignedMTL`, :class:`CAGrad`, :class:`NashMTL`, :class:`UPGrad`
  (:mod:`~torchbricks_lightning.multitask.gramian_methods`), :class:`PCGrad`
  (:mod:`~torchbricks_lightning.multitask.gradient`) and :class:`GradNorm`
  (:mod:`~torchbricks_lightning.multitask.gradnorm`);
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
)
from torchbricks_lightning.multitask.famo import FAMO
from torchbricks_lightning.multitask.gradient import PCGrad, pcgrad_coefficients, readers_by_task
from torchbricks_lightning.multitask.gradnorm import GradNorm
from torchbricks_lightning.multitask.gramian import GramianBalancer
from torchbricks_lightning.multitask.gramian_methods import IMTLG, MGDA, AlignedMTL, CAGrad, NashMTL, UPGrad
from torchbricks_lightning.multitask.labels import (
    IGNORE_INDEX,
    BrickLabelledLoss,
    check_ignore_index,
    labelled_count_names,
    scale_to_global_counts,
)
from torchbricks_lightning.multitask.loss_level import GeometricLossStrategy, RandomLossWeighting
from torchbricks_lightning.multitask.score import DeltaM
from torchbricks_lightning.multitask.uncertainty import UncertaintyWeighting

__all__ = [
    "FAMO",
    "IGNORE_INDEX",
    "IMTLG",
    "MGDA",
    "AlignedMTL",
    "BrickLabelledLoss",
    "CAGrad",
    "DeltaM",
    "DynamicWeightAverage",
    "GeometricLossStrategy",
    "GradNorm",
    "GramianBalancer",
    "LossBalancer",
    "NashMTL",
    "PCGrad",
    "RandomLossWeighting",
    "StaticWeights",
    "UPGrad",
    "UncertaintyWeighting",
    "check_ignore_index",
    "functional",
    "labelled_count_names",
    "pcgrad_coefficients",
    "readers_by_task",
    "scale_to_global_counts",
]
