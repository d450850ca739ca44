"""The wiring of the Gramian balancers: one branch of the shared tensor per task, in a single forward pass.

A Gramian balancer (:class:`~torchbricks_lightning.multitask.gramian.GramianBalancer`) names a shared tensor, e.g.
``"features"``, produced by one brick (the trunk) and read by the heads. When it is set up it reads the training
graph (:func:`readers_by_task`): for every brick that reads the shared tensor it finds the losses downstream of that
brick, so each reader belongs to one task. It then registers a public forward pre-hook
(``register_forward_pre_hook(..., with_kwargs=True)``) on each reader (:class:`BranchHook`). During a training pass
the first reader's hook calls a custom autograd function on the shared tensor (:class:`Branches`) that returns one
branch per task, identical views of the same values, and every reader's hook gives its brick its task's branch
instead of the shared tensor. The heads' input names stay as they are; outside a training pass the hooks change
nothing (validation, export, inference). Under ``torch.compile`` the hooks run eagerly (``torch.compiler.disable``:
one graph break per reader, the trunk and the heads compiled on either side), so the branches' backward is never
traced: it reads the balancer's state, and a traced one held the whole step in one compiled graph whose backward
``source="parameters"`` cannot retain (AOT autograd's donated buffers).

In the backward pass autograd hands the function every branch's gradient at once, ``g_i`` = the gradient of the
(weighted) loss of task ``i`` with respect to the shared tensor, and the function returns the balancer's combination
``sum_i c_i g_i`` as the shared tensor's gradient, from where it flows into the trunk as usual.

:func:`trunk_bricks` finds the bricks upstream of the shared tensor, whose parameters are the *shared parameters*
of the ``"parameters"`` source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.graph import BrickNode, StagePlan
from torchbricks_lightning.core.names import ALL_INPUTS
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ConfigError, did_you_mean

__all__ = ["BranchHook", "Branches", "Combiner", "readers_by_task", "trunk_bricks"]


class Combiner(Protocol):
    """What the branches need of their balancer (a :class:`~torchbricks_lightning.multitask.GramianBalancer`)."""

    branch_tasks: tuple[str, ...]
    active: bool

    def branch(self, shared: torch.Tensor, task: int) -> torch.Tensor:
        """Task ``task``'s branch of the shared tensor."""

    def combine(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """The shared tensor's gradient from the branches' gradients."""


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


def readers_by_task(
    collection: BrickCollection, shared_name: str, task_names: Sequence[str], where: str = "PCGrad"
) -> dict[str, list[str]]:
    """The bricks that read ``shared_name`` in training, grouped by the one task (loss) downstream of each.

    Readers that feed none of ``task_names`` are left out.

    Args:
        collection: the bricks.
        shared_name: the shared tensor's data name.
        task_names: the balanced losses.
        where: the balancer's name, for the messages.

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
            f"{where} combines the gradients of the shared tensor {shared_name!r}, but {origin} Name the output of "
            f"the shared trunk that the task heads read, one of {list(produced)}."
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
                f"Brick {node.path!r} reads every value ('{ALL_INPUTS}') and feeds the losses {fed}, so {where} "
                f"cannot give it its task's branch of {shared_name!r}. Name its inputs, or balance on another shared "
                "tensor."
            )
        if len(fed) > 1:
            raise ConfigError(
                f"Brick {node.path!r} reads the shared tensor {shared_name!r} and feeds several balanced losses {fed}, "
                f"so it belongs to no single task. Name the tensor after which the tasks separate (the input of the "
                f"task heads) as shared_name, or balance only one of these losses (loss_names=...)."
            )
        by_task.setdefault(fed[0], []).append(node.path)
    if len(by_task) < 2:
        raise ConfigError(
            f"{where} needs the shared tensor {shared_name!r} to be read by at least two tasks, but only "
            f"{sorted(by_task) or 'none'} of the balanced losses {list(task_names)} depend on it in training. Name "
            "the tensor the task heads share."
        )
    return {task: by_task[task] for task in task_names if task in by_task}


def trunk_bricks(
    collection: BrickCollection, shared_name: str, task_names: Sequence[str], where: str = "The balancer"
) -> list[str]:
    """The paths of the bricks upstream of ``shared_name`` in training (the trunk), in execution order.

    Their trainable parameters are the shared parameters of a Gramian balancer's ``"parameters"`` source. The
    combination only reaches them through the shared tensor, so a trunk brick must not feed a balanced loss by
    another way.

    Raises:
        ConfigError: a trunk brick's output other than ``shared_name`` is read by a brick that feeds a balanced
            loss (a skip connection around the shared tensor), or a brick reading every value feeds one.

    Example:
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
        >>> collection = BrickCollection({
        ...     "stem": BrickTrainable(nn.Linear(3, 4), input_names=["raw"], output_names=["low"]),
        ...     "backbone": BrickTrainable(nn.Linear(4, 4), input_names=["low"], output_names=["features"]),
        ...     "la": BrickLoss(nn.MSELoss(), input_names=["features", "ya"], output_names=["loss_a"]),
        ...     "lb": BrickLoss(nn.MSELoss(), input_names=["features", "yb"], output_names=["loss_b"]),
        ... })
        >>> trunk_bricks(collection, "features", ["loss_a", "loss_b"])
        ['stem', 'backbone']
    """
    plan = collection.plan(Stage.TRAIN)
    producers = {name: node for node in plan.nodes for name in node.output_names}
    trunk: set[str] = set()
    pending = [producers[shared_name]] if shared_name in producers else []
    while pending:
        node = pending.pop()
        if node.path in trunk:
            continue
        trunk.add(node.path)
        inputs = plan.output_names if node.reads_all else node.data_inputs
        pending.extend(producers[name] for name in inputs if name in producers)
    below = _losses_below(plan)
    tasks = set(task_names)
    trunk_outputs = {name for node in plan.nodes if node.path in trunk for name in node.output_names}
    for node in plan.nodes:
        if node.path in trunk or not below[node.path] & tasks:
            continue
        bypass = sorted((trunk_outputs & set(node.data_inputs)) - {shared_name})
        if bypass or (node.reads_all and trunk_outputs - {shared_name}):
            read = bypass or [ALL_INPUTS]
            raise ConfigError(
                f"{where} takes the task gradients of the shared parameters (source='parameters'), but brick "
                f"{node.path!r} reads {read} from the trunk upstream of {shared_name!r} and feeds the balanced losses "
                f"{sorted(below[node.path] & tasks)}: that gradient would reach the trunk around the combination. "
                f"Name the last tensor through which every task reads the trunk as shared_name, or use "
                "source='representation'."
            )
    return [node.path for node in plan.nodes if node.path in trunk]


class Branches(torch.autograd.Function):
    """Forward: one view of the shared tensor per task. Backward: the tasks' gradients, combined by the balancer."""

    @staticmethod
    def forward(ctx: Any, balancer: Combiner, shared: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.balancer = balancer
        return tuple(shared.view_as(shared) for _ in balancer.branch_tasks)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[None, torch.Tensor | None]:
        return None, ctx.balancer.combine(grads)


class BranchHook:
    """A forward pre-hook that gives a reader brick its task's branch of the shared tensor during a training pass."""

    def __init__(self, balancer: Combiner, task: int, positions: tuple[int, ...], keywords: tuple[str, ...]) -> None:
        self.balancer, self.task, self.positions, self.keywords = balancer, task, positions, keywords

    # Under torch.compile the hook runs eagerly (one graph break per reader): tracing it would trace the branches'
    # backward too, whose combination reads the balancer's state (its step counter, the planned coefficients of the
    # parameters source) and calls the weightings' numpy solvers.
    @torch.compiler.disable
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
