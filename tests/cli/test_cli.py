"""The ``torchbricks-lightning`` command: fit a YAML recipe, export its checkpoint, and fail early on bad recipes.

A few tests run the installed console script in a subprocess (what users do); the rest call
``TorchBricksCLI``/``main`` in-process, which is much faster (the subprocess cost is mostly imports).
"""

from __future__ import annotations

import copy
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from cli_runs import exit_code, in_folder, run_script

from torchbricks_lightning.bag_of_bricks import TorchvisionBackbone
from torchbricks_lightning.cli import TorchBricksCLI, check_ckpt_path, main
from torchbricks_lightning.cli.recipe import accepted_arguments, first_brick_problem
from torchbricks_lightning.datamodules.synthetic import make_images
from torchbricks_lightning.lightning import LightningBrickCollection

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
NUM_CLASSES = 4
IMAGE_SIZE = 8
QUIET = ["--trainer.enable_progress_bar", "false"]


# ------------------------------------------------------------------------------------------------ helpers


def _recipe() -> dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text())


def _write(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _assert_no_training_output(folder: Path) -> None:
    assert not (folder / "checkpoints").exists(), "a checkpoint folder was written: training started"
    assert not (folder / "lightning_logs").exists(), "lightning_logs was written: training started"
    assert not list(folder.rglob("*.ckpt"))


@dataclass(frozen=True)
class FittedRun:
    folder: Path
    stdout: str
    stderr: str

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory) -> FittedRun:
    """``torchbricks-lightning fit --config tiny_recipe.yaml`` in a subprocess, once for the module."""
    folder = tmp_path_factory.mktemp("fit")
    process = run_script(["fit", "--config", str(RECIPE), *QUIET], cwd=folder)
    assert process.returncode == 0, process.stderr[-4000:]
    return FittedRun(folder, process.stdout, process.stderr)


# ------------------------------------------------------------------------------------------------ fit and export
@pytest.mark.slow
def test_fit_writes_checkpoints_and_the_callback_exports_onnx_next_to_them(fitted_run: FittedRun) -> None:
    checkpoints = sorted(path.name for path in fitted_run.checkpoints.iterdir())
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("epoch=0-") and name.endswith(".ckpt") for name in checkpoints), checkpoints
    onnx_file = fitted_run.checkpoints / "model.onnx"
    assert onnx_file.is_file(), checkpoints
    assert f"Exported stage 'export' to ONNX: {onnx_file}" in fitted_run.stdout
    assert not [name for name in checkpoints if ".tmp" in name], "a temporary export file was left behind"
    # The CLI saved the config it ran with.
    assert list((fitted_run.folder / "lightning_logs").rglob("config.yaml"))

    session = _session(onnx_file)
    assert [value.name for value in session.get_inputs()] == ["raw"]
    assert {"head0/logits", "head0/probabilities", "head0/class_prediction"} <= {
        value.name for value in session.get_outputs()
    }


