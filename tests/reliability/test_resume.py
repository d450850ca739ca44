"""Resuming after a crash: resumable loaders, unpadded evaluation sampling, metric and RNG states in checkpoints.

The end-to-end tests run ``resume_job.py`` (next to this file) in subprocesses: an uninterrupted run, a run that
SIGKILLs itself mid-epoch after a checkpoint, and runs that resume from that checkpoint with
``trainer.fit(..., ckpt_path="last")``. The resumed run must end with the uninterrupted run's weights and log the
same values for the interrupted epoch and the epochs after it, read back from the CSV logs.
"""

from __future__ import annotations

import copy
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import same_state
from job_runs import logged_values, run_jobs
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, SequentialSampler, TensorDataset

from torchbricks_lightning import Stage
from torchbricks_lightning.datamodules import (
    DigitsDataModule,
    EvaluationSampler,
    ResumableDataLoader,
    ResumableSampler,
    SyntheticImageDataModule,
)
from torchbricks_lightning.errors import LoaderStateError, ResumeStateError
from torchbricks_lightning.lightning.logging.losses import LossMeans
from torchbricks_lightning.lightning.state.metric_states import (
    collect_loss_states,
    collect_metric_states,
    restore_loss_states,
    restore_metric_states,
)
from torchbricks_lightning.lightning.state.resume import RESUME_STATE_KEY
from torchbricks_lightning.random_state import capture_random_state, restore_random_state

JOB = Path(__file__).with_name("resume_job.py")
KILL_AT_STEP = 30  # epoch 1 (19 batches per epoch), 2 batches after the checkpoint of step 28
INTERRUPTED_EPOCH = 1


def _batches(loader: Any) -> list[torch.Tensor]:
    return [batch if isinstance(batch, torch.Tensor) else batch[0] for batch in loader]


