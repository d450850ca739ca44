"""Parameter groups by brick path, the base learning rate, weight decay without norms and biases, and the mistakes
that fail when the module is built: through ``configure_optimizers`` and a real Trainer, logs read back."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import BrickCollection, BrickLoss, BrickModule, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.optim.param_groups import brick_matches

N_FEATURES = 5
NUM_CLASSES = 3


def sgd(**kwargs: Any) -> Any:
    return functools.partial(torch.optim.SGD, **{"lr": 0.1, **kwargs})


def nested_bricks() -> dict[str, Any]:
    """A preprocessor without parameters, a backbone with batch norm, a frozen brick run without gradients, and two
    heads in a nested collection, each with a ``classify`` brick and a loss."""

    def head(features: str, name: str) -> dict[str, Any]:
        return {
            "classify": BrickTrainable(
                nn.Linear(8, NUM_CLASSES), input_names=[features], output_names=[f"{name}/logits"]
            ),
            "loss": BrickLoss(
                nn.CrossEntropyLoss(), input_names=[f"{name}/logits", "targets"], output_names=[f"{name}/ce"]
            ),
        }

    return {
        "preprocessor": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["processed"]),
        "backbone": BrickTrainable(
            nn.Sequential(nn.Linear(N_FEATURES, 8), nn.BatchNorm1d(8), nn.ReLU()),
            input_names=["processed"],
            output_names=["features"],
        ),
        "frozen": BrickNotTrainable(
            nn.Linear(8, 8), input_names=["features"], output_names=["frozen_features"], calculate_gradients=False
        ),
        "heads": {"a": head("features", "a"), "b": head("frozen_features", "b")},
    }


def loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, N_FEATURES, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return DataLoader(TensorDataset(raw, targets), batch_size=batch_size)


def trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
        **kwargs,
    }
    return pl.Trainer(**options)


def groups_of(module: LightningBrickCollection) -> dict[str, dict[str, Any]]:
    """``{group name: {"names": parameter names, **options}}`` of the optimiser ``configure_optimizers`` builds."""
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    return {
        group["name"]: {
            **{k: v for k, v in group.items() if k != "params"},
            "names": [names[id(p)] for p in group["params"]],
        }
        for group in optimizer.param_groups
    }


# ------------------------------------------------------------------------------------------------ patterns and groups
@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("backbone", "backbone", True),
        ("heads", "heads/a/classify", True),
        ("heads/a", "heads/a/classify", True),
        ("*/classify", "heads/a/classify", True),
        ("heads/*/classify", "heads/b/classify", True),
        ("heads/?/loss", "heads/a/loss", True),
        ("head", "heads/a/classify", False),
        ("classify", "heads/a/classify", False),
        ("a/classify", "heads/a/classify", False),
    ],
)
def test_a_pattern_matches_a_brick_path_or_a_collection_above_it(pattern: str, path: str, expected: bool) -> None:
    assert brick_matches(pattern, path) is expected


def test_every_trainable_parameter_is_in_exactly_one_group_first_match_wins() -> None:
    module = LightningBrickCollection(
        nested_bricks(),
        optimizer=sgd(momentum=0.9),
        param_groups=[
            {"bricks": "heads/a", "lr": 0.5, "name": "head a"},
            {"bricks": "*/classify", "weight_decay": 0.01},  # heads/a/classify is taken by the first group
            {"bricks": "backbone", "lr": 0.01, "momentum": 0.0},
        ],
    )
    module.extra_scale = nn.Parameter(torch.ones(()))  # a parameter of the module itself, outside the bricks
    groups = groups_of(module)
    assert list(groups) == ["head a", "*/classify", "backbone", "default"]
    assert groups["head a"]["names"] == [
        "brick_collection.heads.a.classify.model.weight",
        "brick_collection.heads.a.classify.model.bias",
    ]
    assert groups["*/classify"]["names"] == [
        "brick_collection.heads.b.classify.model.weight",
        "brick_collection.heads.b.classify.model.bias",
    ]
    assert groups["backbone"]["names"] == [
        "brick_collection.backbone.model.0.weight",
        "brick_collection.backbone.model.0.bias",
        "brick_collection.backbone.model.1.weight",
        "brick_collection.backbone.model.1.bias",
    ]
    assert groups["default"]["names"] == ["extra_scale"]
    assert (groups["head a"]["lr"], groups["head a"]["weight_decay"], groups["head a"]["momentum"]) == (0.5, 0, 0.9)
    assert (groups["*/classify"]["lr"], groups["*/classify"]["weight_decay"]) == (0.1, 0.01)
    assert (groups["backbone"]["lr"], groups["backbone"]["momentum"]) == (0.01, 0.0)
    assert groups["default"]["lr"] == 0.1, "the default group has the optimiser's own settings"
    everything = [name for group in groups.values() for name in group["names"]]
    trainable = [name for name, parameter in module.named_parameters() if parameter.requires_grad]
    assert sorted(everything) == sorted(set(everything)) == sorted(trainable)
    assert not [name for name in everything if ".frozen." in name], "frozen bricks are in no group"


def test_lr_sets_the_default_group_and_lr_scale_follows_it() -> None:
    groups = [{"bricks": "backbone", "lr_scale": 0.1}, {"bricks": "heads/b", "lr": 0.003}]
    module = LightningBrickCollection(nested_bricks(), optimizer=sgd(lr=0.2), param_groups=groups)
    assert {name: group["lr"] for name, group in groups_of(module).items()} == pytest.approx(
        {"backbone": 0.02, "heads/b": 0.003, "default": 0.2}
    )
    module.lr = 1.0  # what the LR finder does with update_attr=True
    assert {name: group["lr"] for name, group in groups_of(module).items()} == pytest.approx(
        {"backbone": 0.1, "heads/b": 0.003, "default": 1.0}
    )
    assert module.hparams["lr"] is None, "the argument is a hyperparameter (the LR finder updates both)"


def test_without_groups_the_optimiser_gets_the_flat_list_as_before() -> None:
    module = LightningBrickCollection(nested_bricks(), optimizer=sgd())
    optimizer = module.configure_optimizers()
    ((group,),) = [optimizer.param_groups]
    assert "name" not in group
    assert len(group["params"]) == len([p for p in module.parameters() if p.requires_grad])


def test_norms_and_biases_can_be_kept_out_of_weight_decay() -> None:
    module = LightningBrickCollection(
        nested_bricks(),
        optimizer=sgd(weight_decay=0.05),
        param_groups=[{"bricks": "backbone", "lr": 0.01}, {"bricks": "heads/b", "weight_decay": 0.0}],
        decay_norms_and_biases=False,
    )
    groups = groups_of(module)
    assert list(groups) == ["backbone", "backbone/no_decay", "heads/b", "default", "default/no_decay"]
    assert groups["backbone"]["names"] == ["brick_collection.backbone.model.0.weight"]
    assert groups["backbone/no_decay"]["names"] == [
        "brick_collection.backbone.model.0.bias",
        "brick_collection.backbone.model.1.weight",  # the batch norm's weight
        "brick_collection.backbone.model.1.bias",
    ]
    assert (groups["backbone/no_decay"]["lr"], groups["backbone/no_decay"]["weight_decay"]) == (0.01, 0.0)
    assert groups["backbone"]["weight_decay"] == 0.05
    assert len(groups["heads/b"]["names"]) == 2, "a group without weight decay is not split"
    assert groups["default"]["names"] == ["brick_collection.heads.a.classify.model.weight"]
    assert groups["default/no_decay"]["names"] == ["brick_collection.heads.a.classify.model.bias"]


# ------------------------------------------------------------------------------------------------ with a real Trainer
def test_learning_rate_monitor_logs_each_group_and_the_scheduler_acts_on_all(tmp_path: Path) -> None:
    module = LightningBrickCollection(
        nested_bricks(),
        optimizer=sgd(lr=0.1),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        param_groups=[{"bricks": "backbone", "lr": 0.01}, {"bricks": "heads/a", "lr_scale": 2.0, "name": "head_a"}],
    )
    logger = CSVLogger(tmp_path, name="logs")
    fit = trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[LearningRateMonitor()], log_every_n_steps=1)
    fit.fit(module, train_dataloaders=loader())
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    logged = {
        name: [float(row[name]) for row in rows if row.get(name)]
        for name in ("lr-SGD/backbone", "lr-SGD/head_a", "lr-SGD/default")
    }
    assert logged["lr-SGD/backbone"] == pytest.approx([0.01, 0.005, 0.0025])
    assert logged["lr-SGD/head_a"] == pytest.approx([0.2, 0.1, 0.05])
    assert logged["lr-SGD/default"] == pytest.approx([0.1, 0.05, 0.025])


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def linear_bricks() -> dict[str, Any]:
    """No batch norm or dropout: the update of a batch does not depend on how it is split."""
    return {
        "backbone": BrickTrainable(nn.Linear(N_FEATURES, 8), input_names=["raw"], output_names=["features"]),
        "head": BrickTrainable(nn.Linear(8, NUM_CLASSES), input_names=["features"], output_names=["logits"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
    }


def test_accumulating_two_half_batches_is_one_update_of_the_whole_batch(tmp_path: Path) -> None:
    def one_update(batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        module = LightningBrickCollection(
            linear_bricks(), optimizer=sgd(lr=0.5, momentum=0.9), param_groups=[{"bricks": "backbone", "lr": 0.05}]
        )
        before = _clone_state(module)
        fit = trainer(tmp_path, max_steps=1, accumulate_grad_batches=accumulate)
        fit.fit(module, train_dataloaders=loader(n=16, batch_size=batch_size))
        assert fit.global_step == 1
        return {name: value - before[name] for name, value in module.state_dict().items()}

    accumulated, whole = one_update(batch_size=8, accumulate=2), one_update(batch_size=16, accumulate=1)
    assert all(bool(change.abs().sum() > 0) for change in whole.values()), "every parameter moved"
    for name, change in whole.items():
        torch.testing.assert_close(accumulated[name], change, rtol=1e-5, atol=1e-7, msg=name)


class ScaledCrossEntropy(nn.Module):
    """Cross entropy times 1000, so that every gradient is far above the clipping value."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets) * 1000.0


