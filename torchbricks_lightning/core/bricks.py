"""Bricks: modules that name their inputs and outputs and know in which stages they are alive."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from torchbricks_lightning.core.graph import BrickNode, resolve_name
from torchbricks_lightning.core.names import (
    ALL_INPUTS,
    STAGE_INPUT,
    InputNames,
    normalize_input_names,
    normalize_output_names,
)
from torchbricks_lightning.core.spec import BrickSpec
from torchbricks_lightning.core.stages import ALL_STAGES, AliveStages, Stage, parse_alive_stages
from torchbricks_lightning.core.structure import StructureNode
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError

__all__ = [
    "ALL_INPUTS",
    "LOSS_STAGES",
    "STAGE_INPUT",
    "BrickInterface",
    "BrickLoss",
    "BrickModule",
    "BrickNotTrainable",
    "BrickSpec",
    "BrickTrainable",
    "InputNames",
    "detach_outputs",
]

LOSS_STAGES = (Stage.TRAIN, Stage.VALIDATION, Stage.TEST)
"""The stages in which losses and metrics are alive by default."""


def detach_outputs(outputs: Any) -> Any:
    """Detach a module's tensor outputs (a module may return its input itself, which ``no_grad`` leaves attached)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(o.detach() if isinstance(o, torch.Tensor) else o for o in outputs)
    return outputs


def _check_loss_weight(loss_weight: object, where: str) -> float:
    if not isinstance(loss_weight, (int, float)) or isinstance(loss_weight, bool):
        raise BrickDefinitionError(f"Expected loss_weight of {where} to be a number, but got {loss_weight!r}.")
    return float(loss_weight)