def _same(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


class RandomAugmented(Dataset[torch.Tensor]):
    """Sample ``i`` is ``i`` plus noise from the global torch RNG, like a random augmentation."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index)]) + torch.rand(1)


# ------------------------------------------------------------------------------------------------ ResumableDataLoader
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop_after", [0, 1, 3, 5])
def test_loader_resumes_at_the_next_batch_with_the_same_remaining_batches(num_workers: int, stop_after: int) -> None:
    dataset = TensorDataset(torch.arange(23))

    def loader() -> ResumableDataLoader:
        made = ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=11, num_workers=num_workers)
        made.set_epoch(2)
        return made

    everything = _batches(loader())
    interrupted = loader()
    iterator = iter(interrupted)
    seen = [next(iterator)[0] for _ in range(stop_after)]
    state = interrupted.state_dict()
    assert state["epoch"] == 2
    assert state["batches"] == stop_after
    resumed = loader()
    resumed.load_state_dict(state)
    assert len(resumed) == len(everything) == 6  # the epoch's length, not what is left of it
    assert _same(seen + _batches(resumed), everything)
    assert resumed.state_dict()["batches"] == len(everything)
    assert _same(_batches(resumed), everything), "only the first pass after load_state_dict skips batches"


class CountingDataset(Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        self.loaded.append(index)
        return index


def test_loader_skips_batches_without_loading_them() -> None:
    dataset = CountingDataset(20)
    loader = ResumableDataLoader(dataset, batch_size=5, seed=0)
    loader.load_state_dict({**loader.state_dict(), "batches": 3})
    remaining = _batches(loader)
    assert len(remaining) == 1
    assert sorted(dataset.loaded) == sorted(remaining[0].tolist())


def test_loader_order_depends_on_seed_and_epoch_only() -> None:
    dataset = TensorDataset(torch.arange(50))

    def order(seed: int, epoch: int) -> list[int]:
        torch.manual_seed(seed * 7 + epoch * 13 + 5)  # the global RNG must not matter
        loader = ResumableDataLoader(dataset, batch_size=7, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat(_batches(loader)).tolist()

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == list(range(50))
    assert order(0, 1) != order(0, 0)
    assert order(1, 0) != order(0, 0)
    assert order(0, 1) != order(1, 0)
    unshuffled = ResumableDataLoader(dataset, batch_size=7, shuffle=False)
    assert torch.cat(_batches(unshuffled)).tolist() == list(range(50))


def test_loader_does_not_draw_from_the_global_rng() -> None:
    loader = ResumableDataLoader(TensorDataset(torch.arange(10)), batch_size=3)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    _batches(loader)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_seeded_samples_make_augmentations_independent_of_workers_and_resumes(num_workers: int) -> None:
    def loader(workers: int) -> ResumableDataLoader:
        made = ResumableDataLoader(RandomAugmented(), batch_size=4, seed=3, seed_samples=True, num_workers=workers)
        made.set_epoch(1)
        return made

    reference = _batches(loader(0))
    assert _same(_batches(loader(num_workers)), reference)
    resumed = loader(num_workers)
    resumed.load_state_dict({**resumed.state_dict(), "batches": 2})
    assert _same(_batches(resumed), reference[2:])
    other_epoch = loader(0)
    other_epoch.set_epoch(2)
    assert not _same(_batches(other_epoch), reference)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _batches(loader(0))
    assert torch.equal(before, torch.get_rng_state()), "seeding a sample must not move the global RNG"


def test_state_of_a_finished_epoch_starts_the_next_epoch_at_its_first_batch() -> None:
    dataset = TensorDataset(torch.arange(12))
    finished = ResumableDataLoader(dataset, batch_size=5, seed=1)
    _batches(finished)
    state = finished.state_dict()
    assert (state["epoch"], state["batches"]) == (0, 3)
    resumed = ResumableDataLoader(dataset, batch_size=5, seed=1)
    resumed.load_state_dict(state)
    iterator = iter(resumed)  # Lightning calls iter() before it sets the epoch of a resumed run
    resumed.set_epoch(1)
    fresh = ResumableDataLoader(dataset, batch_size=5, seed=1)
    fresh.set_epoch(1)
    assert _same(_batches(iterator), _batches(fresh))


@pytest.mark.parametrize(
    ("change", "value"), [("batch_size", 3), ("seed", 2), ("num_samples", 13), ("num_replicas", 2), ("shuffle", 0)]
)
def test_loading_a_mid_epoch_state_into_a_changed_loader_raises(change: str, value: int) -> None:
    loader = ResumableDataLoader(TensorDataset(torch.arange(12)), batch_size=5, seed=1)
    state = {**loader.state_dict(), "batches": 1, change: value}
    with pytest.raises(LoaderStateError, match=rf"{change} {value} -> .*Resume with the same data"):
        loader.load_state_dict(state)
    loader.load_state_dict({**state, "batches": 0})  # nothing to skip: any loader can start an epoch


def test_loading_a_foreign_state_raises() -> None:
    loader = ResumableDataLoader(TensorDataset(torch.arange(12)), batch_size=5)
    with pytest.raises(LoaderStateError, match=r"\['epoch', 'batches'.*missing"):
        loader.load_state_dict({"something": 1})


@pytest.mark.parametrize("refused", ["sampler", "batch_sampler", "generator"])
def test_loader_refuses_its_own_sampling_arguments(refused: str) -> None:
    dataset = TensorDataset(torch.arange(4))
    with pytest.raises(ValueError, match=rf"cannot take \['{refused}'\]"):
        ResumableDataLoader(dataset, **{refused: object()})


def test_a_sequential_sampler_means_the_datasets_order() -> None:
    """What Lightning passes when it rebuilds the train loader for ``overfit_batches``."""
    dataset = TensorDataset(torch.arange(9))
    loader = ResumableDataLoader(dataset, batch_size=4, shuffle=True, sampler=SequentialSampler(dataset))
    assert torch.cat(_batches(loader)).tolist() == list(range(9))


@pytest.mark.parametrize(("n", "world"), [(23, 3), (24, 4), (5, 2), (7, 7)])
def test_training_shards_are_padded_and_cover_the_order(n: int, world: int) -> None:
    samplers = [ResumableSampler(range(n), seed=4, num_replicas=world, rank=rank) for rank in range(world)]
    shards = [list(sampler) for sampler in samplers]
    assert {len(shard) for shard in shards} == {-(-n // world)}, "equal step counts on every process"
    assert set().union(*shards) == set(range(n))
    assert sum(len(shard) for shard in shards) - n < world
    interleaved = [shards[i % world][i // world] for i in range(sum(map(len, shards)))]
    assert interleaved == samplers[0].order()


# ------------------------------------------------------------------------------------------------ EvaluationSampler
@pytest.mark.parametrize(("n", "world"), [(37, 2), (37, 4), (10, 3), (4, 4), (1, 1), (0, 1)])
def test_evaluation_shards_are_disjoint_complete_and_unpadded(n: int, world: int) -> None:
    shards = [list(EvaluationSampler(range(n), num_replicas=world, rank=rank)) for rank in range(world)]
    everything = [index for shard in shards for index in shard]
    assert sorted(everything) == list(range(n)), "every sample once: no padding, no duplicates"
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(EvaluationSampler(range(n), num_replicas=world, rank=rank)) for rank in range(world)] == [
        len(shard) for shard in shards
    ]


def test_evaluation_sampler_refuses_fewer_samples_than_processes() -> None:
    with pytest.raises(ValueError, match=r"3 samples for 4 processes.*at least as many samples"):
        EvaluationSampler(range(3), num_replicas=4, rank=0)


def test_samplers_without_a_process_group_take_everything() -> None:
    assert list(EvaluationSampler(range(5))) == [0, 1, 2, 3, 4]
    assert sorted(ResumableSampler(range(5))) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="0 <= rank < num_replicas"):
        EvaluationSampler(range(5), num_replicas=2, rank=2)


def test_datamodules_use_the_resumable_loader_and_the_evaluation_sampler() -> None:
    synthetic = SyntheticImageDataModule(n_train=40, n_val=10, n_test=10, batch_size=8)
    synthetic.setup()
    digits = DigitsDataModule(batch_size=32)
    for datamodule in (synthetic, digits):
        assert isinstance(datamodule.train_dataloader(), ResumableDataLoader)
        for loader in (datamodule.val_dataloader(), datamodule.test_dataloader(), datamodule.predict_dataloader()):
            assert isinstance(loader, DataLoader)
            assert isinstance(loader.sampler, EvaluationSampler)


# ------------------------------------------------------------------------------------------------ Lightning, in process
def _tiny_module() -> pl.LightningModule:
    sys.path.insert(0, str(JOB.parent))
    try:
        import resume_job
    finally:
        sys.path.remove(str(JOB.parent))
    return resume_job.build_module(dropout=0.5)


class CrashError(Exception):
    """Raised by :class:`CrashAtStep`."""


class CrashAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise CrashError  # Lightning tears down and re-raises it


@pytest.fixture(scope="module")
def mid_epoch_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written at step 3 of 19 in epoch 0 of the digits job's model (in this process)."""
    folder = tmp_path_factory.mktemp("mid_epoch")
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=3), CrashAtStep(4)],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.raises(CrashError):
        trainer.fit(_tiny_module(), datamodule=DigitsDataModule(batch_size=64))
    return folder / "last.ckpt"


