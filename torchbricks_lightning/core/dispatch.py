"""Turn a :class:`StagePlan` into a straight-line Python function, generated once per stage.

The generated function reads its inputs from a dict, calls each alive brick in order and stores the
outputs by name, with no loop, no lookup of brick names and no per-call planning. For a stage with a
preprocessor, a head and a metric brick it reads::

    def _run_train(named_inputs):
        if not ('raw' in named_inputs and 'targets' in named_inputs):
            _on_missing(named_inputs)
        d = dict(named_inputs)
        t = b0(d['raw'])
        if type(t) is tuple: t = _single(0, t)
        d['processed'] = t
        t = b1(d['processed'])
        if not isinstance(t, (tuple, list)) or len(t) != 2: _bad_count(1, t)
        d['logits'], d['probabilities'] = t
        if _compiling(): t = _eager(b2, d['logits'], d['targets'], stage=_STAGE)
        else: t = b2(d['logits'], d['targets'], stage=_STAGE)
        if t is not None: _no_output(2, t)
        return d

Why generated code, and why every brick is called as a module:

- **Bricks are ordinary modules.** ``b0(...)`` goes through ``nn.Module.__call__``, so forward and backward hooks on
  a brick and on the module it wraps fire, ``brick.compile()`` takes effect, and train/eval modes and
  ``requires_grad_()`` behave as usual. No private torch state is read to skip the call.
- **Measured cost.** On a 2-core CPU, one thread, a brick's own call costs about 0.6 µs over calling its module
  directly (``nn.Module.__call__`` plus the brick's ``forward``). A hand-written ``forward`` pays about as much
  again to look its submodules up with ``self.<name>`` (``nn.Module.__getattr__``), which the generated code
  avoids: its modules are bound as globals of the function. ``nox -s bench`` reports the figure (target at most
  1 µs per brick over the hand-written module). A loop over a list of closures costs one more Python call and a
  loop iteration per brick (about 0.15 µs), and ``torch.fx`` cannot trace bricks whose outputs are checked by
  count or that read ``'__all__'``; straight-line code is the fastest and ``torch.compile`` traces it into one
  graph per stage.
- **Names are data, never code.** Data names and keyword-argument names appear in the source only as
  ``repr(...)`` string literals (keyword arguments are passed as ``**{'name': value}``), so no name can end a
  string, open a block or clash with a Python keyword. Brick objects are bound to generated identifiers
  (``b0``, ``b1``, ...).
- **Tracebacks show the line.** The source is registered in :mod:`linecache` under a file name unique to the
  collection and stage (``<torchbricks 3 train>``), so a traceback shows the generated line, and
  :meth:`CompiledStage.add_context` adds a note naming the brick that failed.

The checks on output counts and losses call Python helpers only when something is wrong, so ``torch.compile``
sees one graph with no breaks. Metric bricks run eagerly under ``torch.compile`` (torchmetrics updates are not
traceable).
"""

from __future__ import annotations

import builtins
import itertools
import linecache
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchbricks_lightning.core.graph import BrickNode, StagePlan, check_input_names
from torchbricks_lightning.core.names import ALL_INPUTS, STAGE_INPUT
from torchbricks_lightning.errors import BrickOutputError, LossNotScalarError, TorchBricksError

__all__ = ["CompiledStage", "clear_code_cache", "compile_stage"]

_SOURCE_IDS = itertools.count()


class CompiledStage:
    """A stage's plan with its generated function ``run(named_inputs) -> dict``."""

    def __init__(
        self,
        plan: StagePlan,
        run: Callable[[Mapping[str, Any]], dict[str, Any]],
        lines: dict[int, int],
        source: str,
        filename: str,
    ) -> None:
        self.plan = plan
        self.run = run
        self.source = source
        self.filename = filename
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


