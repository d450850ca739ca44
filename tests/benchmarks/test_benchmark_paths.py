"""Every benchmark's code path, in quick mode (tiny sizes, few iterations): candidate and baseline compute the same
thing, the results have the expected shape, and the report writer produces valid JSON and a markdown table.

No timing is asserted: these tests only prove that ``nox -s bench`` measures what it says it measures.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root, beside the library
    sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402
    build,
    dispatch,
    lightning_parity,
    metrics,
    models,
    onnx_export,
    parity_models,
)
from benchmarks import compile as compile_benchmark  # noqa: E402
from benchmarks.common import (  # noqa: E402
    BenchmarkResult,
    Figure,
    Samples,
    Settings,
    dicts_allclose,
    environment,
    interleaved,
    time_interleaved,
)
from benchmarks.parity_models import ABLATIONS, PROTOTYPES  # noqa: E402
from benchmarks.report import TABLE_HEADER, build_report, markdown, write_report  # noqa: E402
from benchmarks.run import BENCHMARKS, main  # noqa: E402
from torchbricks_lightning import BrickCollection, Stage  # noqa: E402

QUICK = Settings.fast()
FIGURE_KEYS = {
    "name",
    "value",
    "baseline",
    "unit",
    "comparison",
    "comparison_kind",
    "comparison_unit",
    "target",
    "met",
    "notes",
    "benchmark",
    "extra",
}


def _check_result(result: BenchmarkResult, name: str) -> dict[str, object]:
    data = result.as_dict()
    assert set(data) == {"name", "seconds", "figures", "details"}
    assert data["name"] == name
    assert data["figures"], "a benchmark reports at least one figure"
    for figure in data["figures"]:
        assert set(figure) == FIGURE_KEYS
        assert figure["benchmark"] == name
        assert figure["comparison_kind"] in ("ratio", "difference", "none")
        assert figure["met"] in (True, False, None)
        assert (figure["met"] is None) == (figure["target"] == ""), figure["name"]
    json.dumps(data, allow_nan=False)  # details are plain JSON
    return data


# ------------------------------------------------------------------------------------------------ timing
def test_interleaved_alternates_the_order_and_takes_medians() -> None:
    calls: list[str] = []
    samples = interleaved({"a": lambda: calls.append("a") or 2.0, "b": lambda: calls.append("b") or 1.0}, repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert samples.median("a") == 2.0
    assert samples.ratio("a", "b") == 2.0
    assert samples.difference("a", "b") == 1.0


def test_time_interleaved_calibrates_each_function() -> None:
    samples = time_interleaved({"x": lambda: None, "y": lambda: sum(range(100))}, QUICK)
    assert set(samples.inner_iterations) == {"x", "y"}
    assert samples.repeats == QUICK.repeats
    assert all(value > 0 for values in samples.values.values() for value in values)


# ------------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize(
    "pair",
    [models.trivial_chain(3), models.trivial_chain(50), models.small_cnn(2, 16), models.resnet18_split(1, 32)],
    ids=lambda pair: pair.name,
)
def test_collection_and_handwritten_return_the_same_dict(pair: models.Pair) -> None:
    with torch.no_grad():
        bricks = pair.run_bricks()
        assert dicts_allclose(bricks, pair.run_handwritten())
        if pair.tight is not None:
            assert dicts_allclose(bricks, pair.tight(pair.inputs))
    assert list(bricks)[: len(pair.inputs)] == list(pair.inputs)


def test_train_stage_with_loss_matches_handwritten_including_gradients() -> None:
    pair = models.cnn_with_loss(batch_size=4, image_size=8)
    bricks = pair.run_bricks()
    bricks["loss_ce"].backward()
    grads = [p.grad.clone() for p in pair.bricks.parameters()]
    pair.bricks.zero_grad(set_to_none=True)
    handwritten = pair.run_handwritten()
    handwritten["loss_ce"].backward()
    assert dicts_allclose(bricks, handwritten)
    for grad, parameter in zip(grads, pair.bricks.parameters(), strict=True):
        torch.testing.assert_close(grad, parameter.grad)


def test_generated_handwritten_module_is_straight_line() -> None:
    source = models.trivial_chain(3).handwritten.source  # type: ignore[attr-defined]
    assert "for " not in source
    assert source.count("self.b") == 3


# ------------------------------------------------------------------------------------------------ benchmarks
def test_dispatch_quick() -> None:
    data = _check_result(dispatch.run(QUICK), "dispatch")
    assert all(data["details"]["outputs_match"].values())  # type: ignore[index]
    names = [figure["name"] for figure in data["figures"]]  # type: ignore[union-attr]
    for mode in ("eager", "no_grad"):
        for n in dispatch.CHAIN_LENGTHS:
            assert f"dispatch chain{n} ({mode}): extra time per brick" in names
        assert f"dispatch small_cnn ({mode}): time ratio" in names
        assert f"dispatch resnet18 ({mode}): time ratio" in names


def test_build_quick() -> None:
    data = _check_result(build.run(QUICK), "build")
    names = [figure["name"] for figure in data["figures"]]  # type: ignore[union-attr]
    assert names == [f"build {shape}, {n} bricks" for shape in build.SHAPES for n in (10, 100)]
    for shape, make in build.SHAPES.items():  # the shapes are what their names say
        collection = BrickCollection(make(50))
        nodes = collection.plan(Stage.INFERENCE).nodes
        assert len(nodes) == 50, shape
        fan_in = max(len(node.input_names) for node in nodes)
        assert fan_in == (48 if shape == "fan-out + fan-in" else 1), shape


def test_compile_quick() -> None:
    data = _check_result(compile_benchmark.run(QUICK), "compile")
    details = data["details"]
    assert details["eager_outputs_match"] is True  # type: ignore[index]
    assert all(details["compiled_outputs_match"].values())  # type: ignore[index]
    assert details["explain"]["bricks"]["graph_break_count"] == 0  # type: ignore[index]
    assert details["explain"]["bricks"]["graph_count"] == 1  # type: ignore[index]
    assert details["recompiles_after_warmup"] == {"bricks": 0, "handwritten": 0}  # type: ignore[index]
    assert set(details["compile_time"]["samples"]["samples"]) == {"bricks", "handwritten"}  # type: ignore[index]
    assert details["backend"] == "eager"  # type: ignore[index]


def test_counting_backend_counts_graphs() -> None:
    torch._dynamo.reset()
    backend = compile_benchmark.CountingBackend("eager")
    compiled = torch.compile(torch.nn.Linear(2, 2), backend=backend)
    compiled(torch.ones(1, 2))
    compiled(torch.ones(1, 2))
    assert backend.graphs == 1
    torch._dynamo.reset()


def test_lightning_parity_quick() -> None:
    data = _check_result(lightning_parity.run(QUICK), "lightning_parity")
    figures = {figure["name"]: figure for figure in data["figures"]}  # type: ignore[union-attr]
    for model in ("mlp", "cnn", "small"):
        losses = figures[f"lightning {model}: per-step losses, bricks vs hand-written"]
        assert losses["met"] is True
        assert losses["value"] == 0.0  # the same computation, step for step
        assert losses["baseline"] == 0.0  # the plain loop too
        assert set(losses["extra"]["loss_max_abs_diff"].values()) == {0.0}  # every ablation computes the same too
        recorded = data["details"]["models"][model]["losses_first_run"]  # type: ignore[index]
        assert set(recorded) == set(lightning_parity.VARIANTS)
        assert len({len(values) for values in recorded.values()}) == 1
        step = figures[f"lightning {model}: time per training step, bricks vs hand-written LightningModule"]
        assert step["target"] == "<= 1.02x"
        assert step["extra"]["threads"] == torch.get_num_threads()
        fixed = figures[f"lightning {model}: fixed extra cost per training step, bricks vs hand-written"]
        assert fixed["comparison_unit"] == "us/step"
        assert fixed["comparison"] == step["extra"]["extra_us_per_step"]
        breakdown = fixed["extra"]["breakdown_us"]
        assert set(breakdown) == set(ABLATIONS)
        assert fixed["extra"]["remainder_us"] == pytest.approx(fixed["comparison"] - sum(breakdown.values()))
        for ablation, label in ABLATIONS.items():
            assert figures[f"lightning {model}: step cost of {label}"]["comparison"] == breakdown[ablation]
        for label in PROTOTYPES.values():
            assert f"lightning {model}: prototype, {label}" in figures
    memory = figures["lightning mlp: peak memory (process peak RSS), bricks vs hand-written"]
    assert memory["value"] > 0
    assert memory["baseline"] > 0


def test_memory_worker_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """What each memory subprocess runs (quick mode runs the worker in-process, so it is checked here)."""
    command = lightning_parity._memory_command("bricks", "mlp", quick=True)
    assert command[1:4] == ["-m", "benchmarks.lightning_parity", "memory"]
    assert lightning_parity.main(command[3:]) == 0
    measured = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(measured) == {"peak_rss_bytes", "rss_before_fit_bytes", "fit_growth_bytes"}
    assert measured["peak_rss_bytes"] >= measured["rss_before_fit_bytes"] > 0


def test_metrics_quick() -> None:
    data = _check_result(metrics.run(QUICK), "metrics")
    assert data["details"]["equal"] == {"confusion_equal": True, "accuracy_close": True}  # type: ignore[index]
    assert data["figures"][0]["target"] == "<= 2x"  # type: ignore[index]


def test_metric_bricks_match_bincount_lower_bound() -> None:
    assert metrics.check_equal(QUICK, steps=2) == {"confusion_equal": True, "accuracy_close": True}


def test_onnx_quick() -> None:
    data = _check_result(onnx_export.run(QUICK), "onnx")
    details = data["details"]
    assert details["eager_outputs_match"] == 0.0  # type: ignore[index]
    assert details["same_ops"] is True  # type: ignore[index]
    assert details["errors"]["bricks"]["max_abs_error"] <= onnx_export.MAX_ABS_ERROR  # type: ignore[index]
    assert details["errors"]["bricks"]["integer_mismatches"] == 0  # type: ignore[index]
    assert details["output_names"] == [  # type: ignore[index]
        "normalized",
        "features",
        "logits",
        "probabilities",
        "class_prediction",
    ]


def test_export_pair_is_equivalent_in_eager_mode() -> None:
    bricks, handwritten, image = onnx_export.export_pair(QUICK)
    with torch.no_grad():
        named = bricks({"raw": image}, Stage.EXPORT)
        for expected, got in zip(named.values(), (image, *handwritten(image)), strict=True):
            torch.testing.assert_close(got, expected)


# ------------------------------------------------------------------------------------------------ report
def _tiny_result() -> BenchmarkResult:
    samples = Samples({"bricks": [2.0, 2.2, 2.1], "handwritten": [1.0, 1.1, 1.0]})
    ratio = samples.ratio("bricks", "handwritten")
    return BenchmarkResult(
        "tiny",
        [
            Figure("ratio | with a pipe", 2.1, 1.0, "s", ratio, target="<= 2x", met=False),
            Figure("difference", 3.0, 1.0, "us", 2.0, "difference", "us/brick", "<= 1 us/brick", False, "note"),
            Figure("info", float("nan"), None, "x", None, "none", notes="informational"),
        ],
        {"samples": samples, "tensor": torch.ones(2), "inf": math.inf},
        seconds=0.1,
    )


def test_report_writes_valid_json_and_a_markdown_table(tmp_path: Path) -> None:
    report = build_report([_tiny_result()], environment(), {"quick": True, "repeats": 3}, total_seconds=1.0)
    json_path, markdown_path = write_report(report, tmp_path / "out")

    loaded = json.loads(json_path.read_text(encoding="utf-8"))
    assert set(loaded) == {"method", "environment", "total_seconds", "summary", "figures", "benchmarks"}
    assert loaded["summary"] == {
        "figures": 3,
        "with_target": 2,
        "met": 0,
        "missed": ["ratio | with a pipe", "difference"],
    }
    for key in ("python", "torch", "pytorch_lightning", "torchmetrics", "onnxruntime", "cpu_model", "cpu_count"):
        assert key in loaded["environment"]
    assert loaded["environment"]["torch_threads"] == torch.get_num_threads()
    assert loaded["benchmarks"][0]["details"]["inf"] is None  # no NaN or Infinity in the JSON

    text = markdown_path.read_text(encoding="utf-8")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(TABLE_HEADER) + " |"
    assert len(table) == 2 + 3  # header, separator, one row per figure
    assert all(line.count(" | ") == len(TABLE_HEADER) - 1 for line in table[2:])  # the pipe in a name is escaped
    for expected in ("2.000x", "+2 us/brick", "**no**", "Threads: torch", "CPU:"):
        assert expected in text
    assert markdown(report) == text


def test_run_entry_point_writes_both_files(tmp_path: Path) -> None:
    assert main(["--quick", "--only", "metrics", "--output", str(tmp_path), "--no-cuda"]) == 0
    report = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert report["method"]["benchmarks"] == ["metrics"]
    assert [figure["benchmark"] for figure in report["figures"]] == ["metrics"] * len(report["figures"])
    assert (tmp_path / "results.md").read_text(encoding="utf-8").startswith("# torchbricks_lightning benchmarks")
    assert set(BENCHMARKS) >= {"dispatch", "build", "compile", "lightning_parity", "metrics", "onnx"}


def test_parity_cases_miss_a_third_of_the_labels() -> None:
    for spec in parity_models.model_specs(QUICK).values():
        targets = parity_models.dataset_of(spec).tensors[1]
        assert int((targets == parity_models.IGNORE_INDEX).sum()) == round(len(targets) / 3)


def test_parity_ablations_take_their_piece_out() -> None:
    spec = parity_models.model_specs(QUICK)["small"]
    assert parity_models.lightning_module_of("no_epoch_means", spec).loss_means.metrics(Stage.TRAIN) == {}
    plain = parity_models.lightning_module_of("plain_ce", spec)
    assert "head/labelled" not in plain.brick_collection.output_names(Stage.TRAIN)
    assert not parity_models.lightning_module_of("bricks_no_finite_check", spec).check_finite_loss
    assert parity_models.lightning_module_of("bricks", spec).check_finite_loss


def test_quiet_lightning_in_overlapping_threads_restores_the_process_s_logging_and_warnings() -> None:
    """The lockstep threads each enter ``quiet_lightning`` at once. Each saving and restoring on its own left
    Lightning's logger at ERROR (and every warning ignored) for the rest of the process: the second thread saved what
    the first had set. A later test's ``caplog`` then never saw Lightning's INFO lines."""
    import logging
    import threading
    import warnings

    from benchmarks.lockstep import quiet_lightning

    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")
    before = [logging.getLogger(name).level for name in names]
    filters_before = list(warnings.filters)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        with quiet_lightning():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with quiet_lightning():
            second_in.set()
            first_out.wait(5)  # the first thread has left: still quiet, since this one is inside
            seen.append(logging.getLogger("pytorch_lightning").level)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == [logging.ERROR]
    assert [logging.getLogger(name).level for name in names] == before
    assert warnings.filters == filters_before
