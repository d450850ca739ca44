"""Safe checkpoint loading: weights only, classes from trusted packages only, clear errors for broken files.

Every loader is tried on crafted files: pickles that would run code, hyperparameters naming untrusted classes,
truncated and foreign files, and checkpoints of other collections.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml
from cli_runs import exit_code, in_folder
from conftest import N_FEATURES, boring_bricks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.bag_of_bricks import ClassificationHead, Preprocessor
from torchbricks_lightning.checkpoints.reading import TRUSTED_CLASS_PREFIXES, check_class_paths, read_checkpoint
from torchbricks_lightning.checkpoints.trust import importable_paths
from torchbricks_lightning.cli import TorchBricksCLI
from torchbricks_lightning.datamodules.synthetic import make_images
from torchbricks_lightning.errors import BrickDefinitionError, CheckpointError, UntrustedCheckpointError
from torchbricks_lightning.lightning import LightningBrickCollection, load_brick_collection_weights
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx

RECIPE = Path(__file__).parents[1] / "cli" / "configs" / "tiny_recipe.yaml"
BACKBONE_CLASS_PATH_KEY = "brick_collection.backbone.init_args.model.class_path"


# ------------------------------------------------------------------------------------------------ helpers
class HarmlessConv(nn.Conv2d):
    """A harmless class outside the trusted packages (it lives in this test module)."""


HARMLESS_CLASS_PATH = f"{HarmlessConv.__module__}.HarmlessConv"


def sneaky_optimizer(parameters: Any) -> torch.optim.Optimizer:
    """An untrusted function a checkpoint could name as its optimizer factory."""
    return torch.optim.SGD(parameters, lr=0.1)


class SystemPayload:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class TouchPayload:
    """Unpickling this creates a file, without a shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


PAYLOADS = {"os.system": SystemPayload, "pathlib.Path.touch": TouchPayload}


