"""The ONNX benchmark's single-head figure: the demo model's first head exported alone against the full export."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root, beside the library
    sys.path.insert(0, str(ROOT))

from benchmarks import onnx_export  # noqa: E402
from benchmarks.common import Settings  # noqa: E402


def test_head_latency_compares_a_pruned_head_with_the_full_export() -> None:
    figure, details = onnx_export.head_latency(Settings.fast())
    head = details["head"]
    assert details["heads"][0] == head
    assert len(details["heads"]) >= 2  # the demo model is multi-task
    assert all(name.startswith(f"{head}/") for name in details["head_outputs"])
    assert set(details["head_outputs"]) < set(details["full_outputs"])
    other_heads = [name for name in details["heads"] if name != head]
    assert not [brick for brick in details["head_bricks"] if brick.split("/")[0] in other_heads]
    for name in other_heads:
        assert any(brick.split("/")[0] == name for brick in details["full_bricks"]), name
    assert details["onnx_nodes"]["head"] < details["onnx_nodes"]["full"]
    assert figure.comparison is not None
    assert figure.comparison > 0
    assert figure.target == ""  # informational
