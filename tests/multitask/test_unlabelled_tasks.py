"""A task without labels, for a step or a whole epoch: every balancer stays finite and bounded, and says its state.

The balancers are checked one by one against the formula (a task whose loss is exactly 0 leaves uncertainty
weighting alone, DWA falls back to 1 where a ratio is 0 / 0), then all together under a real ``Trainer`` through an
epoch in which one task has no label at all.
"""

from __future__ import annotations

import csv
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_image_classification_head
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import (
    FAMO,
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    DeltaM,
    DynamicWeightAverage,
    GeometricLossStrategy,
    GradNorm,
    GramianBalancer,
    LossBalancer,
    NashMTL,
    PCGrad,
    RandomLossWeighting,
    StaticWeights,
    UncertaintyWeighting,
    UPGrad,
    functional,
)


def three_losses() -> BrickCollection:
    return BrickCollection(
        {
            name: BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=[f"loss_{name}"])
            for name in ("a", "b", "c")
        }
    )


# ------------------------------------------------------------------------------------------------ uncertainty
def test_uncertainty_weighting_leaves_a_task_without_labels_alone() -> None:
    # The case: 400 steps without a label for task a (its masked loss is exactly 0), then a labelled batch.
    collection = three_losses()
    balancer = UncertaintyWeighting()
    balancer.setup(collection, collection.loss_weights())
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.05)
    prediction = torch.ones((), requires_grad=True)
    for _ in range(400):
        optimizer.zero_grad()
        balancer({"loss_a": prediction * 0.0, "loss_b": prediction * 0.5, "loss_c": prediction * 2.0}).backward()
        optimizer.step()
    s_a, s_b, s_c = balancer.log_variances.detach().tolist()
    assert s_a == 0.0, "no label, no update of its log-variance"
    assert s_b == pytest.approx(math.log(0.5), abs=0.05)
    assert s_c == pytest.approx(math.log(2.0), abs=0.05)
    assert float(balancer.weights()["loss_a"]) == 0.5
    total = balancer({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(0.5), "loss_c": torch.tensor(2.0)})
    assert float(total.detach()) < 3.0, "the first labelled batch weighs as any other (it weighed 2.4e8)"


