"""The balancer benchmark's code path in quick mode: registered, every balancer timed against static weights (the
Gramian methods on both sources), and our MGDA on the parameters against torchjd's ``mtl_backward``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root, beside the library
    sys.path.insert(0, str(ROOT))

from benchmarks import balancers  # noqa: E402
from benchmarks.common import Settings  # noqa: E402
from benchmarks.run import BENCHMARKS  # noqa: E402


def test_balancer_benchmark_quick() -> None:
    assert BENCHMARKS["balancers"] is balancers.run
    # One of each kind (loss level, Gramian on the shared tensor and on the parameters, torchjd's): the full bench
    # runs every variant; VARIANTS itself is checked below.
    quick = ["static_again", "famo", "pcgrad", "mgda_parameters", "torchjd_mgda"]
    result = balancers.run(Settings.fast(), variants=quick)
    data = result.as_dict()
    json.dumps(data, allow_nan=False)
    figures = {figure["name"]: figure for figure in data["figures"]}
    against_static = {f"balancers: {name} step vs static weights" for name in quick}
    against_torchjd = {"balancers: mgda_parameters step vs torchjd's mtl_backward (torchjd_mgda)"}
    assert set(figures) == against_static | against_torchjd
    assert figures["balancers: pcgrad step vs static weights"]["target"] == "<= 1.15x"
    assert figures["balancers: famo step vs static weights"]["target"] == "<= 1.02x"
    assert figures["balancers: mgda_parameters step vs static weights"]["target"] == "", "reported"
    assert figures["balancers: static_again step vs static weights"]["target"] == "", "the A/A control"
    gramian = ("pcgrad", "mgda", "imtlg", "aligned_mtl", "cagrad", "nash_mtl", "upgrad", "gradnorm")
    every = {"static", "static_again", *balancers.LOSS_LEVEL, *gramian, *(f"{name}_parameters" for name in gramian)}
    assert set(balancers.VARIANTS) == every
    assert balancers.TARGETS["static_again"] is None, "the A/A control is reported: it is the bench's noise"
    assert all(balancers.TARGETS[name] == 1.15 for name in gramian)  # every Gramian method on both sources
    assert all(balancers.TARGETS[f"{name}_parameters"] is None for name in gramian)
    assert all(balancers.TARGETS[name] == 1.02 for name in balancers.LOSS_LEVEL)
    for figure in figures.values():
        assert figure["benchmark"] == "balancers"
        assert figure["value"] > 0
        assert figure["baseline"] > 0
        assert figure["comparison"] > 0
    # Each kind trains in lockstep beside its own static run; every variant ran its 4 steps after the warm-up.
    assert data["details"]["groups"] == {
        "loss": ["static@loss", "static_again", "famo"],
        "representation": ["static@representation", "pcgrad"],
        "parameters": ["static@parameters", "mgda_parameters", "torchjd_mgda"],
    }
    periods = data["details"]["periods"]
    assert set(periods) == {name for group in data["details"]["groups"].values() for name in group}
    assert all(len(run) == 4 for runs in periods.values() for run in runs)


def test_the_benchmarked_model_is_the_demos() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    try:
        from digits_multitask import build_bricks
    finally:
        sys.path.pop(0)
    demo, benchmarked = build_bricks(), balancers.demo_bricks()
    assert [path for path, _ in demo.named_bricks()] == [path for path, _ in benchmarked.named_bricks()]
    assert {name: tuple(p.shape) for name, p in demo.named_parameters()} == {
        name: tuple(p.shape) for name, p in benchmarked.named_parameters()
    }


ROWS = {
    "UncertaintyWeighting": ("uncertainty",),
    "DynamicWeightAverage": ("dwa",),
    "FAMO": ("famo",),
    "RandomLossWeighting": ("rlw",),
    "GeometricLossStrategy": ("gls",),
    "MGDA": ("mgda", "mgda_parameters"),
    "IMTLG": ("imtlg", "imtlg_parameters"),
    "AlignedMTL": ("aligned_mtl", "aligned_mtl_parameters"),
    "CAGrad": ("cagrad", "cagrad_parameters"),
    "NashMTL": ("nash_mtl", "nash_mtl_parameters"),
    "UPGrad": ("upgrad", "upgrad_parameters"),
    "PCGrad": ("pcgrad", "pcgrad_parameters"),
    "GradNorm": ("gradnorm", "gradnorm_parameters"),
}


def test_the_readme_table_shows_the_recorded_bench_run() -> None:
    """Each method's row in the README's Task balancing table shows the ratios of the recorded run (written by
    ``python -m benchmarks.balancers``), and so do the sentences on the A/A control and torchjd."""
    record = json.loads((ROOT / balancers.RECORD).read_text())
    assert record["threads"] == 1
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Task balancing") : readme.index("### The multi-task score")]
    rows = {line.split("`")[1].split("(")[0]: line for line in section.splitlines() if line.startswith("| `")}
    assert set(ROWS) <= set(rows), sorted(rows)
    for method, variants in ROWS.items():
        cell = " / ".join(f"{record['ratios'][variant]:.2f}x" for variant in variants)
        assert f"| {cell} |" in rows[method], (method, cell)
    assert f"{record['ratios']['static_again']:.2f}x" in section, "the A/A control"
    assert f"ours {record['against_torchjd']['mgda_parameters']:.2f}x torchjd's step" in section
    assert f"{record['repeats']} lockstep runs" in section