def test_a_mid_epoch_checkpoint_holds_the_train_metric_states(mid_epoch_checkpoint: Path) -> None:
    checkpoint = torch.load(mid_epoch_checkpoint, weights_only=True)  # still loads without pickled code
    state = checkpoint[RESUME_STATE_KEY]
    assert (state["epoch"], state["mid_epoch"], state["world_size"]) == (0, True, 1)
    metrics = state["metric_states"][0]
    assert set(metrics) == {"head/metrics", "auroc"}
    auroc = metrics["auroc"]["MulticlassAUROC"]
    assert auroc["update_count"] == 3
    assert sum(len(target) for target in auroc["state"]["target"]) == 3 * 64
    assert set(state["rng_states"][0]) >= {"torch", "python", "numpy"}
    loader_states = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert [(s["epoch"], s["batches"]) for s in loader_states] == [(0, 3)]


def test_loading_a_checkpoint_for_inference_leaves_metrics_and_rngs_alone(mid_epoch_checkpoint: Path) -> None:
    from torchbricks_lightning.lightning import LightningBrickCollection

    template = _tiny_module()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    module = LightningBrickCollection.load_from_checkpoint(
        mid_epoch_checkpoint, brick_collection=template.brick_collection
    )
    assert torch.equal(torch.get_rng_state(), before)
    assert _holding_data(collect_metric_states(module.brick_collection)) == []
    assert collect_loss_states(module.loss_means) == {}
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=DigitsDataModule(batch_size=256), ckpt_path=mid_epoch_checkpoint, verbose=False)
    assert _holding_data(collect_metric_states(module.brick_collection)) == [], "train metrics untouched"
    assert _holding_data(collect_metric_states(module.brick_collection, Stage.VALIDATION)) == [], "computed and reset"
    assert collect_loss_states(module.loss_means) == {}


