"""Every example runs as a user runs it: the YAML recipes through the ``torchbricks-lightning`` command, and the
scripts with ``python examples/...``, each in a subprocess in a temporary folder, on a few steps of tiny data.

CIFAR-10 cannot be downloaded here, so its recipe trains on a tiny dataset written in CIFAR-10's own on-disk format.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from torchbricks_lightning import Stage
from torchbricks_lightning.cli import main
from torchbricks_lightning.core.atomic_files import temporary_name
from torchbricks_lightning.lightning import LightningBrickCollection

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TESTED_ELSEWHERE = {"digit_scenes": "tests/examples/test_digit_scenes.py"}
"""Recipes whose datamodule lives in examples/ (importable from the repository's root only): tested in their file."""
CONFIGS = sorted(path for path in (EXAMPLES / "configs").glob("*.yaml") if path.stem not in TESTED_ELSEWHERE)
QUICK = [
    *("--trainer.max_steps", "2"),
    # Stopping mid-epoch (max_steps alone) skips validation, so a ModelCheckpoint monitoring a validation metric
    # would save nothing: end the epoch at step 2.
    *("--trainer.limit_train_batches", "2"),
    *("--trainer.limit_val_batches", "1"),
    *("--trainer.enable_progress_bar", "false"),
]
# The image shape (without the batch) each recipe's data has: what the exported model must take.
IMAGE_SHAPES = {"cifar10_resnet18": [3, 32, 32], "digits_multitask": [1, 8, 8], "synthetic_multitask": [3, 16, 16]}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(command: Sequence[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _cli() -> list[str]:
    """The installed console script next to the interpreter, or ``python -m`` when it is missing."""
    script = Path(sys.executable).with_name("torchbricks-lightning")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torchbricks_lightning.cli"]


def _explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"


def write_tiny_cifar10(root: Path, per_file: int = 8) -> None:
    """A tiny CIFAR-10 in its own format: pickled dicts with str keys, as torchvision reads them (latin1)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{index}" for index in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=per_file)]
        with open(folder / name, "wb") as file:
            pickle.dump({"batch_label": name, "labels": labels, "data": data}, file, protocol=2)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": [f"class{index}" for index in range(10)]}, file, protocol=2)


def _data_overrides(config: Path, run: Path) -> list[str]:
    if config.stem != "cifar10_resnet18":
        return []
    write_tiny_cifar10(run / "cifar")
    return [
        *("--data.init_args.data_dir", str(run / "cifar")),
        *("--data.init_args.download", "false"),
        *("--data.init_args.verify_checksums", "false"),
        *("--data.init_args.val_size", "8"),
        *("--data.init_args.batch_size", "4"),
        *("--data.init_args.num_workers", "0"),
    ]


def _checkpoint_folder(config: Path, run: Path) -> Path:
    """The recipe's (relative) ModelCheckpoint folder, which lands in ``run`` since the command runs there."""
    recipe = yaml.safe_load(config.read_text())
    (checkpoint,) = [c for c in recipe["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    dirpath = Path(checkpoint["init_args"]["dirpath"])
    assert not dirpath.is_absolute(), "recipes keep their checkpoints relative to where they run"
    return run / dirpath


def _has_onnx_callback(config: Path) -> bool:
    recipe = yaml.safe_load(config.read_text())
    return any(c["class_path"].endswith(".OnnxExportCallback") for c in recipe["trainer"]["callbacks"])


Fit = Callable[[str], Path]


@pytest.fixture(scope="module")
def fit_recipe(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    """Fit a recipe by name (once per module) through the CLI and return its checkpoint."""
    done: dict[str, Path] = {}

    def fit(name: str) -> Path:
        if name in done:
            return done[name]
        config = EXAMPLES / "configs" / f"{name}.yaml"
        run = tmp_path_factory.mktemp(name)
        result = _run([*_cli(), "fit", "--config", str(config), *_data_overrides(config, run), *QUICK], cwd=run)
        assert result.returncode == 0, _explain(result)
        folder = _checkpoint_folder(config, run)
        candidates = [folder / "best.ckpt", folder / "last.ckpt"]
        checkpoint = next((path for path in candidates if path.is_file()), None)
        assert checkpoint is not None, f"no best.ckpt or last.ckpt in {folder}: {sorted(folder.glob('*'))}"
        done[name] = checkpoint
        return checkpoint

    return fit


# ------------------------------------------------------------------------------------------------ recipes
HEADS = {
    "digits_multitask": ["digit", "foreground", "parity"],
    "synthetic_multitask": ["head0", "head1"],
    "cifar10_resnet18": ["classify"],
}
"""The heads each recipe's OnnxExportCallback writes a file for."""


def test_every_recipe_is_tested() -> None:
    assert {config.stem for config in CONFIGS} == set(IMAGE_SHAPES)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[config.stem for config in CONFIGS])
def test_recipe_trains_and_its_checkpoint_exports_to_matching_onnx(config: Path, fit_recipe: Fit) -> None:
    checkpoint = fit_recipe(config.stem)
    run = checkpoint.parent
    if _has_onnx_callback(config):  # one file per head beside the checkpoints, each with its manifest
        heads = sorted(path.stem for path in run.glob("*.onnx"))
        assert heads == HEADS[config.stem], "OnnxExportCallback(filename='{head}.onnx') writes one file per head"
        assert all((run / f"{head}.onnx.json").is_file() for head in heads)

    path_onnx = run / "exported.onnx"
    # The subcommand's own onnxruntime check is skipped (--verify false): the comparison below is stricter
    # (another batch size, every output) and a second check would cost seconds on a ResNet.
    arguments = ["export", "--ckpt_path", str(checkpoint), "--output", str(path_onnx), "--verify", "false"]
    assert main(arguments) == 0
    assert path_onnx.is_file()

    module = LightningBrickCollection.load_from_checkpoint(checkpoint, map_location="cpu").eval()  # from the file alone
    inputs = module.example_named_inputs(batch_size=3)  # a batch size other than the export's: dynamic batch
    assert list(inputs) == ["raw"]
    assert list(inputs["raw"].shape) == [3, *IMAGE_SHAPES[config.stem]]
    with torch.no_grad():
        eager = module.brick_collection(inputs, Stage.EXPORT)
    session = onnxruntime.InferenceSession(str(path_onnx), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    assert any(name.endswith("/logits") for name in names)
    outputs = session.run(names, {name: tensor.numpy() for name, tensor in inputs.items()})
    for name, value in zip(names, outputs, strict=True):
        expected = eager[name].numpy()
        assert value.shape == expected.shape, name
        np.testing.assert_allclose(value, expected, atol=1e-4, rtol=0, err_msg=name)


# ------------------------------------------------------------------------------------------------ scripts
def _listed(stdout: str, label: str) -> str:
    match = re.search(rf"^\s*{label}\s+(\S.*?)(?:\s{{2}}\(.*)?$", stdout, flags=re.MULTILINE)
    assert match, f"{label!r} not in the output:\n{stdout[-3000:]}"
    return match.group(1).strip()


def _percent(stdout: str, label: str) -> float:
    match = re.search(rf"^\s*{label}\s+([\d.]+)%", stdout, flags=re.MULTILINE)
    assert match, f"no {label} accuracy in the output:\n{stdout[-3000:]}"
    return float(match.group(1))


def _examples_module(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A helper module of ``examples/`` (they import each other by plain name, as when run as scripts)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module(name)


def _previous_demo_run(output: Path) -> None:
    """What an earlier run of the demo left (in today's layout and in the old, versioned one), and the staging
    folder of a run killed mid-way (a process that no longer exists)."""
    for name in ("checkpoints/best.ckpt", "tensorboard/version_0/events.out.tfevents.1", "csv/version_0/metrics.csv"):
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text("an earlier run")
    (output.parent / temporary_name(output, pid=2**22 + 1)).mkdir()


@pytest.mark.slow
def test_demo_runs_as_a_user_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo from a fresh folder where an earlier run left its outputs: it replaces them whole (no
    ``best-v1.ckpt``, no ``version_1``), prints every path relative to the current folder, and its figures lie
    within the README's stated tolerance of the mean over seeds (``docs/demo_figures.json``, by ``demo_seeds.py``)."""
    _previous_demo_run(tmp_path / "runs" / "demo")
    result = _run([sys.executable, str(EXAMPLES / "demo.py")], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, _explain(result)
    stdout = result.stdout

    torch_accuracy = _percent(stdout, "PyTorch")
    onnx_accuracy = _percent(stdout, "onnxruntime")
    assert torch_accuracy == onnx_accuracy
    assert torch_accuracy >= 90.0
    assert "(0 predictions differ)" in stdout

    def path(text: str) -> Path:
        assert not Path(text).is_absolute(), f"{text}: the demo prints paths relative to the current folder"
        return tmp_path / text

    assert path(_listed(stdout, "best checkpoint")) == tmp_path / "runs/demo/checkpoints/best.ckpt"
    onnx_file = path(_listed(stdout, "ONNX model"))
    assert onnx_file.is_file()
    assert onnx_file.suffix == ".onnx"
    pictures = [path(name.strip()) for name in _listed(stdout, "pictures").split(",")]
    assert len(pictures) == 3
    for picture in [*pictures, path(_listed(stdout, "task weights"))]:
        assert picture.is_file(), picture
        assert picture.stat().st_size > 0, picture
    mermaid = path(_listed(stdout, "mermaid graph"))
    assert mermaid.read_text().startswith("flowchart LR")
    log_dir = path(_listed(stdout, "TensorBoard logs"))
    assert list(log_dir.glob("events.out.tfevents.*")), f"no event file in {log_dir}"
    assert path(_listed(stdout, "CSV logs")).is_file()
    # Everything went into the current folder (runs/demo by default), nothing elsewhere.
    assert onnx_file.resolve().is_relative_to(tmp_path.resolve())
    # The earlier run's outputs were replaced whole, and the killed run's staging folder removed.
    output = tmp_path / "runs" / "demo"
    assert [folder.name for folder in (tmp_path / "runs").iterdir()] == ["demo"]
    assert sorted(path.name for path in (output / "checkpoints").iterdir()) == [
        "best.ckpt",
        *(f"single_{task}.ckpt" for task in ("digit", "foreground", "parity")),
    ]
    assert not list(output.rglob("version_*")), "a rerun must not add versions"
    assert (output / "checkpoints" / "best.ckpt").read_bytes() != b"an earlier run"

    # The figures it printed (and wrote) against the README's: the mean over seeds, within the stated tolerance.
    figures = json.loads(path(_listed(stdout, "figures")).read_text())
    assert round(figures["digit_accuracy"] * 100, 2) == torch_accuracy
    seeds = _examples_module("demo_seeds", monkeypatch)
    reference = json.loads((EXAMPLES.parent / "docs" / "demo_figures.json").read_text())
    assert figures["seed"] in reference["seeds"]
    for name in ("labelled_fraction", "max_epochs", "test_images"):
        assert figures[name] == reference["runs"][0][name], name
    off = {}
    for name, value in seeds.flatten(figures).items():
        summary = reference["summary"][name]
        if abs(value - summary["mean"]) > seeds.tolerance(summary):
            off[name] = (value, summary["mean"], seeds.tolerance(summary))
    assert not off, f"figures (this run, README mean, tolerance) off the README's: {off}"
    assert figures["together"]["digit"] > figures["alone"]["digit"], "sharing the backbone helps the digit"


def test_a_failed_demo_run_leaves_the_previous_output_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_folder = _examples_module("run_folder", monkeypatch)
    output = tmp_path / "runs" / "demo"
    with run_folder.replaced_folder(output) as staging:
        (staging / "best.ckpt").write_text("good")

    def interrupted_run() -> None:
        with run_folder.replaced_folder(output) as staging:
            (staging / "best.ckpt").write_text("half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_run()
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["demo"]
    assert (output / "best.ckpt").read_text() == "good"
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="is a file, not a folder"), run_folder.replaced_folder(tmp_path / "file"):
        pass
    monkeypatch.chdir(output)
    for current in (Path("."), output):
        with pytest.raises(SystemExit, match="a folder of its own"), run_folder.replaced_folder(current):
            pass
    assert (output / "best.ckpt").read_text() == "good"
    assert doctest.testmod(run_folder).failed == 0


@pytest.mark.slow
def test_digits_multitask_script_runs(tmp_path: Path) -> None:
    result = _run([sys.executable, str(EXAMPLES / "digits_multitask.py"), "--max-epochs", "1"], cwd=tmp_path)
    assert result.returncode == 0, _explain(result)
    assert "test/digit/accuracy" in result.stdout
    root = tmp_path / "runs" / "digits_multitask"
    assert list(root.rglob("*.ckpt"))
    assert sorted(path.stem for path in root.rglob("*.onnx")) == ["digit", "foreground", "parity"]
    assert list(root.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_export_onnx_script_runs(tmp_path: Path, fit_recipe: Fit) -> None:
    checkpoint = fit_recipe("digits_multitask")
    output = tmp_path / "digits.onnx"
    result = _run([sys.executable, str(EXAMPLES / "export_onnx.py"), str(checkpoint), str(output)], cwd=tmp_path)
    assert result.returncode == 0, _explain(result)
    assert output.is_file()
    assert f"Wrote {output}" in result.stdout
    assert "digit/logits: shape (5, 10)" in result.stdout  # any batch size works
    assert "parity/class_prediction: shape (5,)" in result.stdout


@pytest.mark.slow
def test_quickstart_script_runs(tmp_path: Path) -> None:
    result = _run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--steps", "3", "--output-dir", str(tmp_path)], cwd=tmp_path
    )
    assert result.returncode == 0, _explain(result)
    assert (tmp_path / "quickstart.onnx").is_file()
    assert "flowchart LR" in result.stdout
    assert "step   2" in result.stdout
    assert "onnxruntime matches PyTorch" in result.stdout
