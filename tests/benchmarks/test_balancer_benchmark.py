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
    quick = ["static", "uncertainty", "famo", "pcgrad", "mgda_parameters", "torchjd_mgda"]
    result = balancers.run(Settings.fast(), variants=quick)
    data = result.as_dict()
    json.dumps(data, allow_nan=False)
    figures = {figure["name"]: figure for figure in data["figures"]}
    against_static = {f"balancers: {name} step vs static weights" for name in quick[1:]}
    against_torchjd = {"balancers: mgda_parameters step vs torchjd's mtl_backward (torchjd_mgda)"}
    assert set(figures) == against_static | against_torchjd
    assert figures["balancers: pcgrad step vs static weights"]["target"] == "<= 1.15x"
    assert figures["balancers: famo step vs static weights"]["target"] == "<= 1.02x"
    assert figures["balancers: mgda_parameters step vs static weights"]["target"] == "", "reported"
    gramian = ("pcgrad", "mgda", "imtlg", "aligned_mtl", "cagrad", "nash_mtl", "upgrad", "gradnorm")
    loss_level = ("uncertainty", "dwa", "famo", "rlw", "gls")
    assert set(balancers.VARIANTS) == {"static", *loss_level, *gramian, *(f"{name}_parameters" for name in gramian)}
    assert all(balancers.TARGETS[name] == 1.15 for name in gramian)  # every Gramian method on both sources
    assert all(balancers.TARGETS[f"{name}_parameters"] is None for name in gramian)
    assert all(balancers.TARGETS[name] == 1.02 for name in loss_level)
    for name, figure in figures.items():
        assert figure["benchmark"] == "balancers"
        if "uncertainty" in name or "dwa" in name:
            assert figure["target"] == "<= 1.02x"
        assert figure["value"] > 0
        assert figure["baseline"] > 0
        assert figure["comparison"] > 0
    periods = data["details"]["periods"]
    assert set(periods) == set(quick)
    assert all(len(run) == 4 for runs in periods.values() for run in runs)  # 4 step periods after the warm-up


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
