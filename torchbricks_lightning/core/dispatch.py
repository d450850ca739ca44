"""Turn a :class:`StagePlan` into a straight-line Python function, generated once per stage.

The generated function reads its inputs from a dict, calls each alive brick in order and stores the
outputs by name, with no loop, no lookup of brick names and no per-call planning. For a stage with a
preprocessor and a head it reads like this::

    def _run_train(named_inputs):
        if not ('raw' in named_inputs):
            _on_missing(named_inputs)
        d = dict(named_inputs)
        h = _hooked()
        if h: t = b0(d['raw'])
        else:
            t = m0(d['raw'])
        if type(t) is tuple: t = _single(0, t)
        d['processed'] = t
        ...
        return d

``b0`` is the brick and ``m0`` the module it wraps. Calling a brick through ``nn.Module.__call__`` costs about
a microsecond, so when no hook is registered on any brick (and no global module hook exists) the wrapped
module is called directly (and a metric brick's stage updates, outside ``torch.compile``); one check per call
decides, so a hook registered at any time still fires. The
checks on output counts and losses only call into Python helpers when something is wrong, so
``torch.compile`` sees one graph with no breaks.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchbricks_lightning.core.bricks import ALL_INPUTS, STAGE_INPUT, BrickMetrics, BrickModule, detach_outputs
from torchbricks_lightning.core.graph import BrickNode, StagePlan, check_input_names
from torchbricks_lightning.errors import BrickOutputError, LossNotScalarError, TorchBricksError

__all__ = ["CompiledStage", "compile_stage"]


class CompiledStage:
    """A stage's plan with its generated function ``run(named_inputs) -> dict``."""

    def __init__(self, plan: StagePlan, run: Callable[[Mapping[str, Any]], dict[str, Any]], lines: dict[int, int]):
        self.plan = plan
        self.run = run
        self._code = run.__code__
        self._brick_at_line = lines

    def brick_of(self, err: BaseException) -> BrickNode | None:
        """The brick whose call raised ``err``, found from the traceback line in the generated function."""
        tb = err.__traceback__
        node = None
        while tb is not None:
            if tb.tb_frame.f_code is self._code and tb.tb_lineno in self._brick_at_line:
                node = self.plan.nodes[self._brick_at_line[tb.tb_lineno]]
            tb = tb.tb_next
        return node

    def add_context(self, err: BaseException) -> None:
        """Attach the failing brick's name, names and stage to ``err`` as a note (same type kept)."""
        if isinstance(err, TorchBricksError):
            return
        node = self.brick_of(err)
        if node is not None:
            err.add_note(
                f"While running brick {node.path!r} in stage {self.plan.stage.value!r} "
                f"(input_names={list(node.input_names)}, output_names={list(node.output_names)})."
            )


class _Checks:
    """Slow-path helpers called by generated code only when something is wrong."""

    def __init__(self, plan: StagePlan) -> None:
        self.plan = plan

    def on_missing(self, named_inputs: Mapping[str, Any]) -> None:
        check_input_names(self.plan, named_inputs.keys())

    def single(self, index: int, value: tuple[Any, ...]) -> Any:
        if len(value) == 1:
            return value[0]
        self.bad_count(index, value)

    def no_output(self, index: int, value: Any) -> None:
        """A brick without outputs returned ``value`` (not None): an empty tuple or list is fine, else an error."""
        if isinstance(value, (tuple, list)) and not value:
            return
        self.bad_count(index, value)

    def bad_count(self, index: int, value: Any) -> None:
        node = self.plan.nodes[index]
        got = (
            f"a {type(value).__name__} of {len(value)} values"
            if isinstance(value, (tuple, list))
            else (f"one {type(value).__name__}")
        )
        fix = (
            "Make output_names match what the module returns (a tuple for several outputs)."
            if node.output_names
            else "Name its outputs in output_names, or make the module return None."
        )
        raise BrickOutputError(
            f"Brick {node.path!r} declares {len(node.output_names)} output(s) {list(node.output_names)} in stage "
            f"{self.plan.stage.value!r}, but its module returned {got}. {fix}"
        )

    def bad_loss(self, index: int, name: str, value: Any) -> None:
        node = self.plan.nodes[index]
        if isinstance(value, torch.Tensor):
            got = f"a tensor of shape {tuple(value.shape)}"
            fix = "Reduce it to a scalar, e.g. with reduction='mean' or .mean()."
        else:
            got = f"a {type(value).__name__}"
            fix = "Return a scalar tensor."
        raise LossNotScalarError(
            f"Loss {name!r} of brick {node.path!r} in stage {self.plan.stage.value!r} must be a scalar tensor, but "
            f"it is {got}. {fix}"
        )


def _direct_call(module: nn.Module) -> tuple[nn.Module, bool] | None:
    """``(wrapped module, run under no_grad)`` for bricks whose forward only calls their module, else None."""
    if type(module).forward is not BrickModule.forward or not isinstance(module, BrickModule):
        return None
    return module.model, not module.calculate_gradients


def _stage_updater(module: nn.Module, stage: Any) -> Callable[..., None] | None:
    """A metric brick's direct update for ``stage`` (None for other bricks, or when the brick returns metrics)."""
    if not isinstance(module, BrickMetrics) or type(module).forward is not BrickMetrics.forward:
        return None
    return module.stage_updater(stage)


def _always() -> bool:
    return True


