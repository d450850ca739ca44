"""The Gramian balancers: the two sources' combinations against hand computations, a task without labels, and every
method under a real ``Trainer`` on the digits, logging its coefficients and resuming exactly from a checkpoint.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import quiet_trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable
from torchbricks_lightning.bag_of_bricks import create_image_classification_head
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    GradNorm,
    GramianBalancer,
    NashMTL,
    PCGrad,
    UPGrad,
)
from torchbricks_lightning.multitask.functional import mgda_weights

CLASSES: dict[str, Callable[..., GramianBalancer]] = {
    "mgda": MGDA,
    "imtlg": IMTLG,
    "aligned": AlignedMTL,
    "cagrad": CAGrad,
    "nash": NashMTL,
    "upgrad": UPGrad,
    "pcgrad": PCGrad,
    "gradnorm": GradNorm,
}


class Head(nn.Module):
    """A task: ``L = mean((x @ w - y)^2)`` through a small non-linear layer, so the sources' gradients differ."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.layer = nn.Linear(4, 3)
        with torch.no_grad():
            self.layer.weight.copy_(torch.randn(3, 4, generator=generator))
        self.target = torch.randn(3, generator=generator)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return ((torch.tanh(self.layer(features)) - self.target) ** 2).mean()


def three_tasks(zero_task: bool = False) -> BrickCollection:
    torch.manual_seed(0)
    losses = {
        name: BrickLoss(Head(seed), input_names=["features"], output_names=[f"loss_{name}"], loss_weight=weight)
        for name, seed, weight in (("a", 1, 1.0), ("b", 2, 0.5), ("c", 3, 2.0))
    }
    if zero_task:  # task c has no label in the batch: its (masked) loss is exactly 0
        losses["c"] = BrickLoss(_Zero(), input_names=["features"], output_names=["loss_c"])
    trunk = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4), nn.Tanh())
    return BrickCollection(
        {"backbone": BrickTrainable(trunk, input_names=["raw"], output_names=["features"]), **losses}
    )


