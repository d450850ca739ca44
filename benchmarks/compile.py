"""``torch.compile`` of a collection against the compiled hand-written module (same module objects).

Figures, on a small CNN with a cross-entropy loss brick in the TRAIN stage:

* ``torch._dynamo.explain``: graphs (target 1) and graph breaks (target 0) of the TRAIN stage, and the breaks of a
  TRAIN stage whose head carries a live accuracy metric brick, called as ``LightningBrickCollection`` calls it
  (``update_metrics=False``, the metrics updated eagerly right after; target 0, metric values equal to eager's);
* recompiles: graphs compiled during 20 alternating TRAIN (train mode) / VALIDATION (eval mode, no_grad) calls
  after one warm-up call of each, counted by a counting backend around the real one (target 0);
* steady state: a compiled training step's forward + backward, ratio to the compiled hand-written module
  (target <= 1.02);
* compile time: the first training step (forward + backward, compilation included) after
  ``torch._dynamo.reset()`` with inductor's caches off, ratio to the hand-written module's (target <= 1.1);
* on CUDA only: ``mode="reduce-overhead"`` (CUDA graphs) steady-state inference.

The backend is inductor when it compiles on this machine (it needs a C++ compiler), otherwise aot_eager; the
backend used is recorded.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch._dynamo
from torch import nn

from benchmarks.common import BenchmarkResult, Figure, Samples, Settings, dicts_allclose, interleaved, ratio_figure
from benchmarks.common import time_interleaved as time_functions
from benchmarks.models import NUM_CLASSES, Pair, cnn_bricks, cnn_modules, cnn_with_loss, small_cnn
from torchbricks_lightning import BrickCollection, Stage
from torchbricks_lightning.bag_of_bricks import create_image_classification_head

__all__ = ["CountingBackend", "choose_backend", "run"]

MAX_STEADY_RATIO = 1.02
MAX_COMPILE_TIME_RATIO = 1.1
ALTERNATING_CALLS = 20


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given and hands them to a real backend."""

    def __init__(self, backend: str) -> None:
        from torch._dynamo.backends.registry import lookup_backend

        self.name = backend
        self.inner = lookup_backend(backend)
        self.graphs = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        return self.inner(graph_module, example_inputs)


@contextlib.contextmanager
def no_compile_caches() -> Iterator[None]:
    """Inductor with every cache off and a fresh cache folder, so each compile does all its work."""
    import torch._inductor.config as inductor_config

    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            with inductor_config.patch(force_disable_caches=True), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*force_disable_caches.*")
                yield
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def choose_backend(settings: Settings, time_limit_s: float = 120.0) -> tuple[str, str]:
    """The backend to use and why: inductor if it compiles a tiny function here in time, else aot_eager."""
    if settings.quick:
        return "eager", "quick mode: the eager backend (code paths only)"
    torch._dynamo.reset()
    start = time.perf_counter()
    try:
        compiled = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), backend="inductor")
        compiled(torch.randn(2, 4, requires_grad=True)).sum().backward()
    except Exception as err:  # inductor needs a working C++ toolchain; any failure means: fall back
        return "aot_eager", f"inductor failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    finally:
        torch._dynamo.reset()
    elapsed = time.perf_counter() - start
    if elapsed > time_limit_s:
        return "aot_eager", f"inductor took {elapsed:.0f} s for a tiny function (limit {time_limit_s:.0f} s)"
    return "inductor", f"inductor compiled a tiny function in {elapsed:.1f} s"


def _pair(settings: Settings) -> Pair:
    size = 8 if settings.quick else 32
    return cnn_with_loss(batch_size=4 if settings.quick else 8, image_size=size).to(settings.device)