@torch.compiler.disable
def _call_eagerly(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return module(*args, **kwargs)


def _value(name: str) -> str:
    """The source of the value passed for input ``name``: a quoted dict lookup, the stage, or all values."""
    if name == STAGE_INPUT:
        return "_STAGE"
    if name == ALL_INPUTS:
        return "dict(d)"
    return f"d[{name!r}]"


def _arguments(node: BrickNode) -> str:
    """The call's argument list: positional values, then keyword arguments as a dict of quoted names."""
    parts = [_value(name) for name in node.positional_inputs]
    if node.keyword_inputs:
        keywords = ", ".join(f"{argument!r}: {_value(name)}" for argument, name in node.keyword_inputs)
        parts.append(f"**{{{keywords}}}")
    if node.receives_stage:
        parts.append("stage=_STAGE")
    return ", ".join(parts)


def compile_stage(plan: StagePlan, modules: Sequence[nn.Module]) -> CompiledStage:
    """Generate the function that runs ``plan``; ``modules[i]`` is the brick of ``plan.nodes[i]``."""
    checks = _Checks(plan)
    namespace: dict[str, Any] = {
        "__builtins__": builtins,
        "_STAGE": plan.stage,
        "_on_missing": checks.on_missing,
        "_single": checks.single,
        "_bad_count": checks.bad_count,
        "_no_output": checks.no_output,
        "_bad_loss": checks.bad_loss,
        "_Tensor": torch.Tensor,
        "_eager": _call_eagerly,
        "_compiling": torch.compiler.is_compiling,
    }
    lines = ["def run(named_inputs):"]
    if plan.required_inputs:
        present = " and ".join(f"{name!r} in named_inputs" for name in plan.required_inputs)
        lines += [f"    if not ({present}):", "        _on_missing(named_inputs)"]
    lines.append("    d = dict(named_inputs)")
    brick_at_line: dict[int, int] = {}
    for i, (node, module) in enumerate(zip(plan.nodes, modules, strict=True)):
        namespace[f"b{i}"] = module
        arguments = _arguments(node)
        first = len(lines) + 1
        if node.receives_stage:
            # Metric bricks: torchmetrics updates are not traceable, so they run eagerly under torch.compile.
            lines += [
                f"    if _compiling(): t = _eager(b{i}, {arguments})",
                f"    else: t = b{i}({arguments})",
            ]
        else:
            lines.append(f"    t = b{i}({arguments})")
        outputs = node.output_names
        if not outputs:
            # A brick without outputs returns None (metric bricks do); anything else would be silently dropped.
            lines.append(f"    if t is not None: _no_output({i}, t)")
        elif len(outputs) == 1:
            lines += [f"    if type(t) is tuple: t = _single({i}, t)", f"    d[{outputs[0]!r}] = t"]
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
    filename = f"<torchbricks {next(_SOURCE_IDS)} {plan.stage.value}>"
    code = _function_code(source).replace(co_filename=filename)
    run = types.FunctionType(code, namespace, f"run_{plan.stage.value}")
    run.__qualname__ = run.__name__
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    weakref.finalize(run, linecache.cache.pop, filename, None)
    return CompiledStage(plan, run, brick_at_line, source, filename)


_CODE_CACHE: OrderedDict[str, types.CodeType] = OrderedDict()
_CODE_CACHE_SIZE = 32


def clear_code_cache() -> None:
    """Forget every compiled stage source (benchmarks use it to time first builds)."""
    _CODE_CACHE.clear()


def _function_code(source: str) -> types.CodeType:
    """The code object of the function defined by ``source``, compiled once per distinct source.

    Compiling is most of the cost of generating a stage (about 25 µs per brick). The source holds no object,
    only names, so the train, validation and test stages of a collection usually share one compilation, and so do
    copies of a collection and collections rebuilt from the same recipe. Each stage then gets its own function
    object, with its own globals (its bricks) and its own file name (``code.replace``), without compiling again.
    """
    code = _CODE_CACHE.get(source)
    if code is not None:
        _CODE_CACHE.move_to_end(source)
        return code
    module = compile(source, "<torchbricks>", "exec")
    code = next(const for const in module.co_consts if isinstance(const, types.CodeType) and const.co_name == "run")
    _CODE_CACHE[source] = code
    if len(_CODE_CACHE) > _CODE_CACHE_SIZE:
        _CODE_CACHE.popitem(last=False)
    return code