def _hook_check(modules: Sequence[nn.Module]) -> Callable[[], bool]:
    """A check, cheap enough for every call, of whether any brick or any global module hook is registered.

    It reads the hook dicts captured here (registering a hook adds to the same dict), plus torch's global ones.
    """
    from torch.nn.modules import module as torch_module

    dicts = (
        *(
            hooks
            for brick in modules
            for hooks in (
                brick._forward_hooks,
                brick._forward_pre_hooks,
                brick._backward_hooks,
                brick._backward_pre_hooks,
            )
        ),
        torch_module._global_forward_hooks,
        torch_module._global_forward_pre_hooks,
        torch_module._global_backward_hooks,
        torch_module._global_backward_pre_hooks,
    )

    def hooked() -> bool:
        return any(dicts)

    return hooked


@torch.compiler.disable
def _call_eagerly(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return module(*args, **kwargs)


def _argument(name: str) -> str:
    if name == STAGE_INPUT:
        return "_STAGE"
    if name == ALL_INPUTS:
        return "dict(d)"
    return f"d[{name!r}]"


def compile_stage(plan: StagePlan, modules: Sequence[nn.Module]) -> CompiledStage:
    """Generate the function that runs ``plan``; ``modules[i]`` is the brick of ``plan.nodes[i]``."""
    checks = _Checks(plan)
    namespace: dict[str, Any] = {
        "_STAGE": plan.stage,
        "_on_missing": checks.on_missing,
        "_single": checks.single,
        "_bad_count": checks.bad_count,
        "_no_output": checks.no_output,
        "_bad_loss": checks.bad_loss,
        "_Tensor": torch.Tensor,
        "_eager": _call_eagerly,
    }
    direct = [_direct_call(module) for module in modules]
    updaters = [_stage_updater(module, plan.stage) for module in modules]
    has_fast_path = any(direct) or any(updater is not None for updater in updaters)
    namespace["_hooked"] = _hook_check(modules) if has_fast_path else _always
    namespace["_no_grad"] = torch.no_grad
    namespace["_compiling"] = torch.compiler.is_compiling
    namespace["_detach"] = detach_outputs
    lines = [f"def _run_{plan.stage.value}(named_inputs):"]
    if plan.required_inputs:
        present = " and ".join(f"{name!r} in named_inputs" for name in plan.required_inputs)
        lines += [f"    if not ({present}):", "        _on_missing(named_inputs)"]
    lines += ["    d = dict(named_inputs)", "    h = _hooked()"]
    brick_at_line: dict[int, int] = {}
    for i, (node, module) in enumerate(zip(plan.nodes, modules, strict=True)):
        namespace[f"b{i}"] = module
        arguments = ", ".join(
            [_argument(name) for name in node.positional_inputs]
            + [f"{argument}={_argument(name)}" for argument, name in node.keyword_inputs]
            + (["stage=_STAGE"] if node.receives_stage else [])
        )
        first = len(lines) + 1
        outputs = node.output_names
        target = "t = "
        if node.receives_stage and (updater := updaters[i]) is not None:
            # Metric bricks: torchmetrics updates are not traceable, so they run eagerly under torch.compile.
            # Without hooks, and outside compilation, the stage's metric updates are called directly.
            namespace[f"u{i}"] = updater
            plain = ", ".join(
                [_argument(name) for name in node.positional_inputs]
                + [f"{argument}={_argument(name)}" for argument, name in node.keyword_inputs]
            )
            lines += [
                f"    if h or _compiling(): {target}_eager(b{i}, {arguments})",
                "    else:",
                f"        {target}u{i}({plain})",
            ]
        elif node.receives_stage:
            lines.append(f"    {target}_eager(b{i}, {arguments})")
        elif (wrapped := direct[i]) is None:
            lines.append(f"    {target}b{i}({arguments})")
        else:
            # Without hooks, call the wrapped module directly: the brick's own nn.Module call costs ~1 us.
            model, no_grad = wrapped
            namespace[f"m{i}"] = model
            fast = f"with _no_grad(): {target}_detach(m{i}({arguments}))" if no_grad else f"{target}m{i}({arguments})"
            lines += [f"    if h: {target}b{i}({arguments})", "    else:", f"        {fast}"]
        if not outputs:
            # A brick without outputs returns None (metric bricks do); anything else would be silently dropped.
            lines.append(f"    if t is not None: _no_output({i}, t)")
        elif len(outputs) == 1:
            lines += [
                f"    if type(t) is tuple: t = _single({i}, t)",
                f"    d[{outputs[0]!r}] = t",
            ]
        else:
            targets = ", ".join(f"d[{name!r}]" for name in outputs)
            lines += [
                f"    if not isinstance(t, (tuple, list)) or len(t) != {len(outputs)}: _bad_count({i}, t)",
                f"    {targets} = t",
            ]
        for name in node.loss_names:
            lines += [
                f"    t = d[{name!r}]",
                f"    if not isinstance(t, _Tensor) or t.ndim != 0: _bad_loss({i}, {name!r}, t)",
            ]
        brick_at_line.update(dict.fromkeys(range(first, len(lines) + 1), i))
    lines.append("    return d")
    source = "\n".join(lines) + "\n"
    filename = f"<torchbricks stage {plan.stage.value}>"
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - code generated from validated names
    run = namespace[f"_run_{plan.stage.value}"]
    if not isinstance(run, types.FunctionType):  # pragma: no cover - internal invariant, we just defined it
        raise TypeError(f"Generated code did not define a function: {source}")
    run.__source__ = source  # type: ignore[attr-defined]  # kept for debugging and docs
    return CompiledStage(plan, run, brick_at_line)
