"""Visualisation bricks: per-sample pictures drawn from named inputs and predictions, outside every stage's forward.

A :class:`BrickVisualization` wraps a visualiser (a :class:`Visualizer`, or any callable) that gets named values,
like any brick, and returns **one picture per sample**: a ``uint8`` tensor ``(N, 3, H, W)`` (a float tensor in
``[0, 1]`` is converted). It is alive in validation and test by default, may be made alive in training, and is never
alive at inference or export.

No stage's plan holds a visualisation brick (:attr:`~torchbricks_lightning.core.graph.BrickNode.visualizes`), so
``BrickCollection.forward`` never draws, ``torch.compile`` never sees one, export leaves it out and the graph
pictures do not show it (it produces no data name). Pictures are drawn only when asked for:
:meth:`Visualizations.visualize` runs the visualisation bricks of a stage on what ``forward`` returned, on the
first samples only. The Lightning layer calls it on the first batches of an epoch until each brick's
``images_per_epoch`` are drawn, and never afterwards (:mod:`torchbricks_lightning.lightning.logging.images`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchbricks_lightning import BrickCollection, BrickTrainable
    >>> class Grey(Visualizer):
    ...     def forward(self, raw: torch.Tensor) -> torch.Tensor:
    ...         return (raw.clamp(0, 1) * 255).to(torch.uint8).expand(-1, 3, -1, -1)
    >>> collection = BrickCollection({
    ...     "head": BrickTrainable(nn.Flatten(), input_names=["raw"], output_names=["flat"]),
    ...     "show": BrickVisualization(Grey(), input_names=["raw"], images_per_epoch=2),
    ... })
    >>> collection.plan("validation").output_names  # not in the plan: forward never draws
    ('flat',)
    >>> outputs = collection({"raw": torch.rand(5, 1, 4, 4)}, "validation")
    >>> {path: tuple(images.shape) for path, images in collection.visualize(outputs, "validation", 2).items()}
    {'show': (2, 3, 4, 4)}
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchbricks_lightning.core.bricks import BrickInterface
from torchbricks_lightning.core.graph import BrickNode
from torchbricks_lightning.core.names import ALL_INPUTS, STAGE_INPUT, InputNames
from torchbricks_lightning.core.stages import AliveStages, Stage, StageLike, parse_alive_stages, parse_stage
from torchbricks_lightning.errors import (
    BrickDefinitionError,
    BrickOutputError,
    ConfigError,
    MissingInputError,
    did_you_mean,
)

__all__ = ["VISUALIZATION_STAGES", "BrickVisualization", "Visualizations", "Visualizer"]

VISUALIZATION_STAGES = (Stage.VALIDATION, Stage.TEST)
"""The stages in which a visualisation brick is alive by default."""
_POSSIBLE_STAGES = (Stage.TRAIN, Stage.VALIDATION, Stage.TEST)


class Visualizer(nn.Module, ABC):
    """What a :class:`BrickVisualization` calls: named values in, one picture per sample out.

    A module without weights, so that a recipe builds it as it builds any model, and a checkpoint rebuilds it: subclass
    it with simple constructor arguments (as the ready-made ones in
    :mod:`torchbricks_lightning.bag_of_bricks.visualizers`) and implement ``forward``. It gets the values named by
    the brick's ``input_names``, detached, on the CPU and cut to the samples to draw, and returns a ``uint8`` tensor
    ``(N, 3, H, W)``, one picture per sample, all of one size.
    """

    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Draw one picture per sample."""


def _check_stages(stages: tuple[Stage, ...], where: str) -> tuple[Stage, ...]:
    wrong = [stage.value for stage in stages if stage not in _POSSIBLE_STAGES]
    if wrong:
        raise ConfigError(
            f"{where} cannot be alive in {wrong}: pictures are drawn in training, validation and test only (an "
            f"exported or deployed model draws none). Use alive_stages={[s.value for s in VISUALIZATION_STAGES]} "
            "(the default) or add 'train'."
        )
    return stages


