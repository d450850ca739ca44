"""Optimisation per brick from a YAML recipe: parameter groups, an unfreeze schedule, EMA weights and the LR finder,
through the ``torchbricks-lightning`` command in a subprocess; mistakes fail before anything is written.

The recipe is the README's (section "Optimisation per brick"), layered over the tiny CLI recipe."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from cli_runs import exit_code, in_folder, run_script

from torchbricks_lightning.cli import TorchBricksCLI
from torchbricks_lightning.lightning import LightningBrickCollection

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
QUIET = ["--trainer.enable_progress_bar", "false"]
README = Path(__file__).resolve().parents[2] / "README.md"
TINY = """
trainer:
  max_epochs: 3
  logger:
    class_path: pytorch_lightning.loggers.CSVLogger
    init_args: {save_dir: logs, name: run}
data:
  init_args: {n_train: 160}
"""
"""Over the tiny recipe and the README's: 3 epochs of 10 batches (the LR finder stops at 30 steps) and a CSV log."""


def readme_recipe() -> str:
    """The YAML block of the README's "Optimisation per brick" section."""
    section = README.read_text().split("## Optimisation per brick", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```yaml\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)
    return block


def _configs(folder: Path) -> list[str]:
    (folder / "optimisation.yaml").write_text(readme_recipe())
    (folder / "tiny.yaml").write_text(TINY)
    return [
        "--config",
        str(RECIPE),
        "--config",
        str(folder / "optimisation.yaml"),
        "--config",
        str(folder / "tiny.yaml"),
    ]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("optimisation")
    process = run_script(["fit", *_configs(folder), *QUIET], cwd=folder)
    assert process.returncode == 0, process.stderr[-4000:]
    return folder


def _logged(folder: Path) -> list[dict[str, str]]:
    (metrics,) = (folder / "logs" / "run").rglob("metrics.csv")
    with metrics.open() as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_a_recipe_tunes_the_lr_and_each_group_keeps_its_own(fitted: Path) -> None:
    last = torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=True)
    hyperparameters = last["hyper_parameters"]
    tuned = hyperparameters["lr"]
    assert isinstance(tuned, float), "the LR finder set module.lr, saved with the checkpoint"
    assert hyperparameters["param_groups"] == [
        {"bricks": "backbone", "lr_scale": 0.1},
        {"bricks": "*/classify", "weight_decay": 0.0},
    ]
    assert hyperparameters["unfreeze"] == {"backbone": 1}
    rows = [row for row in _logged(fitted) if row.get("lr-AdamW/backbone")]
    assert rows, "LearningRateMonitor logged a learning rate per group"
    first = rows[0]
    assert float(first["lr-AdamW/backbone"]) == pytest.approx(tuned * 0.1)
    assert float(first["lr-AdamW/backbone/no_decay"]) == pytest.approx(tuned * 0.1)
    assert float(first["lr-AdamW/*/classify"]) == pytest.approx(tuned)
    groups = last["optimizer_states"][0]["param_groups"]
    assert [(group["name"], group["weight_decay"]) for group in groups] == [
        ("backbone", 0.05),
        ("backbone/no_decay", 0.0),
        ("*/classify", 0.0),
    ]
    module = LightningBrickCollection.load_from_checkpoint(fitted / "checkpoints" / "last.ckpt")
    assert module.lr == tuned
    assert module.optimisation_plan.scheduled == {"backbone": (1, ("model.weight", "model.bias"))}


@pytest.mark.slow
def test_a_recipe_freezes_the_backbone_for_an_epoch_and_averages_the_weights(fitted: Path) -> None:
    with in_folder(fitted):
        built = TorchBricksCLI(args=[*_configs(fitted), *QUIET], run=False).model  # the same seed: the same weights
    initial = {name: value for name, value in built.state_dict().items() if ".backbone." in name}
    epochs = [torch.load(fitted / "checkpoints" / f"epoch={epoch}.ckpt", weights_only=True) for epoch in (0, 1)]
    for checkpoint in epochs:
        assert {"current_model_state", "averaging_state"} <= set(checkpoint), "EMAWeightAveraging"
    assert all(torch.equal(epochs[0]["current_model_state"][name], value) for name, value in initial.items()), (
        "frozen in epoch 0"
    )
    assert all(not torch.equal(epochs[1]["current_model_state"][name], value) for name, value in initial.items()), (
        "trained in epoch 1"
    )
    averaged, raw = epochs[1]["state_dict"], epochs[1]["current_model_state"]
    assert any(not torch.equal(averaged[name], raw[name]) for name in initial), "checkpoints hold the average"
    module = LightningBrickCollection.load_from_checkpoint(fitted / "checkpoints" / "last.ckpt").eval()
    raw_input = module.example_named_inputs(batch_size=3)
    with torch.no_grad():
        expected = module(raw_input)["head0/logits"].numpy()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(fitted / "checkpoints" / "model.onnx"), options)
    names = [output.name for output in session.get_outputs()]
    logits = session.run(None, {name: tensor.numpy() for name, tensor in raw_input.items()})[
        names.index("head0/logits")
    ]
    np.testing.assert_allclose(logits, expected, atol=1e-5, err_msg="the ONNX file holds the averaged weights")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            ["--model.param_groups", '[{"bricks": "backbnoe", "lr": 0.1}]'],
            "param_groups[0]: the pattern 'backbnoe' matches no brick. Did you mean 'backbone'? The brick paths are "
            "['preprocessor', 'backbone', 'head0/classify', 'head0/metrics', 'head0/loss']",
        ),
        (
            ["--model.param_groups", '[{"bricks": "backbone", "momentum": 0.9}]'],
            "param_groups[0] ('backbone') sets ['momentum'], which Adam does not take.",
        ),
        (
            ["--model.param_groups", '[{"bricks": "preprocessor", "lr": 0.1}]'],
            "'preprocessor' (BrickNotTrainable, no parameters)",
        ),
        (["--model.unfreeze", '{"head0": -1}'], "unfreeze['head0'] is -1"),
    ],
)
def test_a_recipe_mistake_fails_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: list[str], message: str
) -> None:
    assert exit_code(["fit", "--config", str(RECIPE), *override, *QUIET], tmp_path) != 0
    assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == [], "nothing written"
