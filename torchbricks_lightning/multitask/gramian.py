"""One mechanism for the gradient-level balancers: weights from the Gram matrix of the task gradients.

Most gradient methods only need ``G``, the ``T x T`` Gram matrix of the tasks' gradients ``G_ij = <g_i, g_j>``: a
*weighting* turns it into coefficients ``c`` (e.g. the functions of
:mod:`torchbricks_lightning.multitask.functional`), and the shared part of the model is trained on the combined
gradient ``sum_i c_i g_i``. :class:`GramianBalancer` holds the wiring (:mod:`~torchbricks_lightning.multitask.
branching`: one branch of the named shared tensor per task) and computes ``G`` from one of two **sources**:

- ``source="representation"`` (the default): ``g_i`` is the gradient of task ``i``'s weighted loss with respect to
  the shared tensor (LibMTL's ``rep_grad=True``). It costs no extra pass: in the one ``backward()`` the branch
  function receives every ``g_i``, computes ``G`` (one ``T x N`` by ``N x T`` product, ``N`` the shared tensor's
  size), the coefficients, and returns ``sum_i c_i g_i`` to the trunk. On the representation, MGDA is MGDA-UB
  (Sener and Koltun, 2018) and Aligned-MTL is Aligned-MTL-UB.
- ``source="parameters"``: ``g_i`` is the gradient of task ``i``'s weighted loss with respect to the shared
  parameters (the trainable parameters of the bricks upstream of the shared tensor), as most papers define it. In
  the balancer's forward (it receives the losses), one ``torch.autograd.grad`` of the balanced losses' sum gives
  every task's gradient on its branch (one pass through the heads), then ``T`` calls
  ``torch.autograd.grad(shared, params, grad_outputs=g_i_rep, retain_graph=True)`` give the rows of the Jacobian
  ``J`` (``T`` extra passes through the trunk), ``G = J J^T`` and the coefficients. The ordinary backward then goes
  through the same branch function, which returns ``sum_i c_i g_i_rep``: by linearity the trunk's parameters
  receive exactly ``sum_i c_i J_i``, while the heads keep their own (static-weighted) gradients, as in LibMTL's
  and torchjd's ``mtl_backward``. So there is still one ``backward()`` under Lightning's automatic optimization
  (precision plugins, gradient clipping and accumulation untouched); the extra cost is one pass through the heads,
  ``T`` through the trunk, and ``T x P`` floats held (``P`` the shared parameters) and, under DDP, all-reduced.

**DDP.** Every process computes the same ``G`` and so the same coefficients. On the representation each process
holds its own rows of the shared tensor, so the Gram matrices are summed over the processes (one ``all_reduce`` of
``T x T`` floats in backward, as SyncBatchNorm does); on the parameters, DDP trains on the mean of the processes'
gradients, so the Jacobians are averaged first (one ``all_reduce`` of ``T x P`` floats). Both are rescaled to be
those of one process on the whole batch (the losses are normalised by the global labelled counts, which multiplies
each process's gradients by the world size), so a 2-process run takes the 1-process steps.

**A task without labels** in the batch on every process has ``g_i = 0``: its coefficient is 0, and it takes no part
(the weightings are given ``G`` with its zero row and column). The coefficients are logged as
``train/balance/{loss}``, and the number of conflicting pairs (``G_ij < 0``, ``i < j``) as
``train/balance/conflicts``. A step counter is a buffer (checkpointed), for the methods that draw random numbers.

**AMP.** With a loss scale ``s`` the representation's ``G`` is ``s^2`` times the unscaled one; the weightings of
the functional core are invariant to a common scale of ``G`` (NashMTL normalises ``G``), so the combination is
that of the unscaled gradients. A non-finite ``G`` (an overflow the scaler will skip) gives ``c = 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.distributed import world_size
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.balancers import LossBalancer, format_values
from torchbricks_lightning.multitask.branching import Branches, BranchHook, readers_by_task, trunk_bricks

__all__ = ["SOURCES", "GramianBalancer", "Weighting"]

Weighting = Callable[[torch.Tensor], torch.Tensor]
"""A weighting: the Gram matrix ``(T, T)`` of the task gradients to the coefficients ``(T,)`` of their combination."""
SOURCES = ("representation", "parameters")
"""Where a Gramian balancer takes the task gradients: the shared tensor, or the shared bricks' parameters."""


