"""The command line writes checkpoints with SafeCheckpointIO, unless the recipe sets another CheckpointIO."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.plugins.precision import DoublePrecision

from torchbricks_lightning import SafeCheckpointIO
from torchbricks_lightning.cli import TorchBricksCLI

CONFIGS = Path(__file__).parent / "configs"
EXAMPLE = Path(__file__).parents[2] / "examples" / "configs" / "synthetic_multitask.yaml"


def _checkpoint_io(recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> Any:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["torchbricks-lightning"])
    cli = TorchBricksCLI(args=["--config", str(recipe), *extra], run=False)
    return cli.trainer.strategy.checkpoint_io


def test_a_recipe_without_plugins_gets_safe_checkpoint_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint_io = _checkpoint_io(CONFIGS / "tiny_recipe.yaml", tmp_path, monkeypatch)
    assert type(checkpoint_io) is SafeCheckpointIO


def test_the_example_recipe_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = yaml.safe_load(EXAMPLE.read_text())["trainer"]["plugins"]
    assert plugins == [{"class_path": "torchbricks_lightning.SafeCheckpointIO"}]
    assert type(_checkpoint_io(EXAMPLE, tmp_path, monkeypatch)) is SafeCheckpointIO


def test_other_plugins_are_kept_and_a_checkpoint_io_of_the_recipe_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((CONFIGS / "tiny_recipe.yaml").read_text())
    config["trainer"]["plugins"] = [{"class_path": "lightning_fabric.plugins.io.torch_io.TorchCheckpointIO"}]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    assert type(_checkpoint_io(recipe, tmp_path, monkeypatch)) is TorchCheckpointIO

    config["trainer"]["plugins"] = [{"class_path": "pytorch_lightning.plugins.precision.DoublePrecision"}]
    recipe.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["torchbricks-lightning"])
    trainer = TorchBricksCLI(args=["--config", str(recipe)], run=False).trainer
    assert type(trainer.strategy.checkpoint_io) is SafeCheckpointIO
    assert type(trainer.precision_plugin) is DoublePrecision