@pytest.mark.slow
def test_export_subcommand_writes_onnx_that_matches_the_checkpoint(fitted_run: FittedRun, tmp_path: Path) -> None:
    output = tmp_path / "model.onnx"
    process = run_script(["export", "--ckpt_path", str(fitted_run.last), "--output", str(output)], cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-4000:]
    assert f"Wrote {output}" in process.stdout
    assert "max abs diff" in process.stdout
    assert output.is_file()

    session = _session(output)
    output_names = [value.name for value in session.get_outputs()]
    assert [value.name for value in session.get_inputs()] == ["raw"]  # no targets: losses are dead in export
    assert {"head0/logits", "head0/probabilities", "head0/class_prediction"} <= set(output_names)
    assert not [name for name in output_names if "loss" in name]

    images, _ = make_images(3, NUM_CLASSES, IMAGE_SIZE, seed=123)  # batch of 3: the batch dimension is dynamic
    onnx_outputs = dict(zip(output_names, session.run(None, {"raw": images.numpy()}), strict=True))
    assert onnx_outputs["head0/logits"].shape == (3, NUM_CLASSES)

    # The checkpoint alone rebuilds the model, and it agrees with the ONNX file.
    module = LightningBrickCollection.load_from_checkpoint(fitted_run.last)
    module.eval()
    with torch.no_grad():
        eager = module({"raw": images})
    for name in ("head0/logits", "head0/probabilities"):
        np.testing.assert_allclose(onnx_outputs[name], eager[name].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(onnx_outputs["head0/class_prediction"], eager["head0/class_prediction"].numpy())

    # The callback exported the weights of the end of fit, which are also the weights in last.ckpt.
    from_callback = _session(fitted_run.checkpoints / "model.onnx").run(["head0/logits"], {"raw": images.numpy()})
    np.testing.assert_allclose(from_callback[0], onnx_outputs["head0/logits"], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("subcommand", "needs"),
    [("validate", "validation/loss"), ("test", "test/loss"), ("predict", None)],
    ids=["validate", "test", "predict"],
)
def test_validate_test_and_predict_run_on_the_fitted_checkpoint(
    fitted_run: FittedRun, tmp_path: Path, subcommand: str, needs: str | None
) -> None:
    args = [subcommand, "--config", str(RECIPE), "--ckpt_path", str(fitted_run.last), *QUIET]
    assert exit_code(args, tmp_path) == 0
    with in_folder(tmp_path):
        cli = TorchBricksCLI(args=args)
    if needs is not None:
        assert needs in cli.trainer.callback_metrics
        return
    # predict used the trained weights from --ckpt_path, not a fresh initialisation.
    predictions = cli.trainer.predict_loop.predictions
    assert predictions
    images, _ = make_images(16, NUM_CLASSES, IMAGE_SIZE, seed=2)  # the datamodule's test/predict split
    module = LightningBrickCollection.load_from_checkpoint(fitted_run.last).eval()
    with torch.no_grad():
        expected = module({"raw": images})["head0/logits"]
    torch.testing.assert_close(predictions[0]["head0/logits"], expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_print_config_prints_a_complete_recipe_that_runs_again_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(["fit", "--config", str(RECIPE), *QUIET, "--print_config"], tmp_path) == 0
    printed_text = capsys.readouterr().out
    printed = yaml.safe_load(printed_text)
    _assert_no_training_output(tmp_path)

    # Complete: defaults the recipe left out are spelled out.
    backbone = printed["model"]["brick_collection"]["backbone"]["init_args"]
    assert backbone["alive_stages"] == "all"
    assert backbone["model"]["init_args"]["padding_mode"] == "zeros"
    assert printed["model"]["batch_names"] == ["raw", "targets"]
    assert printed["data"]["init_args"]["seed"] == 0
    assert printed["trainer"]["max_epochs"] == 1

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    path = (tmp_path / "printed.yaml").resolve()
    path.write_text(printed_text)
    assert exit_code(["fit", "--config", str(path)], second) == 0
    assert exit_code(["fit", "--config", str(RECIPE), *QUIET], first) == 0

    # Same recipe, same seed: the printed config trains exactly the same model.
    weights = [torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True) for folder in (first, second)]
    assert weights[0]["state_dict"].keys() == weights[1]["state_dict"].keys()
    for name, value in weights[0]["state_dict"].items():
        torch.testing.assert_close(weights[1]["state_dict"][name], value, msg=name)


def _with_heads(config: dict[str, Any], n_heads: int, in_channels: int) -> dict[str, Any]:
    bricks = config["model"]["brick_collection"]
    for index in range(n_heads):
        head = copy.deepcopy(bricks["head0"])
        head["init_args"]["in_channels"] = in_channels
        head["init_args"]["loss_weight"] = 1.0 / (index + 1)
        bricks[f"head{index}"] = head
    return config


@pytest.mark.parametrize(
    ("backbone", "n_heads"),
    [("conv", 1), ("conv", 2), ("resnet18", 2)],
    ids=["conv-1-head", "conv-2-heads", "resnet18-2-heads"],
)
def test_backbone_and_heads_are_a_config_change_only(tmp_path: Path, backbone: str, n_heads: int) -> None:
    config = _recipe()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]  # no ONNX export: keeps the test fast
    in_channels = 8
    if backbone == "resnet18":
        config["model"]["brick_collection"]["backbone"]["init_args"]["model"] = {
            "class_path": "torchbricks_lightning.bag_of_bricks.TorchvisionBackbone",
            "init_args": {"name": "resnet18"},
        }
        in_channels = 512
    path = _write(_with_heads(config, n_heads, in_channels), tmp_path / "recipe.yaml")

    with in_folder(tmp_path):
        cli = TorchBricksCLI(args=["--config", str(path), *QUIET], run=False)
        cli.trainer.fit(cli.model, cli.datamodule)

    model = cli.model.brick_collection["backbone"].model
    assert isinstance(model, TorchvisionBackbone if backbone == "resnet18" else torch.nn.Conv2d)
    logged = cli.trainer.logged_metrics
    losses = {name for name in logged if name.startswith("validation/") and "loss" in name}
    assert losses == {"validation/loss", *(f"validation/head{index}/loss_ce" for index in range(n_heads))}
    assert {f"train/head{index}/loss_ce_epoch" for index in range(n_heads)} <= set(logged)
    assert f"train/head{n_heads}/loss_ce_epoch" not in logged
    # The loss weights of the recipe apply: total = sum of weight * head loss.
    total = sum(logged[f"validation/head{index}/loss_ce"] / (index + 1) for index in range(n_heads))
    torch.testing.assert_close(logged["validation/loss"], total, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ the recipe's values
def test_a_dotted_monitor_is_plain_data_and_the_checkpoint_rebuilds_itself(tmp_path: Path) -> None:
    """``lr_scheduler_monitor`` is a ``str``: ``test.loss`` names a logged value, not the standard library's ``test``
    package; the recipe trains and its checkpoint loads alone."""
    config = _recipe()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    config["model"]["lr_scheduler"] = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1}}
    config["model"]["lr_scheduler_monitor"] = "test.loss"
    path = _write(config, tmp_path / "recipe.yaml")

    assert exit_code(["fit", "--config", str(path), *QUIET], tmp_path) == 0

    module = LightningBrickCollection.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.lr_scheduler_monitor == "test.loss"
    scheduler = module.configure_optimizers()["lr_scheduler"]
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert scheduler["monitor"] == "test.loss"


