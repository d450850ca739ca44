"""Pure functions from the Gram matrix of the task gradients to their combination coefficients.

In the torchmetrics pattern: the balancer classes hold the state (the source of the gradients, the random seed,
the logging) and call these functions, which users can apply outside Lightning. Each takes ``gram``, a ``(T, T)``
tensor with ``G_ij = <g_i, g_j>`` (symmetric positive semi-definite), plus the method's options, and returns the
``(T,)`` coefficients ``c`` of the combined gradient ``sum_j c_j g_j``, in ``gram``'s dtype and device, detached.

What they share (the balancer relies on it):

- **Zero gradients** (a task without labels in the batch: a zero row and column, ``G_ii <= eps * max_k G_kk``
  with ``eps`` of ``gram``'s dtype) get coefficient 0, and the others are exactly as if the task were absent. All
  zero: zeros. Never NaN or inf.
- **Deterministic and the same on every process**: computed on the CPU, in float64 (or in ``gram``'s own
  precision where a rank is decided, see below), no global random state (PCGrad takes a ``torch.Generator``),
  no gradient. Give every process the same (all-reduced) ``G`` and it gets the same coefficients.
- **The paper's scale**: each function returns the coefficients of its paper's update (which differ: MGDA's and
  IMTL-G's sum to 1, PCGrad's are about 1 each, UPGrad's about ``1 / T``, Nash-MTL's scale as ``1 / |g|``).

Where torchjd (pinned 0.18.0) implements the weighting, it was evaluated against the paper's formula (computed
independently in ``tests/multitask/test_functional_weightings.py``) and for our use: a pure function of ``G``,
deterministic, the same on every process, no global random state, ``T = 1``, a zero row, collinear gradients,
float32 and float64, no gradient needed.

============================  ==========================================================================================
function                      decision
============================  ==========================================================================================
:func:`mgda_weights`          ours (exact active-set QP). torchjd's ``MGDAWeighting`` is the paper's Frank-Wolfe,
                              stopped when the step falls below ``epsilon`` (1e-3) or after 100 iterations: no
                              tolerance on the result; and with a zero gradient the min-norm point is that zero
                              vector (weight 1 on it).
:func:`imtl_g_weights`        torchjd's ``IMTLGWeighting`` (equals the paper's closed form; pseudo-inverse for singular
                              ``G``), run in ``gram``'s own precision so that the pseudo-inverse's rank cut-off matches
                              the rounding in ``G`` (a float32 ``G`` of collinear gradients, inverted in float64, gives
                              wrong weights). Zero rows removed first.
:func:`aligned_mtl_weights`   torchjd's ``AlignedMTLWeighting(scale_mode="min")`` (the paper's ``sqrt(lambda_min)``),
                              in ``gram``'s own precision for the same reason; zero rows removed first (else the mean
                              weights ``1 / T`` count the absent task).
:func:`cagrad_weights`        ours: torchjd's ``CAGradWeighting`` needs cvxpy (not installed). Paper's Algorithm 1, no
                              ``1 / (1 + c^2)`` rescale unless ``rescale=True`` (the official code's default).
:func:`nash_mtl_weights`      ours: torchjd's ``NashMTL`` needs cvxpy, is stateful and takes the Jacobian, not ``G``.
                              Exact ``G c = 1 / c`` by Newton, with a ``1e-6`` relative ridge for singular ``G``.
:func:`upgrad_weights`        ours: torchjd's ``UPGradWeighting`` needs quadprog (not installed), and normalises and
                              regularises ``G`` (``1e-4``) before solving; ours solves the paper's programs exactly.
                              Given a projector without quadprog (the tests plug in scipy's NNLS) it equals ours.
:func:`pcgrad_weights`        ours: torchjd's ``PCGradWeighting`` draws its orders from the global random state
                              (``torch.randperm`` without a generator), so processes and resumed runs disagree.
============================  ==========================================================================================

Example:
    >>> import torch
    >>> from torchbricks_lightning.multitask import functional
    >>> grads = torch.tensor([[1.0, 0.0], [-1.0, 3.0**0.5], [0.0, 0.0]])  # the third task has no labels
    >>> functional.mgda_weights(grads @ grads.T)
    tensor([0.7143, 0.2857, 0.0000])
"""

from torchbricks_lightning.multitask.functional.aligned_mtl import aligned_mtl_weights
from torchbricks_lightning.multitask.functional.cagrad import cagrad_weights
from torchbricks_lightning.multitask.functional.imtl_g import imtl_g_weights
from torchbricks_lightning.multitask.functional.mgda import mgda_weights
from torchbricks_lightning.multitask.functional.nash_mtl import nash_mtl_weights
from torchbricks_lightning.multitask.functional.pcgrad import pcgrad_orders, pcgrad_weights
from torchbricks_lightning.multitask.functional.upgrad import upgrad_weights

__all__ = [
    "aligned_mtl_weights",
    "cagrad_weights",
    "imtl_g_weights",
    "mgda_weights",
    "nash_mtl_weights",
    "pcgrad_orders",
    "pcgrad_weights",
    "upgrad_weights",
]
