"""read_predictions: a prediction folder back as whole arrays, on real predictions written by BrickPredictionWriter.

Under two processes (DDP) the same reader is checked in test_prediction_writer.py's DDP run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import N_FEATURES, boring_bricks, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickPredictionWriter, LightningBrickCollection, read_predictions
from torchbricks_lightning.errors import ConfigError

N_SAMPLES = 10
RAW = torch.randn(N_SAMPLES, N_FEATURES, generator=torch.Generator().manual_seed(3))


def _loader(order: list[int]) -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(TensorDataset(RAW), batch_size=4, sampler=order)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LightningBrickCollection]:
    """One prediction over two dataloaders: the first in reverse order (3 files), the second in order (3 files)."""
    torch.manual_seed(0)
    module = LightningBrickCollection(boring_bricks(), predict_output_names=["probabilities", "class_prediction"])
    folder = tmp_path_factory.mktemp("predictions")
    trainer = quiet_trainer(folder, callbacks=[BrickPredictionWriter(str(folder / "preds"))])
    reverse, forward = list(range(N_SAMPLES))[::-1], list(range(N_SAMPLES))
    trainer.predict(module, dataloaders=[_loader(reverse), _loader(forward)], return_predictions=False)
    return folder / "preds", module


def test_whole_arrays_come_back_in_the_order_of_the_dataset(predicted: tuple[Path, LightningBrickCollection]) -> None:
    folder, module = predicted
    with torch.no_grad():
        expected = module.brick_collection({"raw": RAW}, stage="inference")
    for dataloader in (0, 1):  # read in reverse order, or in order: the rows are the dataset's either way
        arrays = read_predictions(folder, dataloader=dataloader)
        assert list(arrays) == ["probabilities", "class_prediction"]
        assert (arrays["probabilities"].dtype, arrays["class_prediction"].dtype) == (np.float32, np.int64)
        np.testing.assert_allclose(arrays["probabilities"], expected["probabilities"].numpy(), rtol=1e-6)
        np.testing.assert_array_equal(arrays["class_prediction"], expected["class_prediction"].numpy())


def test_several_dataloaders_need_a_choice_and_an_unknown_one_is_named(
    predicted: tuple[Path, LightningBrickCollection],
) -> None:
    folder, _ = predicted
    with pytest.raises(ConfigError, match=r"has the outputs of dataloaders \[0, 1\]: pass dataloader= one of them"):
        read_predictions(folder)
    with pytest.raises(ConfigError, match=r"has no dataloader 2; it has dataloaders \[0, 1\]"):
        read_predictions(folder, dataloader=2)


def test_a_folder_without_a_prediction_or_with_a_missing_file_is_refused_with_the_fix(
    predicted: tuple[Path, LightningBrickCollection], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"has no index.json, so it holds no prediction\. Give the output_dir"):
        read_predictions(tmp_path)
    with pytest.raises(ConfigError, match=r"does not exist, so it holds no prediction"):
        read_predictions(tmp_path / "nowhere")
    (tmp_path / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match=r"is not the index of a prediction written by BrickPredictionWriter"):
        read_predictions(tmp_path)

    folder, _ = predicted
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "index.json").write_text((folder / "index.json").read_text())  # the index, without the files
    with pytest.raises(ConfigError, match=r"Cannot read the prediction file .*rank0/dl0-batch000000\.npz.*again"):
        read_predictions(copy, dataloader=0)