def test_gradient_clipping_applies_to_every_group(tmp_path: Path) -> None:
    bricks = linear_bricks()
    bricks["loss"] = BrickLoss(ScaledCrossEntropy(), input_names=["logits", "targets"], output_names=["ce"])
    lrs = {"backbone": 0.01, "head": 0.3}
    module = LightningBrickCollection(
        bricks,
        optimizer=sgd(lr=1.0),
        param_groups=[{"bricks": name, "lr": lr} for name, lr in lrs.items()],
    )
    before = _clone_state(module)
    clip = 0.001
    fit = trainer(tmp_path, max_steps=1, gradient_clip_val=clip, gradient_clip_algorithm="value")
    fit.fit(module, train_dataloaders=loader())
    for name, value in module.state_dict().items():
        brick = name.split(".")[1]
        step = (value - before[name]).abs() / lrs[brick]  # SGD without momentum: |step| = lr * |clipped gradient|
        # float32 differences of weights near 0.5 carry a relative error of about 1e-3 at these step sizes
        assert float(step.max()) == pytest.approx(clip, rel=1e-2), f"{name}: the largest gradient is clipped to {clip}"


# ------------------------------------------------------------------------------------------------ mistakes, when built
@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (
            {"param_groups": [{"bricks": "backbnoe", "lr": 0.1}]},
            r"param_groups\[0\]: the pattern 'backbnoe' matches no brick\. Did you mean 'backbone'\? The brick paths "
            r"are \['preprocessor', 'backbone', 'frozen', 'heads/a/classify'",
        ),
        (
            {"param_groups": [{"bricks": "frozen", "lr": 0.1}]},
            r"param_groups\[0\]: the pattern 'frozen' matches only bricks without trainable parameters.*"
            r"'frozen' \(BrickNotTrainable, calculate_gradients=False\).*make the brick a BrickTrainable",
        ),
        ({"param_groups": [{"bricks": "*/loss", "lr": 0.1}]}, r"'heads/a/loss' \(BrickLoss, no parameters\)"),
        (
            {"param_groups": [{"bricks": ["backbone", "frozen"], "lr": 0.1}]},
            r"param_groups\[0\]: the pattern 'frozen' matches only bricks without trainable parameters",
        ),
        (
            {"param_groups": [{"bricks": "backbone", "momentun": 0.9}]},
            r"param_groups\[0\] \('backbone'\) sets \['momentun'\], which SGD does not take\. "
            r"Did you mean 'momentum'\?",
        ),
        (
            {"param_groups": [{"bricks": "backbone", "betas": [0.9, 0.99]}]},
            r"sets \['betas'\], which SGD does not take.*SGD takes \['dampening'",
        ),
        (
            {"param_groups": [{"bricks": "heads"}, {"bricks": "heads/a"}]},
            r"param_groups\[1\] \('heads/a'\) gets no parameters.*taken by the earlier groups \['heads'\]"
            r".*narrower pattern first",
        ),
        ({"param_groups": [{"bricks": "backbone", "lr": 0.1, "lr_scale": 2}]}, r"sets both 'lr' and 'lr_scale'"),
        (
            {"param_groups": [{"bricks": "backbone", "lr": -1}]},
            r"param_groups\[0\]\['lr'\] to be a positive number, but got -1",
        ),
        ({"param_groups": [{"bricks": "backbone", "name": "default"}]}, r"named 'default', which is taken"),
        (
            {"param_groups": [{"bricks": "backbone"}, {"bricks": "heads", "name": "backbone"}]},
            r"param_groups\[0\] is named 'backbone', which is taken",
        ),
        ({"param_groups": [{"lr": 0.1}]}, r"param_groups\[0\] \{'lr': 0.1\} has no 'bricks'"),
        (
            {"param_groups": [{"bricks": "backbone", "params": []}]},
            r"sets \['params'\], which the optimiser fills itself",
        ),
        ({"lr": 0.0}, r"Expected lr to be a positive number, but got 0.0"),
        (
            {"unfreeze": {"backbnoe": 1}},
            r"unfreeze\['backbnoe'\]: the pattern 'backbnoe' matches no brick\. Did you mean 'backbone'\?",
        ),
        (
            {"unfreeze": {"frozen": 1}},
            r"unfreeze\['frozen'\]: the pattern 'frozen' matches only bricks without trainable.*nothing to freeze",
        ),
        ({"unfreeze": {"backbone": -1}}, r"unfreeze\['backbone'\] is -1; epochs count from 0"),
    ],
)
def test_mistakes_fail_when_the_module_is_built(arguments: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LightningBrickCollection(nested_bricks(), optimizer=sgd(), **arguments)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"param_groups": {"bricks": "backbone"}}, r"param_groups to be a list of dicts"),
        ({"param_groups": ["backbone"]}, r"param_groups\[0\] to be a dict with 'bricks'"),
        ({"param_groups": [{"bricks": 3}]}, r"param_groups\[0\]\['bricks'\] to be a brick path pattern or a list"),
        ({"param_groups": [{"bricks": []}]}, r"param_groups\[0\]\['bricks'\] to be a brick path pattern or a list"),
        (
            {"unfreeze": {"backbone": 1.5}},
            r"unfreeze to map brick patterns to whole epochs, but unfreeze\['backbone'\] is 1.5",
        ),
        ({"unfreeze": ["backbone"]}, r"Expected unfreeze to be a dict"),
    ],
)
def test_arguments_of_the_wrong_type_fail_when_the_module_is_built(arguments: dict[str, Any], match: str) -> None:
    with pytest.raises(BrickDefinitionError, match=match):
        LightningBrickCollection(nested_bricks(), optimizer=sgd(), **arguments)


