"""Attacks on "trust follows the user's own recipe": a checkpoint cannot use the rule to widen its own trust.

The command line trusts the packages of the classes that the user's ``--config`` files name by ``class_path``
(``tabular.`` for ``tabular.TinyConv``). Each attack here is a checkpoint that a user validates or exports with
their own ``recipe.yaml``, which names ``tabular.TinyConv``, and asks for something else: ``os.system``, a class of
the attacker's package (``attacker.py``, whose import touches a marker file), a package whose name starts like the
user's, objects reached through the user's module's own imports, or a recipe of its own stored where a user's could
be (a ``config`` key, ``trusted_class_prefixes``). Each is refused, and the marker never appears. A control shows
the same checkpoint loads unedited, so the refusals come from the edits.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_runs import in_folder

from torchbricks_lightning.checkpoints.trust import recipe_class_prefixes
from torchbricks_lightning.cli import check_ckpt_path, main
from torchbricks_lightning.errors import UntrustedClassError

RECIPE = Path(__file__).parents[1] / "cli" / "configs" / "tiny_recipe.yaml"
INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"
TABULAR = "import os\nimport subprocess\n\nfrom torch import nn\n\n\nclass TinyConv(nn.Conv2d):\n    pass\n"
ATTACKER = "import pathlib\n\npathlib.Path({marker!r}).touch()\n\n\nclass Evil:\n    pass\n"
BACKBONE = ("brick_collection", "backbone", "init_args", "model")


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's folder: ``tabular.py`` (which imports os and subprocess), ``recipe.yaml`` naming
    ``tabular.TinyConv``, and the attacker's modules ``attacker.py`` and ``tabular_evil.py``."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "tabular.py").write_text(TABULAR)
    for name in ("attacker", "tabular_evil"):
        (folder / f"{name}.py").write_text(ATTACKER.format(marker=str(folder / "pwned")))
    config = yaml.safe_load(RECIPE.read_text())
    config["model"]["brick_collection"]["backbone"]["init_args"]["model"]["class_path"] = "tabular.TinyConv"
    (folder / "recipe.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))  # the attacker's modules could be imported by name
        yield folder
    for name in ("tabular", "attacker", "tabular_evil"):
        sys.modules.pop(name, None)


def _good(folder: Path) -> dict[str, Any]:
    """The checkpoint of a run of the user's recipe, as far as loading reads it: the recipe of its module."""
    model = yaml.safe_load((folder / "recipe.yaml").read_text())["model"]
    return {"state_dict": {}, "hyper_parameters": {"_instantiator": INSTANTIATOR, **model}}


def _backbone(class_path: str) -> Callable[[dict[str, Any], Path], None]:
    def edit(checkpoint: dict[str, Any], folder: Path) -> None:
        node = checkpoint["hyper_parameters"]
        for key in BACKBONE:
            node = node[key]
        node["class_path"] = class_path

    return edit


def _pretending_to_be_the_users(checkpoint: dict[str, Any], folder: Path) -> None:
    """The attacker's class, with a recipe of the checkpoint's own stored wherever a user's recipe could be read."""
    own = folder / "checkpoint_recipe.yaml"  # a file the checkpoint names; the user never passed it
    own.write_text(yaml.safe_dump({"model": {"x": {"class_path": "attacker.Evil"}}}))
    _backbone("attacker.Evil")(checkpoint, folder)
    recipe = {"model": {"class_path": "attacker.Evil"}}
    checkpoint.update(config=recipe, __path__=str(own), trusted_class_prefixes=["attacker."])
    checkpoint["hyper_parameters"].update(config=[str(own)], trusted_class_prefixes=["attacker."])


def _datamodule(checkpoint: dict[str, Any], folder: Path) -> None:
    checkpoint["datamodule_hyper_parameters"] = {"_instantiator": INSTANTIATOR, "_class_path": "attacker.Evil"}