def _holding_data(states: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The metrics whose saved state is not empty (a non-zero tensor or a non-empty list)."""
    return [
        f"{path}/{name}"
        for path, metrics in states.items()
        for name, saved in metrics.items()
        if any(
            bool(value.count_nonzero()) if isinstance(value, torch.Tensor) else value
            for value in saved["state"].values()
        )
    ]


def test_a_mid_epoch_checkpoint_holds_the_loss_means(mid_epoch_checkpoint: Path) -> None:
    state = torch.load(mid_epoch_checkpoint, weights_only=True)[RESUME_STATE_KEY]
    assert state["version"] == 2
    (losses,) = state["loss_states"]
    assert set(losses) == {"head/loss_ce", "loss"}
    for saved in losses.values():
        assert saved["update_count"] == 3
        assert float(saved["state"]["weight"]) == 3 * 64  # three batches of 64 samples
        mean = float(saved["state"]["mean_value"]) / float(saved["state"]["weight"])
        assert 0.5 < mean < 5.0  # a cross-entropy over 10 classes, early in training
    assert torch.equal(losses["loss"]["state"]["mean_value"], losses["head/loss_ce"]["state"]["mean_value"])


def test_a_checkpoint_of_another_resume_state_version_is_refused(mid_epoch_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(mid_epoch_checkpoint, weights_only=True)
    checkpoint[RESUME_STATE_KEY]["version"] = 99
    other = tmp_path / "version99.ckpt"
    torch.save(checkpoint, other)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ResumeStateError, match=r"not a resume state of version \[2\].*another torchbricks"):
        trainer.fit(_tiny_module(), datamodule=DigitsDataModule(batch_size=64), ckpt_path=other)


def test_loss_states_round_trip_and_refuse_other_states() -> None:
    means = LossMeans()
    for value, weight in ((0.5, 4.0), (1.5, 2.0)):
        means.update(Stage.TRAIN, "ce", torch.tensor(value), weight)
    saved = collect_loss_states(means)
    fresh = LossMeans()
    restore_loss_states(fresh, saved)
    for target in (means, fresh):
        target.update(Stage.TRAIN, "ce", torch.tensor(3.0), 2.0)
    expected = (0.5 * 4 + 1.5 * 2 + 3.0 * 2) / 8
    assert float(fresh.metrics(Stage.TRAIN)["ce"].compute()) == float(means.metrics(Stage.TRAIN)["ce"].compute())
    assert float(fresh.metrics(Stage.TRAIN)["ce"].compute()) == pytest.approx(expected)
    wrong = {"ce": {"update_count": 1, "state": {"mean_value": torch.zeros(2), "weight": torch.zeros(())}}}
    with pytest.raises(ResumeStateError, match=r"state 'mean_value' of metric \"loss mean 'ce'\" is \(2,\)"):
        restore_loss_states(LossMeans(), wrong)
    with pytest.raises(ResumeStateError, match=r"has the states \['total'\], but the metric now has"):
        restore_loss_states(LossMeans(), {"ce": {"update_count": 1, "state": {"total": torch.zeros(())}}})


def test_metric_states_round_trip_and_refuse_other_bricks() -> None:
    module = _tiny_module()
    collection = module.brick_collection
    collection.eval()  # no dropout: the same batch gives the same predictions in both collections
    batch = {"raw": torch.rand(6, 1, 8, 8), "targets": torch.tensor([0, 1, 2, 3, 4, 5])}
    collection(batch, "train")
    uninterrupted = copy.deepcopy(collection)
    saved = collect_metric_states(collection)
    collection.reset_metrics()
    restore_metric_states(collection, saved)
    assert collection.summarize("train") == {}, "no update since the restore (the count is not restored)"
    later = {"raw": torch.rand(4, 1, 8, 8), "targets": torch.tensor([6, 7, 8, 9])}
    collection(later, "train")  # a resumed epoch always has a batch left
    uninterrupted(later, "train")
    expected, restored = uninterrupted.summarize("train"), collection.summarize("train")
    assert restored.keys() == expected.keys() == {"head/accuracy", "auroc"}
    assert all(torch.equal(restored[key], expected[key]) for key in expected)
    with pytest.raises(ResumeStateError, match=r"brick 'nowhere'.*Resume with the bricks"):
        restore_metric_states(collection, {"nowhere": saved["auroc"]})
    with pytest.raises(ResumeStateError, match="metric 'Other' of brick 'auroc'"):
        restore_metric_states(collection, {"auroc": {"Other": saved["auroc"]["MulticlassAUROC"]}})
    accuracy = saved["head/metrics"]
    ((name, metric_state),) = accuracy.items()
    ((state_name, value),) = metric_state["state"].items()
    wrong = {name: {**metric_state, "state": {state_name: torch.zeros(3, dtype=value.dtype)}}}
    with pytest.raises(ResumeStateError, match=r"is \(3,\), but the metric holds \(101,\)"):
        restore_metric_states(collection, {"head/metrics": wrong})


def test_rng_states_round_trip() -> None:
    import numpy

    saved = capture_random_state()
    draws = (torch.rand(3), random.random(), numpy.random.rand())  # noqa: S311 - the global generators, on purpose
    restore_random_state(saved)
    again = (torch.rand(3), random.random(), numpy.random.rand())  # noqa: S311
    assert torch.equal(draws[0], again[0])
    assert draws[1:] == again[1:]


# ------------------------------------------------------------------------------------------------ end to end
def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-4000:]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "final.pt", weights_only=True)


@pytest.fixture(scope="module")
def crashed_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uninterrupted run, and a run killed at step 30 (epoch 1) resumed with and without its metric states."""
    root = tmp_path_factory.mktemp("resume")
    full, crashed = root / "full", root / "crashed"
    epochs = ["--max-epochs", "3"]
    uninterrupted, killed = run_jobs(JOB, (full, epochs), (crashed, [*epochs, "--kill-at-step", str(KILL_AT_STEP)]))
    _ok(uninterrupted)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-4000:]
    assert not (crashed / "final.pt").exists()
    last = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 28, "the last checkpoint is 2 steps before the kill, mid-epoch"
    without_metrics = root / "without_metric_states"
    shutil.copytree(crashed, without_metrics)
    resumed, resumed_without = run_jobs(
        JOB, (crashed, [*epochs, "--resume"]), (without_metrics, [*epochs, "--resume", "--drop-metric-states"])
    )
    _ok(resumed)
    _ok(resumed_without)
    return {"full": full, "resumed": crashed, "without_metric_states": without_metrics}


