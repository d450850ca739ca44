"""The generated stage functions: direct module calls without hooks, the brick's own call with hooks."""

from __future__ import annotations

import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable, Stage


def _collection() -> BrickCollection:
    return BrickCollection(
        {
            "pre": BrickNotTrainable(nn.Identity(), input_names=["raw"], output_names=["x"], calculate_gradients=False),
            "head": BrickTrainable(nn.Linear(3, 2), input_names=["x"], output_names=["y"]),
        }
    )


def test_generated_code_calls_wrapped_modules_directly_when_no_hook_is_registered() -> None:
    collection = _collection()
    source = collection._stage(Stage.INFERENCE).run.__source__  # type: ignore[attr-defined]
    assert "m0(" in source
    assert "with _no_grad(): t = _detach(m0(" in source  # calculate_gradients=False keeps its no_grad on the fast path
    assert "if h: t = b1(" in source  # and the brick's own call when a hook exists


def test_hooks_registered_after_the_plan_was_built_still_fire() -> None:
    collection = _collection()
    inputs = {"raw": torch.rand(4, 3)}
    collection(inputs)  # plan built and used
    seen: list[str] = []
    handle = collection["head"].register_forward_hook(lambda module, args, output: seen.append("brick"))
    inner = collection["head"].model.register_forward_hook(lambda module, args, output: seen.append("model"))
    collection(inputs)
    assert seen == ["model", "brick"]
    handle.remove()
    collection(inputs)
    assert seen == ["model", "brick", "model"]  # the wrapped module's hook fires on the direct path too
    inner.remove()


def test_global_module_hooks_route_calls_through_the_bricks() -> None:
    collection = _collection()
    calls: list[str] = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, output: calls.append(type(module).__name__)
    )
    try:
        collection({"raw": torch.rand(2, 3)})
    finally:
        handle.remove()
    assert "BrickTrainable" in calls
    assert "BrickNotTrainable" in calls


def test_fast_and_hooked_paths_give_the_same_outputs_and_gradients() -> None:
    collection = _collection()
    inputs = {"raw": torch.rand(4, 3, requires_grad=True)}
    fast = collection(inputs)["y"]
    fast.sum().backward()
    fast_grad = collection["head"].model.weight.grad.clone()
    assert inputs["raw"].grad is None  # 'pre' runs without gradients on both paths
    collection.zero_grad()
    handle = collection["head"].register_forward_pre_hook(lambda module, args: None)
    hooked = collection(inputs)["y"]
    hooked.sum().backward()
    handle.remove()
    torch.testing.assert_close(hooked, fast)
    torch.testing.assert_close(collection["head"].model.weight.grad, fast_grad)
    assert inputs["raw"].grad is None


def test_replacing_a_wrapped_module_or_gradient_setting_rebuilds_the_plan() -> None:
    collection = _collection()
    inputs = {"raw": torch.rand(2, 3, requires_grad=True)}
    collection(inputs)
    collection["head"].model = nn.Linear(3, 5)
    assert collection(inputs)["y"].shape == (2, 5)
    collection["pre"].calculate_gradients = True
    collection(inputs)["y"].sum().backward()
    assert inputs["raw"].grad is not None
