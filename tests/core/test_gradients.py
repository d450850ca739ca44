"""Gradients, frozen parameters, eval mode and hooks of the module bricks inside a collection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickLoss, BrickNotTrainable, BrickTrainable, Stage

N_FEATURES = 4
NUM_CLASSES = 3


def _chain(middle: BrickNotTrainable) -> BrickCollection:
    """upstream (trainable) -> middle (frozen) -> head (trainable) -> loss."""
    return BrickCollection(
        {
            "upstream": BrickTrainable(nn.Linear(N_FEATURES, N_FEATURES), input_names=["raw"], output_names=["a"]),
            "middle": middle,
            "head": BrickTrainable(nn.Linear(N_FEATURES, NUM_CLASSES), input_names=["b"], output_names=["logits"]),
            "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"]),
        }
    )


def _inputs(batch_size: int = 6) -> dict[str, torch.Tensor]:
    return {
        "raw": torch.randn(batch_size, N_FEATURES),
        "targets": torch.arange(batch_size) % NUM_CLASSES,
    }


def _frozen_linear(calculate_gradients: bool) -> BrickNotTrainable:
    return BrickNotTrainable(
        nn.Linear(N_FEATURES, N_FEATURES),
        input_names=["a"],
        output_names=["b"],
        calculate_gradients=calculate_gradients,
    )


# ------------------------------------------------------------------------------------ BrickNotTrainable
def test_not_trainable_without_gradients_freezes_its_parameters() -> None:
    brick = _frozen_linear(calculate_gradients=False)
    parameters = list(brick.parameters())
    assert len(parameters) == 2
    assert not any(p.requires_grad for p in parameters)


def test_not_trainable_without_gradients_outputs_carry_no_graph() -> None:
    collection = _chain(_frozen_linear(calculate_gradients=False))
    outputs = collection(_inputs(), Stage.TRAIN)

    assert outputs["a"].requires_grad  # the upstream output does require grad ...
    assert outputs["b"].requires_grad is False  # ... but nothing of it passes the frozen brick
    assert outputs["b"].grad_fn is None


def test_not_trainable_without_gradients_output_has_no_grad_even_for_a_leaf_input() -> None:
    collection = BrickCollection({"middle": _frozen_linear(calculate_gradients=False)})
    leaf = torch.randn(3, N_FEATURES, requires_grad=True)

    outputs = collection({"a": leaf}, Stage.TRAIN)

    assert outputs["b"].requires_grad is False
    assert outputs["b"].grad_fn is None


def test_not_trainable_without_gradients_blocks_gradients_to_upstream_bricks() -> None:
    collection = _chain(_frozen_linear(calculate_gradients=False))
    outputs = collection(_inputs(), Stage.TRAIN)

    collection.total_loss(outputs).backward()

    upstream = collection["upstream"].model
    middle = collection["middle"].model
    head = collection["head"].model
    assert upstream.weight.grad is None
    assert upstream.bias.grad is None
    assert middle.weight.grad is None
    assert head.weight.grad is not None
    assert head.weight.grad.abs().sum() > 0


def test_not_trainable_with_gradients_passes_gradients_through_but_stays_frozen() -> None:
    middle = _frozen_linear(calculate_gradients=True)
    assert not any(p.requires_grad for p in middle.parameters())
    collection = _chain(middle)
    outputs = collection(_inputs(), Stage.TRAIN)
    assert outputs["b"].requires_grad
    assert outputs["b"].grad_fn is not None

    collection.total_loss(outputs).backward()

    upstream = collection["upstream"].model
    assert upstream.weight.grad is not None
    assert upstream.weight.grad.abs().sum() > 0
    assert middle.model.weight.grad is None
    assert middle.model.bias.grad is None


def test_not_trainable_with_gradients_matches_a_hand_written_model() -> None:
    torch.manual_seed(1)
    middle = _frozen_linear(calculate_gradients=True)
    collection = _chain(middle)
    inputs = _inputs()

    collection.total_loss(collection(inputs, Stage.TRAIN)).backward()

    # The same computation written by hand: the middle layer's weights as constants.
    upstream, head = collection["upstream"].model, collection["head"].model
    weight = upstream.weight.detach().clone().requires_grad_(True)
    bias = upstream.bias.detach().clone().requires_grad_(True)
    a = nn.functional.linear(inputs["raw"], weight, bias)
    b = nn.functional.linear(a, middle.model.weight.detach(), middle.model.bias.detach())
    logits = nn.functional.linear(b, head.weight.detach(), head.bias.detach())
    nn.functional.cross_entropy(logits, inputs["targets"]).backward()

    torch.testing.assert_close(upstream.weight.grad, weight.grad)
    torch.testing.assert_close(upstream.bias.grad, bias.grad)


# ------------------------------------------------------------------------------------ keep_eval_mode
def _norm_and_dropout() -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(N_FEATURES), nn.Dropout(p=0.5))


def _collection_with_norm(keep_eval_mode: bool) -> BrickCollection:
    return BrickCollection(
        {
            "norm": BrickNotTrainable(
                _norm_and_dropout(), input_names=["raw"], output_names=["normed"], keep_eval_mode=keep_eval_mode
            )
        }
    )


def test_keep_eval_mode_survives_collection_train() -> None:
    collection = _collection_with_norm(keep_eval_mode=True)
    collection.eval()
    collection.train()

    brick = collection["norm"]
    assert collection.training
    assert brick.training  # the brick itself follows the collection ...
    assert not brick.model.training  # ... but the module it wraps stays in eval mode
    assert not any(module.training for module in brick.model.modules())


def test_keep_eval_mode_keeps_batch_norm_statistics_and_disables_dropout() -> None:
    collection = _collection_with_norm(keep_eval_mode=True)
    collection.train()
    batch_norm = collection["norm"].model[0]
    # Non-trivial statistics so that the eval computation is not the identity.
    batch_norm.running_mean.fill_(0.5)
    batch_norm.running_var.fill_(2.0)
    mean_before = batch_norm.running_mean.clone()
    var_before = batch_norm.running_var.clone()
    tracked_before = int(batch_norm.num_batches_tracked)
    raw = torch.randn(16, N_FEATURES) * 3 + 1

    outputs = collection({"raw": raw}, Stage.TRAIN)

    torch.testing.assert_close(batch_norm.running_mean, mean_before)
    torch.testing.assert_close(batch_norm.running_var, var_before)
    assert int(batch_norm.num_batches_tracked) == tracked_before
    expected = (raw - mean_before) / torch.sqrt(var_before + batch_norm.eps)  # eval batch norm, no dropout
    torch.testing.assert_close(outputs["normed"], expected)
    # Dropout is the identity: a second call gives exactly the same values.
    torch.testing.assert_close(collection({"raw": raw}, Stage.TRAIN)["normed"], outputs["normed"])


def test_without_keep_eval_mode_batch_norm_and_dropout_train() -> None:
    collection = _collection_with_norm(keep_eval_mode=False)
    collection.train()
    brick = collection["norm"]
    batch_norm = brick.model[0]
    assert brick.model.training
    mean_before = batch_norm.running_mean.clone()
    raw = torch.randn(16, N_FEATURES) * 3 + 1

    outputs = collection({"raw": raw}, Stage.TRAIN)

    assert not torch.allclose(batch_norm.running_mean, mean_before)
    assert int(batch_norm.num_batches_tracked) == 1
    assert (outputs["normed"] == 0).any()  # dropout zeroed some values


def test_keep_eval_mode_after_a_round_trip_through_eval() -> None:
    collection = _collection_with_norm(keep_eval_mode=True)
    for _ in range(2):
        collection.eval()
        assert not collection["norm"].model.training
        collection.train()
        assert not collection["norm"].model.training


# ------------------------------------------------------------------------------------ hooks
def test_forward_hooks_on_brick_and_wrapped_module_fire() -> None:
    collection = _chain(_frozen_linear(calculate_gradients=True))
    brick = collection["middle"]
    calls: list[str] = []
    seen: dict[str, torch.Tensor] = {}

    def brick_pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert module is brick
        calls.append("brick_pre")

    def brick_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert module is brick
        calls.append("brick")
        seen["brick_output"] = output

    def model_pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert module is brick.model
        calls.append("model_pre")
        seen["model_input"] = args[0]

    def model_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert module is brick.model
        calls.append("model")

    handles = [
        brick.register_forward_pre_hook(brick_pre_hook),
        brick.register_forward_hook(brick_hook),
        brick.model.register_forward_pre_hook(model_pre_hook),
        brick.model.register_forward_hook(model_hook),
    ]
    outputs = collection(_inputs(), Stage.TRAIN)

    assert calls == ["brick_pre", "model_pre", "model", "brick"]
    assert seen["brick_output"] is outputs["b"]
    assert seen["model_input"] is outputs["a"]

    for handle in handles:
        handle.remove()
    collection(_inputs(), Stage.TRAIN)
    assert len(calls) == 4


def test_forward_hook_can_replace_a_brick_output() -> None:
    collection = _chain(_frozen_linear(calculate_gradients=True))

    def zero_output(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(output)

    collection["middle"].register_forward_hook(zero_output)
    outputs = collection(_inputs(), Stage.INFERENCE)

    assert torch.equal(outputs["b"], torch.zeros(6, N_FEATURES))
    head = collection["head"].model
    torch.testing.assert_close(outputs["logits"], head.bias.expand(6, NUM_CLASSES))


# ------------------------------------------------------------------------------------ BrickTrainable
def test_trainable_parameters_require_grad_and_an_optimizer_step_changes_them() -> None:
    collection = _chain(_frozen_linear(calculate_gradients=True))
    trainable = [p for name in ("upstream", "head") for p in collection[name].parameters()]
    assert trainable
    assert all(p.requires_grad for p in trainable)
    frozen = list(collection["middle"].parameters())
    assert {id(p) for p in collection.parameters() if p.requires_grad} == {id(p) for p in trainable}
    before = [p.detach().clone() for p in trainable]
    frozen_before = [p.detach().clone() for p in frozen]
    optimizer = torch.optim.SGD([p for p in collection.parameters() if p.requires_grad], lr=0.5)

    outputs = collection(_inputs(), Stage.TRAIN)
    loss = collection.total_loss(outputs)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    assert all(not torch.equal(after, old) for after, old in zip(trainable, before, strict=True))
    assert all(torch.equal(after, old) for after, old in zip(frozen, frozen_before, strict=True))
    new_loss = collection.total_loss(collection(_inputs(), Stage.TRAIN))
    assert torch.isfinite(new_loss)


@pytest.mark.parametrize("calculate_gradients", [True, False])
def test_optimizer_over_all_parameters_leaves_frozen_brick_unchanged(calculate_gradients: bool) -> None:
    middle = _frozen_linear(calculate_gradients=calculate_gradients)
    collection = _chain(middle)
    frozen_before = [p.detach().clone() for p in middle.parameters()]
    optimizer = torch.optim.SGD(collection.parameters(), lr=0.5, weight_decay=0.1)

    for _ in range(3):
        optimizer.zero_grad()
        collection.total_loss(collection(_inputs(), Stage.TRAIN)).backward()
        optimizer.step()

    assert all(torch.equal(p, old) for p, old in zip(middle.parameters(), frozen_before, strict=True))
