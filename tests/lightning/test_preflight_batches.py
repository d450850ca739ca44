"""check_one_batch runs real batches of the training and the validation loaders through every alive brick, metrics
included, so bricks that do not fit the data (a head of 5 classes on ten-class labels) fail before anything is
written; and an error in a brick that reads a tuple batch says which item each batch name took."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.bag_of_bricks import ClassificationHead
from torchbricks_lightning.cli import main
from torchbricks_lightning.errors import ConfigError, RecipeError
from torchbricks_lightning.lightning import LightningBrickCollection, check_one_batch

N_FEATURES = 6


def _labels(first: list[int], n: int = 16) -> torch.Tensor:
    """``first`` then class 0: the first samples decide what a check of the first two samples would see."""
    return torch.tensor([*first, *([0] * (n - len(first)))])


class Data(pl.LightningDataModule):
    """Tuple batches (features, labels) of fixed labels; no validation loader unless ``validation`` labels."""

    def __init__(self, train: torch.Tensor, validation: torch.Tensor | None = None, batch_size: int = 16) -> None:
        super().__init__()
        self.train, self.validation, self.batch_size = train, validation, batch_size

    def _loader(self, labels: torch.Tensor) -> DataLoader[Any]:
        features = torch.randn(len(labels), N_FEATURES, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(features, labels), batch_size=self.batch_size)

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.train)

    def val_dataloader(self) -> Any:
        return self._loader(self.validation) if self.validation is not None else []


class NoValidation(Data):
    def val_dataloader(self) -> Any:
        return super(Data, self).val_dataloader()  # LightningDataModule's own: there is none


def _module(num_classes: int = 5, **kwargs: Any) -> LightningBrickCollection:
    return LightningBrickCollection(
        BrickCollection(
            {
                "backbone": BrickTrainable(nn.Linear(N_FEATURES, 8), input_names=["raw"], output_names=["features"]),
                "digit": ClassificationHead(num_classes=num_classes, in_channels=8),
            }
        ),
        **kwargs,
    )


def test_labels_outside_the_head_s_classes_later_in_the_training_batch_fail() -> None:
    """The first two samples are in range; a later one is not. It is found, and named with its brick."""
    with pytest.raises(RecipeError) as raised:
        check_one_batch(_module(num_classes=5), Data(_labels([1, 2, 0, 9, 3])))
    message = str(raised.value)
    # Without a validation loader (an empty one here), the validation graph runs first, on the training batch.
    assert "The bricks fail on samples of the first training batch in stage 'validation'" in message
    assert "ConfusionMatrixMetrics expected `targets` in [0, 5), but got values from 0 to 9" in message
    assert "While running brick 'digit/metrics'" in message


def test_the_validation_batch_is_checked_on_the_validation_graph() -> None:
    """Training labels fit the head; the validation loader holds a class the head does not have."""
    data = Data(_labels([1, 2, 3]), validation=_labels([0, 1, 7]))
    with pytest.raises(RecipeError, match=r"samples of the first validation batch in stage 'validation'") as raised:
        check_one_batch(_module(num_classes=5), data)
    assert "values from 0 to 7" in str(raised.value)
    assert check_one_batch(_module(num_classes=8), data)


def test_without_a_validation_loader_the_validation_graph_runs_on_the_training_batch() -> None:
    assert check_one_batch(_module(num_classes=5), NoValidation(_labels([1, 2, 3])))
    with pytest.raises(RecipeError, match=r"first training batch in stage 'validation'"):
        check_one_batch(_module(num_classes=5), NoValidation(_labels([1, 2, 0, 6])))


def test_an_empty_training_loader_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"The training loader yields no batch"):
        check_one_batch(_module(), Data(torch.zeros(0, dtype=torch.long)))


def test_a_collection_without_a_training_loss_is_refused_before_fit() -> None:
    module = LightningBrickCollection(
        {"backbone": BrickTrainable(nn.Linear(N_FEATURES, 8), input_names=["raw"], output_names=["features"])}
    )
    with pytest.raises(ConfigError, match=r"No loss is alive in the 'train' stage"):
        check_one_batch(module, Data(_labels([1])))


def test_a_wrong_batch_names_order_says_which_item_each_name_took() -> None:
    module = _module(batch_names=("targets", "raw"))
    with pytest.raises(RecipeError) as raised:
        check_one_batch(module, Data(_labels([1, 2])))
    message = str(raised.value)
    assert "While running brick 'backbone'" in message
    assert (
        "The batch is a tuple, named by batch_names in order: item 0 (float32, shape (16, 6)) -> 'targets', "
        "item 1 (int64, shape (16,)) -> 'raw'. The failing brick reads 'raw'."
    ) in message


def test_a_wrong_batch_names_order_is_explained_in_training_too(tmp_path: Path) -> None:
    """Without the pre-check, the error of the brick keeps its type and gets the note."""
    module = _module(batch_names=("targets", "raw"))
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    with pytest.raises(RuntimeError) as raised:
        trainer.fit(module, train_dataloaders=Data(_labels([1])).train_dataloader())
    notes = getattr(raised.value, "__notes__", [])
    assert any(note.startswith("While running brick 'backbone' in stage 'train'") for note in notes), notes
    assert any("item 1 (int64, shape (16,)) -> 'raw'" in note for note in notes), notes


def test_a_brick_that_does_not_read_the_batch_gets_no_batch_note() -> None:
    """The head's in_channels disagree with the backbone: the batch names are not the problem."""
    module = LightningBrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(N_FEATURES, 8), input_names=["raw"], output_names=["features"]),
            "digit": ClassificationHead(num_classes=5, in_channels=7),
        }
    )
    with pytest.raises(RecipeError) as raised:
        check_one_batch(module, Data(_labels([1])))
    assert "While running brick 'digit/classify'" in str(raised.value)
    assert "batch_names" not in str(raised.value)


# ------------------------------------------------------------------------------------------------ from the CLI
def test_a_head_with_too_few_classes_fails_in_the_cli_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: the digits recipe with a 5-class digit head on ten-class data."""
    recipe = yaml.safe_load((Path(__file__).parents[2] / "examples" / "configs" / "digits_multitask.yaml").read_text())
    recipe["model"]["brick_collection"]["digit"]["init_args"]["num_classes"] = 5
    del recipe["model"]["brick_collection"]["digit"]["init_args"]["class_names"]  # they name ten classes
    recipe["trainer"]["callbacks"] = [
        callback for callback in recipe["trainer"]["callbacks"] if "OnnxExport" not in callback["class_path"]
    ]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setattr(sys, "argv", ["torchbricks-lightning"])
        code = main(
            ["fit", "--config", str(path), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert "RecipeError: The bricks fail on samples of the first validation batch in stage 'validation'" in err
    assert "ConfusionMatrixMetrics expected `targets` in [0, 5), but got values from 0 to 9" in err
    assert "While running brick 'digit/metrics' in stage 'validation'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # no config.yaml, hparams.yaml, events