@pytest.mark.slow
def test_resumed_run_ends_with_the_uninterrupted_weights(crashed_runs: dict[str, Path]) -> None:
    full, resumed = _weights(crashed_runs["full"]), _weights(crashed_runs["resumed"])
    assert full.keys() == resumed.keys()
    different = [name for name in full if not same_state(full[name], resumed[name])]
    assert not different, f"weights differ after the resume: {different}"


@pytest.mark.slow
def test_resumed_run_logs_the_uninterrupted_values_including_the_interrupted_epoch(
    crashed_runs: dict[str, Path],
) -> None:
    full = logged_values(crashed_runs["full"] / "logs" / "first")
    resumed = logged_values(crashed_runs["resumed"] / "logs" / "resumed")
    epoch_values = {key for key in resumed if not key[0].endswith("_step")}
    interrupted = {name for name, epoch, _ in epoch_values if epoch == INTERRUPTED_EPOCH}
    assert {"train/head/accuracy", "train/auroc", "train/loss_epoch", "validation/head/accuracy"} <= interrupted
    assert {epoch for _, epoch, _ in resumed} == {INTERRUPTED_EPOCH, 2}
    mismatched = {key: (full.get(key), value) for key, value in resumed.items() if full.get(key) != value}
    assert not mismatched, f"logged values differ from the uninterrupted run: {mismatched}"


@pytest.mark.slow
def test_without_the_metric_states_the_interrupted_epochs_train_metrics_would_differ(
    crashed_runs: dict[str, Path],
) -> None:
    full = logged_values(crashed_runs["full"] / "logs" / "first")
    without = logged_values(crashed_runs["without_metric_states"] / "logs" / "resumed")
    train_metrics = ("train/head/accuracy", "train/auroc")
    for name in train_metrics:
        key = next(key for key in without if key[0] == name and key[1] == INTERRUPTED_EPOCH)
        assert without[key] != full[key], f"{name} of the interrupted epoch should cover only the resumed batches"
    # The rest (weights, losses, validation, later epochs) does not depend on the metric states.
    assert all(
        full[key] == value
        for key, value in without.items()
        if key[0] not in train_metrics or key[1] != INTERRUPTED_EPOCH
    )
    weights = _weights(crashed_runs["full"])
    assert all(
        torch.equal(weights[name], value) for name, value in _weights(crashed_runs["without_metric_states"]).items()
    )