def test_a_cli_checkpoint_holds_the_recipe_and_a_python_one_only_plain_values(tmp_path: Path) -> None:
    """The CLI records the recipe of the bricks, optimizer and scheduler in the hyperparameters (so the checkpoint
    rebuilds the module alone); a module built in Python keeps only its plain values."""
    config = _recipe()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    path = _write(config, tmp_path / "recipe.yaml")
    with in_folder(tmp_path):
        cli = TorchBricksCLI(args=["--config", str(path), *QUIET], run=False)
    for hyperparameters in (cli.model.hparams, cli.model.hparams_initial):  # saved, and logged by the loggers
        bricks = hyperparameters["brick_collection"]
        assert bricks == yaml.safe_load(yaml.safe_dump(bricks))  # plain values: the recipe, not objects
        assert bricks["head0"]["init_args"]["num_classes"] == NUM_CLASSES
        assert hyperparameters["optimizer"]["class_path"] == "torch.optim.Adam"
        assert hyperparameters["lr_scheduler_interval"] == "epoch"

    built_in_python = LightningBrickCollection(cli.model.brick_collection)
    assert not {"brick_collection", "optimizer", "lr_scheduler"} & set(built_in_python.hparams)
    assert built_in_python.hparams["batch_names"] == ["raw", "targets"]  # a list: hparams.yaml is plain YAML

    # Without Lightning's instantiator in the checkpoint nothing could rebuild the bricks from their recipe.
    with in_folder(tmp_path):
        plain = TorchBricksCLI(args=["--config", str(path), *QUIET], run=False, load_from_checkpoint_support=False)
    assert "brick_collection" not in plain.model.hparams


