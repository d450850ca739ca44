"""The README is executable: its Python blocks run in order, and its mermaid block is the real output."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from torchbricks_lightning import create_mermaid_dag_graph

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


CONTINUES = "# Continues "


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block runs on its own, with its own imports, unless its first line says which block it continues."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    defined: dict[str, object] = {}  # every name any block defined, for the checks below
    blocks = _blocks("python")
    assert len(blocks) >= 6
    for index, block in enumerate(blocks):
        # A fresh start, where the block must carry its imports; or, for a block that says which it continues, the
        # names the earlier blocks defined.
        namespace = dict(defined) if block.startswith(CONTINUES) else {"__name__": "readme"}
        try:
            exec(compile(block, f"README.md python block {index}", "exec"), namespace)
        except Exception as err:
            err.add_note(f"README python block {index}:\n{block}")
            raise
        defined.update(namespace)
    # The mermaid blocks in the README are exactly what the code draws.
    multi_task, concept = _blocks("mermaid")
    assert defined["graph"] == concept.rstrip("\n")
    monkeypatch.syspath_prepend(str(README.parent / "examples"))
    from digits_multitask import build_bricks

    assert create_mermaid_dag_graph(build_bricks(), stage="train", add_legends=False) == multi_task.rstrip("\n")


def test_quick_start_has_two_commands() -> None:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)[:1]
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci, "CI must run the README's test command"


def test_readme_cli_commands_run(tmp_path: Path) -> None:
    """The README's CLI block runs as written (from a folder holding the example configs)."""
    import shutil
    import subprocess
    import sys

    blocks = [block for block in _blocks("bash") if "torchbricks-lightning" in block]
    assert blocks, "the README shows the CLI"
    shutil.copytree(README.parent / "examples", tmp_path / "examples")
    script = Path(sys.executable).parent / "torchbricks-lightning"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for line in blocks[0].splitlines():
        if not line.startswith("torchbricks-lightning"):
            continue
        arguments = line.split()[1:]
        if arguments[0] == "fit":
            arguments += ["--trainer.enable_progress_bar", "false"]
        result = subprocess.run([str(script), *arguments], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    assert (tmp_path / "model.onnx").is_file()
    # The recipe's OnnxExportCallback writes one pruned artefact per head ("{head}.onnx"), each with a manifest.
    for head in ("head0", "head1"):
        assert (tmp_path / "checkpoints" / "synthetic_multitask" / f"{head}.onnx").is_file()
        assert (tmp_path / "checkpoints" / "synthetic_multitask" / f"{head}.onnx.json").is_file()


def test_readme_demo_figures_are_the_seeds_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's demo figures come from ``examples/demo_seeds.py``: its table (mean ± spread over seeds) as written
    in ``docs/demo_figures.md``, and the Quick start's printed block as the demo printed it for seed 0 (recorded in
    ``docs/demo_figures.json``); the tolerance the README states is the one the demo's test applies."""
    import json

    monkeypatch.syspath_prepend(str(README.parent / "examples"))
    import demo_seeds

    text = README.read_text()
    docs = README.parent / "docs"
    figures = json.loads((docs / "demo_figures.json").read_text())
    table = (docs / "demo_figures.md").read_text()
    assert figures["summary"] == demo_seeds.summarise(figures["runs"]), "the summary is not of the seeds' runs"
    assert table == demo_seeds.markdown(figures), "docs/demo_figures.md is stale: run demo_seeds.py --table-only"
    example = text.split("## The multi-task example", 1)[1].split("\n## ", 1)[0]
    assert table in example, "the README's table is not docs/demo_figures.md"
    assert len(figures["runs"]) >= 5
    assert len(set(figures["seeds"])) == len(figures["seeds"])

    (block,) = re.findall(r"```text\n(Digits predicted correctly.*?)```", text, flags=re.DOTALL)
    (run,) = [run for run in figures["runs"] if run["seed"] == 0]
    fraction = f"({run['labelled_fraction']:.0%} of the digits labelled, seed 0)"
    assert fraction in block
    assert f"of the {run['test_images']} held-out test images" in block
    assert f"PyTorch      {run['digit_accuracy']:.2%}" in block
    for task in ("digit", "parity", "foreground"):
        line = f"{run['alone'][task]:7.2%} -> {run['together'][task]:7.2%}"
        assert re.search(rf"^  {task} .*{re.escape(line)}$", block, flags=re.MULTILINE), (task, line, block)
    assert f"Δm on the test split: {run['delta_m']:+.2f}%" in block

    assert demo_seeds.tolerance({"sd": 1.0}) == 3.0
    assert demo_seeds.tolerance({"sd": 0.0}) == 0.5
    assert "three standard deviations of the mean, and never less than half a point" in example
