"""Attacks through a checkpoint's callback state: a resumed checkpoint never makes the run touch a file outside its
checkpoint folder (issue 19, break 1).

The checkpoint is weights-only and passes the trust check; only its ``ModelCheckpoint`` state names a file outside
the folder (``<dirpath>/../../victim.txt``, or ``<dirpath>/escape/victim.txt`` through a symlink to another folder),
under each key Lightning acts on: ``last_model_path``, ``best_model_path``, a key of ``best_k_models`` (the k-th
best, deleted when a better one comes) and ``dirpath``. Resuming with Lightning's own ``TorchCheckpointIO`` deletes
the victim (the control); through ``SafeCheckpointIO`` in Python and the command line in a subprocess, the victim
stays, the run ends normally and a warning names the key.
"""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml
from cli_runs import in_folder, script_command
from conftest import N_FEATURES, boring_bricks
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import LightningBrickCollection, SafeCheckpointIO
from torchbricks_lightning.callbacks import KeyedModelCheckpoint
from torchbricks_lightning.checkpoints.callback_paths import CheckpointPathWarning
from torchbricks_lightning.cli import TorchBricksCLI

RECIPE = Path(__file__).parent / "catalogue_configs" / "tiny_recipe.yaml"
KEYS = ["last_model_path", "best_model_path", "best_k_models", "dirpath"]
ROUTES = ["..", "symlink"]
VICTIM_TEXT = "not a checkpoint"


# ------------------------------------------------------------------------------------------------ the attack
def _victim(root: Path, route: str, dirpath: Path) -> tuple[Path, str]:
    """The victim file outside the run, and how the crafted state names it: through ``..`` or a symlink."""
    if route == "..":
        victim = root / "victim.txt"
        named = os.path.join(dirpath, "..", "..", "victim.txt")
    else:
        (root / "outside").mkdir()
        victim = root / "outside" / "victim.txt"
        dirpath.mkdir(parents=True, exist_ok=True)
        (dirpath / "escape").symlink_to(root / "outside", target_is_directory=True)
        named = os.path.join(dirpath, "escape", "victim.txt")
    victim.write_text(VICTIM_TEXT)
    return victim, named


def _craft(state: dict[str, Any], key: str, named: str, dirpath: Path) -> None:
    """Point the ModelCheckpoint ``state`` at ``named`` through ``key``, the way Lightning then deletes it; its
    ``dirpath`` is the resumed run's (Lightning restores the other paths only then)."""
    state["dirpath"] = os.path.realpath(dirpath)
    if key == "best_k_models":  # the k-th best, with the worst score: the next checkpoint replaces and deletes it
        state["best_k_models"] = {named: torch.tensor(-1.0)}
        state["kth_best_model_path"] = named
        state["kth_value"] = torch.tensor(-1.0)
    elif key == "dirpath":  # another folder: Lightning restores best_model_path only, and deletes it (no monitor)
        state["dirpath"] = os.path.dirname(named)
        state["best_model_path"] = named
    else:
        state[key] = named


def _crafted_copy(good: Path, key: str, named: str, dirpath: Path, target: Path) -> Path:
    checkpoint = torch.load(good, weights_only=True)
    states = [state for state in checkpoint["callbacks"].values() if "best_model_path" in state]
    assert len(states) == 1, checkpoint["callbacks"].keys()
    _craft(states[0], key, named, dirpath)
    torch.save(checkpoint, target)
    return target


def _warned_keys(messages: list[str], key: str) -> bool:
    return any(f"'{key}'" in message or f"{key} key" in message for message in messages)


# ------------------------------------------------------------------------------------------------ Python
def _data() -> DataLoader[Any]:
    return DataLoader(TensorDataset(torch.randn(8, N_FEATURES), torch.arange(8) % 3), batch_size=4)