def _explain(module: nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(module)(*args, **kwargs)
    torch._dynamo.reset()
    return {
        "graph_count": explanation.graph_count,
        "graph_break_count": explanation.graph_break_count,
        "break_reasons": [
            str(getattr(reason, "reason", reason)).splitlines()[0] for reason in explanation.break_reasons
        ],
    }


def _training_step(module: Callable[..., dict[str, Any]], *args: Any) -> tuple[float, float]:
    """Seconds of the forward and of the backward of one training step."""
    start = time.perf_counter()
    outputs = module(*args)
    middle = time.perf_counter()
    outputs["loss_ce"].backward()
    return middle - start, time.perf_counter() - middle


def _compile_times(
    pair: Pair, backend: str, settings: Settings, repeats: int | None = None
) -> tuple[Samples, dict[str, list[list[float]]]]:
    """First-call (compile) time of the training step, interleaved, ``slow_repeats`` times each."""
    forward_backward: dict[str, list[tuple[float, float]]] = {"bricks": [], "handwritten": []}

    def first_step(name: str) -> float:
        torch._dynamo.reset()
        pair.bricks.zero_grad(set_to_none=True)
        if name == "bricks":
            compiled = torch.compile(pair.bricks, backend=backend)
            times = _training_step(compiled, pair.inputs, pair.stage)
        else:
            compiled = torch.compile(pair.handwritten, backend=backend)
            times = _training_step(compiled, pair.inputs)
        forward_backward[name].append(times)
        return sum(times)

    with no_compile_caches():
        first_step("handwritten")  # warm-up: the first compile in a process also loads the compiler itself
        forward_backward["handwritten"].clear()
        samples = interleaved(
            {"bricks": lambda: first_step("bricks"), "handwritten": lambda: first_step("handwritten")},
            repeats or settings.slow_repeats,
        )
    torch._dynamo.reset()
    return samples, {name: [list(t) for t in times] for name, times in forward_backward.items()}


def _steady_state(pair: Pair, backend: str, settings: Settings) -> tuple[list[Figure], dict[str, Any]]:
    """Recompiles over alternating stages, then steady-state training-step time, bricks vs hand-written."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    counting = {"bricks": CountingBackend(backend), "handwritten": CountingBackend(backend)}
    compiled_bricks = torch.compile(pair.bricks, backend=counting["bricks"])
    compiled_handwritten = torch.compile(pair.handwritten, backend=counting["handwritten"])
    calls: dict[str, Callable[[Stage], dict[str, Any]]] = {
        "bricks": lambda stage: compiled_bricks(pair.inputs, stage),
        "handwritten": lambda stage: compiled_handwritten(pair.inputs),
    }

    def call(name: str, stage: Stage) -> dict[str, Any]:
        """TRAIN in train mode with gradients, VALIDATION in eval mode without, as Lightning runs them."""
        if stage is Stage.TRAIN:
            pair.bricks.train()
            outputs = calls[name](stage)
            outputs["loss_ce"].backward()
            return outputs
        pair.bricks.eval()
        with torch.no_grad():
            outputs = calls[name](stage)
        pair.bricks.train()
        return outputs

    # Stage by stage, both models: training updates the batch-norm statistics that validation then reads.
    outputs: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in calls}
    for stage in (Stage.TRAIN, Stage.VALIDATION):
        for name in calls:
            outputs[name][stage.value] = call(name, stage)
    after_warmup = {name: backend.graphs for name, backend in counting.items()}
    for index in range(ALTERNATING_CALLS):
        for name in calls:
            call(name, Stage.TRAIN if index % 2 == 0 else Stage.VALIDATION)
    recompiles = {name: counting[name].graphs - after_warmup[name] for name in calls}
    unique_graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    pair.bricks.train()
    samples = time_functions(
        {
            "bricks": lambda: compiled_bricks(pair.inputs, pair.stage)["loss_ce"].backward(),
            "handwritten": lambda: compiled_handwritten(pair.inputs)["loss_ce"].backward(),
        },
        settings,
    )
    figures = [
        Figure(
            name=f"compile ({backend}): recompiles over {ALTERNATING_CALLS} alternating TRAIN/VALIDATION calls",
            value=float(recompiles["bricks"]),
            baseline=float(recompiles["handwritten"]),
            unit="graphs",
            comparison=float(recompiles["bricks"] - recompiles["handwritten"]),
            comparison_kind="difference",
            comparison_unit="graphs",
            target="0 after warm-up",
            met=recompiles["bricks"] == 0,
            notes=f"after one warm-up call per stage ({after_warmup['bricks']} graphs for the bricks, "
            f"{after_warmup['handwritten']} for the hand-written module); TRAIN in train mode with backward, "
            "VALIDATION in eval mode under no_grad; counted by a counting backend",
        ),
        ratio_figure(
            f"compile ({backend}): steady-state training step (forward + backward)",
            samples,
            "bricks",
            "handwritten",
            unit="ms/step",
            scale=1e3,
            max_ratio=MAX_STEADY_RATIO,
            notes="compiled collection (TRAIN stage) vs compiled hand-written module, interleaved",
        ),
    ]
    equal = {
        stage: dicts_allclose(outputs["bricks"][stage], outputs["handwritten"][stage], atol=1e-5, rtol=1e-4)
        for stage in outputs["bricks"]
    }
    details = {
        "graphs_after_warmup": after_warmup,
        "recompiles_after_warmup": recompiles,
        "dynamo_unique_graphs": unique_graphs,
        "compiled_outputs_match": equal,
        "steady_state": samples,
    }
    torch._dynamo.reset()
    return figures, details


def _metric_head_breaks(settings: Settings) -> dict[str, Any]:
    """The graph breaks of a TRAIN stage whose head carries a live accuracy metric brick, with its metric updates
    left to the eager caller, and whether the metric values then equal an eager run's."""
    torch._dynamo.reset()
    preprocessor, backbone, _ = cnn_modules((4,))
    stem = {
        name: brick for name, brick in cnn_bricks(preprocessor, backbone, nn.Identity()).items() if name != "classifier"
    }
    bricks = BrickCollection(
        {
            **stem,
            "head": create_image_classification_head(NUM_CLASSES, 4, features_name="features", targets_name="targets"),
        }
    ).to(settings.device)
    inputs = {
        "raw": torch.rand(2, 3, 8, 8, device=settings.device),
        "targets": torch.tensor([0, 1], device=settings.device),
    }
    explained = _explain(bricks, inputs, Stage.TRAIN, update_metrics=False)
    bricks.reset_metrics()
    bricks(inputs, Stage.TRAIN)
    eager = bricks.summarize(Stage.TRAIN, reset=True)
    compiled = torch.compile(bricks, backend="eager")
    bricks.update_metrics(compiled(inputs, Stage.TRAIN, update_metrics=False), Stage.TRAIN)
    explained["metrics_match_eager"] = bool(eager) and dicts_allclose(bricks.summarize(Stage.TRAIN), eager)
    torch._dynamo.reset()
    return explained


def _reduce_overhead_cuda(settings: Settings) -> tuple[Figure, dict[str, Any]]:
    """CUDA only: ``mode="reduce-overhead"`` (CUDA graphs) inference of the small CNN, bricks vs hand-written."""
    torch._dynamo.reset()
    pair = small_cnn(batch_size=8, image_size=32).to(settings.device)
    compiled_bricks = torch.compile(pair.bricks, mode="reduce-overhead")
    compiled_handwritten = torch.compile(pair.handwritten, mode="reduce-overhead")
    with torch.no_grad():
        samples = time_functions(
            {
                "bricks": lambda: compiled_bricks(pair.inputs, Stage.INFERENCE),
                "handwritten": lambda: compiled_handwritten(pair.inputs),
            },
            settings,
            warmup_calls=5,
        )
    torch._dynamo.reset()
    figure = ratio_figure(
        f"compile (reduce-overhead) [{settings.device}]: steady-state inference",
        samples,
        "bricks",
        "handwritten",
        unit="ms/call",
        scale=1e3,
        max_ratio=MAX_STEADY_RATIO,
        notes="small CNN, 8x3x32x32, CUDA graphs, no_grad",
    )
    return figure, {"samples": samples}


def run(settings: Settings | None = None) -> BenchmarkResult:
    settings = settings or Settings.full()
    start = time.perf_counter()
    suffix = "" if settings.device == "cpu" else f" [{settings.device}]"
    backend, why = choose_backend(settings)
    pair = _pair(settings)
    pair.bricks.train()
    details: dict[str, Any] = {"backend": backend, "backend_reason": why, "device": settings.device}
    details["eager_outputs_match"] = dicts_allclose(pair.run_bricks(), pair.run_handwritten())

    explained = _explain(pair.bricks, pair.inputs, pair.stage)
    explained_handwritten = _explain(pair.handwritten, pair.inputs)
    with_metrics = _metric_head_breaks(settings)
    details["explain"] = {"bricks": explained, "handwritten": explained_handwritten, "with_metric_head": with_metrics}
    figures = [
        Figure(
            name=f"compile{suffix}: graphs of the TRAIN stage (with a loss brick)",
            value=float(explained["graph_count"]),
            baseline=float(explained_handwritten["graph_count"]),
            unit="graphs",
            comparison=float(explained["graph_count"] - explained_handwritten["graph_count"]),
            comparison_kind="difference",
            comparison_unit="graphs",
            target="1",
            met=explained["graph_count"] == 1,
            notes="torch._dynamo.explain on preprocessor + backbone + classifier + CrossEntropyLoss brick",
        ),
        Figure(
            name=f"compile{suffix}: graph breaks of the TRAIN stage (with a loss brick)",
            value=float(explained["graph_break_count"]),
            baseline=float(explained_handwritten["graph_break_count"]),
            unit="breaks",
            comparison=float(explained["graph_break_count"] - explained_handwritten["graph_break_count"]),
            comparison_kind="difference",
            comparison_unit="breaks",
            target="0",
            met=explained["graph_break_count"] == 0,
            notes="; ".join(explained["break_reasons"]) or "no break",
        ),
        Figure(
            name=f"compile{suffix}: graph breaks with a head's live accuracy metric brick",
            value=float(with_metrics["graph_break_count"]),
            baseline=None,
            unit="breaks",
            comparison=None,
            comparison_kind="none",
            target="0, metric values equal to eager's",
            met=with_metrics["graph_break_count"] == 0 and with_metrics["metrics_match_eager"],
            notes=f"forward(..., update_metrics=False) then update_metrics(...) eagerly, as LightningBrickCollection "
            f"runs a compiled stage; {with_metrics['graph_count']} graph(s); metric values equal to eager's: "
            f"{with_metrics['metrics_match_eager']}"
            + (f"; breaks: {'; '.join(with_metrics['break_reasons'])}" if with_metrics["break_reasons"] else ""),
        ),
    ]

    steady_figures, steady_details = _steady_state(pair, backend, settings)
    figures += steady_figures
    details.update(steady_details)

    compile_samples, step_parts = _compile_times(pair, backend, settings)
    details["compile_time"] = {"samples": compile_samples, "forward_backward_s": step_parts}
    figures.append(
        ratio_figure(
            f"compile ({backend}){suffix}: compile time (first training step)",
            compile_samples,
            "bricks",
            "handwritten",
            unit="s",
            max_ratio=MAX_COMPILE_TIME_RATIO,
            notes="first forward + backward after torch._dynamo.reset(), inductor caches off; "
            f"median of {compile_samples.repeats} interleaved compiles each, after one warm-up compile",
        )
    )
    if backend != "eager":
        # What the collection itself adds to a compile: Dynamo tracing its Python (forward, the generated stage
        # function, the checks), with the eager backend so that no backend work hides it.
        tracing, _ = _compile_times(pair, "eager", settings, repeats=3 * settings.slow_repeats)
        details["tracing_time"] = tracing
        figures.append(
            ratio_figure(
                f"compile (eager backend){suffix}: Dynamo tracing time (first training step)",
                tracing,
                "bricks",
                "handwritten",
                unit="s",
                notes="informational: the first training step with backend='eager' (Dynamo tracing, no code "
                f"generation); median of {tracing.repeats} interleaved compiles each",
            )
        )
    if settings.device.startswith("cuda"):
        figure, cuda_details = _reduce_overhead_cuda(settings)
        figures.append(figure)
        details["reduce_overhead"] = cuda_details
    torch._dynamo.reset()
    return BenchmarkResult("compile", figures, details, time.perf_counter() - start)