def test_options_the_optimiser_lacks_are_refused() -> None:
    rprop = functools.partial(torch.optim.Rprop, lr=0.01)  # Rprop has no weight decay
    with pytest.raises(ConfigError, match=r"decay_norms_and_biases=False .* but Rprop has no 'weight_decay' option"):
        LightningBrickCollection(nested_bricks(), optimizer=rprop, decay_norms_and_biases=False)
    with pytest.raises(BrickDefinitionError, match=r"optimizer factory to return a torch.optim.Optimizer"):
        LightningBrickCollection(nested_bricks(), optimizer=lambda params: list(params), lr=0.1)


def test_a_brick_that_computes_no_gradients_is_refused_even_if_its_parameters_require_them() -> None:
    bricks = nested_bricks()
    bricks["frozen"] = BrickModule(
        nn.Linear(8, 8), input_names=["features"], output_names=["frozen_features"], calculate_gradients=False
    )
    assert all(parameter.requires_grad for parameter in bricks["frozen"].parameters())
    with pytest.raises(ConfigError, match=r"'frozen' \(BrickModule, calculate_gradients=False\)"):
        LightningBrickCollection(bricks, optimizer=sgd(), param_groups=[{"bricks": "frozen", "lr": 0.1}])
    module = LightningBrickCollection(bricks, optimizer=sgd(), param_groups=[{"bricks": "backbone", "lr": 0.1}])
    assert not [name for group in groups_of(module).values() for name in group["names"] if ".frozen." in name]


def test_a_pattern_over_a_nested_collection_takes_its_bricks(boring_collection: BrickCollection) -> None:
    module = LightningBrickCollection(
        {"outer": boring_collection}, optimizer=sgd(), param_groups=[{"bricks": "outer/head", "lr": 0.3}]
    )
    groups = groups_of(module)
    assert groups["outer/head"]["names"] == [
        "brick_collection.outer.head.model.fc.weight",
        "brick_collection.outer.head.model.fc.bias",
    ]
    assert groups["default"]["names"] == [
        "brick_collection.outer.backbone.model.weight",
        "brick_collection.outer.backbone.model.bias",
    ]
