"""The command's start-up: ``--help`` imports only what it needs, and no run prints Lightning's tips.

``--help`` is timed in the closing note of issue 22 (median of 5 runs against ``python -c "import
pytorch_lightning"``); here a real process checks what it imports instead of a timed assert. Lightning itself
imports torchmetrics, which imports torchvision, so torchvision counts only when Lightning did not import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from cli_runs import run_script

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
HEAVY = (
    "onnx",
    "onnxruntime",
    "onnxscript",
    "tensorboard",
    "tensorboardX",
    "torchvision",
    "grandalf",
    "sklearn",
    "torchjd",
    "pycocotools",
    "torchbricks_lightning.cli.export",
    "torchbricks_lightning.lightning.export",
)
"""Modules ``--help`` does not need: exporters, loggers, layouts and task code, and the export subcommand's code."""
HELP_IMPORTS = """
import contextlib, io, json, sys
import pytorch_lightning
lightning = set(sys.modules)
from torchbricks_lightning.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(["--help"])
    except SystemExit:
        pass
heavy = {heavy!r}
imported = [name for name in heavy if name in set(sys.modules) - lightning]
print(json.dumps({{"help": out.getvalue(), "imported": imported}}))
"""


def test_help_imports_no_heavy_module_it_does_not_need(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS.format(heavy=HEAVY)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.splitlines()[-1])
    assert "{fit,validate,test,predict" in report["help"]  # it did print the help
    assert report["imported"] == []


def test_a_fit_run_prints_no_lightning_tip(tmp_path: Path) -> None:
    """Lightning's litlogger tip (every Trainer with a logger) and litmodels tip (its own ModelCheckpoint) are gone;
    its other lines stay."""
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"]["callbacks"] = []  # Lightning adds its own ModelCheckpoint, and its litmodels tip
    config["trainer"].update(max_steps=1, limit_val_batches=1, enable_progress_bar=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    process = run_script(["fit", "--config", str(recipe)], cwd=tmp_path)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-3000:]
    assert "GPU available:" in output  # Lightning's own information is printed
    for tip in ("Tip:", "litlogger", "litmodels"):
        assert tip not in output, output[-3000:]
