"""Trust follows the user's own recipe, and export says what to do with a checkpoint trained from Python.

A user trains from ``recipe.yaml``, which names ``class_path: tabular.TinyConv`` from their ``tabular.py``. The
``validate`` and ``export`` of that checkpoint with ``--config recipe.yaml`` load it without
``--trusted_class_prefixes``; a recipe that does not name the class does not trust it. (The attacks on this rule are
in ``tests/reliability/test_attacks_recipe_trust.py``.) A checkpoint trained from Python cannot be exported by the
command line alone: the message says so and shows ``--bricks`` and the Python calls, both of which work as printed.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import N_FEATURES, boring_bricks, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import LightningBrickCollection
from torchbricks_lightning.checkpoints.trust import recipe_class_prefixes
from torchbricks_lightning.cli import main
from torchbricks_lightning.errors import ConfigError

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
TABULAR = '''
from torch import nn


class TinyConv(nn.Conv2d):
    """The user's own backbone."""
'''
BUILD_BRICKS = """
import sys

sys.path.insert(0, {tests!r})
from conftest import boring_bricks


def build_bricks():
    return boring_bricks()
"""


def _recipe(folder: Path, backbone: str, name: str) -> Path:
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]  # no ONNX export after fit
    config["trainer"]["enable_progress_bar"] = False
    config["model"]["brick_collection"]["backbone"]["init_args"]["model"]["class_path"] = backbone
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def _in(folder: Path) -> Iterator[io.StringIO]:
    """The command line in-process in ``folder``; ``sys.path`` and the user's modules restored after."""
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["torchbricks-lightning"])
        patch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".", str(folder))])
        with contextlib.redirect_stderr(stderr):
            yield stderr
        for name in ("tabular", "my_bricks"):
            sys.modules.pop(name, None)


def _run(arguments: list[str], folder: Path) -> tuple[int, str]:
    with _in(folder) as stderr:
        try:
            code = main(arguments)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's folder: ``tabular.py``, ``recipe.yaml`` naming ``tabular.TinyConv``, ``other.yaml`` naming only
    torch classes, and the checkpoints of ``fit --config recipe.yaml`` (in-process)."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "tabular.py").write_text(TABULAR)
    _recipe(folder, "torch.nn.Conv2d", "other.yaml")
    code, err = _run(["fit", "--config", str(_recipe(folder, "tabular.TinyConv", "recipe.yaml"))], folder)
    assert code == 0, err[-3000:]
    return folder


def test_validate_trusts_the_classes_its_config_names(trained: Path) -> None:
    checkpoint = str(trained / "checkpoints" / "last.ckpt")
    code, err = _run(["validate", "--config", "recipe.yaml", "--ckpt_path", checkpoint], trained)
    assert code == 0, err[-3000:]

    code, err = _run(["validate", "--config", "other.yaml", "--ckpt_path", checkpoint], trained)
    assert code == 2
    assert "'tabular.TinyConv'" in err
    assert "--trusted_class_prefixes '[tabular.]'" in err


def test_export_trusts_the_classes_its_config_names(trained: Path) -> None:
    checkpoint = str(trained / "checkpoints" / "last.ckpt")
    export = ["export", "--ckpt_path", checkpoint, "--output", "model.pt2", "--verify", "false"]
    code, err = _run([*export, "--config", "other.yaml"], trained)
    assert code == 2
    assert "--trusted_class_prefixes '[tabular.]'" in err
    assert not (trained / "model.pt2").exists()

    code, err = _run(["export", "--config", "recipe.yaml", *export[1:]], trained)  # the recipe before the options
    assert code == 0, err[-3000:]
    assert (trained / "model.pt2").is_file()


def test_only_class_paths_written_in_the_files_count(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "# class_path: commented.Out\n"
        "model:\n"
        "  optimizer: short_form.Adam\n"
        "  brick_collection: {head: {class_path: tabular.heads.Head, init_args: {note: 'class_path: in.Text'}}}\n"
        "trainer: {default_root_dir: folder.named.Like.A.Class}\n"
    )
    assert recipe_class_prefixes([recipe]) == ("tabular.heads.",)


def test_a_checkpoint_given_as_config_is_refused_unread(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.ckpt"
    torch.save({"hyper_parameters": {"x": {"class_path": "attacker.Evil"}}}, checkpoint)
    with pytest.raises(ConfigError, match=r"--config '.*run\.ckpt' is a checkpoint, not a recipe: pass it as --ckpt"):
        recipe_class_prefixes([checkpoint])


# ------------------------------------------------------------------------------------------------ trained in Python
@pytest.fixture(scope="module")
def python_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a LightningBrickCollection built in Python, in a folder with ``my_bricks.py``."""
    folder = tmp_path_factory.mktemp("python")
    data = TensorDataset(torch.randn(8, N_FEATURES), torch.arange(8) % 3)
    trainer = quiet_trainer(folder, max_epochs=1)
    trainer.fit(LightningBrickCollection(boring_bricks()), DataLoader(data, batch_size=4))
    path = folder / "python.ckpt"
    trainer.save_checkpoint(path)
    (folder / "my_bricks.py").write_text(BUILD_BRICKS.format(tests=str(Path(__file__).parents[1])))
    return path


def test_export_of_a_python_checkpoint_shows_commands_that_work(python_checkpoint: Path) -> None:
    folder = python_checkpoint.parent
    code, err = _run(["export", "--ckpt_path", str(python_checkpoint), "--output", "model.pt2"], folder)
    assert code == 2
    assert "the command line cannot rebuild bricks built in Python" in err
    assert "Traceback" not in err
    lines = err.splitlines()
    command = next(line.strip() for line in lines if line.strip().startswith("torchbricks-lightning export"))
    python = [line.strip() for line in lines[lines.index("or export from Python:") + 1 :]]
    assert f"load_from_checkpoint({str(python_checkpoint)!r}, brick_collection=build_bricks())" in python[1]

    code, err = _run(shlex.split(command)[1:], folder)  # as printed, with --bricks my_bricks:build_bricks
    assert code == 0, err[-3000:]
    assert (folder / "model.pt2").is_file()

    (folder / "model.pt2").unlink()
    with _in(folder):
        sys.path.insert(0, str(folder))
        exec("\n".join(["from my_bricks import build_bricks", *python]), {})  # the printed lines, as a user pastes them
    assert (folder / "model.pt2").is_file()


def test_bricks_that_are_not_a_function_of_a_module_are_named(python_checkpoint: Path) -> None:
    export = ["export", "--ckpt_path", str(python_checkpoint), "--output", "model.pt2"]
    for bricks, expected in [
        ("build_bricks", "is not module:function"),
        ("not_here:build_bricks", "cannot import module 'not_here'"),
        ("my_bricks:build_brick", "has no function 'build_brick'. Did you mean 'build_bricks'?"),
    ]:
        code, err = _run([*export, "--bricks", bricks], python_checkpoint.parent)
        assert code == 2, bricks
        assert expected in err, err[-2000:]