def _python_trainer(dirpath: Path, key: str, epochs: int, checkpoint_io: Any) -> pl.Trainer:
    monitored = {"monitor": "step", "mode": "max"} if key == "best_k_models" else {}
    return pl.Trainer(
        max_epochs=epochs,
        plugins=[checkpoint_io],
        callbacks=[ModelCheckpoint(dirpath=dirpath, save_last=True, save_top_k=1, **monitored)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )


def _python_run(tmp_path: Path, key: str, route: str, checkpoint_io: Callable[[], Any]) -> tuple[Path, pl.Trainer]:
    dirpath = tmp_path / "run" / "checkpoints"
    _python_trainer(dirpath, key, 1, checkpoint_io()).fit(
        LightningBrickCollection(boring_bricks()),  # type: ignore[arg-type]
        _data(),
    )
    victim, named = _victim(tmp_path, route, dirpath)
    crafted = _crafted_copy(dirpath / "last.ckpt", key, named, dirpath, tmp_path / "crafted.ckpt")
    trainer = _python_trainer(dirpath, key, 2, checkpoint_io())
    trainer.fit(LightningBrickCollection(boring_bricks()), _data(), ckpt_path=crafted)  # type: ignore[arg-type]
    return victim, trainer


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("key", KEYS)
def test_control_lightnings_own_checkpoint_io_deletes_the_victim(tmp_path: Path, key: str, route: str) -> None:
    """The attacks are live: Lightning's ``TorchCheckpointIO`` deletes the file the state names."""
    victim, _ = _python_run(tmp_path, key, route, TorchCheckpointIO)
    assert not victim.exists()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("key", KEYS)
def test_a_crafted_callback_state_deletes_nothing_through_safe_checkpoint_io(
    tmp_path: Path, key: str, route: str
) -> None:
    """A plain Lightning ``Trainer`` and ``ModelCheckpoint``, with ``SafeCheckpointIO`` (not bound to the trainer)."""
    with pytest.warns(CheckpointPathWarning) as caught:
        victim, trainer = _python_run(tmp_path, key, route, SafeCheckpointIO)
    assert victim.read_text() == VICTIM_TEXT
    assert trainer.current_epoch == 2  # the run went on and finished
    assert _warned_keys([str(warning.message) for warning in caught], key), [str(w.message) for w in caught]


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-epoch CLI run's ``last.ckpt`` (in-process) for each recipe: the tiny one, and one monitoring ``step``
    (the k-best attack needs a monitor)."""
    checkpoints = {}
    for name, monitored in (("plain", {}), ("monitored", {"monitor": "step", "mode": "max"})):
        folder = tmp_path_factory.mktemp(name)
        recipe = _recipe(folder, monitored)
        with in_folder(folder):
            TorchBricksCLI(args=["fit", "--config", str(recipe)])
        checkpoints[name] = folder / "checkpoints" / "last.ckpt"
    return checkpoints


def _recipe(folder: Path, monitored: dict[str, Any]) -> Path:
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"]["callbacks"][0]["init_args"].update(monitored)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# Each key and each route once (every pair runs in-process above): a CLI run costs seconds of imports.
CLI_CASES = [("last_model_path", ".."), ("best_model_path", "symlink"), ("best_k_models", ".."), ("dirpath", "symlink")]


@pytest.mark.parametrize(("key", "route"), CLI_CASES)
def test_a_crafted_callback_state_deletes_nothing_through_the_command_line(
    cli_runs: dict[str, Path], tmp_path: Path, key: str, route: str
) -> None:
    """``torchbricks-lightning fit --ckpt_path crafted.ckpt`` as a real process, in a run folder like the one that
    wrote the checkpoint (so the state's ``dirpath`` is the run's own, as an attacker would write it)."""
    run = tmp_path / "run"
    run.mkdir()
    recipe = _recipe(run, {"monitor": "step", "mode": "max"} if key == "best_k_models" else {})
    good = cli_runs["monitored" if key == "best_k_models" else "plain"]
    victim, named = _victim(tmp_path, route, run / "checkpoints")
    crafted = _crafted_copy(good, key, named, run / "checkpoints", tmp_path / "crafted.ckpt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"} | {"OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [*script_command(), "fit", "--config", str(recipe), "--ckpt_path", str(crafted), "--trainer.max_epochs", "2"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert victim.read_text() == VICTIM_TEXT
    assert "so it was dropped" in process.stderr, process.stderr[-3000:]
    assert _warned_keys(process.stderr.splitlines(), key), process.stderr[-3000:]
    assert "epoch=1" in " ".join(path.name for path in (run / "checkpoints").iterdir())  # the run trained on


# ------------------------------------------------------------------------------------------------ the pieces
def test_keyed_model_checkpoint_keeps_only_paths_inside_its_folder(tmp_path: Path) -> None:
    """Whatever the ``CheckpointIO`` that read the state (here none): its own ``load_state_dict`` confines it."""
    folder = tmp_path / "checkpoints"
    callback = KeyedModelCheckpoint(dirpath=folder)
    dirpath = str(callback.dirpath)
    inside = os.path.join(dirpath, "epoch=0-step=2.ckpt")
    state = {
        "dirpath": dirpath,
        "best_model_score": torch.tensor(0.5),
        "best_model_path": inside,
        "best_k_models": {inside: torch.tensor(0.5), os.path.join(dirpath, "..", "victim.txt"): torch.tensor(0.1)},
        "kth_best_model_path": inside,
        "kth_value": torch.tensor(0.5),
        "last_model_path": os.path.join(dirpath, "..", "victim.txt"),
    }
    with pytest.warns(CheckpointPathWarning, match="'last_model_path' = ") as caught:
        callback.load_state_dict(copy.deepcopy(state))
    assert callback.last_model_path == ""
    assert callback.best_model_path == inside
    assert list(callback.best_k_models) == [inside]
    assert any("best_k_models key" in str(warning.message) for warning in caught)


def _saved(io: SafeCheckpointIO, path: Path, dirpath: Path) -> Path:
    io.save_checkpoint({"state_dict": {}, "callbacks": {"ModelCheckpoint": {"dirpath": str(dirpath)}}}, path)
    return path


def test_remove_checkpoint_deletes_only_checkpoints_inside_the_folders_the_run_writes(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    io = SafeCheckpointIO()
    mine = _saved(io, folder / "epoch=1.ckpt", folder)
    earlier = folder / "epoch=0.ckpt"
    torch.save({"state_dict": {}}, earlier)  # an earlier process's checkpoint: a resumed run removes it
    notes = folder / "notes.txt"
    notes.write_text("mine")
    outside = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, outside)
    (folder / "escape").symlink_to(tmp_path, target_is_directory=True)

    for refused, reason in [
        (notes, "is not a checkpoint"),
        (outside, "does not lie inside the folders"),
        (folder / "escape" / "model.ckpt", "does not lie inside the folders"),
        (folder / ".." / "model.ckpt", "does not lie inside the folders"),
    ]:
        with pytest.warns(CheckpointPathWarning, match=reason):
            io.remove_checkpoint(refused)
    assert notes.read_text() == "mine"
    assert outside.is_file()

    io.remove_checkpoint(earlier)
    io.remove_checkpoint(mine)
    assert sorted(path.name for path in folder.iterdir()) == ["escape", "notes.txt"]


def test_a_bound_io_confines_states_to_the_trainers_checkpoint_folder(tmp_path: Path) -> None:
    """Bound (as the CLI binds it), the folder is the trainer's, not the one the state claims."""
    io = SafeCheckpointIO()
    trainer = pl.Trainer(plugins=[io], callbacks=[ModelCheckpoint(dirpath=tmp_path / "run")], logger=False)
    io.bind(trainer)
    elsewhere = os.path.realpath(tmp_path / "elsewhere")
    state = {"dirpath": elsewhere, "best_model_path": os.path.join(elsewhere, "best.ckpt"), "best_k_models": {}}
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "callbacks": {"ModelCheckpoint": state}}, path)
    with pytest.warns(CheckpointPathWarning, match="'dirpath' = ") as caught:
        loaded = io.load_checkpoint(path)["callbacks"]["ModelCheckpoint"]
    assert loaded == {"dirpath": None, "best_model_path": "", "best_k_models": {}}
    assert any("'best_model_path' = " in str(warning.message) for warning in caught)
