"""A mistake anywhere in a recipe is one line: the file, the key as written, a did-you-mean and the fix; no usage.

Most mistakes are checked in-process through :func:`~torchbricks_lightning.cli.recipe_parser.explain` (what the
parser prints when jsonargparse refuses a recipe) and ``main``; a few run the installed command in a subprocess, as
users do, to see the whole of what it prints.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runs import exit_code, run_script

from torchbricks_lightning.cli.recipe_keys import close_name
from torchbricks_lightning.cli.recipe_parser import RecipeRead, explain, plain_model_form

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
FIT_SECTIONS = ["ckpt_path", "data", "model", "seed_everything", "trainer", "trusted_class_prefixes", "weights_only"]
"""What the ``fit`` parser accepts at the top of a recipe (besides config and print_config)."""
ONE_STEP = ["--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.logger=false"]
ONE_STEP += ["--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0"]
CLASS_PATH_MODEL = "torchbricks_lightning.LightningBrickCollection"


def _recipe() -> dict[str, Any]:
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"]["callbacks"] = []  # no checkpoint, no ONNX export: the runs here train one step at most
    return config


def _with(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    config = _recipe()
    change(config)
    return config


def _class_path_form(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "model": {"class_path": CLASS_PATH_MODEL, "init_args": config["model"]}}


def _write(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _explain(config: dict[str, Any], folder: Path) -> str | None:
    text = yaml.safe_dump(config, sort_keys=False)
    return explain(RecipeRead("recipe.yaml", text, str(folder), top_level=lambda: [*FIT_SECTIONS, "config"]))


def _main(arguments: list[str], folder: Path) -> tuple[int, str, str]:
    """``main`` in ``folder``: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = exit_code(arguments, folder)
    return code, out.getvalue(), err.getvalue()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets ``value`` at the dotted ``path``, or renames the last key when ``value`` is a ``_Rename``."""
    *parents, last = path.split(".")

    def change(config: dict[str, Any]) -> None:
        node: Any = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(value, _Rename):
            node[value.to] = node.pop(last)
        else:
            node[last] = value

    return change


class _Rename:
    def __init__(self, to: str) -> None:
        self.to = to


CHECKPOINT = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"dirpath": "ckpts"}}
MISTAKES: dict[str, tuple[Callable[[dict[str, Any]], None], str, str]] = {
    # the five stumbles of issue 22
    "trainer key": (
        _set("trainer.max_epoch", 3),
        "trainer.max_epoch: Trainer takes no argument 'max_epoch'.",
        "Did you mean 'max_epochs'? Fix: rename it to 'max_epochs'.",
    ),
    "model key": (
        _set("model.brick_collection", _Rename("brick_colection")),
        "model.brick_colection: LightningBrickCollection takes no argument 'brick_colection'.",
        "Did you mean 'brick_collection'? Fix: rename it to 'brick_collection'.",
    ),
    "datamodule argument": (
        _set("data.init_args.batchsize", 4),
        "data.init_args.batchsize: torchbricks_lightning.datamodules.SyntheticImageDataModule takes no argument "
        "'batchsize'.",
        "Did you mean 'batch_size'? Fix: rename it to 'batch_size'.",
    ),
    "optimizer argument": (
        _set("model.optimizer.init_args.learning_rate", 0.1),
        "model.optimizer.init_args.learning_rate: torch.optim.Adam takes no argument 'learning_rate'.",
        "Did you mean 'lr'? Fix: rename it to 'lr'.",
    ),
    "model of another class": (
        lambda config: config.update(model={"class_path": "torch.nn.Linear", "init_args": config["model"]}),
        "model.class_path: the command builds a torchbricks_lightning.LightningBrickCollection, not 'torch.nn.Linear'.",
        "Fix: write class_path: torchbricks_lightning.LightningBrickCollection, or put the module's arguments",
    ),
    # more, as a new user makes them
    "callback argument": (
        _set("trainer.callbacks", [{**CHECKPOINT, "init_args": {"save_lst": True}}]),
        "trainer.callbacks[0].init_args.save_lst: pytorch_lightning.callbacks.ModelCheckpoint takes no argument",
        "Did you mean 'save_last'? Fix: rename it to 'save_last'.",
    ),
    "callback short name": (
        _set("trainer.callbacks", [{"class_path": "ModelCheckpoint", "init_args": {"monitr": "x"}}]),
        "trainer.callbacks[0].init_args.monitr: ModelCheckpoint takes no argument 'monitr'.",
        "Did you mean 'monitor'? Fix: rename it to 'monitor'.",
    ),
    "callback class": (
        _set("trainer.callbacks", [{**CHECKPOINT, "class_path": "pytorch_lightning.callbacks.ModelCheckpoin"}]),
        "trainer.callbacks[0].class_path: module 'pytorch_lightning.callbacks' has no class 'ModelCheckpoin'.",
        "Did you mean 'ModelCheckpoint'? Fix: write pytorch_lightning.callbacks.ModelCheckpoint.",
    ),
    "scheduler argument": (
        _set("model.lr_scheduler", {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step": 2}}),
        "model.lr_scheduler.init_args.step: torch.optim.lr_scheduler.StepLR takes no argument 'step'.",
        "Did you mean 'step_size'? Fix: rename it to 'step_size'.",
    ),
    "logger argument": (
        _set("trainer.logger", {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dirr": "l"}}),
        "trainer.logger.init_args.save_dirr: pytorch_lightning.loggers.CSVLogger takes no argument 'save_dirr'.",
        "Did you mean 'save_dir'? Fix: rename it to 'save_dir'.",
    ),
    "text for a number": (
        _set("trainer.max_epochs", "ten"),
        "trainer.max_epochs: expected int or None, but got the text 'ten'.",
        "Fix: write a value of that type (int or None).",
    ),
    "unknown choice": (
        _set("model.lr_scheduler_interval", "epochs"),
        "model.lr_scheduler_interval: expected one of ['epoch', 'step'], but got the text 'epochs'.",
        "Did you mean 'epoch'? Fix: write epoch.",
    ),
    "misspelt section": (
        _set("trainer", _Rename("trainers")),
        "trainers: a recipe has no section 'trainers'.",
        "Did you mean 'trainer'? Fix: rename it to 'trainer'.",
    ),
    "optimizer at the top": (
        lambda config: config.update(optimizer=config["model"].pop("optimizer")),
        "optimizer: a recipe has no section 'optimizer': the optimizer is an argument of the module here.",
        "Fix: move it under model: (model.optimizer).",
    ),
    "init_args misspelt": (
        _set("data.init_args", _Rename("init_arg")),
        "data.init_arg: A class_path entry takes no key 'init_arg'.",
        "Did you mean 'init_args'? Fix: rename it to 'init_args'.",
    ),
    "argument beside class_path": (
        _set("data.batch_size", 4),
        "data.batch_size: A class_path entry (arguments of torchbricks_lightning.datamodules.SyntheticImageDataModule "
        "go under init_args) takes no key 'batch_size'.",
        "Fix: remove it, or use one of its names (['class_path', 'dict_kwargs', 'init_args']).",
    ),
    "in the class-path model form": (
        lambda config: config.update(_class_path_form(_with(_set("model.optimizer.init_args.learning_rate", 1)))),
        "model.init_args.optimizer.init_args.learning_rate: torch.optim.Adam takes no argument 'learning_rate'.",
        "Did you mean 'lr'?",
    ),
    "in a subcommand's section": (
        lambda config: config.update({"fit": {"trainer": {"max_epoch": 1}}}),
        "fit.trainer.max_epoch: Trainer takes no argument 'max_epoch'.",
        "Did you mean 'max_epochs'?",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES), ids=list(MISTAKES))
def test_each_mistake_names_the_file_the_key_a_close_name_and_the_fix(case: str, tmp_path: Path) -> None:
    change, what, fix = MISTAKES[case]
    message = _explain(_with(change), tmp_path)
    assert message is not None
    assert message.startswith(f"recipe.yaml: {what}"), message
    assert fix in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "change",
    [
        lambda config: None,
        lambda config: config.update(_class_path_form(config)),
        _set("trainer.callbacks", [{"class_path": "ModelCheckpoint", "init_args": {"monitor": "x"}}]),
        _set("data.dict_kwargs", {"anything": 1}),
        _set("trainer.max_epochs", "3"),  # jsonargparse reads numbers from text
        _set("trainer.enable_checkpointing", "yes"),  # and YAML's booleans
        _set("trainer.precision", "16"),
        _set("model.optimizer", "torch.optim.SGD"),
        _set("model.lr_scheduler", {"class_path": "StepLR", "init_args": {"step_size": 2}}),
    ],
    ids=[
        "tiny",
        "class-path model",
        "short callback",
        "dict_kwargs",
        "number as text",
        "yes as a bool",
        "precision as text",
        "dotted optimizer",
        "sched",
    ],
)
def test_recipes_that_jsonargparse_accepts_have_nothing_to_explain(
    change: Callable[[dict[str, Any]], None], tmp_path: Path
) -> None:
    assert _explain(_with(change), tmp_path) is None


def test_close_names_include_initials() -> None:
    assert close_name("learning_rate", ["lr", "betas", "eps"]) == "lr"
    assert close_name("wd", ["weight_decay", "lr"]) == "weight_decay"
    assert close_name("batchsize", ["batch_size", "seed"]) == "batch_size"
    assert close_name("colour", ["lr", "eps"]) is None


def test_the_command_prints_one_line_and_no_usage(tmp_path: Path) -> None:
    """In-process: the file relative to the folder the command runs in, the key, exit status 2, nothing more."""
    path = _write(_with(_set("trainer.max_epoch", 3)), tmp_path / "recipes" / "mine.yaml")
    code, out, err = _main(["fit", "--config", str(path)], tmp_path)
    assert code == 2
    assert err.splitlines() == [
        "error: recipes/mine.yaml: trainer.max_epoch: Trainer takes no argument 'max_epoch'. Did you mean "
        "'max_epochs'? Fix: rename it to 'max_epochs'."
    ]
    assert out == ""


def test_a_refusal_the_checks_cannot_explain_keeps_jsonargparse_message_without_usage(tmp_path: Path) -> None:
    path = _write(_with(_set("model.optimizer.init_args.lr", "fast")), tmp_path / "recipe.yaml")
    code, _, err = _main(["fit", "--config", str(path)], tmp_path)
    assert code == 2
    assert 'error: Parser key "model.optimizer"' in err
    assert "usage:" not in err
    assert "[--trainer.max_epochs MAX_EPOCHS]" not in err


def test_a_missing_module_names_the_folder_the_command_ran_from_and_the_recipe_folder(tmp_path: Path) -> None:
    """jsonargparse reads a recipe from inside its folder; Python looks for the module where the command ran."""
    config = _with(_set("model.brick_collection.backbone.init_args.model.class_path", "tabular.TinyConv"))
    path = _write(config, tmp_path / "recipes" / "recipe.yaml")
    code, _, err = _main(["fit", "--config", str(path)], tmp_path)
    assert code == 2
    assert f"in the current folder ({tmp_path}), the folder the command was run from" in err
    assert f"not in the recipe's folder ({tmp_path / 'recipes'})" in err
    assert "Fix: run the command from the folder that holds tabular.py" in err
    assert "add that folder to PYTHONPATH" in err
    assert f"in the current folder ({tmp_path / 'recipes'})" not in err


def test_the_class_path_model_form_fits_and_prints_a_config_that_runs_again(tmp_path: Path) -> None:
    """LightningCLI's documented subclass form is the plain form: it fits, and ``--print_config`` prints the plain
    form, which runs."""
    config = _class_path_form(_recipe())
    config["trainer"]["callbacks"] = [copy.deepcopy(CHECKPOINT)]
    path = _write(config, tmp_path / "class_path.yaml")
    code, _, err = _main(["fit", "--config", str(path), *ONE_STEP], tmp_path)
    assert code == 0, err[-3000:]
    assert list((tmp_path / "ckpts").glob("*.ckpt"))

    code, printed, err = _main(["fit", "--config", str(path), "--print_config"], tmp_path)
    assert code == 0, err[-3000:]
    model = yaml.safe_load(printed)["model"]
    assert "class_path" not in model
    assert set(model["brick_collection"]) == {"preprocessor", "backbone", "head0"}
    assert plain_model_form(_class_path_form(_recipe()))["model"] == _recipe()["model"]

    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    code, _, err = _main(["fit", "--config", str(again), *ONE_STEP, "--trainer.callbacks=[]"], tmp_path)
    assert code == 0, err[-3000:]


# ------------------------------------------------------------------------------------------------ the command
@pytest.mark.parametrize(
    ("case", "line"),
    [
        (
            "trainer key",
            "error: recipe.yaml: trainer.max_epoch: Trainer takes no argument 'max_epoch'. Did you mean 'max_epochs'? "
            "Fix: rename it to 'max_epochs'.",
        ),
        (
            "model key",
            "error: recipe.yaml: model.brick_colection: LightningBrickCollection takes no argument 'brick_colection'. "
            "Did you mean 'brick_collection'? Fix: rename it to 'brick_collection'.",
        ),
        (
            "optimizer argument",
            "error: recipe.yaml: model.optimizer.init_args.learning_rate: torch.optim.Adam takes no argument "
            "'learning_rate'. Did you mean 'lr'? Fix: rename it to 'lr'.",
        ),
    ],
    ids=["trainer", "model", "optimizer"],
)
def test_the_console_script_prints_the_one_line(case: str, line: str, tmp_path: Path) -> None:
    _write(_with(MISTAKES[case][0]), tmp_path / "recipe.yaml")
    process = run_script(["fit", "--config", "recipe.yaml"], cwd=tmp_path)
    assert process.returncode == 2
    assert process.stderr.splitlines() == [line]
    assert sorted(os.listdir(tmp_path)) == ["recipe.yaml"]
