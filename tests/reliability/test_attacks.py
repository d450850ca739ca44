"""Attacks on checkpoint loading: hostile checkpoints must never run anything, through any public loading path.

Each attack plants a gadget that creates a marker file when it runs (``touch``, a pickled ``Path.touch``, a module
that touches it when imported), in a checkpoint that loads cleanly with ``weights_only=True``. Each load then either
works without running anything or fails with ``UntrustedCheckpointError``; the marker never appears.

- The table of attacks found by an adversarial probe (issue 11), each through every public path: Python
  ``load_from_checkpoint`` and ``export_checkpoint_as_onnx``, and the command line's ``export`` and
  ``fit``/``validate``/``test``/``predict --ckpt_path`` (in-process; attack 6 also as a real subprocess).
- Controls: the same gadgets do run under Lightning's own ``load_from_checkpoint`` and ``Trainer``, so the attacks
  are live and the tests can fail.
- A generated suite: every slot reachable from ``LightningBrickCollection``'s signature through the brick, module,
  metric, optimiser, scheduler and datamodule classes of the package, each holding each gadget in turn.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import http.server
import inspect
import io
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml
from cli_runs import in_folder
from jsonargparse import ArgumentError

import torchbricks_lightning
import torchbricks_lightning.bag_of_bricks as bag_of_bricks
import torchbricks_lightning.datamodules as datamodules
from torchbricks_lightning import LightningBrickCollection, SafeCheckpointIO
from torchbricks_lightning.checkpoints.trust import allowed_kinds
from torchbricks_lightning.cli import TorchBricksCLI, main
from torchbricks_lightning.errors import CheckpointError, ConfigError, UntrustedCheckpointError
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx

RECIPE = Path(__file__).parent / "catalogue_configs" / "tiny_recipe.yaml"
INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"
REFUSED = "refused"
LOADED = "loaded"


# ------------------------------------------------------------------------------------------------ gadgets
class TouchPayload:
    """Unpickling this creates a file (for a pickle that ``torch.load(weights_only=False)`` would open)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _spec(class_path: str, **init_args: Any) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": init_args}


class Gadgets:
    """The gadgets of one test, all touching ``marker``; files they need live in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.marker = folder / "pwned"
        touch = f"touch {self.marker}"
        hub = folder / "hub"
        hub.mkdir(exist_ok=True)
        (hub / "hubconf.py").write_text(
            f"import pathlib\npathlib.Path({str(self.marker)!r}).touch()\ndef evil(): ...\n"
        )
        pickled = folder / "payload.pkl"
        torch.save({"payload": TouchPayload(self.marker)}, pickled)
        self.module_name = f"evil_module_{abs(hash(folder)) % 10**8}"
        (folder / f"{self.module_name}.py").write_text(
            f"import pathlib\npathlib.Path({str(self.marker)!r}).touch()\nclass Thing: ...\ndef thing(): ...\n"
        )
        system = _spec("torch.os.system", command=touch)
        popen = {"args": touch, "shell": True}
        self.class_specs: dict[str, Any] = {
            "torch.os.system": system,
            "torchvision os.system": _spec("torchvision.datasets.utils.os.system", command=touch),
            "torchmetrics os.system": _spec("torchmetrics.functional.image.lpips.os.system", command=touch),
            "torch subprocess.Popen": _spec("torch.utils.cpp_extension.subprocess.Popen", **popen),
            "subprocess.Popen": _spec("subprocess.Popen", **popen),
            "torch.hub.load local": _spec(
                "torch.hub.load", repo_or_dir=str(hub), model="evil", source="local", trust_repo=True
            ),
            "torch.load unsafe": _spec("torch.load", f=str(pickled), weights_only=False),
            "module imported": _spec(f"{self.module_name}.Thing"),
        }
        self.texts: dict[str, str] = {
            "YAML text torch.os.system": yaml.safe_dump(system, default_flow_style=True).strip(),
            "YAML text Popen": yaml.safe_dump(self.class_specs["subprocess.Popen"], default_flow_style=True).strip(),
        }
        self.names: dict[str, str] = {
            "name torch.os.system": "torch.os.system",
            "name of a module imported": f"{self.module_name}.thing",
        }

    def all(self) -> dict[str, Any]:
        return {**self.class_specs, **self.texts, **self.names}

    def touched(self, wait: float = 0.0) -> bool:
        """Whether the marker exists, waiting up to ``wait`` seconds (a ``Popen`` gadget touches it from a child
        process, a moment after it ran)."""
        deadline = time.monotonic() + wait
        while not self.marker.exists():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True


@pytest.fixture
def gadgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gadgets]:
    """The gadgets, with their folder importable (so the evil module could be imported by name)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = Gadgets(tmp_path)
    yield made
    sys.modules.pop(made.module_name, None)
    assert not made.touched(wait=0.03), "a gadget ran (its child process touched the marker late)"


