"""What ``predict_step`` returns: the inference stage's results, not every input and intermediate tensor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.graph import StagePlan
from torchbricks_lightning.core.outputs import check_output_names, terminal_output_names
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.errors import ConfigError

__all__ = ["PredictionOutputs"]


class PredictionOutputs:
    """The named outputs a prediction keeps: the names given, or the inference stage's terminal outputs.

    Terminal outputs are the values no alive brick reads (``head/probabilities``, not the images or feature maps),
    worked out again only when the collection's plan changes.

    Args:
        collection: the bricks.
        output_names: the names to keep; default: the inference stage's terminal outputs.

    Raises:
        ConfigError: a name is not produced in the inference stage (with a close match, if any).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickTrainable
        >>> collection = BrickCollection({
        ...     "backbone": BrickTrainable(nn.Identity(), input_names=["raw"], output_names=["features"]),
        ...     "head": BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits"]),
        ... })
        >>> outputs = PredictionOutputs(collection)
        >>> list(outputs.pick(collection, collection({"raw": torch.rand(3, 4)}, "inference")))
        ['logits']
        >>> PredictionOutputs(collection, ["logit"])
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ConfigError: predict_output_names ['logit'] are not produced in stage ...
    """

    def __init__(self, collection: BrickCollection, output_names: Sequence[str] | None = None) -> None:
        plan = collection.plan(Stage.INFERENCE)
        self.requested = (
            None if output_names is None else check_output_names(plan, output_names, argument="predict_output_names")
        )
        self._plan: StagePlan | None = None
        self._terminal: list[str] = []

    def names(self, collection: BrickCollection) -> list[str]:
        """The names a prediction of ``collection`` keeps."""
        if self.requested is not None:
            return self.requested
        plan = collection.plan(Stage.INFERENCE)
        if plan is not self._plan:
            self._plan, self._terminal = plan, terminal_output_names(plan)
        return self._terminal

    def pick(self, collection: BrickCollection, named_outputs: Mapping[str, Any]) -> dict[str, Any]:
        """The kept values of one prediction, by name."""
        names = self.names(collection)
        try:
            return {name: named_outputs[name] for name in names}
        except KeyError as err:
            raise ConfigError(
                f"predict_output_names {names} names {err.args[0]!r}, which the inference stage no longer produces "
                f"(it produces {list(collection.output_names(Stage.INFERENCE))}); the bricks changed after the module "
                "was built."
            ) from None
