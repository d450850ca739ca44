"""LightningBrickCollection with a real Trainer on CPU: stages, optimisers, schedulers, batches, losses, checkpoints."""

from __future__ import annotations

import csv
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch._dynamo
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchbricks_lightning import (
    BrickCollection,
    BrickInterface,
    BrickLoss,
    BrickNotTrainable,
    BrickTrainable,
    Stage,
)
from torchbricks_lightning.datamodules.synthetic import SyntheticImageDataModule
from torchbricks_lightning.errors import (
    BrickDefinitionError,
    CheckpointError,
    ConfigError,
    LossNotFiniteError,
    MissingInputError,
)
from torchbricks_lightning.lightning import LightningBrickCollection, load_brick_collection_weights
from torchbricks_lightning.lightning.module import EXAMPLE_INPUTS_KEY
from torchbricks_lightning.multitask import UncertaintyWeighting

pytestmark = [
    pytest.mark.filterwarnings("ignore::pytorch_lightning.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]

N_FEATURES = 4
NUM_CLASSES = 3
N_SAMPLES = 64
BATCH_SIZE = 16


# --------------------------------------------------------------------------------------------------- helpers
def make_data(n: int = N_SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (deterministic for a seed) and their classes, given by one fixed linear rule for every seed."""
    features = torch.randn(n, N_FEATURES, generator=torch.Generator().manual_seed(seed))
    weights = torch.randn(N_FEATURES, NUM_CLASSES, generator=torch.Generator().manual_seed(1234))
    return features, (features @ weights).argmax(dim=1)


def make_loader(n: int = N_SAMPLES, seed: int = 0, **kwargs: Any) -> DataLoader[Any]:
    return DataLoader(TensorDataset(*make_data(n, seed)), batch_size=BATCH_SIZE, **kwargs)


def make_trainer(tmp_path: Path, max_epochs: int = 1, logger: Any = False, **kwargs: Any) -> pl.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


class ArgMax(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)


class StageRecorder(nn.Module):
    """Records the stage it runs in and whether gradients were enabled then (never asserts inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Stage, bool]] = []

    def forward(self, stage: Stage) -> None:
        self.calls.append((stage, torch.is_grad_enabled()))

    @property
    def stages(self) -> set[Stage]:
        return {stage for stage, _ in self.calls}


def recorder_brick(alive_stages: Any = "all") -> BrickNotTrainable:
    return BrickNotTrainable(StageRecorder(), input_names=["stage"], output_names=[], alive_stages=alive_stages)


def linear_bricks(hidden: int = 8, num_classes: int = NUM_CLASSES, loss_weight: float = 1.0) -> dict[str, Any]:
    return {
        "backbone": BrickTrainable(
            nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU()), input_names=["raw"], output_names=["features"]
        ),
        "head": BrickTrainable(nn.Linear(hidden, num_classes), input_names=["features"], output_names=["logits"]),
        "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
        "loss": BrickLoss(
            nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"], loss_weight=loss_weight
        ),
    }


def conv_bricks(channels: int = 4, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """A tiny conv classifier for SyntheticImageDataModule images."""
    return {
        "backbone": BrickTrainable(
            nn.Sequential(
                nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(start_dim=1)
            ),
            input_names=["raw"],
            output_names=["features"],
        ),
        "head": BrickTrainable(nn.Linear(channels, num_classes), input_names=["features"], output_names=["logits"]),
        "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
    }


def image_datamodule() -> SyntheticImageDataModule:
    return SyntheticImageDataModule(num_classes=NUM_CLASSES, image_size=8, n_train=64, n_val=32, n_test=32)


def read_csv(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def lr_of(trainer: pl.Trainer) -> float:
    return float(trainer.optimizers[0].param_groups[0]["lr"])


# --------------------------------------------------------------------------------------------------- stages
def test_steps_map_to_stages_and_only_train_has_gradients(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["everywhere"] = recorder_brick("all")
    only = {stage: f"only_{stage.value}" for stage in (Stage.TRAIN, Stage.VALIDATION, Stage.TEST, Stage.INFERENCE)}
    for stage, name in only.items():
        bricks[name] = recorder_brick([stage])
    module = LightningBrickCollection(bricks)
    recorders = {name: module.brick_collection[name].model for name in ["everywhere", *only.values()]}
    trainer = make_trainer(tmp_path, num_sanity_val_steps=0)

    trainer.fit(module, make_loader(), make_loader(32, seed=1))
    assert recorders["everywhere"].stages == {Stage.TRAIN, Stage.VALIDATION}
    trainer.test(module, make_loader(32, seed=2))
    assert recorders["everywhere"].stages == {Stage.TRAIN, Stage.VALIDATION, Stage.TEST}
    trainer.predict(module, make_loader(32, seed=2))
    assert recorders["everywhere"].stages == {Stage.TRAIN, Stage.VALIDATION, Stage.TEST, Stage.INFERENCE}

    for stage, name in only.items():
        assert recorders[name].stages == {stage}, name
    steps_per_stage = {stage: len(recorders[name].calls) for stage, name in only.items()}
    assert steps_per_stage == {Stage.TRAIN: 4, Stage.VALIDATION: 2, Stage.TEST: 2, Stage.INFERENCE: 2}

    grad_enabled: dict[Stage, set[bool]] = {}
    for stage, enabled in recorders["everywhere"].calls:
        grad_enabled.setdefault(stage, set()).add(enabled)
    assert grad_enabled == {
        Stage.TRAIN: {True},
        Stage.VALIDATION: {False},
        Stage.TEST: {False},
        Stage.INFERENCE: {False},
    }


def test_losses_are_logged_per_stage(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["train_only_loss"] = BrickLoss(
        nn.L1Loss(), input_names=["logits", "logits"], output_names=["l1_train"], alive_stages=["train"]
    )
    trainer = make_trainer(tmp_path)
    trainer.fit(LightningBrickCollection(bricks), make_loader(), make_loader(32, seed=1))
    logged = set(trainer.logged_metrics)
    assert {"train/ce_step", "train/ce_epoch", "train/l1_train_step", "train/l1_train_epoch"} <= logged
    assert {"validation/ce", "validation/loss"} <= logged
    assert not any(name.startswith("validation/l1_train") for name in logged)


def test_predict_returns_inference_outputs_without_losses(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["probabilities"] = BrickNotTrainable(
        nn.Softmax(dim=1), input_names=["logits"], output_names=["probabilities"], alive_stages=["inference"]
    )
    module = LightningBrickCollection(bricks, predict_output_names=["logits", "probabilities", "class_prediction"])
    predictions = make_trainer(tmp_path).predict(module, make_loader(40))
    assert isinstance(predictions, list)
    assert [len(p["logits"]) for p in predictions] == [16, 16, 8]
    inference_outputs = module.brick_collection.output_names(Stage.INFERENCE)
    assert "probabilities" in inference_outputs
    for prediction in predictions:
        assert isinstance(prediction, dict)
        assert set(prediction) == set(inference_outputs) - {"features"}
        assert "ce" not in prediction
        assert not set(prediction) & set(module.brick_collection.loss_names())
        torch.testing.assert_close(prediction["probabilities"].sum(dim=1), torch.ones(len(prediction["logits"])))


def test_forward_is_the_inference_stage() -> None:
    bricks = linear_bricks()
    bricks["probabilities"] = BrickNotTrainable(
        nn.Softmax(dim=1), input_names=["logits"], output_names=["probabilities"], alive_stages=["inference"]
    )
    module = LightningBrickCollection(bricks)
    features, targets = make_data(8)
    named_inputs = {"raw": features, "targets": targets}
    outputs = module(named_inputs)
    expected = module.brick_collection(named_inputs, Stage.INFERENCE)
    assert list(outputs) == list(expected)
    for name in expected:
        torch.testing.assert_close(outputs[name], expected[name], rtol=0, atol=0)
    assert "probabilities" in outputs
    assert "ce" not in outputs
    assert "ce" in module.brick_collection(named_inputs, Stage.TRAIN)


# --------------------------------------------------------------------------------------------------- training
def test_loss_goes_down(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="logs")
    module = LightningBrickCollection(linear_bricks(), optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    make_trainer(tmp_path, max_epochs=6, logger=logger, log_every_n_steps=1).fit(
        module, make_loader(shuffle=True), make_loader(32, seed=1)
    )
    epoch_losses = column(read_csv(logger), "train/loss_epoch")
    assert len(epoch_losses) == 6
    assert epoch_losses[-1] < 0.7 * epoch_losses[0], epoch_losses
    validation_losses = column(read_csv(logger), "validation/loss")
    assert validation_losses[-1] < validation_losses[0], validation_losses


def test_optimizer_factory_is_used_and_frozen_parameters_are_left_out(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["backbone"] = BrickNotTrainable(
        nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU()), input_names=["raw"], output_names=["features"]
    )
    module = LightningBrickCollection(bricks, optimizer=functools.partial(torch.optim.SGD, lr=0.123, momentum=0.5))
    frozen_before = [p.detach().clone() for p in module.brick_collection["backbone"].parameters()]
    trainer = make_trainer(tmp_path)
    trainer.fit(module, make_loader())

    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.123)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.5)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = {id(p) for p in module.brick_collection["backbone"].parameters()}
    trainable = {id(p) for p in module.brick_collection["head"].parameters()}
    assert optimised == trainable
    assert not optimised & frozen
    for before, after in zip(frozen_before, module.brick_collection["backbone"].parameters(), strict=True):
        assert torch.equal(before, after)


def test_default_optimizer_is_adam(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, limit_train_batches=1)
    module = LightningBrickCollection(linear_bricks())
    trainer.fit(module, make_loader())
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in module.parameters()}


@pytest.mark.parametrize(
    ("interval", "max_epochs", "expected_lr"),
    [
        ("step", 1, 0.8 * 0.5**4),  # 4 batches per epoch, stepped after each
        ("epoch", 2, 0.8 * 0.5**2),  # stepped after each epoch
    ],
)
def test_lr_scheduler_interval(tmp_path: Path, interval: str, max_epochs: int, expected_lr: float) -> None:
    module = LightningBrickCollection(
        linear_bricks(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.8),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        lr_scheduler_interval=interval,  # type: ignore[arg-type]
    )
    trainer = make_trainer(tmp_path, max_epochs=max_epochs)
    trainer.fit(module, make_loader())
    (config,) = trainer.lr_scheduler_configs
    assert config.interval == interval
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.StepLR)
    assert lr_of(trainer) == pytest.approx(expected_lr)


def test_invalid_lr_scheduler_interval_raises() -> None:
    with pytest.raises(ConfigError, match="lr_scheduler_interval"):
        LightningBrickCollection(linear_bricks(), lr_scheduler_interval="batch")  # type: ignore[arg-type]


@pytest.mark.parametrize(("monitor", "expected"), [(None, "validation/loss"), ("validation/ce", "validation/ce")])
def test_reduce_lr_on_plateau_monitors_validation_loss(tmp_path: Path, monitor: str | None, expected: str) -> None:
    module = LightningBrickCollection(
        linear_bricks(),
        # lr so small that the validation loss never improves by ReduceLROnPlateau's threshold: it must reduce.
        optimizer=functools.partial(torch.optim.SGD, lr=1e-6),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.1),
        lr_scheduler_monitor=monitor,
    )
    trainer = make_trainer(tmp_path, max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(module, make_loader(), make_loader(32, seed=1))
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert config.monitor == expected
    assert lr_of(trainer) == pytest.approx(1e-8)  # reduced after epochs 1 and 2


# --------------------------------------------------------------------------------------------------- batches
class DictDataset(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"raw": self.features[index], "targets": self.targets[index]}


def test_tuple_batches_use_default_batch_names(tmp_path: Path) -> None:
    module = LightningBrickCollection(linear_bricks())
    assert module.batch_names == ("raw", "targets")
    trainer = make_trainer(tmp_path)
    trainer.fit(module, make_loader(), make_loader(32, seed=1))
    assert "validation/ce" in trainer.logged_metrics
    features, targets = make_data(4)
    named = module.named_inputs_of((features, targets), Stage.TRAIN)
    assert list(named) == ["raw", "targets"]
    assert named["raw"] is features
    assert named["targets"] is targets
    # A lone tensor is the first name; a shorter tuple names what it has (predict without targets).
    assert list(module.named_inputs_of(features, Stage.INFERENCE)) == ["raw"]
    assert list(module.named_inputs_of([features], Stage.INFERENCE)) == ["raw"]


def test_tuple_batches_use_custom_batch_names(tmp_path: Path) -> None:
    bricks = {
        "head": BrickTrainable(nn.Linear(N_FEATURES, NUM_CLASSES), input_names=["x"], output_names=["logits"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "y"], output_names=["ce"]),
    }
    module = LightningBrickCollection(bricks, batch_names=["x", "y"])
    trainer = make_trainer(tmp_path)
    trainer.fit(module, make_loader(), make_loader(32, seed=1))
    assert {"train/ce_epoch", "validation/ce"} <= set(trainer.logged_metrics)
    (prediction, *_) = trainer.predict(module, make_loader(16))
    assert set(prediction) == {"logits"}  # the terminal output; the inputs named by batch_names are not returned


def test_custom_batch_names_that_do_not_match_the_bricks_fail_clearly(tmp_path: Path) -> None:
    module = LightningBrickCollection(linear_bricks(), batch_names=["inputs", "labels"])
    with pytest.raises(MissingInputError, match="'raw'") as info:
        make_trainer(tmp_path).fit(module, make_loader())
    assert "['inputs', 'labels']" in str(info.value)


def test_batch_names_must_be_a_list_of_names() -> None:
    with pytest.raises(BrickDefinitionError, match="batch_names"):
        LightningBrickCollection(linear_bricks(), batch_names="raw")


def test_dict_batches_pass_through(tmp_path: Path) -> None:
    # batch_names that would be wrong for a tuple: dict batches must ignore them.
    module = LightningBrickCollection(linear_bricks(), batch_names=["unused"])
    train = DataLoader(DictDataset(*make_data()), batch_size=BATCH_SIZE)
    trainer = make_trainer(tmp_path)
    trainer.fit(module, train, DataLoader(DictDataset(*make_data(32, seed=1)), batch_size=BATCH_SIZE))
    assert {"train/ce_epoch", "validation/ce"} <= set(trainer.logged_metrics)
    (prediction, *_) = trainer.predict(module, DataLoader(DictDataset(*make_data(16)), batch_size=BATCH_SIZE))
    assert set(prediction) == {"class_prediction"}  # the terminal output of the dict batch's inputs


def test_batch_with_more_items_than_names_raises(tmp_path: Path) -> None:
    features, targets = make_data()
    loader = DataLoader(TensorDataset(features, targets, targets.clone()), batch_size=BATCH_SIZE)
    module = LightningBrickCollection(linear_bricks())
    with pytest.raises(ConfigError) as info:
        make_trainer(tmp_path).fit(module, loader)
    message = str(info.value)
    assert "3 items" in message
    assert "['raw', 'targets']" in message
    assert "batch_names" in message


class NotABatch:
    """What a broken collate_fn might return."""


@pytest.mark.parametrize("bad_batch", [NotABatch(), "raw", 3, {1, 2}], ids=["object", "str", "int", "set"])
def test_batch_of_the_wrong_type_raises(bad_batch: object) -> None:
    module = LightningBrickCollection(linear_bricks())
    with pytest.raises(BrickDefinitionError) as info:
        module.named_inputs_of(bad_batch, Stage.TRAIN)
    message = str(info.value)
    assert type(bad_batch).__name__ in message
    assert "dict" in message
    assert "batch_names" in message


def test_batch_of_the_wrong_type_raises_in_the_trainer(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(*make_data()), batch_size=BATCH_SIZE, collate_fn=lambda items: NotABatch())
    with pytest.raises(BrickDefinitionError, match="NotABatch"):
        make_trainer(tmp_path).fit(LightningBrickCollection(linear_bricks()), loader)


# --------------------------------------------------------------------------------------------------- losses
class MeanAbs(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.abs().mean()


def two_loss_bricks() -> dict[str, Any]:
    bricks = linear_bricks(loss_weight=2.0)
    bricks["l1"] = BrickLoss(MeanAbs(), input_names=["logits"], output_names=["l1"])
    return bricks


@pytest.mark.parametrize(
    ("loss_weights", "weights"),
    [(None, {"ce": 2.0, "l1": 1.0}), ({"ce": 0.5, "l1": 3.0}, {"ce": 0.5, "l1": 3.0}), ({"l1": 0.0}, {"ce": 2.0})],
)
def test_loss_weights_override_the_logged_total(
    tmp_path: Path, loss_weights: dict[str, float] | None, weights: dict[str, float]
) -> None:
    module = LightningBrickCollection(
        two_loss_bricks(), loss_weights=loss_weights, optimizer=functools.partial(torch.optim.SGD, lr=0.0)
    )
    trainer = make_trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, make_loader(), make_loader(32, seed=1))
    logged = {name: float(value) for name, value in trainer.logged_metrics.items()}
    for template in ("train/{}_step", "train/{}_epoch", "validation/{}"):
        expected = sum(weight * logged[template.format(name)] for name, weight in weights.items())
        assert logged[template.format("loss")] == pytest.approx(expected, rel=1e-5), template
    assert logged["train/loss_epoch"] != pytest.approx(logged["train/ce_epoch"] + logged["train/l1_epoch"])


def test_unknown_loss_weight_names_raise_at_construction() -> None:
    with pytest.raises(ConfigError) as info:
        LightningBrickCollection(two_loss_bricks(), loss_weights={"ce": 1.0, "cross_entropy": 2.0})
    message = str(info.value)
    assert "'cross_entropy'" in message
    assert "'ce'" in message
    assert "'l1'" in message


def test_training_without_a_loss_raises_clearly(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["loss"].alive_stages = ["validation", "test"]
    module = LightningBrickCollection(bricks)
    with pytest.raises(ConfigError) as info:
        make_trainer(tmp_path).fit(module, make_loader())
    message = str(info.value)
    assert "No loss is alive in the 'train' stage" in message
    assert "BrickLoss" in message


class PoisonedLoss(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.mean() * 0 + self.value


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_raises_naming_the_loss(tmp_path: Path, value: float) -> None:
    bricks = linear_bricks()
    bricks["poison"] = BrickLoss(PoisonedLoss(value), input_names=["logits"], output_names=["poisoned_loss"])
    with pytest.raises(LossNotFiniteError) as info:
        make_trainer(tmp_path).fit(LightningBrickCollection(bricks), make_loader())
    message = str(info.value)
    assert "'poisoned_loss'" in message
    assert "'ce'" not in message  # only the culprit is named
    assert "step 0" in message


def test_a_non_finite_loss_under_a_balancer_names_the_balancer_and_its_state(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["poison"] = BrickLoss(PoisonedLoss(float("nan")), input_names=["logits"], output_names=["poisoned_loss"])
    module = LightningBrickCollection(bricks, loss_balancer=UncertaintyWeighting())
    with pytest.raises(LossNotFiniteError) as info:
        make_trainer(tmp_path).fit(module, make_loader())
    message = str(info.value)
    assert "'poisoned_loss'" in message
    assert "UncertaintyWeighting: weights" in message  # the balancer and its state, checked before the lr
    assert "log_variances" in message


@pytest.fixture
def _torch_warns_always() -> Iterator[None]:
    """Make torch's warn-once warnings fire every time, so a test does not depend on which test ran first."""
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(previous)


@pytest.mark.usefixtures("_torch_warns_always")
def test_non_finite_loss_error_comes_without_a_torch_warning(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["poison"] = BrickLoss(PoisonedLoss(float("nan")), input_names=["logits"], output_names=["poisoned_loss"])
    trainer, module = make_trainer(tmp_path), LightningBrickCollection(bricks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(LossNotFiniteError):
            trainer.fit(module, make_loader())
    # The error alone should speak: reading the losses for the message must not warn about requires_grad tensors.
    noise = [str(w.message) for w in caught if "requires_grad" in str(w.message)]
    assert not noise, noise


def test_non_finite_loss_passes_when_the_check_is_off(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["poison"] = BrickLoss(PoisonedLoss(float("nan")), input_names=["logits"], output_names=["poisoned_loss"])
    trainer = make_trainer(tmp_path)
    trainer.fit(LightningBrickCollection(bricks, check_finite_loss=False), make_loader())
    assert trainer.state.finished
    assert trainer.global_step == 4
    assert torch.isnan(trainer.logged_metrics["train/loss_epoch"])


# --------------------------------------------------------------------------------------------------- compile
@pytest.fixture
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class CountingEagerBackend:
    """A torch.compile backend that runs graphs eagerly and counts them (proves compilation happened)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        return graph_module.forward


@pytest.mark.usefixtures("_fresh_dynamo")
def test_compile_model_trains_like_eager(tmp_path: Path) -> None:
    def train(compile_model: bool, backend: Any) -> tuple[dict[str, float], list[torch.Tensor]]:
        torch.manual_seed(0)
        module = LightningBrickCollection(
            linear_bricks(),
            optimizer=functools.partial(torch.optim.SGD, lr=0.5),
            compile_model=compile_model,
            compile_kwargs={"backend": backend},
        )
        trainer = make_trainer(tmp_path, max_epochs=2)
        trainer.fit(module, make_loader(), make_loader(32, seed=1))
        logged = {name: float(value) for name, value in trainer.logged_metrics.items()}
        return logged, [p.detach().clone() for p in module.parameters()]

    backend = CountingEagerBackend()
    eager_logged, eager_parameters = train(False, "eager")
    compiled_logged, compiled_parameters = train(True, backend)
    assert backend.graphs >= 2  # at least one graph for train and one for validation
    assert compiled_logged.keys() == eager_logged.keys()
    for name, value in eager_logged.items():
        assert compiled_logged[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    for eager, compiled in zip(eager_parameters, compiled_parameters, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("_fresh_dynamo")
def test_compile_model_with_the_eager_backend_matches_eager(tmp_path: Path) -> None:
    def first_epoch_loss(compile_model: bool) -> float:
        torch.manual_seed(0)
        module = LightningBrickCollection(
            linear_bricks(), compile_model=compile_model, compile_kwargs={"backend": "eager"}
        )
        trainer = make_trainer(tmp_path)
        trainer.fit(module, make_loader())
        return float(trainer.logged_metrics["train/loss_epoch"])

    assert first_epoch_loss(True) == pytest.approx(first_epoch_loss(False), rel=1e-6)


# --------------------------------------------------------------------------------------------------- checkpoints
def fit_conv_with_checkpoint(tmp_path: Path) -> tuple[LightningBrickCollection, pl.Trainer, str]:
    torch.manual_seed(0)
    module = LightningBrickCollection(
        conv_bricks(), optimizer=functools.partial(torch.optim.Adam, lr=0.01), predict_output_names=["logits"]
    )
    trainer = make_trainer(tmp_path, max_epochs=2, enable_checkpointing=True)
    trainer.fit(module, datamodule=image_datamodule())
    path = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    assert path
    assert Path(path).is_file()
    return module, trainer, path


@pytest.fixture
def fitted(tmp_path: Path) -> tuple[LightningBrickCollection, pl.Trainer, str]:
    return fit_conv_with_checkpoint(tmp_path)


def predict_logits(trainer: pl.Trainer, module: LightningBrickCollection) -> torch.Tensor:
    predictions = trainer.predict(module, datamodule=image_datamodule())
    return torch.cat([p["logits"] for p in predictions])  # type: ignore[union-attr]


def test_checkpoint_round_trip_gives_identical_predictions(
    fitted: tuple[LightningBrickCollection, pl.Trainer, str],
) -> None:
    module, trainer, path = fitted
    torch.manual_seed(123)  # fresh bricks get other random weights
    fresh = conv_bricks()
    fresh_weight = fresh["head"].model.weight.detach().clone()
    assert not torch.equal(fresh_weight, module.brick_collection["head"].model.weight)

    loaded = LightningBrickCollection.load_from_checkpoint(path, brick_collection=fresh)
    assert isinstance(loaded, LightningBrickCollection)
    assert not torch.equal(loaded.brick_collection["head"].model.weight, fresh_weight)
    for name, value in module.brick_collection.state_dict().items():
        assert torch.equal(loaded.brick_collection.state_dict()[name], value), name
    expected = predict_logits(trainer, module)
    assert len(expected) == 32
    torch.testing.assert_close(predict_logits(trainer, loaded), expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_trainer_tests_and_resumes_from_the_checkpoint(
    tmp_path: Path, fitted: tuple[LightningBrickCollection, pl.Trainer, str]
) -> None:
    module, trainer, path = fitted
    (tested,) = trainer.test(module, datamodule=image_datamodule(), ckpt_path="best")
    assert set(tested) == {"test/ce", "test/loss"}
    resumed = LightningBrickCollection(conv_bricks())
    resumer = make_trainer(tmp_path / "resumed", max_epochs=3, enable_checkpointing=True)
    resumer.fit(resumed, datamodule=image_datamodule(), ckpt_path=path)
    assert resumer.current_epoch == 3
    assert resumer.global_step == 6  # 2 steps per epoch: 4 restored, 2 more
    assert resumed.example_inputs == module.example_inputs


def test_checkpoint_without_bricks_tells_the_user_to_pass_them(
    fitted: tuple[LightningBrickCollection, pl.Trainer, str],
) -> None:
    _, _, path = fitted
    with pytest.raises(CheckpointError) as info:
        LightningBrickCollection.load_from_checkpoint(path)
    message = str(info.value)
    assert "brick_collection=" in message
    assert path in message


def test_load_brick_collection_weights_into_a_plain_collection(
    fitted: tuple[LightningBrickCollection, pl.Trainer, str],
) -> None:
    module, _, path = fitted
    torch.manual_seed(321)
    plain = BrickCollection(conv_bricks())
    images = image_datamodule()
    images.setup()
    named_inputs = {"raw": images.datasets["test"].tensors[0]}
    before = plain(named_inputs, Stage.INFERENCE)["logits"]
    assert load_brick_collection_weights(plain, path) == ([], [])
    module.eval()
    expected = module(named_inputs)["logits"]
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(plain(named_inputs, Stage.INFERENCE)["logits"], expected, rtol=0, atol=0)


def renamed_head_bricks() -> dict[str, Any]:
    bricks = conv_bricks()
    bricks["classifier"] = bricks.pop("head")
    return bricks


def extra_head_bricks() -> dict[str, Any]:
    bricks = conv_bricks()
    bricks["head2"] = BrickTrainable(nn.Linear(4, 2), input_names=["features"], output_names=["logits2"])
    return bricks


MISFITS = {
    "wider": (lambda: conv_bricks(channels=6), ["backbone.model.0.weight: checkpoint (4, 3, 3, 3) vs model (6, 3"]),
    "more_classes": (lambda: conv_bricks(num_classes=5), ["head.model.weight: checkpoint (3, 4) vs model (5, 4)"]),
    "renamed": (
        renamed_head_bricks,
        ["Missing in the checkpoint: [classifier.model.bias", "unexpected in the checkpoint: [head.model.bias"],
    ),
    "extra_brick": (
        extra_head_bricks,
        ["Missing in the checkpoint: [head2.model.bias, head2.model.weight]", "unexpected in the checkpoint: none"],
    ),
}


@pytest.mark.parametrize("misfit", list(MISFITS))
@pytest.mark.parametrize("loader", ["load_from_checkpoint", "load_brick_collection_weights"])
def test_checkpoint_into_a_different_collection_raises(
    fitted: tuple[LightningBrickCollection, pl.Trainer, str], misfit: str, loader: str
) -> None:
    _, _, path = fitted
    make_bricks, fragments = MISFITS[misfit]
    if loader == "load_from_checkpoint":
        bricks = make_bricks()
        with pytest.raises(CheckpointError) as info:
            LightningBrickCollection.load_from_checkpoint(path, brick_collection=bricks)
    else:
        collection = BrickCollection(make_bricks())
        with pytest.raises(CheckpointError) as info:
            load_brick_collection_weights(collection, path)
    message = str(info.value)
    assert "does not fit this brick collection" in message
    for fragment in fragments:
        assert fragment in message


def test_non_strict_loading_loads_the_matching_names(
    fitted: tuple[LightningBrickCollection, pl.Trainer, str],
) -> None:
    module, _, path = fitted
    plain = BrickCollection(extra_head_bricks())
    missing, unexpected = load_brick_collection_weights(plain, path, strict=False)
    assert missing == ["head2.model.bias", "head2.model.weight"]
    assert unexpected == []
    assert torch.equal(plain["head"].model.weight, module.brick_collection["head"].model.weight)


def test_checkpoint_stores_example_inputs(fitted: tuple[LightningBrickCollection, pl.Trainer, str]) -> None:
    _, _, path = fitted
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint[EXAMPLE_INPUTS_KEY] == {"raw": {"shape": [1, 3, 8, 8], "dtype": "torch.float32"}}

    loaded = LightningBrickCollection.load_from_checkpoint(path, brick_collection=conv_bricks())
    example = loaded.example_named_inputs(batch_size=5)
    assert list(example) == loaded.brick_collection.input_names(Stage.EXPORT) == ["raw"]
    assert example["raw"].shape == (5, 3, 8, 8)
    assert example["raw"].dtype == torch.float32
    outputs = loaded.brick_collection(example, Stage.EXPORT)
    assert outputs["logits"].shape == (5, NUM_CLASSES)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    again = loaded.example_named_inputs(batch_size=5)
    assert torch.equal(torch.get_rng_state(), before), "example inputs come from a private generator"
    assert torch.equal(again["raw"], example["raw"])
    assert not torch.equal(loaded.example_named_inputs(batch_size=5, seed=1)["raw"], example["raw"])


class TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embedding(tokens).mean(dim=1))


def test_example_inputs_keep_integer_dtypes(tmp_path: Path) -> None:
    bricks = {
        "model": BrickTrainable(TokenClassifier(), input_names=["tokens"], output_names=["logits"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
    }
    module = LightningBrickCollection(bricks, batch_names=["tokens", "targets"])
    with pytest.raises(ConfigError, match="No example inputs"):
        module.example_named_inputs()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10, (32, 7), generator=generator)
    loader = DataLoader(TensorDataset(tokens, tokens[:, 0] % 2), batch_size=BATCH_SIZE)
    make_trainer(tmp_path).validate(module, loader)
    example = module.example_named_inputs(batch_size=3)
    assert set(example) == {"tokens"}
    assert example["tokens"].shape == (3, 7)
    assert example["tokens"].dtype == torch.int64
    assert module.brick_collection(example, Stage.EXPORT)["logits"].shape == (3, 2)


def test_custom_brick_subclass_trains(tmp_path: Path) -> None:
    """A hand-written BrickInterface subclass runs in every step like the built-in bricks."""

    class Scale(BrickInterface):
        def __init__(self) -> None:
            super().__init__(input_names=["raw"], output_names=["scaled"])
            self.factor = nn.Parameter(torch.ones(()))

        def forward(self, raw: torch.Tensor) -> torch.Tensor:
            return raw * self.factor

    bricks = linear_bricks()
    bricks["scale"] = Scale()
    bricks["backbone"].input_names = ["scaled"]
    module = LightningBrickCollection(bricks, optimizer=functools.partial(torch.optim.SGD, lr=0.5))
    make_trainer(tmp_path).fit(module, make_loader())
    assert float(module.brick_collection["scale"].factor) != 1.0


# ------------------------------------------------------------------------------------ epoch metric state
class StoppedMidEpochError(Exception):
    pass


class StopAtBatch(pl.Callback):
    """Raises inside a validation epoch, as an interrupted notebook cell or a failing callback would."""

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        raise StoppedMidEpochError("stopped mid-epoch")


def accuracy_bricks() -> dict[str, Any]:
    from torchbricks_lightning.bag_of_bricks import ConfusionMatrixMetrics
    from torchbricks_lightning.core.metric_bricks import BrickMetricSingle

    bricks = linear_bricks()
    bricks["metrics"] = BrickMetricSingle(
        ConfusionMatrixMetrics(NUM_CLASSES, values=("accuracy", "confusion")),
        input_names=["class_prediction", "targets"],
    )
    return bricks


def test_an_epoch_stopped_midway_leaves_no_metric_state_behind(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = LightningBrickCollection(accuracy_bricks())
    loader = make_loader()
    with pytest.raises(StoppedMidEpochError):
        make_trainer(tmp_path / "stopped", callbacks=[StopAtBatch()]).validate(module, loader, verbose=False)
    metric = module.brick_collection["metrics"].metrics_for(Stage.VALIDATION)["ConfusionMatrixMetrics"]
    assert int(metric.confmat.sum()) == BATCH_SIZE

    first = make_trainer(tmp_path / "first").validate(module, loader, verbose=False)[0]
    second = make_trainer(tmp_path / "second").validate(module, loader, verbose=False)[0]

    assert first["validation/accuracy"] == second["validation/accuracy"]
    assert int(metric.confmat.sum()) == 0  # summarised and reset at the epoch end
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    features, targets = make_data()
    with torch.no_grad():
        predictions = module({"raw": features})["class_prediction"]
    confusion.index_put_((targets, predictions), torch.ones_like(targets), accumulate=True)
    recall = confusion.diagonal() / confusion.sum(dim=1).clamp(min=1)
    assert first["validation/accuracy"] == pytest.approx(float(recall[confusion.sum(dim=1) > 0].mean()), abs=1e-6)


def test_test_and_predict_after_fit_add_no_callbacks_and_warn_nothing(tmp_path: Path) -> None:
    """The module configures no callbacks: Lightning's "configure_callbacks will override existing callbacks passed
    to Trainer" (which it warns when a module adds one, at every later validate/test/predict) never appears."""
    trainer = make_trainer(tmp_path, num_sanity_val_steps=0)
    module = LightningBrickCollection(linear_bricks())
    callbacks_before = list(trainer.callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, make_loader(), make_loader())
        trainer.validate(module, make_loader(), verbose=False)
        trainer.test(module, make_loader(), verbose=False)
        trainer.predict(module, make_loader())
    assert [type(callback) for callback in trainer.callbacks] == [type(callback) for callback in callbacks_before]
    overriding = [str(w.message) for w in caught if "configure_callbacks" in str(w.message)]
    assert overriding == []
    assert module.configure_callbacks() == []  # Lightning's default: the hook is not overridden