def test_uncertainty_weighting_keeps_its_log_variances_within_the_bound() -> None:
    collection = three_losses()
    balancer = UncertaintyWeighting(log_variance_bound=4.0)
    balancer.setup(collection, collection.loss_weights())
    optimizer = torch.optim.SGD(balancer.parameters(), lr=1.0)
    for _ in range(200):  # a loss of 1e-9 (labelled, nearly solved) pulls s_a towards log(1e-9) = -20.7
        optimizer.zero_grad()
        balancer({"loss_a": torch.tensor(1e-9), "loss_b": torch.tensor(100.0), "loss_c": torch.tensor(1.0)}).backward()
        optimizer.step()
    weights = {name: float(value) for name, value in balancer.weights().items()}
    assert weights["loss_a"] == pytest.approx(math.exp(4.0) / 2), "at the bound, not exp(20.7) / 2"
    assert weights["loss_b"] == pytest.approx(math.exp(-4.0) / 2)
    # The projection keeps the gradient: once task a's loss grows, s_a leaves the bound.
    for _ in range(5):
        optimizer.zero_grad()
        balancer({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(100.0), "loss_c": torch.tensor(1.0)}).backward()
        optimizer.step()
    balancer({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(1.0), "loss_c": torch.tensor(1.0)})
    assert -4.0 < float(balancer.log_variances[0]) < 4.0
    assert float(balancer.log_variances[1]) == 4.0


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"log_variance_bound": 0.0}, r"log_variance_bound > 0, but got 0.0"),
        ({"log_variance_bound": float("inf")}, r"log_variance_bound > 0, but got inf"),
        ({"initial_log_variance": 12.0}, r"within \[-10.0, 10.0\] \(log_variance_bound\), but got 12.0"),
    ],
)
def test_uncertainty_weighting_refuses_a_bad_bound(arguments: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        UncertaintyWeighting(**arguments)


# ------------------------------------------------------------------------------------------------ DWA
@pytest.mark.parametrize("first_mean_of_a", [None, 0.0, float("nan")], ids=["missing", "zero", "nan"])
def test_dwa_gives_a_task_without_a_ratio_the_weight_1_and_the_others_share_the_rest(
    first_mean_of_a: float | None,
) -> None:
    collection = three_losses()
    balancer = DynamicWeightAverage(temperature=2.0)
    balancer.setup(collection, collection.loss_weights())
    first = {"loss_b": 1.0, "loss_c": 2.0}
    if first_mean_of_a is not None:
        first["loss_a"] = first_mean_of_a
    for means in (first, {"loss_a": 0.5, "loss_b": 0.5, "loss_c": 1.8}):
        balancer.on_train_epoch_start()
        balancer.on_train_epoch_end(means)
    balancer.on_train_epoch_start()
    weights = {name: float(value) for name, value in balancer.weights().items()}
    exps = {"loss_b": math.exp(0.5 / 1.0 / 2.0), "loss_c": math.exp(1.8 / 2.0 / 2.0)}
    expected = {"loss_a": 1.0, **{name: 2 * value / sum(exps.values()) for name, value in exps.items()}}
    assert weights == pytest.approx(expected, rel=1e-6)
    total = balancer({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(1.0), "loss_c": torch.tensor(1.0)})
    assert float(total) == pytest.approx(3.0, rel=1e-6), "the weights still sum to K"
    # Once both of its last two means are there, task a has its ratio again.
    balancer.on_train_epoch_end({"loss_a": 0.25, "loss_b": 0.5, "loss_c": 1.8})
    balancer.on_train_epoch_start()
    assert float(balancer.weights()["loss_a"]) != pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ descriptions
def test_every_balancer_describes_its_state_for_an_error_message() -> None:
    collection = three_losses()
    uncertainty = UncertaintyWeighting(loss_names=["loss_a", "loss_b"])
    uncertainty.setup(collection, collection.loss_weights())
    with torch.no_grad():
        uncertainty.log_variances.copy_(torch.tensor([-2.0, 0.5]))
    assert uncertainty.describe_state() == (
        "UncertaintyWeighting: weights {'loss_a': 3.69453, 'loss_b': 0.303265}; log_variances {'loss_a': -2, "
        "'loss_b': 0.5} (bound 10)"
    )
    dwa = DynamicWeightAverage()
    dwa.setup(collection, collection.loss_weights())
    dwa.on_train_epoch_end({"loss_a": 0.5, "loss_b": float("nan"), "loss_c": 2.0})
    assert dwa.describe_state() == (
        "DynamicWeightAverage: weights {'loss_a': 1, 'loss_b': 1, 'loss_c': 1}; epoch means two epochs ago "
        "{'loss_a': 0, 'loss_b': 0, 'loss_c': 0}, one epoch ago {'loss_a': 0.5, 'loss_b': 0, 'loss_c': 2} "
        "(0: missing), 1 epochs seen, temperature 2"
    )
    pcgrad = PCGrad("features")
    pcgrad.setup(digit_bricks(), {})
    assert pcgrad.describe_state() == (
        "PCGrad: weights {'digit/loss_ce': 1, 'parity/loss_ce': 1}; shared tensor 'features', last step's "
        "coefficients {'digit/loss_ce': 1, 'parity/loss_ce': 1} with 0 conflicting pairs, 0 projected steps"
    )


# ------------------------------------------------------------------------------------------------ under a Trainer
def digit_bricks() -> BrickCollection:
    torch.manual_seed(0)
    return BrickCollection(
        {
            "backbone": BrickTrainable(
                nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU()),
                input_names=["raw"],
                output_names=["features"],
            ),
            "digit": create_image_classification_head(10, 16, "features", "targets"),
            "parity": create_image_classification_head(2, 16, "features", "parity"),
        }
    )


class _DigitsUnlabelledInEpoch(Dataset[dict[str, torch.Tensor]]):
    """64 digits whose digit labels are all missing in epoch ``unlabelled_epoch`` (the sampler sets the epoch)."""

    def __init__(self, unlabelled_epoch: int) -> None:
        data = DigitsDataModule()
        data.setup()
        self.split = {name: tensor[:64] for name, tensor in data.splits["train"].items()}
        self.unlabelled_epoch, self.epoch = unlabelled_epoch, 0

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = {name: tensor[index] for name, tensor in self.split.items()}
        if self.epoch == self.unlabelled_epoch:
            sample["targets"] = torch.tensor(-100)
        return sample


class _EpochSampler(Sampler[int]):
    """The dataset in order; Lightning's ``set_epoch`` at each epoch start tells the dataset which epoch it is."""

    def __init__(self, dataset: _DigitsUnlabelledInEpoch) -> None:
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.dataset)))

    def __len__(self) -> int:
        return len(self.dataset)


BALANCERS: dict[str, Callable[[], LossBalancer]] = {
    "static": StaticWeights,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "pcgrad": lambda: PCGrad("features"),
    "famo": FAMO,
    "rlw": RandomLossWeighting,
    "gls": GeometricLossStrategy,
    "mgda": MGDA,
    "imtlg": IMTLG,
    "aligned_mtl": AlignedMTL,
    "cagrad": CAGrad,
    "nash_mtl": NashMTL,
    "upgrad": UPGrad,
    "upgrad_parameters": lambda: UPGrad(source="parameters"),
    "gradnorm": GradNorm,
    "gramian": lambda: GramianBalancer(functional.upgrad_weights, source="parameters"),
}


def test_the_toolbox_has_no_balancer_left_out_of_the_trainer_test() -> None:
    import torchbricks_lightning.multitask as multitask

    balancers = {
        name
        for name in multitask.__all__
        if isinstance(getattr(multitask, name), type)
        and issubclass(getattr(multitask, name), LossBalancer)
        and getattr(multitask, name) is not LossBalancer
    }
    tested = {type(make()).__name__ for make in BALANCERS.values()}
    assert balancers == tested, "add the new balancer to BALANCERS"