ATTACKS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "os.system": _backbone("os.system"),
    "the attacker's package": _backbone("attacker.Evil"),
    "a package named like the user's": _backbone("tabular_evil.Evil"),
    "os.system through the user's module": _backbone("tabular.os.system"),
    "subprocess.Popen through the user's module": _backbone("tabular.subprocess.Popen"),
    "a recipe of its own pretending to be the user's": _pretending_to_be_the_users,
    "the attacker's datamodule": _datamodule,
}


def _planted(folder: Path, edit: Callable[[dict[str, Any], Path], None] | None) -> Path:
    checkpoint = copy.deepcopy(_good(folder))
    if edit is not None:
        edit(checkpoint, folder)
    path = folder / "attack.ckpt"
    torch.save(checkpoint, path)
    return path


def _cli(arguments: list[str], folder: Path) -> tuple[int, str]:
    stderr = io.StringIO()
    with in_folder(folder), contextlib.redirect_stderr(stderr):
        try:
            code = main(arguments)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, stderr.getvalue()


def _untouched(folder: Path) -> bool:
    return not (folder / "pwned").exists() and "attacker" not in sys.modules and "tabular_evil" not in sys.modules


def test_control_the_users_recipe_trusts_the_unedited_checkpoint(user: Path) -> None:
    checkpoint = _planted(user, None)
    with pytest.raises(UntrustedClassError, match=r"'tabular\.TinyConv'"):
        check_ckpt_path(checkpoint)
    assert check_ckpt_path(checkpoint, recipe_class_prefixes([user / "recipe.yaml"])) is not None


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_checkpoint_cannot_widen_trust_through_the_users_recipe(user: Path, attack: str) -> None:
    checkpoint = _planted(user, ATTACKS[attack])
    with pytest.raises(UntrustedClassError):
        check_ckpt_path(checkpoint, recipe_class_prefixes([user / "recipe.yaml"]))
    assert _untouched(user)


@pytest.mark.parametrize("subcommand", ["validate", "export"])
def test_through_the_command_line(user: Path, subcommand: str) -> None:
    """The attacks whose classes the checkpoint alone names, through validate and export with the user's recipe."""
    checkpoint = str(_planted(user, _pretending_to_be_the_users))
    options = ["--output", "model.pt2"] if subcommand == "export" else []
    code, err = _cli([subcommand, "--config", "recipe.yaml", "--ckpt_path", checkpoint, *options], user)
    assert code == 2
    assert "UntrustedClassError" in err or "'attacker.Evil'" in err, err[-2000:]
    assert "'attacker.Evil'" in err
    assert "Traceback" not in err
    assert _untouched(user)


@pytest.mark.parametrize("subcommand", ["validate", "export"])
def test_a_checkpoint_given_as_config_trusts_nothing(user: Path, subcommand: str) -> None:
    checkpoint = str(_planted(user, _backbone("attacker.Evil")))
    options = ["--output", "model.pt2"] if subcommand == "export" else []
    code, err = _cli([subcommand, "--config", checkpoint, "--ckpt_path", checkpoint, *options], user)
    assert code == 2, err[-2000:]
    assert "is a checkpoint, not a recipe: pass it as --ckpt_path" in err
    assert "Traceback" not in err
    assert _untouched(user)


def test_a_recipe_naming_the_checkpoint_or_the_class_in_other_keys_trusts_nothing(user: Path) -> None:
    """The user's recipe names the attacker's checkpoint (``ckpt_path``), and ``attacker.Evil`` in a comment and as
    plain data; only class paths count, so the checkpoint's ``attacker.Evil`` stays refused."""
    checkpoint = _planted(user, _backbone("attacker.Evil"))
    config = yaml.safe_load((user / "recipe.yaml").read_text())
    config["ckpt_path"] = str(checkpoint)
    config["trainer"]["default_root_dir"] = "attacker.Evil"
    recipe = user / "names_it.yaml"
    recipe.write_text(f"# class_path: attacker.Evil\n{yaml.safe_dump({'validate': config}, sort_keys=False)}")
    assert recipe_class_prefixes([recipe]) == recipe_class_prefixes([user / "recipe.yaml"])
    code, err = _cli(["--config", str(recipe), "validate"], user)
    assert code == 2, err[-2000:]
    assert "'attacker.Evil'" in err
    assert _untouched(user)
