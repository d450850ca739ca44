"""The depth and surface-normal heads: their losses against numpy, training under a real Trainer with missing
pixels (the CSV log read back), the exported predictions in onnxruntime, YAML, and bad input.

One model with three heads (depth with the L1 loss, depth with the scale-invariant log loss, normals) is trained
once for the module and shared by the training and export tests.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import pytorch_lightning as pl
import torch
import yaml
from conftest import quiet_trainer
from jsonargparse import ArgumentParser
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchbricks_lightning import BrickCollection, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import (
    CosineNormalLoss,
    DepthHead,
    MaskedDepthLoss,
    NormalsHead,
    create_depth_head,
    create_normals_head,
)
from torchbricks_lightning.core.export import export_bricks
from torchbricks_lightning.errors import ConfigError, RecipeError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.preflight import check_one_batch
from torchbricks_lightning.multitask.score import metric_directions

pytestmark = pytest.mark.filterwarnings("ignore::pytorch_lightning.utilities.warnings.PossibleUserWarning")

DEPTH_KEYS = ("abs_rel", "rmse", "delta1", "delta2", "delta3")
NORMALS_KEYS = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
SIZE = 16


def _bricks() -> BrickCollection:
    """A stride-4 convolution as the backbone and the three heads, upsampling its 4x4 maps to 16x16."""
    return BrickCollection(
        {
            "backbone": BrickTrainable(nn.Conv2d(3, 8, 4, stride=4), input_names=["raw"], output_names=["features"]),
            "depth": create_depth_head(8, "features", "depth", upsample=4),
            "log_depth": DepthHead(in_channels=8, targets_name="depth", upsample=4, loss="silog"),
            "normals": NormalsHead(in_channels=8, targets_name="normals", upsample=4, hidden_channels=4),
        }
    )


class _Scenes(Dataset[dict[str, torch.Tensor]]):
    """Images whose depth and normals are functions of their pixels, with missing pixels (NaN): ~20% of each map,
    every pixel of sample 1, and the depth of samples 4-7 (a whole training batch without depth labels)."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.raw = torch.rand(n, 3, SIZE, SIZE, generator=generator)
        self.depth = 1.0 + 3.0 * self.raw.mean(dim=1)
        self.normals = nn.functional.normalize(self.raw - 0.4, dim=1)
        self.depth[torch.rand(n, SIZE, SIZE, generator=generator) < 0.2] = float("nan")
        self.normals[:, 2][torch.rand(n, SIZE, SIZE, generator=generator) < 0.2] = float("nan")
        self.depth[1] = float("nan")
        self.normals[1] = float("nan")
        self.depth[4:8] = float("nan")

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"raw": self.raw[index], "depth": self.depth[index], "normals": self.normals[index]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[BrickCollection, list[dict[str, float]]]:
    """The three-head model after 2 epochs of 4 steps, and the rows of its CSV log."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dense")
    module = LightningBrickCollection(_bricks(), optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    trainer = quiet_trainer(folder, max_epochs=2, logger=CSVLogger(folder, name="logs", version=0), log_every_n_steps=1)
    trainer.fit(
        module,
        train_dataloaders=DataLoader(_Scenes(16, seed=0), batch_size=4),
        val_dataloaders=DataLoader(_Scenes(8, seed=1), batch_size=4),
    )
    with (folder / "logs" / "version_0" / "metrics.csv").open(newline="") as file:
        rows = [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)]
    return module.brick_collection.eval(), rows


# ------------------------------------------------------------------------------------------------ losses
def _depth_pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    targets = 0.5 + 5 * torch.rand(3, 5, 6, generator=generator)
    preds = targets * torch.exp(0.2 * torch.randn(3, 5, 6, generator=generator))
    targets[torch.rand(3, 5, 6, generator=generator) < 0.3] = float("nan")
    targets[1] = float("nan")  # an image without a labelled pixel
    return preds.requires_grad_(), targets


def test_the_masked_l1_depth_loss_is_the_mean_over_labelled_pixels() -> None:
    preds, targets = _depth_pair()
    loss, count = MaskedDepthLoss("l1", return_count=True)(preds.detach(), targets)
    p, g = preds.detach().numpy(), targets.numpy()
    labelled = ~np.isnan(g)
    assert float(loss) == pytest.approx(float(np.abs(p - g)[labelled].mean()), rel=1e-6)
    assert float(count) == labelled.sum()


@pytest.mark.parametrize("silog_lambda", [0.0, 0.5, 1.0], ids=["lambda0", "lambda0.5", "lambda1"])
def test_the_scale_invariant_log_loss_is_eigens_per_image_mean(silog_lambda: float) -> None:
    preds, targets = _depth_pair()
    loss, count = MaskedDepthLoss("silog", silog_lambda, return_count=True)(preds, targets)
    per_image = []
    for p, g in zip(preds.detach().double().numpy(), targets.double().numpy(), strict=True):
        d = (np.log(p) - np.log(g))[~np.isnan(g)]
        if d.size:
            per_image.append(np.mean(d**2) - silog_lambda * np.mean(d) ** 2)
    assert float(loss.detach()) == pytest.approx(float(np.mean(per_image)), rel=1e-5)
    assert float(count) == 2.0, "the count is the images with a labelled pixel"
    scaled = MaskedDepthLoss("silog", silog_lambda)(preds.detach()[[0]] * 3.0, preds.detach()[[0]])
    assert float(scaled) == pytest.approx((1 - silog_lambda) * math.log(3.0) ** 2, abs=1e-6)


def test_the_cosine_loss_is_the_mean_of_one_minus_cos_over_labelled_pixels() -> None:
    generator = torch.Generator().manual_seed(0)
    preds = nn.functional.normalize(torch.randn(2, 3, 4, 5, generator=generator), dim=1).requires_grad_()
    targets = 2.0 * torch.randn(2, 3, 4, 5, generator=generator)  # lengths do not matter
    targets[0, 1, :2] = float("nan")
    loss, count = CosineNormalLoss(return_count=True)(preds, targets)
    p, t = preds.detach().double().numpy(), targets.double().numpy()
    labelled = ~np.isnan(t).any(axis=1)
    cosine = (p * t).sum(axis=1) / np.linalg.norm(np.nan_to_num(t), axis=1)
    assert float(loss.detach()) == pytest.approx(float((1 - cosine)[labelled].mean()), rel=1e-5)
    assert float(count) == labelled.sum() == 40 - 10


@pytest.mark.parametrize(
    ("loss", "preds", "targets"),
    [
        (MaskedDepthLoss("l1", return_count=True), torch.rand(2, 4, 4) + 0.1, torch.full((2, 4, 4), float("nan"))),
        (MaskedDepthLoss("silog", return_count=True), torch.rand(2, 4, 4) + 0.1, torch.zeros(2, 4, 4)),
        (CosineNormalLoss(return_count=True), torch.rand(2, 3, 4, 4), torch.full((2, 3, 4, 4), float("nan"))),
    ],
    ids=["l1", "silog", "cosine"],
)
def test_a_batch_without_a_labelled_pixel_gives_zero_connected_to_the_graph(
    loss: nn.Module, preds: torch.Tensor, targets: torch.Tensor
) -> None:
    preds.requires_grad_()
    value, count = loss(preds, targets)
    value.backward()
    assert (float(value.detach()), float(count)) == (0.0, 0.0)
    assert preds.grad is not None
    assert bool((preds.grad == 0).all())


# ------------------------------------------------------------------------------------------------ training
def test_each_head_trains_with_missing_pixels_and_logs_its_keys(
    trained: tuple[BrickCollection, list[dict[str, float]]],
) -> None:
    _, rows = trained
    keys = [f"{head}/{key}" for head in ("depth", "log_depth") for key in DEPTH_KEYS]
    keys += [f"normals/{key}" for key in NORMALS_KEYS]
    for stage in ("train", "validation"):
        for key in keys:
            values = [row[f"{stage}/{key}"] for row in rows if f"{stage}/{key}" in row]
            assert len(values) == 2, f"{stage}/{key}: one value per epoch"
            assert all(math.isfinite(value) for value in values), (key, values)
    steps = [row for row in rows if "train/loss_step" in row]
    assert len(steps) == 8
    assert all(math.isfinite(row["train/loss_step"]) for row in steps)
    first, last = (row["validation/normals/mean_angle"] for row in rows if "validation/normals/mean_angle" in row)
    assert last < first, "the normals head learns"


@pytest.mark.parametrize(
    ("output", "check"),
    [("depth/depth", lambda out: bool((out > 0).all())), ("normals/normals", lambda out: _unit(out))],
    ids=["depth", "normals"],
)
def test_the_exported_prediction_matches_eager_in_onnxruntime(
    trained: tuple[BrickCollection, list[dict[str, float]]], tmp_path: Path, output: str, check: Any
) -> None:
    collection, _ = trained
    example = {"raw": torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))}
    result = export_bricks(tmp_path / "head.onnx", collection, example, output_names=[output])
    assert (result.input_names, result.output_names) == (["raw"], [output])
    session = onnxruntime.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    other = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    (exported,) = session.run(None, {"raw": other.numpy()})
    with torch.no_grad():
        eager = collection({"raw": other}, Stage.EXPORT)[output]
    np.testing.assert_allclose(exported, eager.numpy(), atol=1e-5, rtol=1e-5)
    assert check(exported)


def _unit(normals: np.ndarray[Any, Any]) -> bool:
    return bool(np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5))


def test_the_heads_are_usable_from_yaml_by_class_path() -> None:
    recipe = """
    model:
      brick_collection:
        backbone:
          class_path: torchbricks_lightning.BrickTrainable
          init_args:
            model:
              class_path: torch.nn.Conv2d
              init_args: {in_channels: 3, out_channels: 8, kernel_size: 4, stride: 4}
            input_names: [raw]
            output_names: [features]
        depth:
          class_path: torchbricks_lightning.bag_of_bricks.DepthHead
          init_args: {in_channels: 8, upsample: 4, targets_name: depth, loss: silog, silog_lambda: 1.0}
        normals:
          class_path: torchbricks_lightning.bag_of_bricks.NormalsHead
          init_args: {in_channels: 8, upsample: 4, targets_name: normals, bin_width: 0.1}
    """
    parser = ArgumentParser()
    parser.add_class_arguments(LightningBrickCollection, "model")
    module = parser.instantiate(parser.parse_object(yaml.safe_load(recipe))).model
    collection = module.brick_collection
    assert collection.loss_names(Stage.TRAIN) == ["depth/loss_silog", "normals/loss_cosine"]
    assert collection.metric_keys() == [f"depth/{key}" for key in DEPTH_KEYS] + [
        f"normals/{key}" for key in NORMALS_KEYS
    ]
    assert collection.input_names(Stage.EXPORT) == ["raw"]
    assert collection.output_names(Stage.EXPORT) == ["features", "depth/depth", "normals/normals"]


def test_each_metric_says_its_direction_for_delta_m() -> None:
    directions = metric_directions(_bricks())
    assert {key: directions[f"depth/{key}"] for key in DEPTH_KEYS} == {
        "abs_rel": False,
        "rmse": False,
        "delta1": True,
        "delta2": True,
        "delta3": True,
    }
    assert [directions[f"normals/{key}"] for key in NORMALS_KEYS] == [False, False, True, True, True]


# ------------------------------------------------------------------------------------------------ bad input
HEAD = {"depth": "of the depth head on 'features' with targets 'depth'", "normals": "of the normals head on"}


BAD_TARGETS = [
    pytest.param(
        "depth", torch.rand(2, 1, 8, 8), r"of shape \(N, H, W\).*\(2, 1, 8, 8\).*targets\[:, 0\]", id="depth-channel"
    ),
    pytest.param(
        "depth",
        torch.rand(2, 64),
        r"of shape \(N, H, W\), one depth per pixel, but got shape \(2, 64\)",
        id="depth-rank",
    ),
    pytest.param(
        "depth", torch.ones(2, 8, 8, dtype=torch.long), r"float targets with NaN.*targets.float", id="depth-int"
    ),
    pytest.param(
        "depth", torch.rand(2, 16, 16), r"are 8x8 .* are 16x16.*multiply the head's upsample by 2", id="depth-larger"
    ),
    pytest.param(
        "depth", torch.rand(2, 4, 4), r"are 4x4. To fit them, divide the head's upsample by 2", id="depth-smaller"
    ),
    pytest.param(
        "depth", torch.rand(2, 12, 12), r"not a multiple of the feature maps' size, so no upsample", id="depth-no-fit"
    ),
    pytest.param(
        "depth", torch.rand(3, 8, 8), r"as many target maps as predictions, but got 3 targets for 2", id="depth-batch"
    ),
    pytest.param(
        "normals", torch.rand(2, 8, 8, 3), r"\(2, 8, 8, 3\).*channels-last.*permute\(0, 3, 1, 2\)", id="normals-last"
    ),
    pytest.param(
        "normals",
        torch.rand(2, 1, 8, 8),
        r"targets of shape \(N, 3, H, W\), a 3-D vector per pixel",
        id="normals-channels",
    ),
    pytest.param(
        "normals",
        torch.rand(2, 3, 16, 16),
        r"are 16x16. To fit them, multiply the head's upsample by 2",
        id="normals-larger",
    ),
]


@pytest.mark.parametrize(("head", "targets", "expected"), BAD_TARGETS)
def test_bad_targets_name_the_head_and_the_fix(head: str, targets: torch.Tensor, expected: str) -> None:
    factory = create_depth_head if head == "depth" else create_normals_head
    collection = BrickCollection(
        {
            "backbone": BrickTrainable(nn.Conv2d(3, 4, 2, stride=2), input_names=["raw"], output_names=["features"]),
            head: factory(4, "features", head, upsample=2),
        }
    )
    for stage in (Stage.TRAIN, Stage.VALIDATION):
        with pytest.raises(ConfigError, match=expected) as caught:
            collection({"raw": torch.rand(2, 3, 8, 8), head: targets}, stage)
        assert HEAD[head] in str(caught.value)


class _ChannelDepth(pl.LightningDataModule):
    """Depth maps with a channel dimension, (N, 1, H, W): the mistake a recipe's data most often makes."""

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        samples = [{"raw": torch.rand(3, 8, 8), "depth": torch.rand(1, 8, 8)} for _ in range(4)]
        return DataLoader(samples, batch_size=2)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self.train_dataloader()