def test_the_gadgets_are_live(gadgets: Gadgets) -> None:
    """Control: each class-spec gadget, built as jsonargparse builds a value typed ``Any``, does touch the marker.

    Except ``torch.hub.load``: jsonargparse 4.53 refuses to build it (its ``repo_or_dir`` has no annotation). It is
    planted anyway, for the versions that would.
    """
    from jsonargparse import ArgumentParser

    for name, spec in gadgets.class_specs.items():
        if name == "torch.hub.load local":
            continue
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--value", type=Any)
        with contextlib.suppress(Exception):
            parser.instantiate(parser.parse_object({"value": spec}))
        assert gadgets.touched(wait=5), name
        gadgets.marker.unlink()
        sys.modules.pop(gadgets.module_name, None)


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A checkpoint of a one-epoch CLI run of the tiny recipe (in-process), loaded: every attack edits a copy."""
    folder = tmp_path_factory.mktemp("good")
    recipe = _recipe_without_export(folder)
    with in_folder(folder):
        TorchBricksCLI(args=["fit", "--config", str(recipe), "--trainer.enable_progress_bar", "false"])
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    # What loading reads; the training state (loops, optimiser, callbacks) only slows each of the many copies down.
    kept = ("state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version", "epoch", "global_step")
    return {key: value for key, value in checkpoint.items() if key in kept or key.startswith("torchbricks_example")}


def _recipe_without_export(folder: Path) -> Path:
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]  # no ONNX export after fit
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _planted(good: dict[str, Any], folder: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    checkpoint = {**good, "hyper_parameters": copy.deepcopy(good["hyper_parameters"])}  # what the edits change
    edit(checkpoint)
    path = folder / "attack.ckpt"
    torch.save(checkpoint, path)
    return path


# ------------------------------------------------------------------------------------------------ loading paths
def _cli(arguments: list[str], folder: Path) -> str:
    """Run the command line in-process; REFUSED for an untrusted-checkpoint error, LOADED for success."""
    stderr = io.StringIO()
    with in_folder(folder), contextlib.redirect_stderr(stderr):
        try:
            code = main(arguments)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    text = stderr.getvalue()
    if code == 0:
        return LOADED
    if "error: UntrustedC" in text or ("Untrusted" not in text and "it was not loaded" in text):
        assert "Traceback" not in text, text[-3000:]
        return REFUSED
    return f"exit {code}: {text[-1500:]}"


def _python(load: Callable[[], Any]) -> str:
    try:
        load()
    except UntrustedCheckpointError:
        return REFUSED
    except Exception as error:  # reported by the caller, with the path and the gadget
        return f"{type(error).__name__}: {error}"
    return LOADED


def _subcommand(subcommand: str) -> Callable[[Path, Path], str]:
    def run(checkpoint: Path, folder: Path) -> str:
        arguments = [subcommand, "--config", str(_recipe_without_export(folder)), "--ckpt_path", str(checkpoint)]
        return _cli([*arguments, "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "2"], folder)

    return run


PATHS: dict[str, Callable[[Path, Path], str]] = {
    "load_from_checkpoint": lambda path, _: _python(lambda: LightningBrickCollection.load_from_checkpoint(path)),
    "export_checkpoint_as_onnx": lambda path, folder: _python(
        lambda: export_checkpoint_as_onnx(path, folder / "model.onnx")
    ),
    "cli export": lambda path, folder: _cli(["export", "--ckpt_path", str(path), "--output", "model.onnx"], folder),
    **{f"cli {subcommand}": _subcommand(subcommand) for subcommand in ("fit", "validate", "test", "predict")},
}
"""Every public way to load a checkpoint, each returning REFUSED, LOADED or what else happened."""


# ------------------------------------------------------------------------------------------------ the table
def _bricks(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint["hyper_parameters"]["brick_collection"]


def _extra_loss_brick(size_average: Any) -> dict[str, Any]:
    """A loss brick never alive, whose ``CrossEntropyLoss(size_average=...)`` (an untyped argument) holds a value."""
    loss = _spec("torch.nn.CrossEntropyLoss", size_average=size_average)
    return _spec(
        "torchbricks_lightning.BrickLoss",
        model=loss,
        input_names=["raw", "targets"],
        output_names=["extra_loss"],
        alive_stages="none",
    )


def _in_untyped_slot(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(checkpoint: dict[str, Any]) -> None:  # Conv2d's `device` has no annotation
        _bricks(checkpoint)["backbone"]["init_args"]["model"]["init_args"]["device"] = value

    return edit


def _under_legacy_key(key: str, gadget: Any) -> Callable[[dict[str, Any]], None]:
    def edit(checkpoint: dict[str, Any]) -> None:
        bricks = checkpoint["hyper_parameters"].pop("brick_collection")
        bricks["extra"] = _extra_loss_brick(gadget)
        checkpoint[key] = {"brick_collection": bricks}

    return edit


def _nested_by_hparams_name(gadget: Any) -> Callable[[dict[str, Any]], None]:
    def edit(checkpoint: dict[str, Any]) -> None:
        _bricks(checkpoint)["extra"] = _extra_loss_brick(gadget)
        checkpoint["hparams_name"] = "brick_collection"

    return edit


def _datamodule(gadget: Any) -> Callable[[dict[str, Any]], None]:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["datamodule_hyper_parameters"] = {
            "_instantiator": INSTANTIATOR,
            "_class_path": "torchbricks_lightning.datamodules.SyntheticImageDataModule",
            "num_classes": gadget,
        }

    return edit


TABLE: dict[str, Callable[[Gadgets], Callable[[dict[str, Any]], None]]] = {
    "1 compile_kwargs torch.os.system": lambda g: (
        lambda c: c["hyper_parameters"].update(compile_kwargs={"x": g.class_specs["torch.os.system"]})
    ),
    "2 torch Popen in an untyped slot": lambda g: _in_untyped_slot(g.class_specs["torch subprocess.Popen"]),
    "2 torch.hub.load local in an untyped slot": lambda g: _in_untyped_slot(g.class_specs["torch.hub.load local"]),
    "2 torch.load unsafe in an untyped slot": lambda g: _in_untyped_slot(g.class_specs["torch.load unsafe"]),
    "3 extra brick never alive": lambda g: (
        lambda c: _bricks(c).update(extra=_extra_loss_brick(g.class_specs["torch.os.system"]))
    ),
    "4 class spec as YAML text": lambda g: (
        lambda c: _bricks(c).update(extra=_extra_loss_brick(g.texts["YAML text torch.os.system"]))
    ),
    "5 under module_arguments": lambda g: _under_legacy_key("module_arguments", g.class_specs["torch.os.system"]),
    "5 under hparams": lambda g: _under_legacy_key("hparams", g.class_specs["torch.os.system"]),
    "5 nested by hparams_name": lambda g: _nested_by_hparams_name(g.class_specs["torch.os.system"]),
    "5 under datamodule_hyper_parameters": lambda g: _datamodule(g.class_specs["torch.os.system"]),
}
"""The probe's attacks 1-5, each an edit of a good checkpoint (attack 6 is the command line's paths below)."""


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("attack", list(TABLE))
def test_an_attack_of_the_table_runs_nothing(
    good: dict[str, Any], gadgets: Gadgets, tmp_path: Path, attack: str, path: str
) -> None:
    checkpoint = _planted(good, tmp_path, TABLE[attack](gadgets))
    outcome = PATHS[path](checkpoint, tmp_path)
    assert not gadgets.marker.exists(), f"{attack} ran through {path}"
    assert outcome == REFUSED, outcome
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("attack", ["2 torch Popen in an untyped slot", "3 extra brick never alive", "5 under hparams"])
def test_control_the_attack_runs_under_lightnings_own_load(
    good: dict[str, Any], gadgets: Gadgets, tmp_path: Path, attack: str
) -> None:
    """Lightning's own ``load_from_checkpoint`` (weights only) runs these, so the refusals above mean something."""
    checkpoint = _planted(good, tmp_path, TABLE[attack](gadgets))
    lightning_load = super(LightningBrickCollection, LightningBrickCollection).load_from_checkpoint
    with contextlib.suppress(Exception):
        lightning_load(checkpoint, weights_only=True)
    assert gadgets.touched(wait=5)
    gadgets.marker.unlink()


