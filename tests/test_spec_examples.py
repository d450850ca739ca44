"""The reference spec's examples (torchbricks 0.0.10's README) run with only their imports changed.

The spec lives beside the repository (``../shared/spec``) and is not copied into it. Its Lightning example
belongs to the Lightning layer and is left out here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

SPEC = Path(
    os.environ.get("TORCHBRICKS_SPEC", Path(__file__).resolve().parents[2] / "shared/spec/torchbricks-0.0.10-README.md")
)

IMPORT_RENAMES = {
    "from torchbricks.bricks import": "from torchbricks_lightning import",
    "from torchbricks.graph_plotter import": "from torchbricks_lightning import",
    "from torchbricks.brick_utils import": "from torchbricks_lightning import",
    "from torchbricks.bag_of_bricks import": "from torchbricks_lightning.bag_of_bricks import",
}


def _change_imports(block: str) -> str:
    for old, new in IMPORT_RENAMES.items():
        block = block.replace(old, new)
    return block


def _spec_blocks() -> list[str]:
    if not SPEC.exists():
        pytest.skip(f"reference spec not found at {SPEC} (set TORCHBRICKS_SPEC)")
    blocks = re.findall(r"^```python\n(.*?)^```", SPEC.read_text(), flags=re.DOTALL | re.MULTILINE)
    return [block for block in blocks if "pytorch_lightning" not in block]


def test_only_imports_change() -> None:
    for block in _spec_blocks():
        changed = _change_imports(block)
        differing = [(a, b) for a, b in zip(block.splitlines(), changed.splitlines(), strict=True) if a != b]
        assert all(a.lstrip().startswith("from torchbricks") for a, _ in differing)


def test_spec_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = _spec_blocks()
    assert len(blocks) >= 10
    namespace: dict[str, object] = {"__name__": "spec"}
    for index, block in enumerate(blocks):
        try:
            exec(compile(_change_imports(block), f"spec python block {index}", "exec"), namespace)
        except Exception as err:
            err.add_note(f"spec python block {index}:\n{block}")
            raise
    printed = capsys.readouterr().out
    assert "BrickCollection(" in printed
    assert "flowchart LR" in printed
    assert "Brick outputs: dict_keys(['raw', 'processed', 'embedding', 'logits', 'softmaxed'])" in printed
    assert (tmp_path / "build" / "readme_model.onnx").is_file()
    assert (tmp_path / "build" / "readme_model.pt").is_file()
