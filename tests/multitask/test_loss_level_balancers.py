"""The loss-level balancers FAMO, RLW and GLS against their papers' formulas, with unlabelled tasks, under DDP's
all-reduce, and in a real ``Trainer``: weights logged (CSV read back) and a kill-and-resume that continues exactly.

The formulas are computed here from the papers (and, for FAMO, from the official code's ``torch.optim.Adam`` step
of the logits), never by calling the balancer's own helpers.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import same_state
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from test_unlabelled_tasks import digit_bricks, three_losses

from torchbricks_lightning import BrickCollection
from torchbricks_lightning.datamodules import DigitsDataModule
from torchbricks_lightning.errors import CheckpointError, ConfigError
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.multitask import FAMO, GeometricLossStrategy, LossBalancer, RandomLossWeighting, loss_level

NAMES = ("loss_a", "loss_b", "loss_c")


def set_up(
    balancer: LossBalancer, collection: BrickCollection | None = None, static: dict[str, float] | None = None
) -> LossBalancer:
    collection = collection or three_losses()
    balancer.setup(collection, static or collection.loss_weights())
    return balancer


def losses(*values: float, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value, requires_grad=requires_grad) for name, value in zip(NAMES, values, strict=True)}


def weights(balancer: LossBalancer) -> list[float]:
    return [float(value) for value in balancer.weights().values()]


# ------------------------------------------------------------------------------------------------ FAMO
def test_famo_total_has_the_gradient_of_the_papers_objective() -> None:
    balancer = set_up(FAMO())
    logits = torch.tensor([0.3, -0.2, 0.1])
    saved = balancer.get_extra_state()
    saved["famo"][0] = logits  # the logits row, as a checkpoint would hold it
    balancer.set_extra_state(saved)
    given = losses(0.5, 2.0, 1.2, requires_grad=True)
    total = balancer(given)
    total.backward()
    ours = [float(given[name].grad) for name in NAMES]  # type: ignore[arg-type]
    # The paper (official get_weighted_loss): sum_i z_i log(D_i) / c, c = sum_i z_i / D_i held constant.
    reference = losses(0.5, 2.0, 1.2, requires_grad=True)
    stacked = torch.stack([reference[name] for name in NAMES])
    z = torch.softmax(logits, 0)
    shifted = stacked - 0 + 1e-8
    c = (z / shifted).sum().detach()
    (shifted.log() * z / c).sum().backward()
    assert ours == pytest.approx([float(reference[name].grad) for name in NAMES], rel=1e-6)  # type: ignore[arg-type]
    assert weights(balancer) == pytest.approx(ours, rel=1e-6), "the logged weight is the factor of each loss"
    assert sum(ours) == pytest.approx(1.0), "a convex combination of the task gradients"


def test_famo_first_update_on_hand_computed_numbers() -> None:
    balancer = set_up(FAMO(lr=0.1, gamma=0.5))
    balancer({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(2.0), "loss_c": torch.tensor(4.0)})
    assert balancer.logits.tolist() == [0.0, 0.0, 0.0], "no previous step: no update"
    balancer({"loss_a": torch.tensor(0.5), "loss_b": torch.tensor(2.0), "loss_c": torch.tensor(1.0)})
    # delta = log(before + 1e-8) - log(after + 1e-8), about (log 2, 0, log 4); z = 1/3 each;
    # g_i = z_i (delta_i - z . delta) + gamma * 0. (FAMO computes in Python floats on CPU: the 1e-8 counts, and it
    # makes g_a about -1e-9 instead of 0, which Adam's first step turns into about -0.01.)
    e = 1e-8
    delta = [math.log((1.0 + e) / (0.5 + e)), 0.0, math.log((4.0 + e) / (1.0 + e))]
    mean = sum(delta) / 3
    grads = [(value - mean) / 3 for value in delta]
    # Adam's first step: m = 0.1 g / (1 - 0.9), v = 0.001 g^2 / (1 - 0.999): xi = -lr g / (|g| + 1e-8).
    expected = [-0.1 * g / (abs(g) + 1e-8) for g in grads]
    assert balancer.logits.tolist() == pytest.approx(expected, rel=1e-5)
    assert balancer.update_counts.tolist() == [1, 1, 1]
    # The third step's update: now with weight decay on the non-zero logits and Adam's second moments.
    balancer({"loss_a": torch.tensor(0.5), "loss_b": torch.tensor(1.0), "loss_c": torch.tensor(1.0)})
    delta = [0.0, math.log((2.0 + e) / (1.0 + e)), 0.0]
    z = [math.exp(x) / sum(math.exp(y) for y in expected) for x in expected]
    dot = sum(zi * di for zi, di in zip(z, delta, strict=True))
    second = [zi * (di - dot) + 0.5 * xi for zi, di, xi in zip(z, delta, expected, strict=True)]
    logits = []
    for xi, g1, g2 in zip(expected, grads, second, strict=True):
        m = 0.9 * 0.1 * g1 + 0.1 * g2
        v = 0.999 * 0.001 * g1 * g1 + 0.001 * g2 * g2
        logits.append(xi - 0.1 * (m / (1 - 0.9**2)) / (math.sqrt(v / (1 - 0.999**2)) + 1e-8))
    assert balancer.logits.tolist() == pytest.approx(logits, rel=1e-4)  # float32


def test_famo_update_is_the_official_codes_adam_step_when_every_task_is_labelled() -> None:
    balancer = set_up(FAMO())
    official = torch.zeros(3, requires_grad=True)  # famo.py: Adam([w], lr=w_lr, weight_decay=gamma)
    optimizer = torch.optim.Adam([official], lr=0.025, weight_decay=0.01)
    generator = torch.Generator().manual_seed(1)
    series = torch.rand(12, 3, generator=generator) + 0.1
    for step, (before, after) in enumerate(itertools.pairwise(series)):
        if step == 0:
            balancer(dict(zip(NAMES, before.unbind(), strict=True)))
        balancer(dict(zip(NAMES, after.unbind(), strict=True)))
        delta = (before + 1e-8).log() - (after + 1e-8).log()
        (grad,) = torch.autograd.grad(torch.softmax(official, -1), official, grad_outputs=delta)
        optimizer.zero_grad()
        official.grad = grad
        optimizer.step()
    torch.testing.assert_close(balancer.logits, official.detach(), rtol=1e-5, atol=1e-7)


def test_famo_leaves_a_task_without_labels_out_of_the_update_and_the_total() -> None:
    balancer = set_up(FAMO())
    balancer(losses(1.0, 2.0, 3.0))
    balancer(losses(0.5, 1.0, 3.0))
    state = {name: getattr(balancer, name).clone() for name in ("logits", "exp_avg", "exp_avg_sq", "update_counts")}
    given = losses(0.0, 0.5, 2.0, requires_grad=True)  # no label for a: exactly 0 (log(0 + 1e-8) broke FAMO, #1)
    total = balancer(given)
    total.backward()
    assert math.isfinite(float(total.detach()))
    assert weights(balancer)[0] == 0.0
    assert sum(weights(balancer)) == pytest.approx(1.0), "b and c share the weight"
    assert float(given["loss_b"].grad) > 0.1  # type: ignore[arg-type]  # not crushed by a's 1 / 1e-8
    for name, before in state.items():
        assert getattr(balancer, name)[0] == before[0], f"{name} of the unlabelled task moved"
        assert not torch.equal(getattr(balancer, name)[1:], before[1:]), f"{name} of the labelled tasks did not move"
    # The next step: a is back, but it had no labels in the previous step, so it has no delta yet.
    logit_a = float(balancer.logits[0])
    balancer(losses(0.4, 0.4, 1.9))
    assert float(balancer.logits[0]) == logit_a
    assert all(weight > 0 for weight in weights(balancer))
    balancer({"loss_b": torch.tensor(0.3), "loss_c": torch.tensor(1.8)})  # a missing from the losses: the same
    assert weights(balancer)[0] == 0.0
    assert set(balancer.logged_values()) == {"loss_b", "loss_c"}, "not logged in a step it took no part in"
    nothing = balancer(losses(0.0, 0.0, 0.0))
    assert float(nothing.detach()) == 0.0
    assert weights(balancer) == [0.0, 0.0, 0.0]
    assert torch.isfinite(balancer.logits).all()
    assert "unlabelled in the last step: ['loss_a', 'loss_b', 'loss_c']" in balancer.describe_state()


def test_famo_keeps_its_logits_finite_through_a_nan_loss_and_a_loss_below_its_bound() -> None:
    balancer = set_up(FAMO(min_losses={"loss_c": 1.0}))
    balancer(losses(1.0, 2.0, 3.0))
    total = balancer(losses(float("nan"), 1.0, 0.5))  # c is below its bound: D_c = 1e-8, not log(-0.5)
    assert math.isnan(float(total.detach())), "the module's finite-loss check reports the NaN step"
    assert torch.isfinite(balancer.logits).all(), "but the NaN never reaches the logits"
    assert balancer.update_counts.tolist() == [0, 1, 1]


def test_famo_on_floats_for_cpu_tensors_agrees_with_its_tensor_code_step_by_step() -> None:
    """On CPU FAMO computes in Python floats (faster for a few tasks); accelerators use the tensor code. Both run
    here, through every case: a task unlabelled in a step, a NaN loss, a loss below its bound, static weights."""
    static = dict(zip(NAMES, (1.0, 2.0, 0.5), strict=True))
    floats = set_up(FAMO(min_losses={"loss_c": 0.25}, lr=0.1), static=static)
    tensors = set_up(FAMO(min_losses={"loss_c": 0.25}, lr=0.1), static=static)
    tensors._tensor_math = True
    generator = torch.Generator().manual_seed(0)
    steps = [list(row) for row in (torch.rand(40, 3, generator=generator) * 2 + 0.1).tolist()]
    steps[5][1] = 0.0  # no labels for loss_b
    steps[6][0] = 0.0
    steps[9][2] = 0.1  # below loss_c's bound
    steps[12][0] = float("nan")
    steps[20] = [0.0, 0.0, 0.0]
    for values in steps:
        total_floats, total_tensors = floats(losses(*values)), tensors(losses(*values))
        if math.isnan(float(total_tensors)):
            assert math.isnan(float(total_floats))
        else:
            assert float(total_floats) == pytest.approx(float(total_tensors), rel=1e-5)
        assert weights(floats) == pytest.approx(weights(tensors), rel=1e-5, abs=1e-7, nan_ok=True)
        for name in ("logits", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(getattr(floats, name), getattr(tensors, name), rtol=1e-5, atol=1e-7)
        assert torch.equal(floats.update_counts, tensors.update_counts)
    assert floats.update_counts.tolist() != [0, 0, 0], "the update ran"


@pytest.mark.parametrize("make", [functools.partial(RandomLossWeighting, seed=3), GeometricLossStrategy])
def test_rlw_and_gls_on_floats_for_cpu_tensors_agree_with_their_tensor_code(make: Callable[[], LossBalancer]) -> None:
    """As FAMO's: the CPU's float code and the accelerators' tensor code give the same totals and weights, with
    static weights, unlabelled tasks, a NaN loss and a step without any label."""
    static = dict(zip(NAMES, (1.0, 2.0, 0.5), strict=True))
    floats, tensors = set_up(make(), static=static), set_up(make(), static=static)
    tensors._tensor_math = True
    generator = torch.Generator().manual_seed(1)
    steps = [list(row) for row in (torch.rand(30, 3, generator=generator) * 2 + 0.1).tolist()]
    steps[3][1] = 0.0
    steps[4][0] = steps[4][2] = 0.0
    steps[7][2] = float("nan")
    steps[11] = [0.0, 0.0, 0.0]
    for values in steps:
        total_floats, total_tensors = floats(losses(*values)), tensors(losses(*values))
        assert float(total_floats) == pytest.approx(float(total_tensors), rel=1e-5, nan_ok=True)
        assert weights(floats) == pytest.approx(weights(tensors), rel=1e-5, abs=1e-7, nan_ok=True)
        assert torch.equal(floats.last_labelled, tensors.last_labelled)
    assert weights(floats)[1] != weights(floats)[0], "the static weights took part"


def test_famo_reads_only_all_reduced_losses_under_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two processes: this one has no label for a and other losses than its peer; the peer's share comes in through
    # the all-reduce. The weights and logits must be those of one process fed the processes' mean losses.
    peer = [losses(1.0, 3.0, 1.0), losses(0.6, 2.0, 1.0), losses(0.4, 1.0, 0.8)]
    mine = [losses(0.0, 1.0, 2.0), losses(0.8, 1.0, 3.0), losses(0.2, 2.0, 1.6)]
    calls: list[int] = []

    def all_reduce(tensor: torch.Tensor) -> None:
        other = peer[len(calls)]
        values = torch.stack([other[name] for name in NAMES])
        tensor.add_(torch.cat([values, (values != 0).float()]))
        calls.append(1)

    distributed = set_up(FAMO())
    single = set_up(FAMO())
    for step in range(3):
        monkeypatch.setattr(loss_level, "world_size", lambda: 2)
        monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
        given = {name: value.clone().requires_grad_() for name, value in mine[step].items()}
        distributed(given).backward()
        monkeypatch.undo()
        means = {name: (mine[step][name] + peer[step][name]) / 2 for name in NAMES}
        single(means)
        assert weights(distributed) == pytest.approx(weights(single), rel=1e-6)
        assert [float(given[name].grad) for name in NAMES] == pytest.approx(weights(single), rel=1e-6)  # type: ignore[arg-type]
    assert len(calls) == 3, "one all_reduce per step"
    torch.testing.assert_close(distributed.logits, single.logits)
    assert weights(distributed)[0] > 0, "a is labelled on the peer: it takes part"


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"lr": -1.0}, r"FAMO's lr to be a finite number >= 0, but got -1.0"),
        ({"gamma": float("nan")}, r"FAMO's gamma to be a finite number >= 0, but got nan"),
        ({"min_losses": {"loss_a": "x"}}, r"min_losses\['loss_a'\] to be a finite number, but got 'x'"),
    ],
    ids=["lr", "gamma", "min_losses"],
)
def test_famo_refuses_bad_settings(arguments: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FAMO(**arguments)


def test_famo_refuses_a_min_loss_of_a_loss_it_does_not_balance() -> None:
    with pytest.raises(ConfigError, match=r"min_losses for \['loss_d'\].*Balanced losses: \['loss_a', 'loss_b'"):
        set_up(FAMO(min_losses={"loss_d": 0.1}))


def test_famo_subtracts_the_min_losses() -> None:
    balancer = set_up(FAMO(min_losses={"loss_b": 0.5}))
    balancer(losses(1.0, 1.0, 1.0))
    ratios = [1 / 1.0, 1 / 0.5, 1 / 1.0]  # z equal: a_i proportional to 1 / (L_i - L_i^min)
    assert weights(balancer) == pytest.approx([ratio / sum(ratios) for ratio in ratios], rel=1e-6)


# ------------------------------------------------------------------------------------------------ RLW
def normal_draws(seed: int) -> torch.Tensor:
    """Three standard normal draws from Python's generator seeded with ``seed`` (RLW's documented source)."""
    generator = random.Random(seed)  # noqa: S311 - a test's draws
    return torch.tensor([generator.gauss(0.0, 1.0) for _ in range(3)])


def test_rlw_weights_are_the_softmax_of_normal_draws_seeded_by_seed_and_step() -> None:
    balancer = set_up(RandomLossWeighting(seed=3))
    again = set_up(RandomLossWeighting(seed=3))
    other = set_up(RandomLossWeighting(seed=4))
    other(losses(1.0, 2.0, 3.0))
    ratios, firsts = [], []
    for step in range(2000):
        balancer(losses(1.0, 2.0, 3.0))
        if step < 3:
            again(losses(1.0, 2.0, 3.0))
            assert weights(balancer) == weights(again), "the same seed: the same weights"
            draws = normal_draws(3 * 1_000_003 + step)
            assert weights(balancer) == pytest.approx(torch.softmax(draws, 0).tolist(), rel=1e-6)
        if step == 0:
            assert weights(balancer) != weights(other), "another seed: other weights"
        w = weights(balancer)
        ratios.append(math.log(w[0] / w[1]))  # eps_a - eps_b ~ N(0, 2)
        firsts.append(w[0])
    assert sum(ratios) / len(ratios) == pytest.approx(0.0, abs=0.15)
    assert sum(r * r for r in ratios) / len(ratios) == pytest.approx(2.0, rel=0.1)
    assert sum(firsts) / len(firsts) == pytest.approx(1 / 3, abs=0.02), "not scaled by the number of tasks"
    assert int(balancer.steps) == 2000


def test_rlw_renormalises_over_the_labelled_tasks_and_resumes_from_its_step_count() -> None:
    balancer = set_up(RandomLossWeighting(seed=1))
    balancer(losses(1.0, 1.0, 1.0))
    given = losses(0.0, 2.0, 3.0, requires_grad=True)
    total = balancer(given)
    draws = normal_draws(1 * 1_000_003 + 1)
    expected = [0.0, *torch.softmax(draws[1:], 0).tolist()]
    assert weights(balancer) == pytest.approx(expected, rel=1e-6)
    assert float(total.detach()) == pytest.approx(2.0 * expected[1] + 3.0 * expected[2], rel=1e-6)
    assert set(balancer.logged_values()) == {"loss_b", "loss_c"}
    resumed = set_up(RandomLossWeighting(seed=1))
    resumed.load_state_dict(balancer.state_dict())
    balancer(losses(1.0, 1.0, 1.0))
    resumed(losses(1.0, 1.0, 1.0))
    assert weights(resumed) == weights(balancer), "the third draw, not the first"


# ------------------------------------------------------------------------------------------------ GLS
def test_gls_value_and_gradient_are_the_geometric_means() -> None:
    balancer = set_up(GeometricLossStrategy())
    given = losses(0.5, 2.0, 4.0, requires_grad=True)
    total = balancer(given)
    total.backward()
    reference = losses(0.5, 2.0, 4.0, requires_grad=True)
    expected = torch.stack(list(reference.values())).prod() ** (1 / 3)  # (prod_i L_i)^(1/T)
    expected.backward()
    assert float(total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    grads = [float(given[name].grad) for name in NAMES]  # type: ignore[arg-type]
    assert grads == pytest.approx([float(reference[name].grad) for name in NAMES], rel=1e-6)  # type: ignore[arg-type]
    assert weights(balancer) == pytest.approx(
        [float(expected.detach()) / (3 * value) for value in (0.5, 2.0, 4.0)], rel=1e-6
    )


def test_gls_with_static_weights_is_the_weighted_geometric_mean() -> None:
    collection = three_losses()
    balancer = GeometricLossStrategy()
    balancer.setup(collection, {"loss_a": 2.0, "loss_b": 1.0, "loss_c": 1.0})
    total = balancer(losses(0.5, 2.0, 4.0))
    assert float(total.detach()) == pytest.approx((0.5**2 * 2.0 * 4.0) ** (1 / 4), rel=1e-6)


def test_gls_leaves_an_unlabelled_task_out_and_never_gives_zero_or_nan() -> None:
    balancer = set_up(GeometricLossStrategy())
    given = losses(0.0, 2.0, 8.0, requires_grad=True)
    total = balancer(given)
    total.backward()
    assert float(total.detach()) == pytest.approx(4.0, rel=1e-6), "sqrt(2 * 8), not 0"
    assert weights(balancer) == pytest.approx([0.0, 1.0, 0.25], rel=1e-6)
    assert float(given["loss_a"].grad) == 0.0  # type: ignore[arg-type]
    nothing = balancer(losses(0.0, 0.0, 0.0, requires_grad=True))
    assert float(nothing.detach()) == 0.0
    assert weights(balancer) == [0.0, 0.0, 0.0]
    assert balancer.describe_state().endswith("; unlabelled in the last step: ['loss_a', 'loss_b', 'loss_c']")


def test_rlw_and_gls_read_the_all_reduced_labelled_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    def all_reduce(tensor: torch.Tensor) -> None:  # the peer: labels of a only, a loss of 3
        tensor.add_(torch.tensor([3.0, 0.0, 0.0, 1.0, 0.0, 0.0]))

    monkeypatch.setattr(loss_level, "world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    rlw, gls = set_up(RandomLossWeighting()), set_up(GeometricLossStrategy())
    rlw(losses(0.0, 1.0, 0.0))
    gls(losses(0.0, 1.0, 4.0))
    assert [weight > 0 for weight in weights(rlw)] == [True, True, False]
    means = [1.5, 0.5, 2.0]  # (0 + 3) / 2, (1 + 0) / 2, (4 + 0) / 2
    geometric = math.prod(means) ** (1 / 3)
    assert weights(gls) == pytest.approx([geometric / (3 * value) for value in means], rel=1e-6)


# ------------------------------------------------------------------------------------------------ under a Trainer
KINDS: dict[str, Callable[[], LossBalancer]] = {
    "famo": FAMO,
    "rlw": functools.partial(RandomLossWeighting, seed=5),
    "gls": GeometricLossStrategy,
}
STEPS = 8  # 2 epochs of 4 batches of 32, a third of the digit labels missing


class _KilledError(Exception):
    pass


class _StopAfter(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise _KilledError  # what a kill leaves: the checkpoints written up to here


def _train(
    kind: str, folder: Path, callbacks: list[pl.Callback], ckpt_path: Path | None = None
) -> LightningBrickCollection:
    module = LightningBrickCollection(
        digit_bricks(), loss_balancer=KINDS[kind](), optimizer=functools.partial(torch.optim.Adam, lr=0.05)
    )
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=CSVLogger(folder, name="logs", version=0),
        log_every_n_steps=1,
        limit_train_batches=4,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        deterministic=True,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, labelled_fraction=0.67, seed=2), ckpt_path=ckpt_path)
    return module


def _logged_weights(folder: Path) -> dict[int, dict[str, float]]:
    with (folder / "logs" / "version_0" / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    logged: dict[int, dict[str, float]] = {}
    for row in rows:
        values = {key: float(value) for key, value in row.items() if key.startswith("train/balance/") and value}
        if values:
            logged.setdefault(int(row["step"]), {}).update(values)
    return logged


@pytest.fixture(scope="module", params=list(KINDS), ids=list(KINDS))
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    kind = request.param
    root = tmp_path_factory.mktemp(f"loss_level_{kind}")
    full = _train(kind, root / "full", [])
    checkpoints = ModelCheckpoint(dirpath=root / "killed" / "checkpoints", save_last=True, every_n_train_steps=3)
    with pytest.raises(_KilledError):
        _train(kind, root / "killed", [checkpoints, _StopAfter(5)])
    again = ModelCheckpoint(dirpath=root / "killed" / "checkpoints", save_last=True, every_n_train_steps=3)
    with warnings.catch_warnings():  # the resumed run goes on writing where the killed one did
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        resumed = _train(kind, root / "resumed", [again], ckpt_path=root / "killed" / "checkpoints" / "last.ckpt")
    return {"kind": kind, "root": root, "full": full, "resumed": resumed}


def test_each_balancer_logs_its_weights_under_a_trainer(runs: dict[str, Any]) -> None:
    logged = _logged_weights(runs["root"] / "full")
    assert sorted(logged) == list(range(STEPS)), "a row of weights every step"
    for values in logged.values():
        assert set(values) <= {"train/balance/digit/loss_ce", "train/balance/parity/loss_ce"}
        assert all(math.isfinite(value) and value > 0 for value in values.values())
    balancer = runs["full"].loss_balancer
    last = {f"train/balance/{name}": float(value) for name, value in balancer.logged_values().items()}
    assert logged[STEPS - 1] == pytest.approx(last, rel=1e-6)
    if runs["kind"] == "famo":
        assert balancer.update_counts.tolist() == [STEPS - 1] * 2
        assert not torch.equal(balancer.logits, torch.zeros(2)), "the logits moved"
    if runs["kind"] == "rlw":
        assert len({round(values["train/balance/parity/loss_ce"], 6) for values in logged.values()}) == STEPS


def test_each_balancer_resumes_exactly_after_a_kill(runs: dict[str, Any]) -> None:
    full, resumed = runs["full"].state_dict(), runs["resumed"].state_dict()
    assert full.keys() == resumed.keys()
    assert any(name.startswith("loss_balancer.") for name in full), "the balancer's state is checkpointed"
    different = [name for name in full if not same_state(full[name], resumed[name])]
    assert not different, f"differs from the uninterrupted run after the resume: {different}"
    after = _logged_weights(runs["root"] / "resumed")
    assert sorted(after) == list(range(3, STEPS)), "the resumed run starts after the checkpoint of step 3"
    full_logged = _logged_weights(runs["root"] / "full")
    assert {step: full_logged[step] for step in after} == after


@pytest.mark.parametrize(
    ("make", "change", "match"),
    [
        (FAMO, lambda state: state.pop("famo"), r"FAMO's saved state .* holds \['last_labelled', 'last_weights'\]"),
        (FAMO, lambda state: state.update(famo=torch.zeros(6, 2)), r"saved 'famo' is \(6, 2\), not a real tensor"),
        (FAMO, lambda state: state["famo"].__setitem__((0, 1), math.nan), r"FAMO's saved state is not a valid one"),
        (FAMO, lambda state: state["famo"].__setitem__((3, 0), -1.0), r"negative second moments or counts"),
        (GeometricLossStrategy, lambda state: state.update(last_weights="0.3"), r"'last_weights' is str"),
        (GeometricLossStrategy, lambda state: state.update(extra=torch.zeros(3)), r"holds \['extra', 'last_lab"),
        (functools.partial(RandomLossWeighting, seed=1), lambda state: state.update(steps=torch.tensor(-4)), "count"),
        (functools.partial(RandomLossWeighting, seed=1), lambda state: state.update(steps=torch.tensor(2.5)), "count"),
    ],
)
def test_a_damaged_saved_state_is_a_checkpoint_error_naming_the_key(
    make: Callable[[], LossBalancer], change: Callable[[dict[str, Any]], object], match: str
) -> None:
    """The loss-level balancers' state comes from checkpoints: untrusted input, checked before it is used."""
    balancer = set_up(make())
    balancer(losses(1.0, 2.0, 3.0))
    balancer(losses(0.5, 0.0, 3.0))
    saved = balancer.state_dict()["_extra_state"]
    restored = set_up(make())
    restored.load_state_dict(balancer.state_dict())  # the state as saved loads, and goes on as the original
    assert weights(restored) == weights(balancer)
    assert restored.last_labelled.tolist() == [True, False, True]
    damaged = {key: value.clone() for key, value in saved.items()}
    change(damaged)
    with pytest.raises(CheckpointError, match=match):
        set_up(make()).load_state_dict({"_extra_state": damaged})