def test_the_recipe_checks_run_only_when_jsonargparse_refuses_a_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe is read once, by jsonargparse; the checks that name a mistake's key look at it only on a refusal."""
    import torchbricks_lightning.cli.recipe_parser as recipe_parser

    seen: list[object] = []
    monkeypatch.setattr(recipe_parser, "first_recipe_problem", lambda config, **folders: seen.append(config))
    config = _recipe()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    with in_folder(tmp_path):
        TorchBricksCLI(args=["--config", str(_write(config, tmp_path / "good.yaml")), *QUIET], run=False)
    assert seen == []

    config["model"]["brick_collection"]["head0"]["init_args"]["num_clases"] = 4
    assert exit_code(["fit", "--config", str(_write(config, tmp_path / "typo.yaml")), *QUIET], tmp_path) == 2
    assert len(seen) == 1
    assert seen[0] == config  # the values jsonargparse loaded: the same as the file


def test_stages_in_a_recipe_are_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """jsonargparse checks ``alive_stages`` against its type: stage values, or the names of ``Stage`` members."""
    config = _recipe()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    config["model"]["brick_collection"]["backbone"]["init_args"]["alive_stages"] = ["TRAIN", "validation", "export"]
    with in_folder(tmp_path):
        cli = TorchBricksCLI(args=["--config", str(_write(config, tmp_path / "good.yaml")), *QUIET], run=False)
    assert [stage.value for stage in cli.model.brick_collection["backbone"].alive_stages] == [
        "train",
        "validation",
        "export",
    ]

    config["model"]["brick_collection"]["backbone"]["init_args"]["alive_stages"] = "train"
    assert exit_code(["fit", "--config", str(_write(config, tmp_path / "single.yaml")), *QUIET], tmp_path) == 2
    err = capsys.readouterr().err
    assert "single.yaml: model.brick_collection.backbone.init_args.alive_stages: Expected 'all', 'none'" in err
    assert "Wrap a single stage in a list: [train]" in err


def test_python_m_runs_the_command(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "torchbricks_lightning.cli", "export", "--help"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert "--ckpt_path" in process.stdout
    assert "torchbricks-lightning export" in process.stdout


# ------------------------------------------------------------------------------------------------ bad recipes
@pytest.mark.slow
def test_unknown_brick_class_fails_before_training_in_the_console_script(tmp_path: Path) -> None:
    config = _recipe()
    preprocessor = config["model"]["brick_collection"]["preprocessor"]["init_args"]["model"]
    preprocessor["class_path"] = "torchbricks_lightning.bag_of_bricks.Preprocesor"
    path = _write(config, tmp_path / "typo.yaml")

    process = run_script(["fit", "--config", str(path), *QUIET], cwd=tmp_path)

    assert process.returncode == 2, process.stderr[-4000:]
    assert "model.brick_collection.preprocessor.init_args.model.class_path" in process.stderr
    assert "'Preprocesor'" in process.stderr
    assert "Did you mean 'Preprocessor'?" in process.stderr
    assert "Traceback" not in process.stderr
    _assert_no_training_output(tmp_path)


@pytest.mark.parametrize(
    ("where", "class_path", "message"),
    [
        (
            ("model", "brick_collection", "head0"),
            "torchbricks_lightning.bag_of_bricks.ClasificationHead",
            "model.brick_collection.head0.class_path: module 'torchbricks_lightning.bag_of_bricks' has no class "
            "'ClasificationHead'. Did you mean 'ClassificationHead'?",
        ),
        (
            ("data",),
            "torchbricks_lightning.datamodules.SyntheticImageDataModul",
            "data.class_path: module 'torchbricks_lightning.datamodules' has no class 'SyntheticImageDataModul'. "
            "Did you mean 'SyntheticImageDataModule'?",
        ),
        (
            ("trainer", "callbacks", 1),
            "torchbricks_lightning.callbacks.OnnxExportCallbak",
            "trainer.callbacks[1].class_path: module 'torchbricks_lightning.callbacks' has no class "
            "'OnnxExportCallbak'. Did you mean 'OnnxExportCallback'?",
        ),
        (
            ("model", "brick_collection", "backbone"),
            "torchbricks_lightnin.BrickTrainable",
            "model.brick_collection.backbone.class_path: cannot import module 'torchbricks_lightnin'",
        ),
    ],
    ids=["head", "datamodule", "callback", "module"],
)
def test_unknown_class_anywhere_names_the_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: tuple[Any, ...], class_path: str, message: str
) -> None:
    config = _recipe()
    node = config
    for key in where:
        node = node[key]
    node["class_path"] = class_path
    path = _write(config, tmp_path / "typo.yaml")

    assert exit_code(["fit", "--config", str(path), *QUIET], tmp_path) == 2
    assert message in capsys.readouterr().err
    _assert_no_training_output(tmp_path)


