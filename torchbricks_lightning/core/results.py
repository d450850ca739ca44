"""The losses and metrics of a :class:`~torchbricks_lightning.core.collection.BrickCollection`: names, weights,
totals, and the metric bricks' updates, summaries and resets.

:class:`LossesAndMetrics` is mixed into ``BrickCollection``; it reads the collection's plans and bricks only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from torchbricks_lightning.core.graph import BrickNode, StagePlan
from torchbricks_lightning.core.losses import merge_loss_weights, weighted_total
from torchbricks_lightning.core.metric_bricks import BrickMetrics
from torchbricks_lightning.core.stages import ALL_STAGES, StageLike, parse_stage
from torchbricks_lightning.errors import DuplicateOutputError

if TYPE_CHECKING:
    from torchbricks_lightning.core.bricks import BrickInterface
    from torchbricks_lightning.core.dispatch import CompiledStage

__all__ = ["LossesAndMetrics"]


class LossesAndMetrics:
    """What a collection answers about its losses and metrics (a mixin of ``BrickCollection``)."""

    _loss_weights: dict[str, float] | None

    if TYPE_CHECKING:  # provided by BrickCollection

        def plan(self, stage: StageLike) -> StagePlan: ...

        def brick_nodes(self) -> tuple[BrickNode, ...]: ...

        def named_bricks(self) -> Iterator[tuple[str, BrickInterface]]: ...

        def _stage(self, stage: StageLike) -> CompiledStage: ...

    # ----------------------------------------------------------------------------------------- losses
    def loss_names(self, stage: StageLike | None = None) -> list[str]:
        """The names of the losses produced in ``stage`` (or in any stage)."""
        stages = ALL_STAGES if stage is None else (parse_stage(stage, where="loss_names"),)
        names: dict[str, None] = {}
        for each in stages:
            names.update((name, None) for name, _ in self.plan(each).loss_weights)
        return list(names)

    def loss_weights(self) -> dict[str, float]:
        """The weight of every loss name, as set on its loss brick."""
        return dict(self._weights())

    def _weights(self) -> dict[str, float]:
        weights = self._loss_weights
        if weights is None:
            weights = {name: node.loss_weight for node in self.brick_nodes() for name in node.loss_names}
            self.__dict__["_loss_weights"] = weights
        return weights

    def extract_losses(self, named_outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The (unweighted) losses found in ``named_outputs``, by name."""
        return {name: named_outputs[name] for name in self._weights() if name in named_outputs}

    def total_loss(
        self, named_outputs: Mapping[str, Any], loss_weights: Mapping[str, float] | None = None
    ) -> torch.Tensor:
        """The weighted sum of the losses in ``named_outputs``.

        Args:
            named_outputs: the outputs of a forward pass.
            loss_weights: weights that override the bricks' own, by loss name.

        Raises:
            ConfigError: ``loss_weights`` names a loss the collection does not have.
            BrickGraphError: ``named_outputs`` holds no loss.
        """
        return weighted_total(named_outputs, merge_loss_weights(self._weights(), loss_weights))

    # ----------------------------------------------------------------------------------------- metrics
    def _check_metric_keys(self) -> None:
        owner: dict[str, str] = {}
        for path, brick in self._metric_bricks():
            for key in brick.metric_keys(path):
                if key in owner:
                    raise DuplicateOutputError(
                        f"Metric bricks {owner[key]!r} and {path!r} both report the metric key {key!r}, so one would "
                        "overwrite the other in summarize(). Give one a different metric_name or brick name."
                    )
                owner[key] = path

    @torch.compiler.disable
    def update_metrics(self, named_values: Mapping[str, Any], stage: StageLike) -> None:
        """Update the metrics of ``stage`` from what ``forward(..., update_metrics=False)`` returned.

        This runs the bricks that such a call left out (bricks that get the stage and return nothing: the metric
        bricks), eagerly, on ``named_values``. Together the two calls update the metrics as one ``forward`` does.

        Raises:
            MissingInputError: ``named_values`` lacks a value a metric brick reads (pass the inputs too:
                ``return_inputs=True``).
        """
        self._stage(stage).update(named_values)

    def _metric_bricks(self) -> Iterator[tuple[str, BrickMetrics]]:
        for path, brick in self.named_bricks():
            if isinstance(brick, BrickMetrics):
                yield path, brick

    def summarize(self, stage: StageLike, reset: bool = False) -> dict[str, torch.Tensor]:
        """Compute the metrics accumulated in ``stage``, keyed ``'{brick path}/{metric name}'``.

        Args:
            stage: the stage whose metrics to compute.
            reset: reset those metrics afterwards.

        Returns:
            The metric values; ``{}`` when no metric is alive (or updated) in ``stage``.
        """
        stage = parse_stage(stage, where="summarize")
        values: dict[str, torch.Tensor] = {}
        for path, brick in self._metric_bricks():
            keys = dict(zip(brick.report_names, brick.metric_keys(path), strict=True))
            for name, value in brick.compute(stage).items():
                values[keys[name]] = value
            if reset:
                brick.reset(stage)
        return values

    def reset_metrics(self, stage: StageLike | None = None) -> None:
        """Reset the metrics of ``stage``, or of every stage."""
        parsed = None if stage is None else parse_stage(stage, where="reset_metrics")
        for _, brick in self._metric_bricks():
            brick.reset(parsed)

    def metric_keys(self) -> list[str]:
        """Every key that ``summarize`` can report."""
        return [key for path, brick in self._metric_bricks() for key in brick.metric_keys(path)]