def test_the_check_before_fit_names_the_brick_path_and_the_fix() -> None:
    collection = BrickCollection(
        {
            "backbone": BrickTrainable(nn.Conv2d(3, 4, 2, stride=2), input_names=["raw"], output_names=["features"]),
            "depth": create_depth_head(4, "features", "depth", upsample=2),
        }
    )
    with pytest.raises(RecipeError, match=r"targets of shape \(N, H, W\).*pass targets\[:, 0\]") as caught:
        check_one_batch(LightningBrickCollection(collection), _ChannelDepth())
    assert "While running brick 'depth/metrics' in stage 'validation'" in str(caught.value)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: create_depth_head(8, "f", "d", loss="l2"), "expected loss to be 'l1' or 'silog', but got 'l2'"),
        (lambda: DepthHead(8, loss="silog", silog_lambda=2.0), r"silog_lambda in \[0, 1\].*got 2.0"),
        (lambda: DepthHead(8, upsample=0), "upsample >= 1"),
        (lambda: NormalsHead(8, bin_width=0.7), "bin_width to be a positive number of degrees that divides 180"),
        (lambda: create_normals_head(0, "f", "n"), "in_channels >= 1"),
    ],
    ids=["loss", "lambda", "upsample", "bin-width", "channels"],
)
def test_bad_arguments_are_refused_when_built(build: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build()