def test_compile_kwargs_are_plain_data_even_for_lightnings_own_load(
    good: dict[str, Any], gadgets: Gadgets, tmp_path: Path
) -> None:
    """Attack 1 ran because ``compile_kwargs`` took ``Any``. Typed as plain values, jsonargparse builds nothing
    there, whoever loads the checkpoint: Lightning's own load refuses the value as the wrong type."""
    checkpoint = _planted(good, tmp_path, TABLE["1 compile_kwargs torch.os.system"](gadgets))
    lightning_load = super(LightningBrickCollection, LightningBrickCollection).load_from_checkpoint
    with pytest.raises(ArgumentError, match="compile_kwargs"):
        lightning_load(checkpoint, weights_only=True)
    assert not gadgets.touched(wait=0.1)
    plain = _planted(good, tmp_path, lambda c: c["hyper_parameters"].update(compile_kwargs={"mode": "{a: b}"}))
    assert lightning_load(plain, weights_only=True).compile_kwargs == {"mode": "{a: b}"}  # text stays text


def test_attack_6_validate_with_a_recipe_merges_only_a_checked_checkpoint_recipe(
    good: dict[str, Any], gadgets: Gadgets, tmp_path: Path
) -> None:
    """``validate --config r.yaml --ckpt_path evil.ckpt`` as a real process: LightningCLI merges the checkpoint's
    recipe into the config; that recipe goes through the trust model first."""
    checkpoint = _planted(good, tmp_path, TABLE["3 extra brick never alive"](gadgets))
    recipe = _recipe_without_export(tmp_path)
    script = Path(sys.executable).with_name("torchbricks-lightning")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "torchbricks_lightning.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.run(
        [*command, "validate", "--config", str(recipe), "--ckpt_path", str(checkpoint)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert process.returncode == 2, process.stderr[-3000:]
    assert "error: UntrustedClassError:" in process.stderr
    assert "('torch.os.system') at 'brick_collection.extra.init_args.model.init_args.size_average" in process.stderr
    assert "Traceback" not in process.stderr
    assert not gadgets.marker.exists()


# ------------------------------------------------------------------------------------------------ 7: remote paths
@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def remote_payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A URL serving a pickle that touches a marker when loaded with weights_only=False; torch's hub cache in tmp."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    served = tmp_path / "served"
    served.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": TouchPayload(marker)}, served / "evil.ckpt")
    with _serve(served) as url:
        yield f"{url}/evil.ckpt", marker


def _trainer(**kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu", **kwargs
    )


def _module() -> LightningBrickCollection:
    from conftest import boring_bricks

    return LightningBrickCollection(boring_bricks())  # type: ignore[arg-type]


def test_control_lightning_loads_a_remote_checkpoint_with_pickles(remote_payload: tuple[str, Path]) -> None:
    url, marker = remote_payload
    with contextlib.suppress(Exception):
        _trainer().validate(_module(), [], ckpt_path=url)
    assert marker.exists()


@pytest.mark.parametrize("path", list(PATHS))
def test_attack_7_a_remote_ckpt_path_is_refused(remote_payload: tuple[str, Path], tmp_path: Path, path: str) -> None:
    url, marker = remote_payload
    if path.startswith("cli"):
        outcome = PATHS[path](url, tmp_path)  # type: ignore[arg-type]  # a URL where a path goes
        assert "is a URL; remote checkpoints are not loaded" in outcome
    else:
        with pytest.raises(CheckpointError, match="is a URL; remote checkpoints are not loaded"):
            LightningBrickCollection.load_from_checkpoint(url)
    assert not marker.exists()


def test_attack_7_safe_checkpoint_io_refuses_remote_paths(remote_payload: tuple[str, Path]) -> None:
    url, marker = remote_payload
    with pytest.raises(CheckpointError, match="is a URL"):
        _trainer(plugins=[SafeCheckpointIO()]).validate(_module(), [], ckpt_path=url)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ 8: swapped files
@pytest.fixture
def swapped_after_first_read(
    good: dict[str, Any], gadgets: Gadgets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A symlink to a good checkpoint, swapped to a hostile one right after the first ``torch.load`` (the race of
    issue 11, made deterministic): a loader that reads the path twice gets the hostile one the second time."""
    torch.save(good, tmp_path / "good.ckpt")
    evil = _planted(good, tmp_path, TABLE["3 extra brick never alive"](gadgets))
    link = tmp_path / "run.ckpt"
    link.symlink_to(tmp_path / "good.ckpt")
    real_load = torch.load
    calls = []

    def load_then_swap(*args: Any, **kwargs: Any) -> Any:
        result = real_load(*args, **kwargs)
        calls.append(args[0])
        if len(calls) == 1:
            link.unlink()
            link.symlink_to(evil)
        return result

    monkeypatch.setattr(torch, "load", load_then_swap)
    return link


@pytest.mark.parametrize("path", ["load_from_checkpoint", "cli validate"])
def test_attack_8_a_file_swapped_after_it_was_read_is_never_loaded(
    swapped_after_first_read: Path, gadgets: Gadgets, tmp_path: Path, path: str
) -> None:
    outcome = PATHS[path](swapped_after_first_read, tmp_path)
    assert not gadgets.marker.exists()
    assert outcome == LOADED, outcome  # the good checkpoint, read once


# ------------------------------------------------------------------------------------------------ 4: ckpt_path last
def test_ckpt_path_last_holding_a_pickle_payload_is_refused_without_a_traceback(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "payload": TouchPayload(marker)}, tmp_path / "checkpoints" / "last.ckpt")
    arguments = ["fit", "--config", str(_recipe_without_export(tmp_path)), "--ckpt_path", "last"]
    stderr = io.StringIO()
    with in_folder(tmp_path), contextlib.redirect_stderr(stderr):
        code = main([*arguments, "--trainer.enable_progress_bar", "false"])
    assert code == 2
    assert "error: UntrustedCheckpointError: Checkpoint" in stderr.getvalue()
    assert "last.ckpt' holds objects that are not tensors or plain values" in stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ generated suite
B = "torchbricks_lightning.bag_of_bricks."
TEMPLATES: dict[str, dict[str, Any]] = {
    # bricks, planted as brick_collection.extra (never alive where the class takes alive_stages)
    "torchbricks_lightning.core.bricks.BrickTrainable": {"model": _spec("torch.nn.Identity")},
    "torchbricks_lightning.core.bricks.BrickNotTrainable": {"model": _spec("torch.nn.Identity")},
    "torchbricks_lightning.core.bricks.BrickModule": {"model": _spec("torch.nn.Identity")},
    "torchbricks_lightning.core.bricks.BrickLoss": {"model": _spec("torch.nn.CrossEntropyLoss")},
    "torchbricks_lightning.core.metric_bricks.BrickMetricSingle": {
        "metric": _spec("torchmetrics.classification.MulticlassAccuracy", num_classes=4)
    },
    "torchbricks_lightning.core.metric_bricks.BrickMetrics": {
        "metric_collection": _spec(
            "torchmetrics.MetricCollection",
            metrics=[_spec("torchmetrics.classification.MulticlassAccuracy", num_classes=4)],
        )
    },
    "torchbricks_lightning.core.collection.BrickCollection": {},  # the module's brick_collection, around its bricks
    "torchbricks_lightning.bag_of_bricks.heads.ClassificationHead": {"num_classes": 4, "in_channels": 8},
    "torchbricks_lightning.bag_of_bricks.regression_head.RegressionHead": {"num_outputs": 2, "in_channels": 8},
    "torchbricks_lightning.bag_of_bricks.segmentation_head.SegmentationHead": {"num_classes": 3, "in_channels": 8},
    B + "depth_head.DepthHead": {"in_channels": 8},
    B + "detection.head.DetectionHead": {"num_classes": 3, "in_channels": 8, "stride": 4},
    B + "normals_head.NormalsHead": {"in_channels": 8},
    "torchbricks_lightning.core.visualization.BrickVisualization": {
        "visualizer": _spec("torchbricks_lightning.bag_of_bricks.visualizers.classification.ClassificationVisualizer")
    },
    # modules, planted as the model of a brick never alive
    "torch.nn.Conv2d": {"in_channels": 3, "out_channels": 8, "kernel_size": 3},
    "torch.nn.CrossEntropyLoss": {},
    "torch.nn.Linear": {"in_features": 2, "out_features": 2},
    "torchbricks_lightning.bag_of_bricks.preprocessors.Preprocessor": {},
    "torchbricks_lightning.bag_of_bricks.backbones.SmallConvNet": {"widths": [2]},
    "torchbricks_lightning.bag_of_bricks.backbones.TorchvisionBackbone": {"name": "resnet18"},
    "torchbricks_lightning.bag_of_bricks.backbones.BackboneResnet": {
        "resnet": _spec("torchvision.models.ResNet", block="torchvision.models.resnet.BasicBlock", layers=[1, 1, 1, 1])
    },
    "torchbricks_lightning.bag_of_bricks.heads.ImageClassifier": {"num_classes": 4, "n_features": 8},
    "torchbricks_lightning.bag_of_bricks.regression_head.Regressor": {"num_outputs": 2, "n_features": 8},
    "torchbricks_lightning.bag_of_bricks.segmentation_head.PixelClassifier": {"num_classes": 3, "n_features": 8},
    "torchbricks_lightning.bag_of_bricks.losses.MaskedCrossEntropyLoss": {},
    "torchbricks_lightning.bag_of_bricks.losses.MaskedRegressionLoss": {},
    B + "dense_regressor.DenseRegressor": {"out_channels": 1, "n_features": 8},
    B + "depth_head.DepthRegressor": {"n_features": 8},
    B + "depth_head.MaskedDepthLoss": {},
    B + "normals_head.NormalsRegressor": {"n_features": 8},
    B + "normals_head.CosineNormalLoss": {},
    "torchbricks_lightning.bag_of_bricks.visualizers.classification.ClassificationVisualizer": {},
    "torchbricks_lightning.bag_of_bricks.visualizers.segmentation.SegmentationVisualizer": {"num_classes": 3},
    "torchbricks_lightning.bag_of_bricks.visualizers.detection.DetectionVisualizer": {},
    "torchbricks_lightning.bag_of_bricks.visualizers.depth.DepthVisualizer": {},
    # metrics, planted as the metric of a metric brick never alive
    "torchmetrics.classification.MulticlassAccuracy": {"num_classes": 4},
    "torchbricks_lightning.bag_of_bricks.metrics.ConfusionMatrixMetrics": {"num_classes": 4},
    "torchbricks_lightning.bag_of_bricks.metrics.RegressionMetrics": {},
    B + "dense_metrics.DepthMetrics": {},
    B + "dense_metrics.NormalsMetrics": {},
    # optimisers and schedulers, planted as the module's optimizer and lr_scheduler
    "torch.optim.Adam": {"lr": 0.01},
    "torch.optim.lr_scheduler.StepLR": {"step_size": 1},
    # datamodules, planted as the checkpoint's datamodule_hyper_parameters
    "torchbricks_lightning.datamodules.synthetic.SyntheticImageDataModule": {},
    "torchbricks_lightning.datamodules.digits.DigitsDataModule": {},
    "torchbricks_lightning.datamodules.cifar10.CIFAR10DataModule": {"download": False},
    "torchbricks_lightning.datamodules.base.SplitDataModule": {"batch_size": 4, "seed": 0},
    "torchbricks_lightning.datamodules.arrays.ArrayDataModule": {"columns": {"x": torch.zeros(8, 2)}, "batch_size": 4},
    "torchbricks_lightning.datamodules.multitask.MultiTaskDataModule": {
        "datasets": {"shapes": _spec("torchbricks_lightning.datamodules.synthetic.SyntheticImageDataModule")}
    },
}
"""A valid configuration of each class whose slots are attacked, by its import path."""

_NEVER_ALIVE = {"input_names": ["raw"], "output_names": ["extra_out"], "alive_stages": "none"}


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)  # type: ignore[no-any-return]


def _package_classes() -> set[str]:
    """Every class the package exports that a recipe can build, by import path (abstract bases aside)."""
    found = set()
    for namespace in (torchbricks_lightning, bag_of_bricks, datamodules):
        for name in namespace.__all__:
            value = getattr(namespace, name)
            if (
                inspect.isclass(value)
                and issubclass(value, allowed_kinds())
                and value is not LightningBrickCollection
                and not inspect.isabstract(value)
                and name != "BrickInterface"
            ):
                found.add(f"{value.__module__}.{value.__qualname__}")
    return found


def test_every_class_of_the_package_is_attacked() -> None:
    missing = sorted(_package_classes() - set(TEMPLATES))
    assert not missing, f"add a template for {missing} to TEMPLATES"


def _host(class_path: str, init_args: dict[str, Any], dict_kwargs: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Plant ``class_path`` configured with ``init_args`` where the recipe holds a class of its kind."""
    node: dict[str, Any] = {"class_path": class_path, "init_args": init_args}
    if dict_kwargs:
        node["dict_kwargs"] = dict_kwargs
    cls = _class(class_path)
    takes = inspect.signature(cls).parameters

    def edit(checkpoint: dict[str, Any]) -> None:
        hyper_parameters = checkpoint["hyper_parameters"]
        if issubclass(cls, pl.LightningDataModule):
            checkpoint["datamodule_hyper_parameters"] = {
                "_instantiator": INSTANTIATOR,
                "_class_path": class_path,
                **init_args,
                **dict_kwargs,
            }
        elif issubclass(cls, torch.optim.Optimizer):
            hyper_parameters["optimizer"] = node
        elif issubclass(cls, torch.optim.lr_scheduler.LRScheduler):
            hyper_parameters["lr_scheduler"] = node
        elif cls is torchbricks_lightning.BrickCollection:
            bricks = hyper_parameters["brick_collection"]
            hyper_parameters["brick_collection"] = {**node, "init_args": {"bricks": bricks, **init_args}}
        elif issubclass(cls, torchbricks_lightning.BrickInterface | torchbricks_lightning.BrickCollection):
            extra = {key: value for key, value in _NEVER_ALIVE.items() if key in takes and key not in init_args}
            hyper_parameters["brick_collection"]["extra"] = {**node, "init_args": {**extra, **init_args}}
        elif issubclass(cls, allowed_kinds()[1]):  # a metric
            metric = {"metric": node, "input_names": ["raw", "targets"], "alive_stages": "none"}
            hyper_parameters["brick_collection"]["extra"] = _spec("torchbricks_lightning.BrickMetricSingle", **metric)
        else:  # a module
            hyper_parameters["brick_collection"]["extra"] = _spec(
                "torchbricks_lightning.BrickNotTrainable", model=node, **_NEVER_ALIVE
            )

    return edit


def _slots() -> list[tuple[str, str]]:
    """Every (class, argument) to attack: the module's own arguments, and each argument of each template class
    (``**kwargs`` as one more argument, given through ``dict_kwargs``)."""
    slots = [("LightningBrickCollection", name) for name in inspect.signature(LightningBrickCollection).parameters]
    for class_path in TEMPLATES:
        for name, parameter in inspect.signature(_class(class_path)).parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                slots.append((class_path, "**kwargs"))
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                slots.append((class_path, name))
    return slots


SLOTS = _slots()


def _slot_ids(slots: list[tuple[str, str]]) -> list[str]:
    return [f"{class_path.rsplit('.', 1)[-1]}.{argument}" for class_path, argument in slots]


def _type_of(class_path: str, argument: str) -> str:
    """What jsonargparse's treatment of a value depends on: the slot's annotation (and a None default)."""
    owner = LightningBrickCollection if class_path == "LightningBrickCollection" else _class(class_path)
    if argument == "**kwargs":
        return "**kwargs"
    parameter = inspect.signature(owner).parameters[argument]
    return f"{parameter.annotation!r}, default None: {parameter.default is None}"


FIRST_OF_ITS_TYPE = {_type_of(*slot): slot for slot in reversed(SLOTS)}.values()
"""One slot per distinct type: text and names, which jsonargparse parses (a few hundred milliseconds a load), are
planted in these; class specs, refused before any parsing, in every slot."""


def _plant(class_path: str, argument: str, gadget: Any) -> Callable[[dict[str, Any]], None]:
    if class_path == "LightningBrickCollection":
        return lambda checkpoint: checkpoint["hyper_parameters"].update({argument: gadget})
    init_args = dict(TEMPLATES[class_path])
    if argument == "**kwargs":
        return _host(class_path, init_args, {"extra_argument": gadget})
    return _host(class_path, {**init_args, argument: gadget}, {})


def test_each_host_loads_without_a_gadget(good: dict[str, Any], tmp_path: Path) -> None:
    """The planted classes are valid as configured, so a refusal below is the gadget's, not the host's."""
    failures = {}
    for class_path, init_args in TEMPLATES.items():
        checkpoint = _planted(good, tmp_path, _host(class_path, dict(init_args), {}))
        # strict=False: the checkpoint holds no weights for the planted brick
        load = functools.partial(LightningBrickCollection.load_from_checkpoint, checkpoint, strict=False)
        outcome = _python(load)
        if outcome != LOADED:
            failures[class_path] = outcome
    assert not failures, failures


@pytest.mark.parametrize(("class_path", "argument"), SLOTS, ids=_slot_ids(SLOTS))
def test_every_gadget_in_every_slot_runs_nothing(
    good: dict[str, Any], gadgets: Gadgets, tmp_path: Path, class_path: str, argument: str
) -> None:
    """Class specs are refused wherever they are; text and names are refused where jsonargparse would read them,
    and elsewhere are plain data (the load works or the value is refused as the wrong type)."""
    wrong = []
    planted = gadgets.all() if (class_path, argument) in FIRST_OF_ITS_TYPE else gadgets.class_specs
    for name, gadget in planted.items():
        checkpoint = _planted(good, tmp_path, _plant(class_path, argument, gadget))
        for path in ["load_from_checkpoint"]:  # export_checkpoint_as_onnx loads through it (the table tries both)
            outcome = PATHS[path](checkpoint, tmp_path)
            if gadgets.marker.exists():
                pytest.fail(f"{name} in {class_path}({argument}=...) ran through {path}")
            if name in gadgets.class_specs and outcome != REFUSED:
                wrong.append(f"{name} through {path}: {outcome[:300]}")
            elif outcome not in (REFUSED, LOADED) and not outcome.startswith("CheckpointError"):
                wrong.append(f"{name} through {path}: {outcome[:300]}")  # plain data of the wrong type, said so
        (tmp_path / "model.onnx").unlink(missing_ok=True)
    assert not wrong, "\n".join(wrong)


CLI_SLOTS = [
    ("LightningBrickCollection", "optimizer"),
    ("torchbricks_lightning.bag_of_bricks.backbones.TorchvisionBackbone", "**kwargs"),
    ("torchbricks_lightning.core.bricks.BrickTrainable", "model"),
]
"""Slots of the kinds the table does not cover (a callable, ``**kwargs``, a class), for the command line's paths
(each run costs a parser; the check is the same function as in Python)."""


@pytest.mark.parametrize("path", [path for path in PATHS if path.startswith("cli")])
@pytest.mark.parametrize(("class_path", "argument"), CLI_SLOTS, ids=_slot_ids(CLI_SLOTS))
def test_gadgets_through_the_command_line_run_nothing(
    good: dict[str, Any], gadgets: Gadgets, tmp_path: Path, class_path: str, argument: str, path: str
) -> None:
    for name in ("torch.os.system", "module imported"):
        checkpoint = _planted(good, tmp_path, _plant(class_path, argument, gadgets.class_specs[name]))
        outcome = PATHS[path](checkpoint, tmp_path)
        assert not gadgets.marker.exists(), f"{name} ran through {path}"
        assert outcome == REFUSED, f"{name} through {path}: {outcome}"


def test_an_hparams_file_is_not_a_way_around_the_check(good: dict[str, Any], gadgets: Gadgets, tmp_path: Path) -> None:
    """Lightning's ``hparams_file=`` replaces the checkpoint's arguments with a YAML file's, unchecked: refused."""
    checkpoint = _planted(good, tmp_path, lambda c: None)
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(
        yaml.safe_dump({"brick_collection": {"extra": _extra_loss_brick(gadgets.class_specs["torch.os.system"])}})
    )
    with pytest.raises(ConfigError, match=r"hparams_file=\.\.\.\) is not supported"):
        LightningBrickCollection.load_from_checkpoint(checkpoint, hparams_file=hparams)