def _recipe_bricks() -> BrickCollection:
    """The bricks of tests/cli/configs/tiny_recipe.yaml, built in Python."""
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
            "backbone": BrickTrainable(nn.Conv2d(3, 8, 3), input_names=["normalized"], output_names=["features"]),
            "head0": ClassificationHead(num_classes=4, in_channels=8),
        }
    )


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a one-epoch CLI run of the tiny recipe (in-process, without the ONNX callback)."""
    folder = tmp_path_factory.mktemp("cli_run")
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    with in_folder(folder):
        TorchBricksCLI(args=["fit", "--config", str(recipe), "--trainer.enable_progress_bar", "false"])
    path = folder / "checkpoints" / "last.ckpt"
    assert path.is_file()
    return path


def _edited(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, target)
    return target


def _images(n: int = 3) -> torch.Tensor:
    return make_images(n, num_classes=4, image_size=8, seed=7)[0]


def _logits(module: LightningBrickCollection | BrickCollection, images: torch.Tensor) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module({"raw": images})["head0/logits"]


# ------------------------------------------------------------------------------------------------ pickled code
LOADERS: dict[str, Callable[[Path, Path], Any]] = {
    "read_checkpoint": lambda path, _: read_checkpoint(path),
    "load_from_checkpoint": lambda path, _: LightningBrickCollection.load_from_checkpoint(path),
    "load_from_checkpoint_with_bricks": lambda path, _: LightningBrickCollection.load_from_checkpoint(
        path, brick_collection=_recipe_bricks()
    ),
    "load_brick_collection_weights": lambda path, _: load_brick_collection_weights(_recipe_bricks(), path),
    "export_checkpoint_as_onnx": lambda path, tmp: export_checkpoint_as_onnx(path, tmp / "model.onnx"),
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_the_payload_is_live_when_loaded_unsafely(tmp_path: Path, payload: str) -> None:
    """Control: the crafted file really runs code under a plain ``torch.load``, so the tests below mean something."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": PAYLOADS[payload](marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_loading_never_runs_pickled_code(tmp_path: Path, payload: str, loader: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": PAYLOADS[payload](marker)}, path)

    with pytest.raises(UntrustedCheckpointError, match=r"not tensors or plain values.*arbitrary code"):
        LOADERS[loader](path, tmp_path)
    assert not marker.exists()
    assert not (tmp_path / "model.onnx").exists()


def test_a_real_checkpoint_with_code_in_its_hyperparameters_is_refused(cli_checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _edited(
        cli_checkpoint,
        tmp_path / "evil.ckpt",
        lambda checkpoint: checkpoint["hyper_parameters"].update(payload=TouchPayload(marker)),
    )
    with pytest.raises(UntrustedCheckpointError, match="arbitrary code"):
        LightningBrickCollection.load_from_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_cli_export_refuses_pickled_code(tmp_path: Path, capsys: pytest.CaptureFixture[str], payload: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": PAYLOADS[payload](marker)}, path)
    output = tmp_path / "model.onnx"

    assert exit_code(["export", "--ckpt_path", str(path), "--output", str(output)], tmp_path) == 2
    err = capsys.readouterr().err
    assert "arbitrary code" in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not output.exists()


def test_the_refusal_names_the_offending_object(tmp_path: Path) -> None:
    """torch's error names the global it refused (e.g. ``posix.system``); the message should keep that detail."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": SystemPayload(tmp_path / "pwned")}, path)
    with pytest.raises(UntrustedCheckpointError) as error:
        read_checkpoint(path)
    assert f"{os.system.__module__}.system" in str(error.value)


# ------------------------------------------------------------------------------------------------ class allowlist
def _set_backbone_class(class_path: str) -> Callable[[dict[str, Any]], None]:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"]["brick_collection"]["backbone"]["init_args"]["model"]["class_path"] = class_path

    return edit


def test_a_real_cli_checkpoint_rebuilds_itself(cli_checkpoint: Path) -> None:
    checkpoint = read_checkpoint(cli_checkpoint)
    check_class_paths(checkpoint["hyper_parameters"])  # everything in a CLI checkpoint is trusted
    module = LightningBrickCollection.load_from_checkpoint(cli_checkpoint)
    assert isinstance(module.brick_collection["backbone"].model, nn.Conv2d)
    for name, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(module.state_dict()[name], value, msg=name)


@pytest.mark.parametrize("class_path", ["os.system", "subprocess.Popen", HARMLESS_CLASS_PATH])
def test_untrusted_class_in_hyperparameters_is_refused(cli_checkpoint: Path, tmp_path: Path, class_path: str) -> None:
    path = _edited(cli_checkpoint, tmp_path / "untrusted.ckpt", _set_backbone_class(class_path))
    expected = re.escape(f"{class_path!r} at {BACKBONE_CLASS_PATH_KEY!r}")
    with pytest.raises(UntrustedCheckpointError, match=expected):
        LightningBrickCollection.load_from_checkpoint(path)
    with pytest.raises(UntrustedCheckpointError, match=expected):
        export_checkpoint_as_onnx(path, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_untrusted_top_level_brick_is_refused(cli_checkpoint: Path, tmp_path: Path) -> None:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"]["brick_collection"]["head0"]["class_path"] = "evil_package.Head"

    path = _edited(cli_checkpoint, tmp_path / "untrusted.ckpt", edit)
    with pytest.raises(
        UntrustedCheckpointError, match=r"'evil_package\.Head' at 'brick_collection\.head0\.class_path'"
    ):
        LightningBrickCollection.load_from_checkpoint(path)


def test_cli_export_refuses_an_untrusted_class(
    cli_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _edited(cli_checkpoint, tmp_path / "untrusted.ckpt", _set_backbone_class("os.system"))
    output = tmp_path / "model.onnx"
    assert exit_code(["export", "--ckpt_path", str(path), "--output", str(output)], tmp_path) == 2
    err = capsys.readouterr().err
    assert f"'os.system' at {BACKBONE_CLASS_PATH_KEY!r}" in err
    assert "--trusted_class_prefixes '[os.]'" in err  # the command line's spelling
    assert not output.exists()


def test_trusted_class_prefixes_opt_in_to_an_untrusted_class(cli_checkpoint: Path, tmp_path: Path) -> None:
    path = _edited(cli_checkpoint, tmp_path / "custom.ckpt", _set_backbone_class(HARMLESS_CLASS_PATH))
    prefix = f"{HarmlessConv.__module__}."
    with pytest.raises(UntrustedCheckpointError, match=re.escape(f"trusted_class_prefixes=[{prefix!r}]")):
        LightningBrickCollection.load_from_checkpoint(path)

    module = LightningBrickCollection.load_from_checkpoint(path, trusted_class_prefixes=[prefix])
    assert type(module.brick_collection["backbone"].model) is HarmlessConv
    original = LightningBrickCollection.load_from_checkpoint(cli_checkpoint)
    torch.testing.assert_close(_logits(module, _images()), _logits(original, _images()))

    # The CLI's export takes the same opt-in.
    output = tmp_path / "model.onnx"
    args = ["export", "--ckpt_path", str(path), "--output", str(output), f"--trusted_class_prefixes=[{prefix}]"]
    assert exit_code(args, tmp_path) == 0
    assert output.is_file()


def test_check_class_paths_walks_nested_dicts_and_lists() -> None:
    config = {
        "model": {"class_path": "torch.nn.Linear", "init_args": {"inner": {"class_path": "torchvision.models.ResNet"}}},
        "callbacks": [{"class_path": "torchmetrics.Accuracy"}, {"class_path": HARMLESS_CLASS_PATH}],
    }
    expected = re.escape(f"{HARMLESS_CLASS_PATH!r} at 'callbacks[1].class_path'")
    with pytest.raises(UntrustedCheckpointError, match=expected):
        check_class_paths(config)
    package, module = HarmlessConv.__module__.split(".", 1)[0], HarmlessConv.__module__
    check_class_paths(config, trusted_class_prefixes=[f"{package}."])
    check_class_paths(config, trusted_class_prefixes=[f"{module}."])

    with pytest.raises(UntrustedCheckpointError, match=r"'evil\.Module' at 'model\._class_path'"):
        check_class_paths({"model": {"_class_path": "evil.Module"}})


def test_a_trusted_prefix_still_needs_a_class_that_imports() -> None:
    """A trusted prefix lets the path be imported; a path that does not resolve is refused rather than waved through."""
    with pytest.raises(CheckpointError, match=r"'my_project\.callbacks\.Thing' .* cannot be imported"):
        check_class_paths({"class_path": "my_project.callbacks.Thing"}, trusted_class_prefixes=["my_project."])


@pytest.mark.parametrize("class_path", ["torchx.Evil", "torch_evil.Payload", "torchvisionary.Model", "torch"])
def test_trusted_prefixes_are_whole_package_names(class_path: str) -> None:
    assert all(prefix.endswith(".") for prefix in TRUSTED_CLASS_PREFIXES)
    with pytest.raises(UntrustedCheckpointError):
        check_class_paths({"class_path": class_path})


def test_an_untrusted_function_named_as_optimizer_is_refused(cli_checkpoint: Path, tmp_path: Path) -> None:
    """A callable argument can be a plain dotted string with no ``class_path`` key; it must pass the allowlist too.

    Otherwise a checkpoint can make ``load_from_checkpoint`` import any module and keep any function, which then
    runs as soon as the module is trained.
    """
    function_path = f"{sneaky_optimizer.__module__}.sneaky_optimizer"
    path = _edited(
        cli_checkpoint,
        tmp_path / "sneaky.ckpt",
        lambda checkpoint: checkpoint["hyper_parameters"].update(optimizer=function_path),
    )
    with pytest.raises(UntrustedCheckpointError, match=re.escape(function_path)):
        LightningBrickCollection.load_from_checkpoint(path)


def test_an_untrusted_instantiator_is_refused_as_untrusted(cli_checkpoint: Path, tmp_path: Path) -> None:
    """Lightning calls the ``_instantiator`` function the hyperparameters name; an untrusted one must be refused
    with the package's own error (so the CLI reports it with exit code 2, not a traceback)."""
    path = _edited(
        cli_checkpoint,
        tmp_path / "instantiator.ckpt",
        lambda checkpoint: checkpoint["hyper_parameters"].update(_instantiator="os.system"),
    )
    with pytest.raises(UntrustedCheckpointError, match=r"os\.system"):
        LightningBrickCollection.load_from_checkpoint(path)


@pytest.mark.parametrize("monitor", ["test.loss", "torch.loss", "os.path"])
def test_a_dotted_monitor_is_plain_data_not_a_class_path(cli_checkpoint: Path, tmp_path: Path, monitor: str) -> None:
    """``lr_scheduler_monitor`` is typed ``str``: a logged name that looks like a module path (``test`` is a standard
    library package) is data, never imported, so the checkpoint loads."""
    path = _edited(
        cli_checkpoint,
        tmp_path / "monitor.ckpt",
        lambda checkpoint: checkpoint["hyper_parameters"].update(lr_scheduler_monitor=monitor),
    )
    module = LightningBrickCollection.load_from_checkpoint(path)
    assert module.lr_scheduler_monitor == monitor
    torch.testing.assert_close(_logits(module, _images()), _logits(_loaded(cli_checkpoint), _images()))
    output = tmp_path / "model.onnx"
    assert exit_code(["export", "--ckpt_path", str(path), "--output", str(output)], tmp_path) == 0
    assert output.is_file()


def test_a_dotted_monitor_of_a_module_built_in_python_is_plain_data(tmp_path: Path) -> None:
    path = _python_checkpoint(tmp_path, LightningBrickCollection(boring_bricks(), lr_scheduler_monitor="test.loss"))
    assert read_checkpoint(path)["hyper_parameters"]["lr_scheduler_monitor"] == "test.loss"
    loaded = LightningBrickCollection.load_from_checkpoint(path, brick_collection=boring_bricks())
    assert loaded.lr_scheduler_monitor == "test.loss"


def _loaded(path: Path) -> LightningBrickCollection:
    return LightningBrickCollection.load_from_checkpoint(path)


def test_strings_are_checked_where_the_signature_admits_a_class_or_a_callable() -> None:
    """The walk follows the signatures: ``str`` arguments are data, callables and untyped arguments are checked."""

    def build(
        name: str = "",
        names: Sequence[str] = (),
        weights: Mapping[str, float] | None = None,
        factory: Callable[..., Any] | None = None,
        anything: Any = None,
        untyped=None,  # no annotation: its type is unknown, so it is checked
        **kwargs: Any,
    ) -> None: ...

    config = {
        "name": "test.loss",
        "names": ["evil.a", "os.path"],
        "weights": {"os.path": 1.0},
        "factory": "os.system",
        "anything": "os.getcwd",
        "untyped": "subprocess.run",
        "extra": "shutil.rmtree",
    }
    found = dict(importable_paths(config, owner=build))
    assert found == {
        "factory": "os.system",
        "anything": "os.getcwd",
        "untyped": "subprocess.run",
        "extra": "shutil.rmtree",
    }
    # Without the owner's signature, every dotted name of an installed package is suspect (as before).
    assert {"name", "names[1]"} <= set(dict(importable_paths(config)))


def test_the_walk_reads_the_signature_of_each_trusted_class_and_never_imports_an_untrusted_one() -> None:
    config = {
        "class_path": "torchbricks_lightning.bag_of_bricks.ClassificationHead",
        "init_args": {"num_classes": 2, "in_channels": 4, "features_name": "os.path", "targets_name": "test.y"},
    }
    assert list(importable_paths(config)) == [("class_path", config["class_path"])]

    module_name = "tests_never_imported_package"
    untrusted = {"class_path": f"{module_name}.Head", "init_args": {"monitor": "os.path"}}
    expected = [("class_path", f"{module_name}.Head"), ("init_args.monitor", "os.path")]  # its signature is unknown
    assert list(importable_paths(untrusted)) == expected
    assert module_name not in sys.modules
    with pytest.raises(UntrustedCheckpointError, match=rf"'{module_name}\.Head' at 'class_path'"):
        check_class_paths(untrusted)


# ------------------------------------------------------------------------------------------------ broken files
LOADERS_OF_BROKEN_FILES: dict[str, Callable[[Path], Any]] = {
    "read_checkpoint": read_checkpoint,
    "load_from_checkpoint": LightningBrickCollection.load_from_checkpoint,
    "load_brick_collection_weights": lambda path: load_brick_collection_weights(_recipe_bricks(), path),
}


@pytest.mark.parametrize("loader", list(LOADERS_OF_BROKEN_FILES))
def test_truncated_checkpoint(cli_checkpoint: Path, tmp_path: Path, loader: str) -> None:
    data = cli_checkpoint.read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as error:
        LOADERS_OF_BROKEN_FILES[loader](path)
    assert not isinstance(error.value, UntrustedCheckpointError)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip_format", "legacy_format"])
def test_checkpoint_truncated_anywhere(cli_checkpoint: Path, tmp_path: Path, legacy_format: bool) -> None:
    """Cut the file at every percent of its length: each cut is a CheckpointError saying it may be truncated."""
    source = tmp_path / "source.ckpt"
    checkpoint = torch.load(cli_checkpoint, weights_only=True)
    torch.save(checkpoint, source, _use_new_zipfile_serialization=not legacy_format)
    read_checkpoint(source)  # the whole file reads fine
    data = source.read_bytes()
    path = tmp_path / "truncated.ckpt"
    wrong = []
    for percent in range(1, 100):
        path.write_bytes(data[: len(data) * percent // 100])
        try:
            read_checkpoint(path)
        except CheckpointError as error:
            if isinstance(error, UntrustedCheckpointError) or "truncated" not in str(error):
                wrong.append(f"{percent}%: {type(error).__name__}: {str(error)[:100]}")
        except Exception as error:
            wrong.append(f"{percent}%: {type(error).__name__}: {error}")
        else:
            wrong.append(f"{percent}%: loaded")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("loader", list(LOADERS_OF_BROKEN_FILES))
def test_missing_checkpoint(tmp_path: Path, loader: str) -> None:
    path = tmp_path / "nowhere" / "run.ckpt"
    with pytest.raises(CheckpointError, match="does not exist"):
        LOADERS_OF_BROKEN_FILES[loader](path)


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return path


def _write_tensor(path: Path) -> Path:
    torch.save(torch.zeros(3), path)  # a valid torch file, but not a checkpoint dict
    return path


FOREIGN_FILES: dict[str, Callable[[Path], Path]] = {
    "empty": lambda folder: _write_text(folder / "empty.ckpt", ""),
    "text": lambda folder: _write_text(folder / "notes.txt", "hello, this is not a checkpoint"),
    "yaml_recipe": lambda folder: _write_text(folder / "recipe.yaml", RECIPE.read_text()),
    "zip": lambda folder: _write_zip(folder / "archive.zip"),
    "tensor": lambda folder: _write_tensor(folder / "tensor.pt"),
}


@pytest.mark.parametrize("kind", list(FOREIGN_FILES))
def test_a_file_that_is_not_a_checkpoint_gives_a_checkpoint_error(tmp_path: Path, kind: str) -> None:
    """A wrong path (a recipe, a text file) is a CheckpointError, not an 'arbitrary code' alarm or a KeyError."""
    path = FOREIGN_FILES[kind](tmp_path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert not isinstance(error.value, UntrustedCheckpointError), str(error.value)
    assert str(path) in str(error.value)


def test_cli_export_of_a_recipe_instead_of_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "model.onnx"
    assert exit_code(["export", "--ckpt_path", str(RECIPE), "--output", str(output)], tmp_path) == 2
    err = capsys.readouterr().err
    assert "not a PyTorch checkpoint" in err
    assert "arbitrary code" not in err


# ------------------------------------------------------------------------------------------------ other collections
def test_weights_load_into_the_same_bricks_built_in_python(cli_checkpoint: Path) -> None:
    bricks = _recipe_bricks()
    assert load_brick_collection_weights(bricks, cli_checkpoint) == ([], [])
    module = LightningBrickCollection.load_from_checkpoint(cli_checkpoint)
    torch.testing.assert_close(_logits(bricks, _images()), _logits(module, _images()))


def _other_bricks() -> BrickCollection:
    """The recipe with head0 renamed to 'digit' and an extra head1."""
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
            "backbone": BrickTrainable(nn.Conv2d(3, 8, 3), input_names=["normalized"], output_names=["features"]),
            "head1": ClassificationHead(num_classes=4, in_channels=8),
            "digit": ClassificationHead(num_classes=4, in_channels=8),
        }
    )


MISSING = [
    "digit.classify.model.fc.bias",
    "digit.classify.model.fc.weight",
    "head1.classify.model.fc.bias",
    "head1.classify.model.fc.weight",
]
UNEXPECTED = ["head0.classify.model.fc.bias", "head0.classify.model.fc.weight"]


def test_checkpoint_of_another_collection_lists_missing_and_unexpected_names(cli_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as error:
        load_brick_collection_weights(_other_bricks(), cli_checkpoint)
    message = str(error.value)
    assert f"Missing in the checkpoint: [{', '.join(MISSING)}]" in message
    assert f"unexpected in the checkpoint: [{', '.join(UNEXPECTED)}]" in message
    assert "shape mismatches: none" in message
    assert "strict=False" in message


def test_non_strict_loading_loads_the_matching_subset(cli_checkpoint: Path) -> None:
    bricks = _other_bricks()
    before = {name: value.clone() for name, value in bricks.state_dict().items()}
    missing, unexpected = load_brick_collection_weights(bricks, cli_checkpoint, strict=False)
    assert (missing, unexpected) == (MISSING, UNEXPECTED)

    saved = read_checkpoint(cli_checkpoint)["state_dict"]
    after = bricks.state_dict()
    for name in ("backbone.model.weight", "backbone.model.bias"):
        torch.testing.assert_close(after[name], saved[f"brick_collection.{name}"])
        assert not torch.equal(after[name], before[name])
    for name in MISSING:
        torch.testing.assert_close(after[name], before[name])


def test_shape_mismatch_fails_even_when_not_strict(cli_checkpoint: Path) -> None:
    bricks = _recipe_bricks()
    bricks["head0"] = ClassificationHead(num_classes=5, in_channels=8)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"head0\.classify\.model\.fc\.weight: checkpoint \(4, 8\) vs model"):
            load_brick_collection_weights(bricks, cli_checkpoint, strict=strict)


def test_load_from_checkpoint_with_a_missing_weight(cli_checkpoint: Path, tmp_path: Path) -> None:
    def edit(checkpoint: dict[str, Any]) -> None:
        del checkpoint["state_dict"]["brick_collection.backbone.model.bias"]

    path = _edited(cli_checkpoint, tmp_path / "partial.ckpt", edit)
    with pytest.raises(CheckpointError, match=r"brick_collection\.backbone\.model\.bias"):
        LightningBrickCollection.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"Missing in the checkpoint: \[backbone\.model\.bias\]"):
        load_brick_collection_weights(_recipe_bricks(), path)


def test_a_checkpoint_without_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "plain.ckpt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="no 'state_dict'") as error:
        load_brick_collection_weights(_recipe_bricks(), path)
    assert f"Checkpoint {str(path)!r} holds no 'state_dict' (its keys: ['epoch'])" in str(error.value)


# ------------------------------------------------------------------------------------------------ wrong arguments
def test_weights_load_only_into_a_collection_not_a_dict_of_bricks(cli_checkpoint: Path) -> None:
    """A dict of bricks is refused with the fix, before the file is read (it would be loaded but not runnable)."""
    bricks = dict(_recipe_bricks().items())
    with pytest.raises(BrickDefinitionError, match=r"got dict\. Wrap the bricks first") as error:
        load_brick_collection_weights(bricks, cli_checkpoint)  # type: ignore[arg-type]
    assert "BrickCollection(bricks)" in str(error.value)
    with pytest.raises(BrickDefinitionError, match="got list"):
        load_brick_collection_weights(list(bricks.values()), Path("nowhere.ckpt"))  # type: ignore[arg-type]


@pytest.mark.parametrize("bricks", [[], "bricks", None], ids=["list", "str", "none"])
def test_load_from_checkpoint_with_bricks_that_are_not_a_collection(cli_checkpoint: Path, bricks: Any) -> None:
    with pytest.raises(BrickDefinitionError, match="a BrickCollection or a dict of bricks, but got") as error:
        LightningBrickCollection.load_from_checkpoint(cli_checkpoint, brick_collection=bricks)
    assert type(bricks).__name__ in str(error.value)


# ------------------------------------------------------------------------------------------------ built in Python
@pytest.fixture
def python_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of a LightningBrickCollection built in Python (its bricks are not in the hyperparameters)."""
    return _python_checkpoint(tmp_path, LightningBrickCollection(boring_bricks()))


def _python_checkpoint(tmp_path: Path, module: LightningBrickCollection) -> Path:
    data = TensorDataset(torch.randn(8, N_FEATURES), torch.arange(8) % 3)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    path = tmp_path / "python.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_python_built_checkpoint_needs_its_bricks(python_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"load_from_checkpoint\(path, brick_collection=\.\.\.\)"):
        LightningBrickCollection.load_from_checkpoint(python_checkpoint)

    module = LightningBrickCollection.load_from_checkpoint(python_checkpoint, brick_collection=boring_bricks())
    saved = read_checkpoint(python_checkpoint)["state_dict"]
    for name, value in saved.items():
        torch.testing.assert_close(module.state_dict()[name], value, msg=name)

    wrong = boring_bricks()
    wrong["backbone"] = BrickTrainable(nn.Linear(N_FEATURES, 7), input_names=["processed"], output_names=["features"])
    with pytest.raises(CheckpointError, match=r"backbone\.model\.weight: checkpoint \(5, 5\) vs model \(7, 5\)"):
        LightningBrickCollection.load_from_checkpoint(python_checkpoint, brick_collection=wrong)
