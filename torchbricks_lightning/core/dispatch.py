"""Turn a :class:`StagePlan` into a straight-line Python function, generated once per stage.

The generated function reads its inputs from a dict, calls each alive brick in order and stores the
outputs by name, with no loop, no lookup of brick names and no per-call planning. For a stage with a
preprocessor, a head and a metric brick it reads::

    def run(named_inputs, update_metrics=True):
        if not ('raw' in named_inputs and 'targets' in named_inputs):
            _on_missing(named_inputs)
        d = dict(named_inputs)
        t = b0(d['raw'])
        if type(t) is tuple: t = _single(0, t)
        d['processed'] = t
        t = b1(d['processed'])
        if not isinstance(t, (tuple, list)) or len(t) != 2: _bad_count(1, t)
        d['logits'], d['probabilities'] = t
        if update_metrics:
            if _compiling(): t = _eager(b2, d['logits'], d['targets'], stage=_STAGE)
            else: t = b2(d['logits'], d['targets'], stage=_STAGE)
            if t is not None: _no_output(2, t)
        return d

    def update(d):
        if not ('logits' in d and 'targets' in d):
            _on_missing_update(d)
        t = b2(d['logits'], d['targets'], stage=_STAGE)
        if t is not None: _no_output(2, t)

Why generated code, and why every brick is called as a module:

- **Bricks are ordinary modules.** ``b0(...)`` goes through ``nn.Module.__call__``, so forward and backward hooks on
  a brick and on the module it wraps fire, ``brick.compile()`` takes effect, and train/eval modes and
  ``requires_grad_()`` behave as usual. No private torch state is read to skip the call.
- **No per-call lookups.** The bricks are bound as globals of the function (``b0``, ``b1``, ...), so a call looks
  up no submodule (``nn.Module.__getattr__``), loops over nothing and plans nothing; ``nox -s bench`` measures what
  a brick costs over a hand-written ``forward``. ``torch.fx`` cannot trace bricks whose outputs are checked by
  count or that read ``'__all__'``; ``torch.compile`` traces the straight-line code into one graph per stage.
- **Names are data, never code.** Data names and keyword-argument names appear in the source only as
  ``repr(...)`` string literals (keyword arguments are passed as ``**{'name': value}``), so no name can end a
  string, open a block or clash with a Python keyword. Brick objects are bound to generated identifiers
  (``b0``, ``b1``, ...).
- **Tracebacks show the line.** The source is registered in :mod:`linecache` under a file name unique to the
  collection and stage (``<torchbricks 3 train>``), so a traceback shows the generated line, and
  :meth:`CompiledStage.add_context` adds a note naming the brick that failed.

The checks on output counts and losses call Python helpers only when something is wrong, so ``torch.compile``
sees one graph with no breaks.

**Metric updates** (bricks that get the stage and return nothing: :attr:`BrickNode.updates_only`) cannot be traced
(torchmetrics' updates are not). ``run(named_inputs, update_metrics=False)`` leaves them out, so a compiled call is
one graph; it returns every value, and the eager caller then hands them to ``update``, which updates the metrics
(``BrickCollection.update_metrics``). With ``update_metrics=True`` (the default) they run in place, eagerly under
``torch.compile`` (a graph break each).
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

from torchbricks_lightning.core.graph import BrickNode, StagePlan
from torchbricks_lightning.core.missing_inputs import check_input_names
from torchbricks_lightning.core.names import ALL_INPUTS, STAGE_INPUT
from torchbricks_lightning.errors import BrickOutputError, LossNotScalarError, MissingInputError, TorchBricksError

__all__ = ["CompiledStage", "clear_code_cache", "compile_stage"]

_SOURCE_IDS = itertools.count()


class CompiledStage:
    """A stage's plan with its generated functions.

    ``run(named_inputs, update_metrics=True) -> dict`` runs the stage; ``update(named_values)`` runs only the bricks
    that ``run(..., update_metrics=False)`` left out (the metric updates) on the values that it returned.
    """

    def __init__(
        self,
        plan: StagePlan,
        run: Callable[..., dict[str, Any]],
        update: Callable[[Mapping[str, Any]], None],
        lines: dict[int, int],
        source: str,
        filename: str,
    ) -> None:
        self.plan = plan
        self.run = run
        self._update = update
        self.source = source
        self.filename = filename
        self._codes = (run.__code__, update.__code__)
        self._brick_at_line = lines

    def update(self, named_values: Mapping[str, Any]) -> None:
        """Run the bricks that ``run(..., update_metrics=False)`` left out on ``named_values`` (what it returned)."""
        try:
            self._update(named_values)
        except TorchBricksError:
            raise
        except Exception as err:
            self.add_context(err)
            raise

    def brick_of(self, err: BaseException) -> BrickNode | None:
        """The brick whose call raised ``err``, found from the traceback line in the generated function."""
        tb = err.__traceback__
        node = None
        while tb is not None:
            if tb.tb_frame.f_code in self._codes and tb.tb_lineno in self._brick_at_line:
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

    def on_missing_update(self, named_values: Mapping[str, Any]) -> None:
        present = set(named_values)
        for node in self.plan.nodes:
            missing = [name for name in node.data_inputs if node.updates_only and name not in present]
            if missing:
                raise MissingInputError(
                    f"Brick {node.path!r} updates its metrics in stage {self.plan.stage.value!r} from {missing}, but "
                    f"the values given lack {'it' if len(missing) == 1 else 'them'}; given: {sorted(present)}. Pass "
                    "what forward(..., update_metrics=False) returned, with its inputs (return_inputs=True)."
                )

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
        "_on_missing_update": checks.on_missing_update,
        "_single": checks.single,
        "_bad_count": checks.bad_count,
        "_no_output": checks.no_output,
        "_bad_loss": checks.bad_loss,
        "_Tensor": torch.Tensor,
        "_eager": _call_eagerly,
        "_compiling": torch.compiler.is_compiling,
    }
    lines = ["def run(named_inputs, update_metrics=True):"]
    if plan.required_inputs:
        present = " and ".join(f"{name!r} in named_inputs" for name in plan.required_inputs)
        lines += [f"    if not ({present}):", "        _on_missing(named_inputs)"]
    lines.append("    d = dict(named_inputs)")
    brick_at_line: dict[int, int] = {}
    for i, (node, module) in enumerate(zip(plan.nodes, modules, strict=True)):
        namespace[f"b{i}"] = module
        arguments = _arguments(node)
        first = len(lines) + 1
        if node.updates_only:
            lines += [
                "    if update_metrics:",
                f"        if _compiling(): t = _eager(b{i}, {arguments})",
                f"        else: t = b{i}({arguments})",
                f"        if t is not None: _no_output({i}, t)",
            ]
            brick_at_line.update(dict.fromkeys(range(first, len(lines) + 1), i))
            continue
        if node.receives_stage:
            # A brick that gets the stage and has outputs (a metric brick returning its values): torchmetrics
            # updates are not traceable, so it runs eagerly under torch.compile.
            lines += [
                f"    if _compiling(): t = _eager(b{i}, {arguments})",
                f"    else: t = b{i}({arguments})",
            ]
        else:
            lines.append(f"    t = b{i}({arguments})")
        outputs = node.output_names
        if not outputs:
            # A brick without outputs returns None; anything else would be silently dropped.
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
    lines += _update_lines(plan, brick_at_line, len(lines))
    source = "\n".join(lines) + "\n"
    filename = f"<torchbricks {next(_SOURCE_IDS)} {plan.stage.value}>"
    codes = {name: code.replace(co_filename=filename) for name, code in _function_codes(source).items()}
    run = types.FunctionType(codes["run"], namespace, f"run_{plan.stage.value}")
    update = types.FunctionType(codes["update"], namespace, f"update_{plan.stage.value}")
    for function in (run, update):
        function.__qualname__ = function.__name__
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    weakref.finalize(run, linecache.cache.pop, filename, None)
    return CompiledStage(plan, run, update, brick_at_line, source, filename)


def _update_lines(plan: StagePlan, brick_at_line: dict[int, int], before: int) -> list[str]:
    """The source of ``update(d)``: the bricks that ``run(..., update_metrics=False)`` leaves out, called on ``d``.

    ``before`` is the number of source lines above it; ``brick_at_line`` gets the lines of each brick's call.
    """
    lines = ["", "def update(d):"]
    needed = list(dict.fromkeys(name for node in plan.nodes if node.updates_only for name in node.data_inputs))
    if needed:
        present = " and ".join(f"{name!r} in d" for name in needed)
        lines += [f"    if not ({present}):", "        _on_missing_update(d)"]
    for i, node in enumerate(plan.nodes):
        if node.updates_only:
            first = before + len(lines) + 1
            lines += [f"    t = b{i}({_arguments(node)})", f"    if t is not None: _no_output({i}, t)"]
            brick_at_line.update(dict.fromkeys(range(first, before + len(lines) + 1), i))
    lines.append("    return None")
    return lines


_CODE_CACHE: OrderedDict[str, dict[str, types.CodeType]] = OrderedDict()
_CODE_CACHE_SIZE = 32


def clear_code_cache() -> None:
    """Forget every compiled stage source (benchmarks use it to time first builds)."""
    _CODE_CACHE.clear()


def _function_codes(source: str) -> dict[str, types.CodeType]:
    """The code objects of the functions ``source`` defines, by name, compiled once per distinct source.

    Compiling is most of the cost of generating a stage. The source holds no object,
    only names, so the train, validation and test stages of a collection usually share one compilation, and so do
    copies of a collection and collections rebuilt from the same recipe. Each stage then gets its own function
    object, with its own globals (its bricks) and its own file name (``code.replace``), without compiling again.
    """
    codes = _CODE_CACHE.get(source)
    if codes is not None:
        _CODE_CACHE.move_to_end(source)
        return codes
    module = compile(source, "<torchbricks>", "exec")
    codes = {const.co_name: const for const in module.co_consts if isinstance(const, types.CodeType)}
    _CODE_CACHE[source] = codes
    if len(_CODE_CACHE) > _CODE_CACHE_SIZE:
        _CODE_CACHE.popitem(last=False)
    return codes
