"""LossMeans keeps running sums on the step and writes them into its torchmetrics metrics when they are read.

Each test would fail if a pending sum were lost or counted twice: read after a read, reset, restore-then-update,
and the exact (bitwise) equality with per-step ``LossMean.update`` calls, which a resumed epoch relies on.
"""

from __future__ import annotations

import pytest
import torch

from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.lightning.logging.losses import LossMean, LossMeans
from torchbricks_lightning.lightning.state.metric_states import collect_loss_states, restore_loss_states

LOSSES = [0.1, 0.7, 1.3, 2.9, 0.37, 11.0, 0.0031]
COUNTS = [3.0, 5.0, 0.0, 7.0, 1.0, 2.0, 9.0]


def _steps(means: LossMeans, start: int = 0, stop: int = len(LOSSES), stage: Stage = Stage.TRAIN) -> None:
    for value, count in zip(LOSSES[start:stop], COUNTS[start:stop], strict=True):
        means.update(stage, "ce", torch.tensor(value, requires_grad=True) * 1.0, torch.tensor(count))
        means.update(stage, "loss", torch.tensor(value) * 2.0, 32.0)


def _reference(start: int = 0, stop: int = len(LOSSES)) -> dict[str, LossMean]:
    """What per-step updates of the metrics themselves give."""
    ce, total = LossMean(), LossMean()
    for value, count in zip(LOSSES[start:stop], COUNTS[start:stop], strict=True):
        ce.update(torch.tensor(value), torch.tensor(count))
        total.update(torch.tensor(value) * 2.0, 32.0)
    return {"ce": ce, "loss": total}


def _states(metrics: dict[str, LossMean]) -> dict[str, tuple[float, float, int, bool]]:
    return {
        name: (m.mean_value.item(), m.weight.item(), m.update_count, m.update_called) for name, m in metrics.items()
    }


def test_reading_the_metrics_gives_every_step_bit_for_bit() -> None:
    means = LossMeans()
    _steps(means)
    assert _states(means.metrics(Stage.TRAIN)) == _states(_reference())


def test_steps_after_a_read_are_added_to_what_was_read() -> None:
    means = LossMeans()
    _steps(means, 0, 3)
    assert _states(means.metrics(Stage.TRAIN)) == _states(_reference(0, 3))
    _steps(means, 3)
    assert _states(means.metrics(Stage.TRAIN)) == _states(_reference())
    # Reading twice adds nothing the second time.
    assert _states(means.metrics(Stage.TRAIN)) == _states(_reference())


def test_metric_of_one_loss_is_up_to_date() -> None:
    means = LossMeans()
    _steps(means)
    assert means.metric(Stage.TRAIN, "ce", "cpu").compute() == _reference()["ce"].compute()


def test_reset_drops_the_pending_sums() -> None:
    means = LossMeans()
    _steps(means, 0, 3)
    means.reset(Stage.TRAIN)
    assert not any(metric.update_called for metric in means.metrics(Stage.TRAIN).values())
    _steps(means, 3)
    assert _states(means.metrics(Stage.TRAIN)) == _states(_reference(3))


def test_reset_of_one_stage_keeps_another_stages_pending_sums() -> None:
    means = LossMeans()
    _steps(means, stage=Stage.VALIDATION)
    _steps(means)
    means.reset(Stage.TRAIN)
    assert _states(means.metrics(Stage.VALIDATION)) == _states(_reference())


def test_a_state_reset_from_outside_after_a_read_is_continued() -> None:
    """Lightning resets a logged metric after the epoch end: the next steps start from that reset state."""
    means = LossMeans()
    _steps(means, 0, 3)
    for metric in means.metrics(Stage.TRAIN).values():
        metric.reset()
    _steps(means, 3)
    assert _states(means.metrics(Stage.TRAIN)) == _states(_reference(3))


def test_restore_then_update_equals_the_uninterrupted_epoch_bit_for_bit() -> None:
    interrupted = LossMeans()
    _steps(interrupted, 0, 4)
    saved = collect_loss_states(interrupted)  # a mid-epoch checkpoint
    resumed = LossMeans()
    _steps(resumed, 0, 2)  # a fresh process may have stepped before the restore (its sums must be replaced)
    restore_loss_states(resumed, saved)
    _steps(resumed, 4)
    uninterrupted = LossMeans()
    _steps(uninterrupted)
    # The update count is not restored (resume.py: torchmetrics has no public setter): the resumed steps only.
    expected = {
        name: (*state[:2], len(LOSSES) - 4, True) for name, state in _states(uninterrupted.metrics(Stage.TRAIN)).items()
    }
    assert _states(resumed.metrics(Stage.TRAIN)) == expected


def test_a_checkpoint_holds_the_pending_sums() -> None:
    means = LossMeans()
    _steps(means, 0, 4)
    saved = collect_loss_states(means)
    expected = _reference(0, 4)
    assert saved["ce"]["state"]["mean_value"].item() == expected["ce"].mean_value.item()
    assert saved["loss"]["state"]["weight"].item() == 4 * 32.0
    assert saved["ce"]["update_count"] == 4


def test_a_nan_loss_makes_the_mean_nan() -> None:
    means = LossMeans()
    means.update(Stage.TEST, "ce", torch.tensor(float("nan")), 2.0)
    means.update(Stage.TEST, "ce", torch.tensor(1.0), 2.0)
    assert torch.isnan(means.metrics(Stage.TEST)["ce"].compute())


def test_steps_do_not_build_a_graph() -> None:
    means = LossMeans()
    weight = torch.tensor(2.0, requires_grad=True)
    means.update(Stage.TRAIN, "ce", torch.tensor(1.0, requires_grad=True) * 3.0, weight * 1.0)
    metric = means.metrics(Stage.TRAIN)["ce"]
    assert not metric.mean_value.requires_grad
    assert not metric.weight.requires_grad
    assert metric.compute().item() == pytest.approx(3.0)