class _Zero(nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.sum() * 0.0


class _Pair(nn.Module):
    def forward(self, features: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return ((features + low) ** 2).mean()


def _step(collection: BrickCollection, balancer: GramianBalancer, raw: torch.Tensor) -> None:
    balancer.setup(collection, collection.loss_weights())
    with balancer.training_pass():
        outputs = collection({"raw": raw}, Stage.TRAIN)
    balancer({name: outputs[name] for name in balancer.loss_names}).backward()


def _task_gradients(collection: BrickCollection, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand: each weighted task loss's gradient on the trunk's parameters and on the shared tensor (flat)."""
    params = list(collection["backbone"].parameters())
    outputs = collection({"raw": raw}, Stage.TRAIN)
    weights = collection.loss_weights()
    by_parameters, by_representation = [], []
    for name in ("loss_a", "loss_b", "loss_c"):
        term = weights[name] * outputs[name]
        grads = torch.autograd.grad(term, [*params, outputs["features"]], retain_graph=True)
        by_parameters.append(torch.cat([grad.reshape(-1) for grad in grads[:-1]]))
        by_representation.append(grads[-1].reshape(-1))
    return torch.stack(by_parameters), torch.stack(by_representation)


def _trunk_gradient(collection: BrickCollection) -> torch.Tensor:
    return torch.cat([param.grad.reshape(-1) for param in collection["backbone"].parameters()])


# ------------------------------------------------------------------------------------------------ the two sources
def test_the_parameters_source_gives_the_trunk_exactly_the_combination_of_its_task_gradients() -> None:
    raw = torch.randn(6, 3)
    jacobian, _ = _task_gradients(three_tasks(), raw)
    gram = (jacobian @ jacobian.T).double()
    expected_coefficients = mgda_weights(gram)
    assert (expected_coefficients > 0).sum() >= 2, "a combination, not one task's gradient"

    collection, reference = three_tasks(), three_tasks()
    balancer = MGDA(source="parameters")
    _step(collection, balancer, raw)
    logged = balancer.logged_values()
    coefficients = torch.tensor([float(logged[name]) for name in ("loss_a", "loss_b", "loss_c")], dtype=torch.float64)
    torch.testing.assert_close(coefficients, expected_coefficients, rtol=1e-5, atol=1e-7)
    combined = coefficients.float() @ jacobian
    torch.testing.assert_close(_trunk_gradient(collection), combined, rtol=1e-5, atol=1e-7)
    # The heads keep their own static-weighted gradients.
    outputs = reference({"raw": raw}, Stage.TRAIN)
    reference.total_loss(outputs).backward()
    for name in ("a", "b", "c"):
        torch.testing.assert_close(collection[name].model.layer.weight.grad, reference[name].model.layer.weight.grad)
    assert float(logged["conflicts"]) == int((gram.triu(1) < 0).sum())


def test_the_representation_source_combines_the_shared_tensors_gradients_and_differs_from_the_parameters() -> None:
    raw = torch.randn(6, 3)
    _, on_features = _task_gradients(three_tasks(), raw)
    expected = mgda_weights((on_features @ on_features.T).double())
    by_source = {}
    for source in ("representation", "parameters"):
        balancer = MGDA(source=source)
        _step(three_tasks(), balancer, raw)
        by_source[source] = [float(value) for name, value in balancer.logged_values().items() if name != "conflicts"]
    assert by_source["representation"] == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-7)
    assert by_source["representation"] != pytest.approx(by_source["parameters"], abs=1e-3), "the source matters"


@pytest.mark.parametrize("source", ["representation", "parameters"])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_a_task_without_labels_gets_coefficient_0_and_the_gradients_stay_finite(kind: str, source: str) -> None:
    collection = three_tasks(zero_task=True)
    balancer = CLASSES[kind](source=source)
    _step(collection, balancer, torch.randn(6, 3))
    logged = {name: float(value) for name, value in balancer.logged_values().items()}
    assert all(math.isfinite(value) for value in logged.values())
    if kind == "gradnorm":  # its weight stays where it was; the other tasks' move
        assert logged["loss_c"] == 1.0
        assert float(balancer.initial_losses[2]) == 0.0, "no labelled loss seen for c"
    else:
        assert logged["loss_c"] == 0.0
    assert logged["loss_a"] > 0
    assert logged["loss_b"] > 0
    assert torch.isfinite(_trunk_gradient(collection)).all()


def test_a_bad_source_or_a_skip_connection_around_the_shared_tensor_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"source to be one of \['representation', 'parameters'\], but got 'params'"):
        MGDA(source="params")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="GramianBalancer needs a weighting"):
        GramianBalancer()
    skip = BrickCollection(
        {
            "stem": BrickTrainable(nn.Linear(3, 4), input_names=["raw"], output_names=["low"]),
            "backbone": BrickTrainable(nn.Linear(4, 4), input_names=["low"], output_names=["features"]),
            "a": BrickLoss(Head(1), input_names=["features"], output_names=["loss_a"]),
            "b": BrickLoss(_Pair(), input_names=["features", "low"], output_names=["loss_b"]),
            "c": BrickLoss(Head(3), input_names=["features"], output_names=["loss_c"]),
        }
    )
    LightningBrickCollection(skip, loss_balancer=UPGrad())  # on the representation: b's skip adds its gradient
    with pytest.raises(ConfigError, match=r"brick 'b' reads \['low'\] from the trunk upstream of 'features'"):
        LightningBrickCollection(skip, loss_balancer=UPGrad(source="parameters"))


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


VARIANTS = {
    **{kind: functools.partial(make) for kind, make in CLASSES.items()},
    "upgrad_parameters": functools.partial(UPGrad, source="parameters"),
    "gradnorm_parameters": functools.partial(GradNorm, source="parameters"),
}
STEPS, CHECKPOINT_STEP, BATCHES = 6, 4, 3  # two epochs of 3 batches; the checkpoint is mid-epoch 1


def _fit(folder: Path, kind: str, ckpt_path: Path | None = None) -> LightningBrickCollection:
    module = LightningBrickCollection(
        digit_bricks(), loss_balancer=VARIANTS[kind](), optimizer=functools.partial(torch.optim.Adam, lr=0.05)
    )
    checkpoints = ModelCheckpoint(dirpath=folder / "checkpoints", every_n_train_steps=CHECKPOINT_STEP, save_top_k=-1)
    trainer = quiet_trainer(
        folder,
        max_steps=STEPS,
        limit_train_batches=BATCHES,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=CSVLogger(folder, name="logs", version=0),
        log_every_n_steps=1,
        enable_checkpointing=True,
        callbacks=[checkpoints],
    )
    datamodule = DigitsDataModule(batch_size=32, labelled_fraction=0.3)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    assert trainer.global_step == STEPS
    return module


def _balance_rows(folder: Path) -> list[dict[str, float]]:
    with (folder / "logs" / "version_0" / "metrics.csv").open(newline="") as file:
        rows = [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)]
    return [
        {key: value for key, value in row.items() if key.startswith("train/balance/") or key == "step"}
        for row in rows
        if "train/balance/conflicts" in row
    ]


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_every_gramian_balancer_trains_logs_its_coefficients_and_resumes_exactly(kind: str, tmp_path: Path) -> None:
    full = _fit(tmp_path / "full", kind)
    logged = _balance_rows(tmp_path / "full")
    assert [row["step"] for row in logged] == list(range(STEPS))
    for name in ("digit/loss_ce", "parity/loss_ce"):
        values = [row[f"train/balance/{name}"] for row in logged]
        assert all(math.isfinite(value) and value >= 0 for value in values), values
        assert any(value > 0 for value in values)
    if kind not in ("pcgrad", "gradnorm", "gradnorm_parameters"):  # weights that change with the gradients
        pairs = {(row["train/balance/digit/loss_ce"], row["train/balance/parity/loss_ce"]) for row in logged}
        assert len(pairs) > 1, "coefficients that follow the gradients"
    if kind.startswith("gradnorm"):
        weights = full.loss_balancer.task_weights
        assert float(weights.sum()) == pytest.approx(2.0, rel=1e-6), "renormalised to T"
        assert not torch.equal(weights, torch.ones(2)), "the weights moved"

    (checkpoint,) = (tmp_path / "full" / "checkpoints").glob(f"*step={CHECKPOINT_STEP}.ckpt")
    resumed = _fit(tmp_path / "resumed", kind, ckpt_path=checkpoint)
    expected, got = full.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    assert {key for key in got if key.startswith("loss_balancer.")} >= {"loss_balancer.steps"}
    different = [key for key in expected if not torch.equal(expected[key], got[key])]
    assert not different, f"the resumed run ends elsewhere: {different}"
    assert _balance_rows(tmp_path / "resumed") == logged[CHECKPOINT_STEP:], "the steps after the checkpoint"
