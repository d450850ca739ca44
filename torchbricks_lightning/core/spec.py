"""BrickSpec: what a brick declares that shapes the plans of the collections holding it."""

from __future__ import annotations

from dataclasses import dataclass

from torchbricks_lightning.core.stages import Stage

__all__ = ["BrickSpec"]


@dataclass(frozen=True)
class BrickSpec:
    """Everything about a brick that shapes a collection's plans, as declared (relative names unresolved).

    A brick's spec is replaced, never edited: assigning ``brick.input_names``, ``output_names``, ``alive_stages``,
    ``loss_weight`` or ``return_metrics`` builds a new spec and tells the collections holding the brick to drop
    their plans (see :mod:`torchbricks_lightning.core.structure`).

    Attributes:
        positional_inputs: data names passed positionally.
        keyword_inputs: ``(argument_name, data_name)`` pairs passed as keyword arguments.
        output_names: data names of the outputs.
        alive_stages: the stages in which the brick runs.
        loss_output_names: the outputs that are losses.
        loss_weight: the weight of those losses in the total loss.
        return_metrics: a metric brick also outputs each batch's metric values.
    """

    positional_inputs: tuple[str, ...]
    keyword_inputs: tuple[tuple[str, str], ...]
    output_names: tuple[str, ...]
    alive_stages: tuple[Stage, ...]
    loss_output_names: tuple[str, ...] = ()
    loss_weight: float = 1.0
    return_metrics: bool = False

    @property
    def input_names(self) -> list[str] | dict[str, str]:
        """The declared input names: a list, or a dict ``{argument_name: data_name}``."""
        return dict(self.keyword_inputs) if self.keyword_inputs else list(self.positional_inputs)