class BrickInterface(StructureNode, nn.Module, ABC):
    """Base class of every brick: a module with input names, output names and alive stages.

    Subclass it for a custom brick and implement ``forward``. The collection calls the brick like any module
    (``brick(...)``, so hooks, ``brick.compile()`` and train/eval modes behave as usual) with the values named by
    ``input_names`` (positionally for a list, as keyword arguments for a dict) and stores what it returns under
    ``output_names``: one value for one name, a tuple or list for several.

    Args:
        input_names: the data names to read, a list (positional arguments) or a dict
            ``{argument_name: data_name}`` (keyword arguments). ``'__all__'`` passes every named value
            as one dict, and ``'stage'`` passes the current :class:`Stage`.
        output_names: the data names of the values that ``forward`` returns.
        alive_stages: ``"all"``, ``"none"`` or a list of stages in which the brick runs.

    Example:
        >>> import torch
        >>> class AddOne(BrickInterface):
        ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
        ...         return x + 1
        >>> AddOne(input_names=["x"], output_names=["y"])
        AddOne(input_names=['x'], output_names=['y'], alive_stages='all')
    """

    #: Whether the collection passes the current stage as the keyword argument ``stage``.
    receives_stage: ClassVar[bool] = False
    _spec: BrickSpec

    def __init__(self, input_names: InputNames, output_names: Sequence[str], alive_stages: AliveStages = "all") -> None:
        super().__init__()
        where = type(self).__name__
        positional, keyword = normalize_input_names(input_names, where=where)
        self._check_keyword_inputs(keyword, where)
        self.__dict__["_spec"] = BrickSpec(
            positional_inputs=positional,
            keyword_inputs=keyword,
            output_names=normalize_output_names(output_names, where=where),
            alive_stages=parse_alive_stages(alive_stages, where=where),
        )

    def _check_keyword_inputs(self, keyword: tuple[tuple[str, str], ...], where: str) -> None:
        if self.receives_stage and any(argument == STAGE_INPUT for argument, _ in keyword):
            raise ConfigError(
                f"{where} receives the current stage as its keyword argument 'stage', so input_names cannot use "
                "'stage' as an argument name. Rename the argument."
            )

    # ----------------------------------------------------------------------------------------- the spec
    @property
    def spec(self) -> BrickSpec:
        """What shapes the plans of the collections holding this brick (read-only; assign the properties)."""
        return self._spec

    def _replace_spec(self, **changes: Any) -> None:
        self.__dict__["_spec"] = dataclasses.replace(self._spec, **changes)
        self.structure_changed()

    @property
    def input_names(self) -> list[str] | dict[str, str]:
        """The data names this brick reads (a copy; assign a new value to change them)."""
        return self._spec.input_names

    @input_names.setter
    def input_names(self, value: InputNames) -> None:
        positional, keyword = normalize_input_names(value, where=type(self).__name__)
        self._check_keyword_inputs(keyword, type(self).__name__)
        self._replace_spec(positional_inputs=positional, keyword_inputs=keyword)

    @property
    def output_names(self) -> list[str]:
        """The data names of this brick's outputs (a copy; assign a new value to change them)."""
        return list(self._spec.output_names)

    @output_names.setter
    def output_names(self, value: Sequence[str]) -> None:
        names = normalize_output_names(value, where=type(self).__name__)
        self._replace_spec(output_names=names, loss_output_names=self._losses_among(names))

    def _losses_among(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The losses after the outputs are renamed to ``names``: all of them if every output was a loss."""
        spec = self._spec
        if spec.loss_output_names and set(spec.loss_output_names) == set(spec.output_names):
            return names
        return tuple(name for name in spec.loss_output_names if name in names)

    @property
    def alive_stages(self) -> tuple[Stage, ...]:
        """The stages in which this brick runs."""
        return self._spec.alive_stages

    @alive_stages.setter
    def alive_stages(self, value: AliveStages) -> None:
        self._replace_spec(alive_stages=parse_alive_stages(value, where=type(self).__name__))

    def is_alive(self, stage: Stage) -> bool:
        """Whether the brick runs in ``stage``."""
        return stage in self._spec.alive_stages

    @property
    def loss_output_names(self) -> list[str]:
        """The outputs that are losses (collected by ``BrickCollection.extract_losses``)."""
        return list(self._spec.loss_output_names)

    @property
    def loss_weight(self) -> float:
        """The weight of this brick's losses in the total loss."""
        return self._spec.loss_weight

    @loss_weight.setter
    def loss_weight(self, value: float) -> None:
        self._replace_spec(loss_weight=_check_loss_weight(value, type(self).__name__))

    def brick_node(self, path: str, index: int) -> BrickNode:
        """This brick as a :class:`BrickNode` placed at ``path``: relative names resolved to absolute ones."""
        spec, directory = self._spec, path.rpartition("/")[0]

        def resolve(name: str) -> str:
            return resolve_name(name, directory, brick_path=path, role="input")

        outputs = self._resolved_outputs(path, directory)
        by_declared = dict(zip(spec.output_names, outputs, strict=False))
        return BrickNode(
            path=path,
            positional_inputs=tuple(resolve(name) for name in spec.positional_inputs),
            keyword_inputs=tuple((argument, resolve(name)) for argument, name in spec.keyword_inputs),
            output_names=outputs,
            loss_names=tuple(by_declared[name] for name in spec.loss_output_names),
            loss_weight=spec.loss_weight,
            alive_stages=frozenset(spec.alive_stages),
            receives_stage=self.receives_stage,
            index=index,
        )

    def _resolved_outputs(self, path: str, directory: str) -> tuple[str, ...]:
        return tuple(resolve_name(name, directory, brick_path=path, role="output") for name in self._spec.output_names)

    # ----------------------------------------------------------------------------------------- module
    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the outputs from the inputs named by ``input_names``."""

    def __getstate__(self) -> dict[str, Any]:
        return self._without_owners(super().__getstate__())

    def describe_model(self) -> str:
        """A short description of what the brick wraps, for ``repr`` and pictures ('' when nothing)."""
        return ""

    def _alive_stages_repr(self) -> str:
        stages = self._spec.alive_stages
        if stages == ALL_STAGES:
            return "'all'"
        if not stages:
            return "'none'"
        return repr([stage.value for stage in stages])

    def __repr__(self) -> str:
        model = self.describe_model()
        parts = [model] if model else []
        parts += [
            f"input_names={self.input_names!r}",
            f"output_names={self.output_names!r}",
            f"alive_stages={self._alive_stages_repr()}",
        ]
        return f"{type(self).__name__}({', '.join(parts)})"


class BrickModule(BrickInterface):
    """A brick that wraps an ``nn.Module``: the general form behind the trainable, frozen and loss bricks.

    Args:
        model: the wrapped module, called with the named inputs.
        input_names: see :class:`BrickInterface`.
        output_names: see :class:`BrickInterface`.
        alive_stages: see :class:`BrickInterface`.
        loss_output_names: ``"all"`` or the subset of ``output_names`` that are losses.
        calculate_gradients: if False, the module runs under ``torch.no_grad()``: its outputs carry no
            gradient and nothing upstream gets one through it.
        trainable: if False, the module's parameters are frozen (``requires_grad=False``).
        keep_eval_mode: if True, the module stays in eval mode even when the collection is put in train
            mode, so batch norm statistics and dropout stay fixed.
        loss_weight: the weight of this brick's losses in the total loss.
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = "all",
        loss_output_names: Literal["all"] | Sequence[str] = (),
        calculate_gradients: bool = True,
        trainable: bool = True,
        keep_eval_mode: bool = False,
        loss_weight: float = 1.0,
    ) -> None:
        where = type(self).__name__
        if not isinstance(model, nn.Module):
            raise BrickDefinitionError(
                f"Expected the model of {where} to be a torch.nn.Module, but got {type(model).__name__}. "
                "Wrap plain functions in an nn.Module."
            )
        super().__init__(input_names=input_names, output_names=output_names, alive_stages=alive_stages)
        self.model: nn.Module = model
        self.calculate_gradients = bool(calculate_gradients)
        self.trainable = bool(trainable)
        self.keep_eval_mode = bool(keep_eval_mode)
        outputs = self._spec.output_names
        if loss_output_names == "all":
            losses = outputs
        else:
            losses = normalize_output_names(loss_output_names, where=where, role="loss_output_names")
            unknown = [name for name in losses if name not in outputs]
            if unknown:
                raise ConfigError(
                    f"loss_output_names {unknown} of {where} are not among its output_names {list(outputs)}."
                )
        self.__dict__["_spec"] = dataclasses.replace(
            self._spec, loss_output_names=losses, loss_weight=_check_loss_weight(loss_weight, where)
        )
        if not self.trainable:
            self.model.requires_grad_(False)
        if self.keep_eval_mode:
            self.model.eval()

    def train(self, mode: bool = True) -> BrickModule:
        super().train(mode)
        if self.keep_eval_mode:
            self.model.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.calculate_gradients:
            return self.model(*args, **kwargs)
        with torch.no_grad():
            return detach_outputs(self.model(*args, **kwargs))

    def describe_model(self) -> str:
        return type(self.model).__name__