def test_short_class_names_accepted_by_lightning_cli_still_work(tmp_path: Path) -> None:
    """jsonargparse resolves a bare class name (``class_path: ModelCheckpoint``) for callbacks; so should we."""
    config = _recipe()
    config["trainer"]["callbacks"][0]["class_path"] = "ModelCheckpoint"
    path = _write(config, tmp_path / "short.yaml")
    with in_folder(tmp_path):
        cli = TorchBricksCLI(args=["--config", str(path), *QUIET], run=False)
    assert any(type(callback).__name__ == "ModelCheckpoint" for callback in cli.trainer.callbacks)


def test_typo_in_an_input_name_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _recipe()
    config["model"]["brick_collection"]["backbone"]["init_args"]["input_names"] = ["normalised"]
    path = _write(config, tmp_path / "typo.yaml")

    assert exit_code(["fit", "--config", str(path), *QUIET], tmp_path) == 2
    err = capsys.readouterr().err
    assert "MissingInputError" in err
    assert "Brick 'backbone' needs input 'normalised'" in err
    assert "Did you mean 'normalized'?" in err
    assert "Traceback" not in err
    _assert_no_training_output(tmp_path)


def test_typo_in_a_nested_target_name_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _recipe()
    config["model"]["brick_collection"]["head0"]["init_args"]["targets_name"] = "target"
    path = _write(config, tmp_path / "typo.yaml")

    assert exit_code(["fit", "--config", str(path), *QUIET], tmp_path) == 2
    err = capsys.readouterr().err
    assert "MissingInputError" in err
    assert "needs input 'target'" in err
    assert "head0/" in err
    assert "Did you mean 'targets'?" in err
    _assert_no_training_output(tmp_path)


def test_typo_in_alive_stages_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _recipe()
    config["model"]["brick_collection"]["backbone"]["init_args"]["alive_stages"] = ["train", "valdation"]
    path = _write(config, tmp_path / "typo.yaml")

    assert exit_code(["fit", "--config", str(path), *QUIET], tmp_path) == 2
    err = capsys.readouterr().err
    # The key as written in the recipe file, after the file's name.
    assert "typo.yaml: model.brick_collection.backbone.init_args.alive_stages: Unknown stage" in err
    assert "'valdation'" in err
    assert "Did you mean 'validation'?" in err
    _assert_no_training_output(tmp_path)


def test_export_of_a_missing_checkpoint_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "run.ckpt"
    output = tmp_path / "model.onnx"
    assert exit_code(["export", "--ckpt_path", str(missing), "--output", str(output)], tmp_path) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint {str(missing)!r} does not exist" in err
    assert "Traceback" not in err
    assert not output.exists()


def test_export_requires_ckpt_path_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["export", "--output", str(tmp_path / "model.onnx")], tmp_path) == 2
    assert "ckpt_path" in capsys.readouterr().err


