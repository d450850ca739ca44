"""Each balancer against its paper's formula computed here, and the bad inputs they refuse when built."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickTrainable, Stage
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import (
    DeltaM,
    DynamicWeightAverage,
    LossBalancer,
    PCGrad,
    StaticWeights,
    UncertaintyWeighting,
    pcgrad_coefficients,
)


class Dot(nn.Module):
    """A loss linear in the shared tensor: ``<features, direction>``, so its gradient is ``direction``."""

    def __init__(self, direction: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("direction", direction)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features * self.direction).sum()


def two_losses(weight_a: float = 1.0, weight_b: float = 1.0) -> BrickCollection:
    return BrickCollection(
        {
            "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["loss_a"], loss_weight=weight_a),
            "b": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["loss_b"], loss_weight=weight_b),
        }
    )


def conflicting_tasks(direction_a: torch.Tensor, direction_b: torch.Tensor) -> BrickCollection:
    """raw -> backbone (scale) -> features, read by two loss bricks whose gradients are the given directions."""
    return BrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(3, 4), input_names=["raw"], output_names=["features"]),
            "a": BrickLoss(Dot(direction_a), input_names=["features"], output_names=["loss_a"]),
            "b": BrickLoss(Dot(direction_b), input_names=["features"], output_names=["loss_b"], loss_weight=0.5),
        }
    )


# ------------------------------------------------------------------------------------------------ loss level
def test_static_weights_are_todays_total() -> None:
    collection = two_losses(weight_a=2.0)
    balancer = StaticWeights()
    balancer.setup(collection, collection.loss_weights())
    losses = {"loss_a": torch.tensor(1.5), "loss_b": torch.tensor(0.25)}
    torch.testing.assert_close(balancer(losses), collection.total_loss(losses))
    assert {name: float(value) for name, value in balancer.weights().items()} == {"loss_a": 2.0, "loss_b": 1.0}


def test_uncertainty_weighting_total_is_the_documented_formula() -> None:
    collection = two_losses(weight_a=2.0)
    balancer = UncertaintyWeighting()
    balancer.setup(collection, collection.loss_weights())
    with torch.no_grad():
        balancer.log_variances.copy_(torch.tensor([0.7, -1.2]))
    losses = {"loss_a": torch.tensor(1.5), "loss_b": torch.tensor(0.25)}
    total = balancer(losses)
    s_a, s_b = 0.7, -1.2
    expected = 2.0 * (math.exp(-s_a) * 1.5 / 2 + s_a / 2) + 1.0 * (math.exp(-s_b) * 0.25 / 2 + s_b / 2)
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    total.backward()  # d/ds_i = w_i (1 - exp(-s_i) L_i) / 2: the log-variances learn
    expected_grad = [2.0 * (1 - math.exp(-s_a) * 1.5) / 2, (1 - math.exp(-s_b) * 0.25) / 2]
    torch.testing.assert_close(balancer.log_variances.grad, torch.tensor(expected_grad))
    logged = {name: float(value) for name, value in balancer.weights().items()}
    assert logged == pytest.approx({"loss_a": 2.0 * math.exp(-s_a) / 2, "loss_b": math.exp(-s_b) / 2})


def test_uncertainty_weighting_on_floats_for_cpu_tensors_agrees_with_its_tensor_code_step_by_step() -> None:
    """On CPU the total is computed in Python floats as one autograd node; accelerators use the tensor code. Both
    run here, trained side by side by SGD: the totals, the losses' and the log-variances' gradients agree through a
    task unlabelled in a step, a step without any label, log-variances pushed past the bound, a NaN loss, static
    weights and a loss kept static."""
    collection = BrickCollection(
        {
            "a": BrickLoss(nn.L1Loss(), input_names=["x", "y"], output_names=["loss_a"], loss_weight=2.0),
            "b": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["loss_b"]),
            "c": BrickLoss(nn.MSELoss(), input_names=["x", "y"], output_names=["loss_c"], loss_weight=0.5),
        }
    )
    floats, tensors = (
        UncertaintyWeighting(["loss_a", "loss_b"], log_variance_bound=2.0),
        UncertaintyWeighting(["loss_a", "loss_b"], log_variance_bound=2.0),
    )
    for balancer in (floats, tensors):
        balancer.setup(collection, collection.loss_weights())
    tensors._tensor_math = True
    optimizers = [torch.optim.SGD(balancer.parameters(), lr=0.5) for balancer in (floats, tensors)]
    generator = torch.Generator().manual_seed(2)
    steps = (torch.rand(30, 3, generator=generator) * 2 + 0.05).tolist()
    steps[3][0] = 0.0  # no labels for loss_a
    steps[8][:2] = [0.0, 0.0]  # none for either balanced loss
    steps[20][1] = float("nan")
    for step, values in enumerate(steps):
        if step == 12:  # past the bound (as a checkpoint or an optimizer step could leave them): projected first
            for balancer in (floats, tensors):
                with torch.no_grad():
                    balancer.log_variances.copy_(torch.tensor([5.0, -7.0]))
        results = []
        for balancer, optimizer in zip((floats, tensors), optimizers, strict=True):
            leaves = {name: torch.tensor(value, requires_grad=True) for name, value in zip(NAMES3, values, strict=True)}
            optimizer.zero_grad()
            total = balancer(leaves)
            total.backward()
            grads = [0.0 if leaf.grad is None else float(leaf.grad) for leaf in leaves.values()]
            results.append((float(total.detach()), grads, balancer.log_variances.grad.clone()))
            if math.isfinite(float(total.detach())):
                optimizer.step()
        (total_f, grads_f, variance_f), (total_t, grads_t, variance_t) = results
        assert total_f == pytest.approx(total_t, rel=1e-6, nan_ok=True), f"step {step}"
        assert grads_f == pytest.approx(grads_t, rel=1e-6, abs=1e-9), f"step {step}"
        torch.testing.assert_close(variance_f, variance_t, rtol=1e-6, atol=1e-6, equal_nan=True)  # float32 ulps
        torch.testing.assert_close(floats.log_variances.detach(), tensors.log_variances.detach(), rtol=1e-5, atol=1e-6)
    assert floats.log_variances.detach().abs().max() <= 2.0, "the projection ran"
    assert grads_f[2] == 0.5, "loss_c kept its static weight"


NAMES3 = ("loss_a", "loss_b", "loss_c")


@pytest.mark.parametrize(
    ("make", "tensor_math"),
    [
        (StaticWeights, False),
        (DynamicWeightAverage, False),
        (UncertaintyWeighting, False),
        (UncertaintyWeighting, True),
    ],
    ids=["static", "dwa", "uncertainty-floats", "uncertainty-tensors"],
)
def test_a_balanced_loss_missing_from_the_step_is_a_config_error_naming_it(
    make: type[LossBalancer], tensor_math: bool
) -> None:
    collection = two_losses()
    balancer = make()
    balancer.setup(collection, collection.loss_weights())
    if tensor_math:
        balancer._tensor_math = True  # uncertainty weighting's tensor code, on CPU
    with pytest.raises(ConfigError, match=r"lack \['loss_b'\] \(they hold \['loss_a'\]\).*alive in the training"):
        balancer({"loss_a": torch.tensor(1.0)})


def test_uncertainty_weighting_balances_some_losses_and_keeps_the_others_static() -> None:
    collection = two_losses(weight_b=3.0)
    balancer = UncertaintyWeighting(loss_names=["loss_a"], initial_log_variance=1.0)
    balancer.setup(collection, collection.loss_weights())
    total = balancer({"loss_a": torch.tensor(2.0), "loss_b": torch.tensor(0.5)})
    assert float(total.detach()) == pytest.approx(math.exp(-1.0) * 2.0 / 2 + 1.0 / 2 + 3.0 * 0.5)
    assert list(balancer.weights()) == ["loss_a"]


def test_the_log_variances_reach_the_optimizer_and_the_state_dict() -> None:
    collection = BrickCollection(
        {
            "head": BrickTrainable(nn.Linear(2, 1), input_names=["x"], output_names=["p"]),
            "a": BrickLoss(nn.L1Loss(), input_names=["p", "y"], output_names=["loss_a"]),
            "b": BrickLoss(nn.MSELoss(), input_names=["p", "y"], output_names=["loss_b"]),
        }
    )
    module = LightningBrickCollection(collection, loss_balancer=UncertaintyWeighting())
    optimizer = module.configure_optimizers()
    optimised = [id(parameter) for group in optimizer.param_groups for parameter in group["params"]]
    assert id(module.loss_balancer.log_variances) in optimised
    assert "loss_balancer.log_variances" in module.state_dict()
    assert "loss_balancer" not in module.hparams, "an object, recorded as a recipe by the CLI only"


def test_dynamic_weight_average_follows_the_paper_after_two_epochs() -> None:
    collection = two_losses()
    balancer = DynamicWeightAverage(temperature=2.0)
    balancer.setup(collection, collection.loss_weights())
    epoch_means = [{"loss_a": 1.0, "loss_b": 2.0}, {"loss_a": 0.6, "loss_b": 1.9}, {"loss_a": 0.5, "loss_b": 1.0}]
    used = []
    for means in epoch_means:
        balancer.on_train_epoch_start()
        used.append({name: float(value) for name, value in balancer.weights().items()})
        balancer.on_train_epoch_end(means)
    balancer.on_train_epoch_start()
    used.append({name: float(value) for name, value in balancer.weights().items()})

    def paper(before: dict[str, float], last: dict[str, float]) -> dict[str, float]:
        exps = {name: math.exp(last[name] / before[name] / 2.0) for name in last}
        return {name: 2 * value / sum(exps.values()) for name, value in exps.items()}

    assert used[0] == used[1] == {"loss_a": 1.0, "loss_b": 1.0}, "lambda = 1 in the first two epochs"
    assert used[2] == pytest.approx(paper(epoch_means[0], epoch_means[1]), rel=1e-6)
    assert used[3] == pytest.approx(paper(epoch_means[1], epoch_means[2]), rel=1e-6)
    total = balancer({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(1.0)})
    assert float(total) == pytest.approx(sum(used[3].values()), rel=1e-6)
    assert set(balancer.state_dict()) == {"history", "epochs_seen", "lambdas"}, "checkpointed for resume"


# ------------------------------------------------------------------------------------------------ gradient level
def _pcgrad_on_vectors(grads: list[torch.Tensor], orders: list[list[int]]) -> torch.Tensor:
    """PCGrad as the paper (and LibMTL) write it, on the gradient vectors themselves."""
    projected = [grad.clone() for grad in grads]
    for i, order in enumerate(orders):
        for j in order:
            dot = torch.dot(projected[i], grads[j])
            if j != i and dot < 0:
                projected[i] = projected[i] - dot * grads[j] / grads[j].norm() ** 2
    return torch.stack(projected).sum(dim=0)


@pytest.mark.parametrize("tasks", [2, 3, 4])
def test_pcgrad_coefficients_from_the_gram_matrix_equal_projecting_the_vectors(tasks: int) -> None:
    generator = torch.Generator().manual_seed(tasks)
    for _ in range(10):
        grads = list(torch.randn(tasks, 7, generator=generator, dtype=torch.float64))
        orders = [torch.randperm(tasks, generator=generator).tolist() for _ in range(tasks)]
        gram = torch.stack(grads) @ torch.stack(grads).T
        coefficients, conflicts = pcgrad_coefficients(gram.tolist(), orders)
        combined = sum(c * g for c, g in zip(coefficients, grads, strict=True))
        torch.testing.assert_close(combined, _pcgrad_on_vectors(grads, orders))
        assert conflicts == int((gram.triu(1) < 0).sum())


def test_pcgrad_combined_gradient_on_two_conflicting_tasks_is_the_formula() -> None:
    torch.manual_seed(0)
    g_a = torch.tensor([1.0, 2.0, -1.0, 0.5])
    g_b = torch.tensor([-2.0, 0.5, 1.0, 1.0])  # <g_a, g_b> = -2 + 1 - 1 + 0.5 < 0: conflicting
    collection = conflicting_tasks(g_a, g_b)
    balancer = PCGrad(shared_name="features")
    balancer.setup(collection, collection.loss_weights())
    raw = torch.randn(5, 3)
    with balancer.training_pass():
        outputs = collection({"raw": raw}, Stage.TRAIN)
    features = outputs["features"]
    features.retain_grad()
    total = balancer({name: outputs[name] for name in ("loss_a", "loss_b")})
    total.backward()

    # The tasks' gradients on the shared tensor (every row): g_a and 0.5 g_b (loss_b's static weight is 0.5).
    ga, gb = g_a.expand(5, 4).reshape(-1), (0.5 * g_b).expand(5, 4).reshape(-1)
    dot = torch.dot(ga, gb)
    assert dot < 0
    expected = (ga - dot / gb.norm() ** 2 * gb) + (gb - dot / ga.norm() ** 2 * ga)
    torch.testing.assert_close(features.grad.reshape(-1), expected)
    # The backbone's gradient is the chain rule through the combined gradient (one backward pass).
    weight_grad = features.grad.T @ raw
    torch.testing.assert_close(collection["backbone"].model.weight.grad, weight_grad)
    scaling = (1 - dot / ga.norm() ** 2, 1 - dot / gb.norm() ** 2)
    logged = balancer.logged_values()
    assert float(logged["loss_a"]) == pytest.approx(float(scaling[0]))
    assert float(logged["loss_b"]) == pytest.approx(float(scaling[1]))
    assert float(logged["conflicts"]) == 1.0


def test_pcgrad_leaves_agreeing_gradients_and_other_passes_alone() -> None:
    collection = conflicting_tasks(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    balancer = PCGrad(shared_name="features")
    balancer.setup(collection, collection.loss_weights())
    reference = conflicting_tasks(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    reference.load_state_dict(collection.state_dict())
    raw = torch.randn(3, 3)
    with balancer.training_pass():
        outputs = collection({"raw": raw}, Stage.TRAIN)
    balancer({name: outputs[name] for name in ("loss_a", "loss_b")}).backward()
    plain = reference({"raw": raw}, Stage.TRAIN)
    reference.total_loss(plain).backward()
    grad, expected = collection["backbone"].model.weight.grad, reference["backbone"].model.weight.grad
    torch.testing.assert_close(grad, expected)  # no conflict: the plain sum
    assert float(balancer.logged_values()["conflicts"]) == 0.0
    # Outside a training pass the hooks change nothing (validation, export): no branch, no projection.
    outputs = collection({"raw": raw}, Stage.VALIDATION)
    assert outputs["features"].grad_fn is not None
    assert outputs["features"].grad_fn.name() == "AddmmBackward0"


def test_pcgrad_with_a_task_without_labels_keeps_the_other_gradient() -> None:
    collection = conflicting_tasks(torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.zeros(4))  # task b: zero gradient
    balancer = PCGrad(shared_name="features")
    balancer.setup(collection, collection.loss_weights())
    with balancer.training_pass():
        outputs = collection({"raw": torch.randn(2, 3)}, Stage.TRAIN)
    features = outputs["features"]
    features.retain_grad()
    balancer({name: outputs[name] for name in ("loss_a", "loss_b")}).backward()
    torch.testing.assert_close(features.grad, torch.tensor([[1.0, 2.0, 0.0, 0.0]] * 2))
    assert torch.isfinite(collection["backbone"].model.weight.grad).all()


# ------------------------------------------------------------------------------------------------ Δm
def test_delta_m_is_the_mean_relative_gain_with_directions() -> None:
    score = DeltaM({"a/accuracy": 0.8, "b/mae": 4.0}, higher_is_better={"b/mae": False})
    value = score({"a/accuracy": torch.tensor(0.88), "b/mae": torch.tensor(5.0)})
    assert float(value) == pytest.approx(100 * ((0.88 - 0.8) / 0.8 - (5.0 - 4.0) / 4.0) / 2)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "balancer",
    [StaticWeights(["loss_aa"]), UncertaintyWeighting(["loss_aa"]), DynamicWeightAverage(["loss_aa"])],
    ids=lambda balancer: type(balancer).__name__,
)
def test_a_balancer_naming_an_unknown_loss_is_refused_when_built(balancer: LossBalancer) -> None:
    with pytest.raises(
        ConfigError, match=r"balances the loss 'loss_aa'.*Did you mean 'loss_a'.*\['loss_a', 'loss_b'\]"
    ):
        LightningBrickCollection(two_losses(), loss_balancer=balancer)


def test_pcgrad_bad_inputs_are_refused_when_built() -> None:
    collection = conflicting_tasks(torch.ones(4), -torch.ones(4))
    with pytest.raises(ConfigError, match=r"balances the loss 'loss_x'"):
        LightningBrickCollection(collection, loss_balancer=PCGrad("features", loss_names=["loss_a", "loss_x"]))
    with pytest.raises(
        ConfigError, match=r"'feature'.*no brick alive in training produces it.*Did you mean 'features'"
    ):
        LightningBrickCollection(collection, loss_balancer=PCGrad("feature"))
    with pytest.raises(ConfigError, match=r"'raw'.*an input of the stage"):
        LightningBrickCollection(collection, loss_balancer=PCGrad("raw"))
    with pytest.raises(ConfigError, match=r"at least two tasks, but only \['loss_a'\]"):
        LightningBrickCollection(collection, loss_balancer=PCGrad("features", loss_names=["loss_a"]))
    shared_head = BrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(3, 4), input_names=["raw"], output_names=["features"]),
            "neck": BrickTrainable(nn.Linear(4, 4), input_names=["features"], output_names=["neck"]),
            "a": BrickLoss(Dot(torch.ones(4)), input_names=["neck"], output_names=["loss_a"]),
            "b": BrickLoss(Dot(-torch.ones(4)), input_names=["neck"], output_names=["loss_b"]),
        }
    )
    with pytest.raises(ConfigError, match=r"Brick 'neck' reads the shared tensor 'features' and feeds several"):
        LightningBrickCollection(shared_head, loss_balancer=PCGrad("features"))
    LightningBrickCollection(shared_head, loss_balancer=PCGrad("neck"))  # the tensor after which the tasks separate


def test_wrong_types_and_unknown_delta_m_keys_are_refused() -> None:
    with pytest.raises(BrickDefinitionError, match="Expected loss_balancer to be a LossBalancer"):
        LightningBrickCollection(two_losses(), loss_balancer={"class_path": "UncertaintyWeighting"})  # type: ignore[arg-type]
    with pytest.raises(BrickDefinitionError, match="loss_names to be a list"):
        UncertaintyWeighting("loss_a")
    collection = BrickCollection({"head": ClassificationHeadFactory()})
    with pytest.raises(ConfigError, match=r"baseline for the metric 'head/acuracy'.*Did you mean 'head/accuracy'"):
        LightningBrickCollection(collection, delta_m=DeltaM({"head/acuracy": 0.9}))
    with pytest.raises(ConfigError, match="finite, non-zero"):
        DeltaM({"head/accuracy": 0.0})
    with pytest.raises(ConfigError, match=r"higher_is_better names \['other'\], which have no baseline"):
        DeltaM({"head/accuracy": 0.5}, higher_is_better={"other": False})


def ClassificationHeadFactory() -> BrickCollection:  # noqa: N802 - reads like the class it stands for
    from torchbricks_lightning.bag_of_bricks import ClassificationHead

    return ClassificationHead(num_classes=3, in_channels=4)