def _sum_over_processes(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors summed over the processes, in one ``all_reduce`` (unchanged on one process)."""
    if world_size() == 1:
        return list(tensors)
    packed = torch.cat([tensor.reshape(-1).float() for tensor in tensors])
    torch.distributed.all_reduce(packed)
    parts = packed.split([tensor.numel() for tensor in tensors])
    return [part.view_as(tensor) for part, tensor in zip(parts, tensors, strict=True)]


class GramianBalancer(LossBalancer):
    """A gradient-level balancer: the trunk is trained on ``sum_i c_i g_i`` with ``c = weighting(G)``.

    The total is the static-weighted sum ``sum_i w_i L_i``; the combination acts on the gradients that reach the
    trunk through the shared tensor (see the module's docstring for the two sources, their cost and DDP). In a
    recipe, name one of the subclasses (``MGDA``, ``IMTLG``, ``AlignedMTL``, ``CAGrad``, ``NashMTL``, ``UPGrad``,
    ``PCGrad``, ``GradNorm``); this class takes any weighting.

    Args:
        weighting: a function from the Gram matrix ``(T, T)`` (float64, on the CPU) to the coefficients ``(T,)``,
            e.g. :func:`torchbricks_lightning.multitask.functional.mgda_weights`. Subclasses may pass None and
            override :meth:`weigh`.
        source: ``"representation"`` (the shared tensor's gradients, no extra pass) or ``"parameters"`` (the shared
            parameters' gradients, ``T`` extra passes through the trunk).
        shared_name: the data name of the shared tensor (the trunk's output the heads read), e.g. ``"features"``.
        loss_names: the tasks (losses) to balance (default: every training loss); at least two must depend on the
            shared tensor.

    Raises:
        ConfigError: an unknown source, no weighting; at set-up, see
            :func:`~torchbricks_lightning.multitask.branching.readers_by_task`,
            :func:`~torchbricks_lightning.multitask.branching.trunk_bricks` and :meth:`LossBalancer.setup`.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
        >>> collection = BrickCollection({
        ...     "backbone": BrickTrainable(nn.Linear(3, 4), input_names=["raw"], output_names=["features"]),
        ...     "a": BrickTrainable(nn.Linear(4, 1), input_names=["features"], output_names=["pa"]),
        ...     "b": BrickTrainable(nn.Linear(4, 1), input_names=["features"], output_names=["pb"]),
        ...     "la": BrickLoss(nn.MSELoss(), input_names=["pa", "ya"], output_names=["loss_a"]),
        ...     "lb": BrickLoss(nn.MSELoss(), input_names=["pb", "yb"], output_names=["loss_b"]),
        ... })
        >>> mean = lambda gram: torch.full((len(gram),), 1.0 / len(gram), dtype=gram.dtype)
        >>> balancer = GramianBalancer(mean, source="parameters")
        >>> balancer.setup(collection, collection.loss_weights())
        >>> balancer.branch_tasks, balancer.trunk_paths
        (('loss_a', 'loss_b'), ('backbone',))
    """

    log_every_step: ClassVar[bool] = True
    steps: torch.Tensor

    def __init__(
        self,
        weighting: Weighting | None = None,
        source: Literal["representation", "parameters"] = "representation",
        shared_name: str = "features",
        loss_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(loss_names)
        if not isinstance(shared_name, str) or not shared_name:
            raise ConfigError(f"Expected shared_name to be a data name, but got {shared_name!r}.")
        if source not in SOURCES:
            raise ConfigError(f"Expected source to be one of {list(SOURCES)}, but got {source!r}.")
        if weighting is None and type(self).weigh is GramianBalancer.weigh:
            raise ConfigError(
                "GramianBalancer needs a weighting, a function from the Gram matrix to the coefficients (e.g. "
                "torchbricks_lightning.multitask.functional.mgda_weights), or name a subclass such as MGDA."
            )
        self.weighting = weighting
        self.source = source
        self.shared_name = shared_name
        self.branch_tasks: tuple[str, ...] = ()
        self.trunk_paths: tuple[str, ...] = ()
        self.active = False
        self._handles: list[RemovableHandle] = []
        self._trunk: tuple[nn.Module, ...] = ()
        self._task_index = torch.zeros(0, dtype=torch.int64)
        self._source_tensor: torch.Tensor | None = None
        self._branches: tuple[torch.Tensor, ...] = ()
        self._step_losses: torch.Tensor | None = None
        self._planned: torch.Tensor | None = None
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.last_coefficients: list[float] = []
        self.last_conflicts = 0

    # ------------------------------------------------------------------------------------------ what subclasses choose
    def weigh(self, gram: torch.Tensor, step: int) -> torch.Tensor:
        """The coefficients ``(T,)`` from the Gram matrix ``(T, T)`` (float64, CPU) at step ``step`` (0, 1, ...)."""
        if self.weighting is None:  # only a subclass that overrides weigh may leave it out (checked in __init__)
            raise NotImplementedError(f"{type(self).__name__} overrides weigh() without a weighting.")
        return self.weighting(gram)

    def loss_factors(self, like: torch.Tensor) -> torch.Tensor:
        """What multiplies each balanced loss in the total (the static weights; GradNorm's learned weights too)."""
        return self._weights_tensor(like)

    def update(self, gram: torch.Tensor, losses: torch.Tensor | None) -> None:
        """Update the balancer's state from the step's Gram matrix and mean losses of the branch tasks (GradNorm)."""

    needs_losses: ClassVar[bool] = False
    """Whether :meth:`update` needs the step's losses (summed over the processes with the Gram matrix)."""

    # ------------------------------------------------------------------------------------------ wiring
    def setup_tasks(self, collection: BrickCollection) -> None:
        where = type(self).__name__
        by_task = readers_by_task(collection, self.shared_name, self.loss_names, where)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.branch_tasks = tuple(by_task)
        self._task_index = torch.tensor([self.loss_names.index(task) for task in self.branch_tasks])
        self.last_coefficients = [1.0] * len(self.branch_tasks)
        bricks = dict(collection.named_bricks())
        if self.source == "parameters":
            self.trunk_paths = tuple(trunk_bricks(collection, self.shared_name, self.branch_tasks, where))
            self._trunk = tuple(bricks[path] for path in self.trunk_paths)
        nodes = {node.path: node for node in collection.plan(Stage.TRAIN).nodes}
        for task, paths in enumerate(by_task.values()):
            for path in paths:
                node = nodes[path]
                positions = tuple(i for i, name in enumerate(node.positional_inputs) if name == self.shared_name)
                keywords = tuple(argument for argument, name in node.keyword_inputs if name == self.shared_name)
                hook = BranchHook(self, task, positions, keywords)
                self._handles.append(bricks[path].register_forward_pre_hook(hook, with_kwargs=True))

    def training_pass(self) -> AbstractContextManager[None]:
        return self._pass()

    @contextmanager
    def _pass(self) -> Iterator[None]:
        self.active = True
        self._source_tensor, self._branches = None, ()
        try:
            yield
        finally:
            self.active = False
            if self.source == "representation":  # the parameters source reads the branches in forward
                self._source_tensor, self._branches = None, ()

    def branch(self, shared: torch.Tensor, task: int) -> torch.Tensor:
        """Task ``task``'s branch of ``shared`` (the branches are made once per training pass)."""
        if self._source_tensor is not shared:
            if not shared.requires_grad:
                return shared
            self._source_tensor = shared
            self._branches = Branches.apply(self, shared)
        return self._branches[task]

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stacked = self._check_set_up(losses)
        terms = self.loss_factors(stacked) * stacked
        total = self._add_others(terms.sum(), losses)
        index = self._task_index.to(stacked.device)
        self._step_losses = stacked.detach().index_select(0, index) if self.needs_losses else None
        if self.source == "parameters":
            shared, branches = self._source_tensor, self._branches
            self._source_tensor, self._branches = None, ()
            self._planned = None
            if shared is not None and branches and torch.is_grad_enabled():
                self._planned = self._parameter_coefficients(terms.index_select(0, index), shared, branches)
        return total

    def _parameter_coefficients(
        self, terms: torch.Tensor, shared: torch.Tensor, branches: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """The coefficients from the Jacobian of the task terms with respect to the shared parameters."""
        params = [p for module in self._trunk for p in module.parameters() if p.requires_grad]
        params = list({id(p): p for p in params}.values())
        size = sum(p.numel() for p in params)
        rows = torch.zeros(len(branches), size, device=shared.device, dtype=torch.float32)
        if terms.requires_grad and params:
            on_branches = torch.autograd.grad(terms.sum(), branches, retain_graph=True, allow_unused=True)
            for task, grad in enumerate(on_branches):
                if grad is None:
                    continue
                grads = torch.autograd.grad(shared, params, grad_outputs=grad, retain_graph=True, allow_unused=True)
                flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
                rows[task] = torch.cat([g.reshape(-1).float() for g in flat])
        world = world_size()
        losses = self._step_losses
        if world > 1:
            reduced = _sum_over_processes(rows, *([] if losses is None else [losses]))
            rows = reduced[0] / world  # DDP trains on the processes' mean gradient
            losses = reduced[1] / world if losses is not None else None
        return self._coefficients(rows @ rows.T, losses)

    # ------------------------------------------------------------------------------------------ backward
    def combine(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """The shared tensor's gradient from the branches' gradients (called by autograd, in backward)."""
        present = [grad for grad in grads if grad is not None]
        if not present:
            return None
        like = present[0]
        flat = torch.stack([(torch.zeros_like(like) if grad is None else grad).reshape(-1) for grad in grads])
        if self.source == "parameters":
            coefficients = self._planned
            if coefficients is None:  # an internal invariant: forward ran in the training pass
                raise ConfigError(
                    f"{type(self).__name__} (source='parameters') got the shared tensor's gradients without the "
                    "coefficients its forward computes: call the balancer on the losses of the same training pass."
                )
        else:
            gram = flat.float() @ flat.float().T
            losses = self._step_losses
            world = world_size()
            if world > 1:
                reduced = _sum_over_processes(gram, *([] if losses is None else [losses]))
                gram = reduced[0] / world**2  # each process's rows carry the factor W of the global normalisation
                losses = reduced[1] / world if losses is not None else None
            coefficients = self._coefficients(gram, losses)
        return (coefficients.to(device=flat.device, dtype=flat.dtype) @ flat).view_as(like)

    def _coefficients(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        """The step's coefficients from the (process-consistent) Gram matrix; advances the step counter."""
        gram = gram.detach().double().cpu()
        step = int(self.steps)
        self.steps.fill_(step + 1)
        count = gram.shape[0]
        if not bool(torch.isfinite(gram).all()):  # an overflow under AMP: the scaler skips this step
            coefficients = torch.ones(count, dtype=torch.float64)
        else:
            coefficients = self.weigh(gram, step).detach().to(torch.float64).cpu().reshape(-1)
            if coefficients.shape != (count,) or not bool(torch.isfinite(coefficients).all()):
                raise ConfigError(
                    f"{type(self).__name__}'s weighting returned {coefficients.tolist()} for the Gram matrix "
                    f"{gram.tolist()} of {list(self.branch_tasks)}: expected {count} finite coefficients. Use a "
                    "weighting that handles this matrix (zero or collinear gradients)."
                )
            coefficients = torch.where(gram.diagonal() > 0, coefficients, torch.zeros_like(coefficients))
            self.update(gram, None if losses is None else losses.detach().double().cpu())
        self.last_coefficients = coefficients.tolist()
        self.last_conflicts = int((gram.triu(1) < 0).sum())
        return coefficients

    # ------------------------------------------------------------------------------------------ logging
    def logged_values(self) -> dict[str, torch.Tensor]:
        coefficients = zip(self.branch_tasks, self.last_coefficients, strict=True)
        values = {task: torch.tensor(value) for task, value in coefficients}
        values["conflicts"] = torch.tensor(float(self.last_conflicts))
        return values

    def state_details(self) -> str:
        coefficients = format_values(dict(zip(self.branch_tasks, self.last_coefficients, strict=True)))
        return (
            f"; shared tensor {self.shared_name!r} ({self.source}), last step's coefficients {coefficients} with "
            f"{self.last_conflicts} conflicting pairs, {int(self.steps)} steps"
        )

    def extra_repr(self) -> str:
        return f"source={self.source!r}, shared_name={self.shared_name!r}, {super().extra_repr()}"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_handles"] = []  # hook handles belong to the bricks they were registered on
        return state