def test_a_typo_in_a_dotted_callable_names_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An optimizer given as a plain dotted name (no class_path) is checked like a class path."""

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  brick_collection: {}\n  optimizer: torch.optim.Adamm\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe)])
    assert exit_info.value.code == 2
    assert "model.optimizer: module 'torch.optim' has no class 'Adamm'. Did you mean 'Adam'?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bricks in recipes
def _bricks_config(bricks: dict[str, Any]) -> dict[str, Any]:
    return {"model": {"brick_collection": bricks}}


LINEAR = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 8, "out_features": 2}}
BRICK_PROBLEMS: dict[str, tuple[dict[str, Any], str]] = {
    "argument-of-a-brick": (
        {
            "head0": {
                "class_path": "torchbricks_lightning.bag_of_bricks.ClassificationHead",
                "init_args": {"num_clases": 4},
            }
        },
        "model.brick_collection.head0.init_args.num_clases: torchbricks_lightning.bag_of_bricks.ClassificationHead "
        "takes no argument 'num_clases'. Did you mean 'num_classes'?",
    ),
    "argument-of-a-wrapped-module": (
        {
            "backbone": {
                "class_path": "torchbricks_lightning.BrickTrainable",
                "init_args": {
                    "model": {"class_path": "torch.nn.Conv2d", "init_args": {"in_channels": 3, "out_chanels": 8}},
                    "input_names": ["raw"],
                    "output_names": ["features"],
                },
            }
        },
        "model.brick_collection.backbone.init_args.model.init_args.out_chanels: torch.nn.Conv2d takes no argument "
        "'out_chanels'. Did you mean 'out_channels'?",
    ),
    "module-as-a-brick": (
        {"extra": LINEAR},
        "model.brick_collection.extra.class_path: 'torch.nn.Linear' is not a brick. An entry under a brick "
        "collection must be a BrickInterface",
    ),
    "module-in-a-nested-dict-of-bricks": (
        {"head1": {"classify": LINEAR}},
        "model.brick_collection.head1.classify.class_path: 'torch.nn.Linear' is not a brick",
    ),
    "module-in-a-brick-collection-class": (
        {"class_path": "torchbricks_lightning.BrickCollection", "init_args": {"bricks": {"extra": LINEAR}}},
        "model.brick_collection.init_args.bricks.extra.class_path: 'torch.nn.Linear' is not a brick",
    ),
    "brick-as-the-collection": (
        {"class_path": "torchbricks_lightning.BrickTrainable", "init_args": {}},
        "model.brick_collection.class_path: 'torchbricks_lightning.BrickTrainable' is not a BrickCollection",
    ),
}


@pytest.mark.parametrize("case", list(BRICK_PROBLEMS))
def test_the_recipe_pre_check_names_a_brick_mistake_by_its_key(case: str) -> None:
    bricks, message = BRICK_PROBLEMS[case]
    problem = first_brick_problem(_bricks_config(bricks))
    assert problem is not None
    assert problem.startswith(message), problem


def test_the_recipe_pre_check_accepts_good_recipes() -> None:
    examples = Path(__file__).parents[2] / "examples" / "configs"
    for recipe in [RECIPE, *sorted(examples.glob("*.yaml"))]:
        assert first_brick_problem(yaml.safe_load(recipe.read_text())) is None, recipe
    # Short class paths are LightningCLI's to resolve; values that are not entries are jsonargparse's to check.
    assert first_brick_problem(_bricks_config({"extra": {"class_path": "Linear"}, "other": None})) is None


def test_arguments_of_a_class_that_takes_kwargs_are_not_checked() -> None:
    class TakesKwargs:
        def __init__(self, size: int, *, scale: float = 1.0, **kwargs: Any) -> None: ...

    class TakesNamedArguments:
        def __init__(self, size: int, *args: int, scale: float = 1.0) -> None: ...

    assert accepted_arguments(TakesKwargs) is None
    assert accepted_arguments(TakesNamedArguments) == ["size", "scale"]
    assert accepted_arguments(len) is None  # not a class


def test_a_misspelt_argument_of_a_wrapped_module_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _recipe()
    config["model"]["brick_collection"]["backbone"]["init_args"]["model"]["init_args"]["kernel_sise"] = 3
    path = _write(config, tmp_path / "typo.yaml")

    assert exit_code(["fit", "--config", str(path), *QUIET], tmp_path) == 2
    err = capsys.readouterr().err
    assert "model.brick_collection.backbone.init_args.model.init_args.kernel_sise" in err
    assert "Did you mean 'kernel_size'?" in err
    assert "is not accepted" not in err  # not jsonargparse's nested Union dump
    _assert_no_training_output(tmp_path)


# ------------------------------------------------------------------------------------------------ one batch first
def test_bricks_that_do_not_fit_fail_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _recipe()
    config["model"]["brick_collection"]["head0"]["init_args"]["in_channels"] = 7
    path = _write(config, tmp_path / "misfit.yaml")

    assert exit_code(["fit", "--config", str(path), *QUIET], tmp_path) == 2
    err = capsys.readouterr().err
    assert "RecipeError: The bricks fail on samples of the first validation batch in stage 'validation'" in err
    assert re.search(r"mat1 and mat2 shapes cannot be multiplied \([2-4]x8 and 7x4\)", err)  # a few samples
    assert "While running brick 'head0/classify' in stage 'validation'" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["misfit.yaml"]  # no lightning_logs, no checkpoints


def test_the_batch_check_before_fit_leaves_no_trace(tmp_path: Path) -> None:
    """Running one batch before fit draws no random numbers, updates no metric and restores the modules' modes."""
    config = _recipe()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    path = _write(config, tmp_path / "recipe.yaml")
    with in_folder(tmp_path):
        cli = TorchBricksCLI(args=["--config", str(path), *QUIET], run=False)
    collection = cli.model.brick_collection
    collection["backbone"].eval()  # a mix of modes, to see that each is put back
    modes = {name: module.training for name, module in collection.named_modules()}
    rng = torch.get_rng_state()

    cli.before_fit()

    assert torch.equal(torch.get_rng_state(), rng)
    assert {name: module.training for name, module in collection.named_modules()} == modes
    for stage in ("train", "validation"):
        assert collection.summarize(stage) == {}, stage