@pytest.mark.parametrize("kind", list(BALANCERS))
def test_every_balancer_trains_through_an_epoch_without_labels_for_a_task(kind: str, tmp_path: Path) -> None:
    # Epoch 0 has no digit label: its epoch mean is missing, which DWA's first ratio (epoch 2) divides by, and
    # uncertainty weighting's s_digit would drift by lr per step. check_finite_loss is on: a NaN total raises.
    dataset = _DigitsUnlabelledInEpoch(unlabelled_epoch=0)
    balancer = BALANCERS[kind]()
    module = LightningBrickCollection(
        digit_bricks(), loss_balancer=balancer, optimizer=functools.partial(torch.optim.Adam, lr=0.2)
    )
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="logs", version=0),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(dataset, batch_size=8, sampler=_EpochSampler(dataset)))
    assert trainer.current_epoch == 4, "trained to the end"
    with (tmp_path / "logs" / "version_0" / "metrics.csv").open(newline="") as file:
        rows = [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)]
    totals = [row["train/loss_step"] for row in rows if "train/loss_step" in row]
    assert len(totals) == 32
    assert all(math.isfinite(total) for total in totals)
    # A combination coefficient (a Gramian balancer's) is 0 for a task without labels: digit's, in epoch 0.
    coefficients = isinstance(balancer, GramianBalancer) and not isinstance(balancer, GradNorm)
    for name in ("digit/loss_ce", "parity/loss_ce"):
        weights = [row[f"train/balance/{name}"] for row in rows if f"train/balance/{name}" in row]
        assert weights
        if coefficients and name == "digit/loss_ce":
            assert weights[:8] == [0.0] * 8, "no label in epoch 0: no part in the combination"
            weights = weights[8:]
        assert all(math.isfinite(weight) and 0 < weight <= math.exp(10.0) / 2 for weight in weights)
    if kind == "uncertainty":  # no label, no update: the weight of the first 8 steps is the initial one
        digit = [row["train/balance/digit/loss_ce"] for row in rows if "train/balance/digit/loss_ce" in row]
        assert digit[:8] == [0.5] * 8
        assert float(balancer.log_variances.detach().abs().max()) <= 10.0
    if kind == "dwa":  # epoch 2: digit has no ratio (its epoch-0 mean is missing), parity alone shares 1
        dwa = [row["train/balance/digit/loss_ce"] for row in rows if "train/balance/digit/loss_ce" in row]
        parity = [row["train/balance/parity/loss_ce"] for row in rows if "train/balance/parity/loss_ce" in row]
        assert dwa[:3] == [1.0, 1.0, 1.0]
        assert parity[:3] == [1.0, 1.0, 1.0]
        assert dwa[3] != 1.0, "epoch 3: both of digit's last means are there"


# ------------------------------------------------------------------------------------------------ metrics and Δm
def test_delta_m_leaves_out_a_task_without_labels_and_warns_once_naming_it() -> None:
    # The example: task a is at -33.3% of its baseline, task b had no label (accuracy 0 counted as -100%).
    score = DeltaM({"a/accuracy": 0.9, "b/accuracy": 0.8})
    metrics = {"a/accuracy": torch.tensor(0.6), "b/accuracy": torch.tensor(float("nan"))}
    with pytest.warns(UserWarning, match=r"Δm leaves out the metric 'b/accuracy': it is NaN") as caught:
        first = score(metrics)
    assert len(caught) == 1
    assert float(first) == pytest.approx(-33.333333, rel=1e-6), "not -66.7%"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next epoch says nothing
        assert float(score(metrics)) == pytest.approx(-33.333333, rel=1e-6)
    assert math.isnan(float(score({"b/accuracy": torch.tensor(float("nan"))}))), "no metric left: no Δm"


def test_a_validation_without_labels_for_a_task_logs_its_metric_as_nan_and_leaves_it_out_of_delta_m() -> None:
    data = DigitsDataModule()
    data.setup()
    split = {**data.splits["val"], "targets": torch.full_like(data.splits["val"]["targets"], -100)}
    baselines = {"digit/accuracy": 0.5, "parity/accuracy": 0.75}
    module = LightningBrickCollection(digit_bricks(), delta_m=DeltaM(baselines))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match=r"Δm leaves out the metric 'digit/accuracy'"):
        (logged,) = trainer.validate(module, dataloaders=DataLoader(_Samples(split), batch_size=64), verbose=False)
    assert math.isnan(logged["validation/digit/accuracy"]), "missing, not an accuracy of 0"
    parity = logged["validation/parity/accuracy"]
    assert 0 < parity < 1
    assert logged["validation/delta_m"] == pytest.approx(100 * (parity - 0.75) / 0.75, rel=1e-5)


class _Samples(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["raw"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}