class BrickTrainable(BrickModule):
    """A brick whose module is trained: gradients flow and its parameters are optimised.

    Example:
        >>> from torch import nn
        >>> BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits"])
        BrickTrainable(Linear, input_names=['features'], output_names=['logits'], alive_stages='all')
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = "all",
        loss_output_names: Literal["all"] | Sequence[str] = (),
    ) -> None:
        super().__init__(
            model,
            input_names=input_names,
            output_names=output_names,
            alive_stages=alive_stages,
            loss_output_names=loss_output_names,
            calculate_gradients=True,
            trainable=True,
        )


class BrickNotTrainable(BrickModule):
    """A brick whose parameters are frozen.

    Args:
        calculate_gradients: True (the default) lets gradients flow *through* the brick to earlier
            bricks while its own parameters stay fixed. False runs it under ``torch.no_grad()``, which is
            faster and uses less memory, and its outputs carry no gradient.
        keep_eval_mode: keep the module in eval mode during training (fixed batch norm and dropout).

    Example:
        >>> from torch import nn
        >>> brick = BrickNotTrainable(nn.Linear(4, 2), input_names=["x"], output_names=["y"], calculate_gradients=False)
        >>> any(p.requires_grad for p in brick.parameters())
        False
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = "all",
        calculate_gradients: bool = True,
        keep_eval_mode: bool = False,
    ) -> None:
        super().__init__(
            model,
            input_names=input_names,
            output_names=output_names,
            alive_stages=alive_stages,
            calculate_gradients=calculate_gradients,
            trainable=False,
            keep_eval_mode=keep_eval_mode,
        )


class BrickLoss(BrickModule):
    """A brick that computes one or more scalar losses, alive in train, validation and test by default.

    Args:
        loss_output_names: ``"all"`` (the default) or the subset of outputs that are losses.
        loss_weight: the weight of these losses in ``BrickCollection.total_loss``.

    Example:
        >>> from torch import nn
        >>> BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"])
        BrickLoss(CrossEntropyLoss, input_names=['logits', 'targets'], output_names=['loss_ce'], alive_stages=[...])
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: InputNames,
        output_names: Sequence[str],
        alive_stages: AliveStages = LOSS_STAGES,
        loss_output_names: Literal["all"] | Sequence[str] = "all",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            model,
            input_names=input_names,
            output_names=output_names,
            alive_stages=alive_stages,
            loss_output_names=loss_output_names,
            loss_weight=loss_weight,
        )
