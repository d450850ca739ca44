"""Gradient-level balancing on a shared tensor, in a single backward pass: PCGrad (Yu et al., NeurIPS 2020).

**The wiring.** The balancer names a shared tensor, e.g. ``"features"``, produced by one brick (the backbone) and
read by the heads. When it is set up it reads the training graph: for every brick that reads the shared tensor it
finds the losses downstream of that brick, so each reader belongs to one task. It then registers a public forward
pre-hook (``register_forward_pre_hook(..., with_kwargs=True)``) on each reader. During a training pass (the module
runs the training forward inside :meth:`PCGrad.training_pass`), the first reader's hook calls a custom autograd
function on the shared tensor that returns one branch per task, identical views of the same values, and every
reader's hook gives its brick its task's branch instead of the shared tensor. The heads' input names stay as they
are; outside a training pass the hooks change nothing (validation, export, inference).

In the backward pass autograd hands the function every branch's gradient at once, ``g_i`` = the gradient of the
(weighted) loss of task ``i`` with respect to the shared tensor. The function projects them (below) and returns
their combination as the gradient of the shared tensor, from where it flows into the backbone as usual. So it works
with one ``loss.backward()``: Lightning's automatic optimization, gradient accumulation, AMP (a common loss scale
cancels out of the projection) and DDP, where the ``T x T`` Gram matrix of the task gradients is summed over the
processes (one ``all_reduce`` in backward, as SyncBatchNorm does), so every process projects with the dot
products of the whole batch, as one process would.

**The formula** (LibMTL's ``PCGrad``, on the shared tensor's gradients rather than the parameters'). With
``G_ij = <g_i, g_j>`` summed over the whole tensor: for each task ``i``, ``p_i = g_i``; then for every other task
``j``, in a random order, if ``<p_i, g_j> < 0``: ``p_i <- p_i - <p_i, g_j> / |g_j|^2 g_j``. The shared tensor's
gradient is ``sum_i p_i``. Each ``p_i`` is a combination of the ``g_j``, so everything is computed from ``G``: the
result is ``sum_j c_j g_j``, and ``c_j`` (1 without conflicts) is logged as ``train/balance/{loss}``, with the number
of conflicting pairs (``G_ij < 0``, ``i < j``) as ``train/balance/conflicts``. The random orders come from a
generator seeded with ``(seed, step)``, the step counter being a buffer: reproducible, the same on every process,
and restored on resume. A task without labels in a batch has ``g_j = 0`` and takes no part.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.distributed import world_size
from torchbricks_lightning.core.graph import BrickNode, StagePlan
from torchbricks_lightning.core.names import ALL_INPUTS
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ConfigError, did_you_mean
from torchbricks_lightning.multitask.balancers import LossBalancer, format_values
from torchbricks_lightning.multitask.functional.pcgrad import pcgrad_weights

__all__ = ["PCGrad", "pcgrad_coefficients", "readers_by_task"]


def pcgrad_coefficients(gram: Sequence[Sequence[float]], orders: Sequence[Sequence[int]]) -> tuple[list[float], int]:
    """PCGrad's combination of task gradients from their Gram matrix: ``(c, conflicts)``, ``sum_i p_i = sum_j c_j g_j``.

    A thin wrapper of :func:`~torchbricks_lightning.multitask.functional.pcgrad_weights` (the same computation),
    on lists, with the number of conflicting pairs (``G_ij < 0``, ``i < j``). A zero gradient keeps coefficient 1
    here (``pcgrad_weights`` gives it 0; the combined gradient is the same).

    Args:
        gram: ``G[i][j] = <g_i, g_j>``.
        orders: for each task ``i``, the order in which the other tasks are visited.

    Example:
        >>> coefficients, conflicts = pcgrad_coefficients([[1.0, -1.0], [-1.0, 4.0]], [[1], [0]])
        >>> coefficients, conflicts  # p_0 = g_0 + g_1 / 4, p_1 = g_1 + g_0
        ([2.0, 1.25], 1)
    """
    coefficients = pcgrad_weights(torch.tensor(gram, dtype=torch.float64), orders=orders).tolist()
    # pcgrad_weights gives a zero gradient 0; this function always gave it 1 (its p_i = g_i = 0: the same update)
    coefficients = [1.0 if gram[i][i] <= 0.0 else value for i, value in enumerate(coefficients)]
    conflicts = sum(1 for i in range(len(gram)) for j in range(i + 1, len(gram)) if gram[i][j] < 0.0)
    return coefficients, conflicts


def _losses_below(plan: StagePlan) -> dict[str, frozenset[str]]:
    """For each brick of ``plan`` (by path), the losses it feeds, directly or through other bricks."""
    readers: dict[str, list[BrickNode]] = {}
    for node in plan.nodes:
        for name in node.data_inputs:
            readers.setdefault(name, []).append(node)
    all_readers = [node for node in plan.nodes if node.reads_all]
    below: dict[str, frozenset[str]] = {}
    for node in reversed(plan.nodes):  # consumers come after producers: they are known first
        losses = set(node.loss_names)
        for name in node.output_names:
            for reader in (*readers.get(name, ()), *all_readers):
                if reader.path != node.path:
                    losses |= below.get(reader.path, frozenset())
        below[node.path] = frozenset(losses)
    return below


def readers_by_task(collection: BrickCollection, shared_name: str, task_names: Sequence[str]) -> dict[str, list[str]]:
    """The bricks that read ``shared_name`` in training, grouped by the one task (loss) downstream of each.

    Readers that feed none of ``task_names`` are left out.

    Raises:
        ConfigError: ``shared_name`` is not produced by a brick in training, a reader feeds several tasks or reads
            every value (``'__all__'``), or fewer than two tasks read it.

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
        >>> readers_by_task(collection, "features", ["loss_a", "loss_b"])
        {'loss_a': ['a'], 'loss_b': ['b']}
    """
    plan = collection.plan(Stage.TRAIN)
    produced = plan.output_names
    if shared_name not in produced:
        origin = (
            "it is an input of the stage (no brick produces it)"
            if shared_name in plan.required_inputs
            else f"no brick alive in training produces it.{did_you_mean(shared_name, produced)}"
        )
        raise ConfigError(
            f"PCGrad projects the gradients of the shared tensor {shared_name!r}, but {origin} Name the output of the "
            f"shared trunk that the task heads read, one of {list(produced)}."
        )
    below = _losses_below(plan)
    tasks = set(task_names)
    by_task: dict[str, list[str]] = {}
    for node in plan.nodes:
        if shared_name not in node.data_inputs and not node.reads_all:
            continue
        fed = sorted(below[node.path] & tasks)
        if not fed:
            continue
        if node.reads_all:
            raise ConfigError(
                f"Brick {node.path!r} reads every value ('{ALL_INPUTS}') and feeds the losses {fed}, so PCGrad cannot "
                f"give it its task's branch of {shared_name!r}. Name its inputs, or project another shared tensor."
            )
        if len(fed) > 1:
            raise ConfigError(
                f"Brick {node.path!r} reads the shared tensor {shared_name!r} and feeds several balanced losses {fed}, "
                f"so it belongs to no single task. Project the gradients of a tensor after which the tasks separate "
                f"(the input of the task heads), or balance only one of these losses (loss_names=...)."
            )
        by_task.setdefault(fed[0], []).append(node.path)
    if len(by_task) < 2:
        raise ConfigError(
            f"PCGrad needs the shared tensor {shared_name!r} to be read by at least two tasks, but only "
            f"{sorted(by_task) or 'none'} of the balanced losses {list(task_names)} depend on it in training. Name "
            "the tensor the task heads share."
        )
    return {task: by_task[task] for task in task_names if task in by_task}


class _Branches(torch.autograd.Function):
    """Forward: one view of the shared tensor per task. Backward: the tasks' gradients, combined by PCGrad."""

    @staticmethod
    def forward(ctx: Any, balancer: PCGrad, shared: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.balancer = balancer
        ctx.shape, ctx.dtype = shared.shape, shared.dtype
        return tuple(shared.view_as(shared) for _ in balancer.branch_tasks)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[None, torch.Tensor | None]:
        return None, ctx.balancer.combine(grads)


class _BranchHook:
    """A forward pre-hook that gives a reader brick its task's branch of the shared tensor during a training pass."""

    def __init__(self, balancer: PCGrad, task: int, positions: tuple[int, ...], keywords: tuple[str, ...]) -> None:
        self.balancer, self.task, self.positions, self.keywords = balancer, task, positions, keywords

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        balancer = self.balancer
        if not balancer.active:
            return None
        shared = args[self.positions[0]] if self.positions else kwargs[self.keywords[0]]
        branch = balancer.branch(shared, self.task)
        if self.positions:
            args = tuple(branch if index in self.positions else value for index, value in enumerate(args))
        if self.keywords:
            kwargs = {key: branch if key in self.keywords else value for key, value in kwargs.items()}
        return args, kwargs


class PCGrad(LossBalancer):
    """Projecting conflicting gradients (PCGrad) of the tasks on a shared tensor, in a single backward pass.

    The total is the static-weighted sum ``sum_i w_i L_i``; the projection acts on the gradients flowing back into
    the shared tensor (see the module's docstring for the wiring and the formula).

    Args:
        shared_name: the data name of the shared tensor (the trunk's output the heads read), e.g. ``"features"``.
        loss_names: the tasks (losses) to project (default: every training loss); at least two must depend on the
            shared tensor.
        seed: the seed of the random visiting orders.

    Raises:
        ConfigError: at set-up, see :func:`readers_by_task` and :meth:`LossBalancer.setup`.

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
        >>> balancer = PCGrad(shared_name="features")
        >>> balancer.setup(collection, collection.loss_weights())
        >>> balancer.branch_tasks
        ('loss_a', 'loss_b')
    """

    log_every_step: ClassVar[bool] = True
    steps: torch.Tensor

    def __init__(self, shared_name: str = "features", loss_names: Sequence[str] | None = None, seed: int = 0) -> None:
        super().__init__(loss_names)
        if not isinstance(shared_name, str) or not shared_name:
            raise ConfigError(f"Expected shared_name to be a data name, but got {shared_name!r}.")
        self.shared_name = shared_name
        self.seed = int(seed)
        self.branch_tasks: tuple[str, ...] = ()
        self.active = False
        self._handles: list[RemovableHandle] = []
        self._source: torch.Tensor | None = None
        self._branches: tuple[torch.Tensor, ...] = ()
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.last_coefficients: list[float] = []
        self.last_conflicts = 0

    # ------------------------------------------------------------------------------------------ wiring
    def setup_tasks(self, collection: BrickCollection) -> None:
        by_task = readers_by_task(collection, self.shared_name, self.loss_names)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.branch_tasks = tuple(by_task)
        self.last_coefficients = [1.0] * len(self.branch_tasks)
        bricks = dict(collection.named_bricks())
        nodes = {node.path: node for node in collection.plan(Stage.TRAIN).nodes}
        for task, paths in enumerate(by_task.values()):
            for path in paths:
                node = nodes[path]
                positions = tuple(i for i, name in enumerate(node.positional_inputs) if name == self.shared_name)
                keywords = tuple(argument for argument, name in node.keyword_inputs if name == self.shared_name)
                hook = _BranchHook(self, task, positions, keywords)
                self._handles.append(bricks[path].register_forward_pre_hook(hook, with_kwargs=True))

    def training_pass(self) -> AbstractContextManager[None]:
        return self._pass()

    @contextmanager
    def _pass(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False
            self._source, self._branches = None, ()

    def branch(self, shared: torch.Tensor, task: int) -> torch.Tensor:
        """Task ``task``'s branch of ``shared`` (the branches are made once per training pass)."""
        if self._source is not shared:
            if not shared.requires_grad:
                return shared
            self._source = shared
            self._branches = _Branches.apply(self, shared)
        return self._branches[task]

    # ------------------------------------------------------------------------------------------ backward
    def combine(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """The shared tensor's gradient from the branches' gradients (called by autograd, in backward)."""
        present = [grad for grad in grads if grad is not None]
        if not present:
            return None
        like = present[0]
        flat = torch.stack([(torch.zeros_like(like) if grad is None else grad).reshape(-1) for grad in grads])
        gram = flat.float() @ flat.float().T
        if world_size() > 1:
            torch.distributed.all_reduce(gram)
        step = int(self.steps)
        coefficients, conflicts = pcgrad_coefficients(gram.double().tolist(), self._orders(len(grads), step))
        self.steps.fill_(step + 1)
        self.last_coefficients, self.last_conflicts = coefficients, conflicts
        factors = torch.tensor(coefficients, dtype=flat.dtype, device=flat.device)
        return (factors @ flat).view_as(like)

    def _orders(self, count: int, step: int) -> list[list[int]]:
        """For each task, the order in which the others are visited: random, from ``(seed, step)`` only."""
        others = [[j for j in range(count) if j != i] for i in range(count)]
        if count > 2:
            generator = random.Random(self.seed * 1_000_003 + step)  # noqa: S311 - an order, not a secret
            for order in others:
                generator.shuffle(order)
        return others

    # ------------------------------------------------------------------------------------------ logging
    def logged_values(self) -> dict[str, torch.Tensor]:
        coefficients = zip(self.branch_tasks, self.last_coefficients, strict=True)
        values = {task: torch.tensor(value) for task, value in coefficients}
        values["conflicts"] = torch.tensor(float(self.last_conflicts))
        return values

    def state_details(self) -> str:
        coefficients = format_values(dict(zip(self.branch_tasks, self.last_coefficients, strict=True)))
        return (
            f"; shared tensor {self.shared_name!r}, last step's coefficients {coefficients} with "
            f"{self.last_conflicts} conflicting pairs, {int(self.steps)} projected steps"
        )

    def extra_repr(self) -> str:
        return f"shared_name={self.shared_name!r}, {super().extra_repr()}"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_handles"] = []  # hook handles belong to the bricks they were registered on
        return state
