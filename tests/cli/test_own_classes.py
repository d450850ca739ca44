"""Your own classes in a recipe: importable from the current folder, and trusted in a checkpoint only on request.

A user keeps ``my_heads.py`` next to their recipe and names ``class_path: my_heads.TinyConv``. The command line
imports it as ``python -m`` would (no ``PYTHONPATH=.``); a checkpoint naming it is refused until the user trusts
the package, and the refusal spells the opt-in the way the place it came from takes it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cli_runs import run_script

from torchbricks_lightning import LightningBrickCollection
from torchbricks_lightning.cli import main
from torchbricks_lightning.errors import UntrustedClassError

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
MY_HEADS = '''
from torch import nn


class TinyConv(nn.Conv2d):
    """The user's own backbone."""
'''
CLI_OPT_IN = "--trusted_class_prefixes '[my_heads.]'"
PYTHON_OPT_IN = "trusted_class_prefixes=['my_heads.']"


def _recipe(folder: Path, backbone: str = "my_heads.TinyConv") -> Path:
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]  # no ONNX export after fit
    config["model"]["brick_collection"]["backbone"]["init_args"]["model"]["class_path"] = backbone
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: ``my_heads.py``, ``recipe.yaml`` naming it, and the checkpoints of ``fit`` run there by the
    installed command, in a real process whose ``PYTHONPATH`` does not hold the folder."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_heads.py").write_text(MY_HEADS)
    recipe = _recipe(folder)
    assert str(folder) not in os.environ.get("PYTHONPATH", "")
    process = run_script(["fit", "--config", str(recipe), "--trainer.enable_progress_bar", "false"], cwd=folder)
    assert process.returncode == 0, process.stderr[-3000:]
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    return folder


@contextlib.contextmanager
def _in(folder: Path) -> Iterator[io.StringIO]:
    """Run the command line in-process in ``folder``, leaving ``sys.path`` and ``sys.modules`` as they were."""
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["torchbricks-lightning"])
        patch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".", str(folder))])
        with contextlib.redirect_stderr(stderr):
            yield stderr
        sys.modules.pop("my_heads", None)


def _run(arguments: list[str], folder: Path) -> tuple[int, str]:
    with _in(folder) as stderr:
        try:
            code = main(arguments)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, stderr.getvalue()


@pytest.mark.parametrize("subcommand", ["validate", "export"])
def test_a_checkpoint_naming_your_class_is_refused_with_the_command_line_opt_in(trained: Path, subcommand: str) -> None:
    checkpoint = str(trained / "checkpoints" / "last.ckpt")
    if subcommand == "export":
        arguments = ["export", "--ckpt_path", checkpoint, "--output", "model.onnx"]
    else:  # a recipe that does not name my_heads.TinyConv (the one that does trusts it: test_cli_trust_from_config)
        other = trained / "other.yaml"
        other.write_text((trained / "recipe.yaml").read_text().replace("my_heads.TinyConv", "torch.nn.Conv2d"))
        arguments = ["validate", "--config", "other.yaml", "--ckpt_path", checkpoint]
    code, err = _run(arguments, trained)
    assert code == 2, err[-2000:]
    assert "'my_heads.TinyConv'" in err
    assert CLI_OPT_IN in err
    assert PYTHON_OPT_IN not in err
    assert "Traceback" not in err

    code, err = _run(
        [*arguments, "--trusted_class_prefixes", "[my_heads.]", "--trainer.enable_progress_bar=false"]
        if subcommand == "validate"
        else [*arguments, "--trusted_class_prefixes=[my_heads.]"],
        trained,
    )
    assert code == 0, err[-3000:]


def test_python_callers_get_the_python_opt_in(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(trained))
    checkpoint = trained / "checkpoints" / "last.ckpt"
    with pytest.raises(UntrustedClassError) as error:
        LightningBrickCollection.load_from_checkpoint(checkpoint)
    assert PYTHON_OPT_IN in str(error.value)
    assert CLI_OPT_IN not in str(error.value)
    module = LightningBrickCollection.load_from_checkpoint(checkpoint, trusted_class_prefixes=["my_heads."])
    assert type(module.brick_collection["backbone"].model).__name__ == "TinyConv"
    sys.modules.pop("my_heads", None)


def test_a_module_that_cannot_be_imported_says_how_to_make_it_importable(tmp_path: Path) -> None:
    code, err = _run(["fit", "--config", str(_recipe(tmp_path, "not_here.TinyConv"))], tmp_path)
    assert code == 2
    assert "cannot import module 'not_here' for class_path 'not_here.TinyConv'" in err
    assert f"in the current folder ({tmp_path})" in err
    assert "run the command from the folder that holds not_here.py" in err
    assert "PYTHONPATH" in err
    assert "pip install -e ." in err


def test_a_module_that_fails_inside_says_what_failed(tmp_path: Path) -> None:
    (tmp_path / "broken_heads.py").write_text("import not_installed_dependency\n")
    code, err = _run(["fit", "--config", str(_recipe(tmp_path, "broken_heads.TinyConv"))], tmp_path)
    assert code == 2
    assert "cannot import module 'broken_heads'" in err
    assert "Python looks for 'not_installed_dependency'" in err
    sys.modules.pop("broken_heads", None)
