"""What a newcomer sees around a run: every YAML file the library saves loads with ``yaml.safe_load``, and after fit,
``trainer.test`` and ``trainer.predict`` show no warning that they could not act on."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.bag_of_bricks import Preprocessor, create_image_classification_head
from torchbricks_lightning.cli import TorchBricksCLI
from torchbricks_lightning.datamodules import SyntheticImageDataModule
from torchbricks_lightning.lightning import LightningBrickCollection, warning_filters

RECIPE = Path(__file__).parents[2] / "cli" / "configs" / "tiny_recipe.yaml"


def _module() -> LightningBrickCollection:
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    return LightningBrickCollection(
        BrickCollection(
            {
                "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
                "backbone": BrickTrainable(backbone, input_names=["normalized"], output_names=["features"]),
                "shape": create_image_classification_head(
                    4, 8, features_name="features", targets_name="targets", with_confusion_matrix=True
                ),
            }
        ),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        loss_weights={"shape/loss_ce": 1.0},
    )


def _data() -> SyntheticImageDataModule:
    return SyntheticImageDataModule(num_classes=4, image_size=8, n_train=32, n_val=16, n_test=16, batch_size=16)


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.yaml"))


def test_hparams_yaml_of_a_module_built_in_python_is_plain_yaml(tmp_path: Path) -> None:
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=loggers, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(_module(), datamodule=_data())
    files = _yaml_files(tmp_path)
    assert [path.name for path in files] == ["hparams.yaml", "hparams.yaml"]
    for path in files:
        hparams = yaml.safe_load(path.read_text())  # no !!python/tuple
        assert hparams["batch_names"] == ["raw", "targets"]
        assert hparams["loss_weights"] == {"shape/loss_ce": 1.0}


def test_config_and_hparams_yaml_of_a_cli_run_are_plain_yaml(tmp_path: Path) -> None:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["trainer"]["callbacks"] = []
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setattr(sys, "argv", ["torchbricks-lightning"])
        TorchBricksCLI(args=["fit", "--config", str(path), "--trainer.enable_progress_bar", "false"])
    files = [file for file in _yaml_files(tmp_path) if file != path]
    assert sorted(file.name for file in files) == ["config.yaml", "hparams.yaml"]
    for file in files:
        loaded = yaml.safe_load(file.read_text())
        model = loaded["model"] if file.name == "config.yaml" else loaded
        assert model["batch_names"] == ["raw", "targets"], file


def _no_filters_but_the_library_s() -> None:
    """Show every warning, each time, except what the library hides (what a user gets from its import)."""
    warnings.simplefilter("always")
    warning_filters.install()


def test_test_and_predict_after_fit_show_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    module, data = _module(), _data()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    caplog.clear()
    # Lightning's own logger at INFO, whatever an earlier test left it at: an absence must be able to fail.
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="pytorch_lightning"):
        _no_filters_but_the_library_s()
        trainer.test(module, datamodule=data)
        predictions = trainer.predict(module, datamodule=data)
    assert predictions
    # Lightning prints some of its notices through logging (e.g. "configure_callbacks will override existing
    # callbacks passed to Trainer" at every test and predict, before configure_callbacks was removed).
    assert [record.getMessage() for record in caplog.records] == []
    shown = [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in caught]
    # The bundled datamodules load in the main process when num_workers is 0, which Lightning suggests changing: a
    # warning a user can act on (num_workers=...), and the only one left.
    shown = [text for text in shown if "does not have many workers" not in text]
    assert shown == []


def test_the_hidden_lightning_warning_is_real_and_nothing_else_is_hidden() -> None:
    """Lightning does warn about LeafSpec here (else the filter can go), and the filter hides nothing else."""
    from pytorch_lightning.utilities.combined_loader import CombinedLoader

    def warned_while(action: Any) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            action()
        return [str(w.message) for w in caught]

    messages = warned_while(lambda: CombinedLoader([[1, 2]]))
    assert any("isinstance(treespec, LeafSpec)" in message for message in messages), messages
    with warnings.catch_warnings(record=True) as caught:
        _no_filters_but_the_library_s()
        CombinedLoader([[1, 2]])
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)  # not Lightning's
    assert [str(w.message) for w in caught] == ["`isinstance(treespec, LeafSpec)` is deprecated"]