@pytest.mark.slow
def test_training_is_the_same_with_and_without_the_batch_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _recipe()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    path = _write(config, tmp_path / "recipe.yaml")
    runs = {}
    for name, check in (("checked", True), ("unchecked", False)):
        folder = tmp_path / name
        folder.mkdir()
        with monkeypatch.context() as patch, in_folder(folder):
            if not check:
                patch.setattr(TorchBricksCLI, "before_fit", lambda self: None)
            cli = TorchBricksCLI(args=["fit", "--config", str(path), *QUIET])
        state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        runs[name] = (state, dict(cli.trainer.logged_metrics))
    (checked_state, checked_logged), (unchecked_state, unchecked_logged) = runs["checked"], runs["unchecked"]
    assert checked_state.keys() == unchecked_state.keys()
    for key, value in checked_state.items():
        torch.testing.assert_close(unchecked_state[key], value, rtol=0, atol=0, msg=key)
    assert checked_logged.keys() == unchecked_logged.keys()
    for key, value in checked_logged.items():
        torch.testing.assert_close(unchecked_logged[key], value, rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------------------ --ckpt_path
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("broken", ["missing", "truncated"])
def test_a_broken_ckpt_path_fails_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], subcommand: str, broken: str
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    checkpoint = inputs / "run.ckpt"
    if broken == "truncated":
        data = io.BytesIO()
        torch.save({"state_dict": {"weight": torch.zeros(100)}}, data)
        checkpoint.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    work = tmp_path / "work"
    work.mkdir()

    args = [subcommand, "--config", str(RECIPE), "--ckpt_path", str(checkpoint), *QUIET]
    assert exit_code(args, work) == 2
    err = capsys.readouterr().err
    assert (
        f"CheckpointError: {'Checkpoint' if broken == 'missing' else 'Could not read checkpoint'} {str(checkpoint)!r}"
        in err
    )
    assert ("does not exist" if broken == "missing" else "The file is truncated") in err
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("ckpt_path", ["last", "best", "hpc", "registry", "registry:my-model:v1", "REGISTRY:model"])
def test_lightning_special_ckpt_paths_pass_the_check(ckpt_path: str) -> None:
    check_ckpt_path(ckpt_path)  # left to Lightning, which resolves them


def test_fit_with_ckpt_path_last_and_no_checkpoint_yet_trains(tmp_path: Path) -> None:
    config = _recipe()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    path = _write(config, tmp_path / "recipe.yaml")
    with pytest.warns(UserWarning, match="no last checkpoint available"):
        assert exit_code(["fit", "--config", str(path), "--ckpt_path", "last", *QUIET], tmp_path) == 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