def _check_count(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"Expected images_per_epoch of {where} to be a whole number >= 0, but got {value!r}.")
    return value


class BrickVisualization(BrickInterface):
    """A brick that draws one picture per sample from named inputs and predictions; it produces no data name.

    Args:
        visualizer: a :class:`Visualizer` (or any callable) returning a ``uint8`` tensor ``(N, 3, H, W)``, one
            picture per sample (a float tensor in ``[0, 1]`` is converted).
        input_names: the names passed to it, a list (positionally) or a dict ``{argument: data name}``; relative
            names (``./probabilities``) work as for any brick.
        alive_stages: where pictures are drawn: validation and test by default; ``'train'`` may be added.
            Inference and export are refused: no stage's forward runs a visualisation brick anyway.
        images_per_epoch: how many pictures a Lightning run logs per epoch and stage for this brick (the first
            samples of the epoch); 0 logs none.

    Raises:
        ConfigError: alive at inference or export, or a bad ``images_per_epoch``.
        BrickDefinitionError: ``visualizer`` is not callable.

    Example:
        >>> class Blank(Visualizer):
        ...     def forward(self, raw):
        ...         return torch.zeros(len(raw), 3, 8, 8, dtype=torch.uint8)
        >>> BrickVisualization(Blank(), input_names=["raw"])
        BrickVisualization(Blank, input_names=['raw'], output_names=[], alive_stages=['validation', 'test'])
        >>> BrickVisualization(Blank(), input_names=["raw"], alive_stages="all")
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: BrickVisualization cannot be alive in ['inference', 'export']: ...
    """

    def __init__(
        self,
        visualizer: Visualizer | Callable[..., torch.Tensor],
        input_names: InputNames,
        alive_stages: AliveStages = VISUALIZATION_STAGES,
        images_per_epoch: int = 8,
    ) -> None:
        where = type(self).__name__
        if not callable(visualizer):
            raise BrickDefinitionError(
                f"Expected the visualizer of {where} to be callable (a Visualizer), but got "
                f"{type(visualizer).__name__}."
            )
        _check_stages(parse_alive_stages(alive_stages, where=where), where)
        super().__init__(input_names=input_names, output_names=[], alive_stages=alive_stages)
        self.visualizer = visualizer
        self.images_per_epoch = _check_count(images_per_epoch, where)

    @property
    def alive_stages(self) -> tuple[Stage, ...]:
        """The stages in which the brick draws (training, validation and test only)."""
        return self._spec.alive_stages

    @alive_stages.setter
    def alive_stages(self, value: AliveStages) -> None:
        where = type(self).__name__
        stages = _check_stages(parse_alive_stages(value, where=where), where)
        self._replace_spec(alive_stages=stages)

    def brick_node(self, path: str, index: int) -> BrickNode:
        return dataclasses.replace(super().brick_node(path, index), visualizes=True)

    def describe_model(self) -> str:
        return type(self.visualizer).__name__

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Draw the pictures, without gradients, and check them: a ``uint8`` tensor ``(N, 3, H, W)``."""
        with torch.no_grad():
            images = self.visualizer(*args, **kwargs)
        return _checked_images(images, type(self.visualizer).__name__)


def _checked_images(images: object, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise BrickOutputError(
            f"Visualizer {name} must return one picture per sample, a uint8 tensor (N, 3, H, W), but returned {got}. "
            "Stack the pictures with torch.stack."
        )
    if images.dtype == torch.uint8:
        return images
    if images.is_floating_point():
        return (images.clamp(0, 1) * 255).round().to(torch.uint8)
    raise BrickOutputError(
        f"Visualizer {name} returned pictures of dtype {images.dtype}; expected uint8 (or a float in [0, 1])."
    )


def _batch_size(values: list[Any]) -> int | None:
    """The leading size of the first tensor among ``values`` (the batch), or None."""
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim >= 1:
            return int(value.shape[0])
    return None


def _take(value: Any, count: int | None, batch: int | None) -> Any:
    """``value`` detached on the CPU, cut to its first ``count`` samples if it has one entry per sample."""
    if isinstance(value, torch.Tensor):
        if count is not None and value.ndim >= 1 and value.shape[0] == batch:
            value = value[:count]
        return value.detach().cpu()
    if isinstance(value, (list, tuple)) and count is not None and len(value) == batch:
        return value[:count]
    if isinstance(value, dict):
        return {key: _take(each, count, batch) for key, each in value.items()}
    return value


class Visualizations:
    """What a collection answers about its visualisation bricks (a mixin of ``BrickCollection``)."""

    if TYPE_CHECKING:  # provided by BrickCollection

        def brick_nodes(self) -> tuple[BrickNode, ...]: ...

        def named_bricks(self) -> Iterator[tuple[str, BrickInterface]]: ...

    def visualization_bricks(self, stage: StageLike) -> dict[str, BrickVisualization]:
        """The visualisation bricks alive in ``stage``, by path, in declaration order."""
        parsed = parse_stage(stage, where="visualization_bricks")
        return {
            path: brick
            for path, brick in self.named_bricks()
            if isinstance(brick, BrickVisualization) and parsed in brick.alive_stages
        }

    def visualize(
        self, named_values: Mapping[str, Any], stage: StageLike, max_images: int | Mapping[str, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Draw the pictures of the visualisation bricks alive in ``stage``, from what ``forward`` returned.

        Each brick gets its inputs detached, on the CPU, and cut to the first ``max_images`` samples (the values
        whose leading size is the batch's, that of its first tensor input), so a slow visualiser draws only what is
        wanted.

        Args:
            named_values: what ``forward(..., stage)`` returned (with its inputs).
            stage: the stage whose visualisation bricks to run.
            max_images: at most this many pictures per brick; a dict by brick path limits each brick, and a brick it
                leaves out, or gives 0, is not run. None draws every sample.

        Returns:
            ``{brick path: uint8 tensor (n, 3, H, W)}``, for each brick that ran.

        Raises:
            MissingInputError: ``named_values`` lacks a name a visualisation brick reads.
            BrickOutputError: a visualiser returned something other than pictures ``(N, 3, H, W)``.
        """
        parsed = parse_stage(stage, where="visualize")
        bricks = self.visualization_bricks(parsed)
        nodes = {node.path: node for node in self.brick_nodes() if node.path in bricks}
        pictures: dict[str, torch.Tensor] = {}
        for path, brick in bricks.items():
            count = max_images.get(path, 0) if isinstance(max_images, Mapping) else max_images
            if count is not None and count <= 0:
                continue
            node = nodes[path]
            _check_present(node, named_values, parsed)
            values = {name: _value(name, named_values, parsed) for name in node.input_names}
            batch = _batch_size(list(values.values()))
            args = [_take(values[name], count, batch) for name in node.positional_inputs]
            kwargs = {argument: _take(values[name], count, batch) for argument, name in node.keyword_inputs}
            images = brick(*args, **kwargs)
            pictures[path] = images if count is None else images[:count]
        return pictures


def _value(name: str, named_values: Mapping[str, Any], stage: Stage) -> Any:
    if name == STAGE_INPUT:
        return stage
    if name == ALL_INPUTS:
        return dict(named_values)
    return named_values[name]


def _check_present(node: BrickNode, named_values: Mapping[str, Any], stage: Stage) -> None:
    missing = [name for name in node.data_inputs if name not in named_values]
    if missing:
        raise MissingInputError(
            f"Visualisation brick {node.path!r} reads {missing} in stage {stage.value!r}, but the values given lack "
            f"{'it' if len(missing) == 1 else 'them'}; given: {sorted(named_values)}."
            f"{did_you_mean(missing[0], list(named_values))} "
            "Pass what forward(..., stage) returned, with its inputs (return_inputs=True), or fix the brick's "
            "input_names."
        )
