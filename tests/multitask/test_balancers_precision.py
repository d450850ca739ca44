"""The balancers under what Lightning's automatic optimization adds to a step: mixed precision, gradient clipping,
gradient accumulation, and ``torch.compile`` of the collection, each under a real ``Trainer`` on the digits.

Mixed precision is ``bf16-mixed`` on the CPU: fp16 with a ``GradScaler`` needs a GPU, which these tests do not have
(the Gramian mechanism's scale invariance is what fp16's loss scale would exercise; bf16 has no scale, but it runs the
heads and the trunk in bfloat16, so the branches' gradients reach the combination in bfloat16).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch._dynamo
from conftest import quiet_trainer
from test_gramian_balancers import digit_bricks

from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import FAMO, MGDA, GradNorm, LossBalancer, UPGrad

KINDS: dict[str, Callable[[], LossBalancer]] = {
    "mgda": MGDA,  # the representation source
    "upgrad_parameters": functools.partial(UPGrad, source="parameters"),
    "gradnorm": GradNorm,
    "famo": FAMO,
}
BALANCED = ("digit/loss_ce", "parity/loss_ce")
HEAVY = {name: 4.0 for name in BALANCED}  # static weights that make the first gradient's norm above the clipping's 1


def _module(kind: str, optimizer: Callable[..., torch.optim.Optimizer], **kwargs: Any) -> LightningBrickCollection:
    return LightningBrickCollection(digit_bricks(), loss_balancer=KINDS[kind](), optimizer=optimizer, **kwargs)


def _fit(module: LightningBrickCollection, folder: Path, steps: int, **kwargs: Any) -> pl.Trainer:
    trainer = quiet_trainer(
        folder,
        max_steps=steps,
        limit_train_batches=4,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        **kwargs,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, labelled_fraction=0.5, seed=1))
    return trainer


class _Record(pl.Callback):
    """Records the initial weights, the first batches, each step's loss and the first optimizer step's gradients
    (before clipping: Lightning calls ``on_before_optimizer_step`` after accumulating, before it clips)."""

    def __init__(self) -> None:
        self.initial: dict[str, torch.Tensor] = {}
        self.batches: list[Any] = []
        self.losses: list[float] = []
        self.grads: dict[str, torch.Tensor] | None = None
        self.after_first_step: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = copy.deepcopy(pl_module.state_dict())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.batches.append(copy.deepcopy(batch))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))
        if trainer.global_step == 1 and self.after_first_step is None:
            self.after_first_step = {name: p.detach().clone() for name, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.grads is None:
            self.grads = {name: p.grad.clone() for name, p in pl_module.named_parameters() if p.grad is not None}


def _changed(before: dict[str, torch.Tensor], module: LightningBrickCollection) -> list[str]:
    return [name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())]


# ------------------------------------------------------------------------------------------------ bf16-mixed
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_balancer_trains_in_bf16_mixed_precision(kind: str, tmp_path: Path) -> None:
    module = _module(kind, functools.partial(torch.optim.Adam, lr=0.05))
    dtypes: list[torch.dtype] = []
    module.brick_collection["backbone"].register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    record = _Record()
    trainer = _fit(module, tmp_path, steps=4, precision="bf16-mixed", callbacks=[record])
    assert set(dtypes) == {torch.bfloat16}, "the trunk ran under autocast"
    assert len(record.losses) == 4
    assert all(math.isfinite(value) for value in record.losses), record.losses
    logged = {name: float(trainer.logged_metrics[f"train/balance/{name}"]) for name in BALANCED}
    assert all(math.isfinite(value) and value > 0 for value in logged.values()), logged
    changed = _changed(record.initial, module)
    assert any(name.startswith("brick_collection.backbone") for name in changed), "the trunk trained"
    assert any(name.startswith("brick_collection.parity") for name in changed), "the heads trained"
    balancer = module.loss_balancer
    if kind == "gradnorm":
        assert not torch.equal(balancer.task_weights, torch.ones(2)), "GradNorm's weights moved"
    if kind == "famo":
        assert not torch.equal(balancer.logits, torch.zeros(2)), "FAMO's logits moved"


# ---------------------------------------------------------------------------------------------- clipping, accumulation
def _micro_batch_gradient(kind: str, initial: dict[str, torch.Tensor], batch: Any, accumulate: int) -> dict[str, Any]:
    """By hand, on a fresh copy of the initial weights: one micro-batch's training pass, balancer and backward of
    ``total / accumulate`` (what Lightning's automatic optimization backpropagates)."""
    module = _module(kind, torch.optim.SGD, loss_weights=HEAVY)
    module.load_state_dict(initial)
    collection = module.brick_collection
    named_inputs = module.named_inputs_of(batch, Stage.TRAIN)
    with module.multitask.training_pass():
        outputs = collection(named_inputs, Stage.TRAIN)
    losses = collection.extract_losses(outputs)
    _, total = module.multitask.total(
        collection, Stage.TRAIN, losses, module.multitask.labelled_counts(collection, outputs)
    )
    (total / accumulate).backward()
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["mgda", "upgrad_parameters"])
def test_accumulation_sums_the_micro_batch_combinations_and_clipping_scales_their_sum(
    kind: str, tmp_path: Path
) -> None:
    lr = 0.5
    module = _module(kind, functools.partial(torch.optim.SGD, lr=lr), loss_weights=HEAVY)
    record = _Record()
    _fit(module, tmp_path, steps=2, accumulate_grad_batches=2, gradient_clip_val=1.0, callbacks=[record])
    assert len(record.losses) == 4, "2 optimizer steps of 2 micro-batches"
    assert all(math.isfinite(value) for value in record.losses)
    assert record.grads is not None
    assert record.after_first_step is not None
    first, second = (_micro_batch_gradient(kind, record.initial, batch, 2) for batch in record.batches[:2])
    assert first.keys() == second.keys() == record.grads.keys()
    trunk = [name for name in first if name.startswith("brick_collection.backbone")]
    assert trunk
    assert not torch.allclose(first[trunk[0]], second[trunk[0]]), "two different micro-batches"
    for name, grad in record.grads.items():
        torch.testing.assert_close(grad, first[name] + second[name], rtol=1e-5, atol=1e-7, msg=name)
    # Lightning clips the accumulated gradient to norm 1, then SGD steps: theta_1 = theta_0 - lr * clipped.
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in record.grads.values()]))
    assert float(norm) > 1.0, "the clipping acts on this step"
    scale = 1.0 / (float(norm) + 1e-6)
    for name, grad in record.grads.items():
        expected = record.initial[name] - lr * scale * grad
        torch.testing.assert_close(record.after_first_step[name], expected, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ torch.compile
@pytest.fixture
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
@pytest.mark.parametrize("kind", ["mgda", "upgrad_parameters"])
def test_a_compiled_collection_trains_to_the_eager_weights(kind: str, tmp_path: Path) -> None:
    """About 2 s per run for the compilation: the ``aot_eager`` backend (dynamo and AOT autograd, which holds the
    compiled backward's rules, e.g. no ``retain_graph`` through donated buffers; inductor's code generation would add
    about 25 s on the CPU and is not what could break the balancers)."""
    optimizer = functools.partial(torch.optim.Adam, lr=0.05)
    eager = _module(kind, optimizer)
    _fit(eager, tmp_path / "eager", steps=3)
    compiled = _module(kind, optimizer, compile_model=True, compile_kwargs={"backend": "aot_eager"})
    _fit(compiled, tmp_path / "compiled", steps=3)
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= 2, "it compiled the trunk and the heads"
    breaks = dict(counters["graph_break"])
    assert all("BranchHook.__call__" in reason for reason in breaks), breaks  # the branches run eagerly, on purpose
    expected, got = eager.state_dict(), compiled.state_dict()
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert compiled.loss_balancer.last_coefficients == pytest.approx(eager.loss_balancer.last_coefficients, rel=1e-5)
