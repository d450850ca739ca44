"""Lightning DDP on CPU (gloo, 2 processes) against a 1-process run of the same job on the same data.

``ddp_jobs/ddp_job.py`` runs in three subprocesses at once: ``--devices 1`` (plain single-process Lightning),
``--devices 2`` (``DDPStrategy``: Lightning starts the script a second time with ``LOCAL_RANK=1``), and a short
``--devices 2`` training with Lightning's default progress bar. Rank 0 of each writes the logged metrics, the
confusion matrices, a reference computed with torchmetrics on all the samples at once, per-step training losses and
the final parameters; each rank writes which samples it evaluated and a checksum of its weights. The tests compare
the JSON files. A crash or hang fails the fixture: each job has a time limit, after which its whole process group
is killed. The test process itself never imports torch.

Tolerances:

- Evaluation metrics (accuracy, per-class accuracy, AUROC) are ratios of the same integer counts, or come from the
  same gathered probabilities, in both runs: equal to float32 rounding, checked at ``1e-6``. Confusion matrices
  are compared exactly.
- Evaluation losses are weighted means of the same per-sample losses summed in another order: a few float32 ulps
  (about ``1e-7`` relative), checked at ``1e-6``.
- Training: the 2-process run uses half the per-device batch (8 instead of 16), and the datamodule's training
  loader shards one ``(seed, epoch)`` order as ``order[rank::2]``, so each step's two shards together hold the
  single-process batch, and DDP's averaged gradient equals the single-process gradient up to summation order
  (~1e-7 relative). Over the 8 SGD steps of this job the
  differences stay at one float32 ulp (about 1.2e-7 on losses near 1.3); ``1e-5`` leaves a wide margin yet catches
  real faults, which move losses by 1e-3 or more (gradients summed instead of averaged, a rank training on other
  samples, a per-device batch that is not halved).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="kills the job's process group with os.killpg"),
]

JOB = Path(__file__).parent / "ddp_jobs" / "ddp_job.py"
TIMEOUT_S = 240  # per job; a hung collective fails the fixture instead of stalling CI
WORLD_SIZE = 2
N_VAL = 64  # 2 ranks x 32: no shard is short
N_TEST = 37  # odd: the ranks get 19 and 18 images
EVAL_BATCH = 4  # the datamodule's loaders: last batches of 3 and 2 images
UNPADDED_BATCH = 2  # the job's unpadded sampler: 10 and 9 batches, the ranks even run different numbers of steps
SIZES = ("--n-val", str(N_VAL), "--n-test", str(N_TEST), "--eval-batch", str(EVAL_BATCH))
SIZES += ("--unpadded-batch", str(UNPADDED_BATCH), "--n-train", "64", "--global-batch", "16", "--epochs", "2")
EVAL_TOL = 1e-6
TRAIN_TOL = 1e-5

# Launcher and cluster variables that would make Lightning join another job or skip launching the second rank.
_CLUSTER_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR")
_CLUSTER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "LSB_", "JSM_", "OMPI_", "PMI_", "PL_TRAINER_", "PL_GLOBAL_SEED")


# --------------------------------------------------------------------------------------------------- running
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _job_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _CLUSTER_VARS and key != "MASTER_PORT" and not key.startswith(_CLUSTER_PREFIXES)
    }
    # gloo on localhost; an explicit free port, so parallel sessions never meet on Lightning's default.
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONUNBUFFERED="1")
    return env


class Job:
    """One run of ``job`` (default: ``ddp_job.py``), in a session of its own so that Lightning's child process can
    be killed with it."""

    def __init__(self, devices: int, out: Path, *extra: str, job: Path = JOB) -> None:
        self.devices, self.out = devices, out
        command = [sys.executable, str(job), "--devices", str(devices), "--out", str(out), *extra]
        self.command = " ".join(command)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            env=_job_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the session this job started, nothing else
            os.killpg(self.process.pid, signal.SIGKILL)

    def wait(self, check: bool = True) -> dict[str, Any]:
        """The job's files and log; with ``check``, fail unless it exited with 0."""
        # communicate() returns at EOF, once every process holding the pipe (both ranks) has exited.
        remaining = max(1.0, TIMEOUT_S - (time.monotonic() - self.started))
        try:
            log, _ = self.process.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            self._kill_group()
            log, _ = self.process.communicate()
            pytest.fail(f"{self.command} did not finish in {TIMEOUT_S} s (hung collective?).\n{log[-6000:]}")
        finally:
            self._kill_group()
        run: dict[str, Any] = {"returncode": self.process.returncode, "log": log}
        run["seconds"] = time.monotonic() - self.started
        if self.process.returncode != 0:
            if check:
                pytest.fail(f"{self.command} exited with {self.process.returncode}.\n{log[-6000:]}")
            return run
        run["result"] = json.loads((self.out / "result.json").read_text())
        run["ranks"] = [json.loads((self.out / f"rank{rank}.json").read_text()) for rank in range(self.devices)]
        return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, dict[str, Any]]:
    """All runs, started together (a 2-process run spends most of its time importing, twice in a row)."""
    root = tmp_path_factory.mktemp("ddp")
    jobs: dict[Any, Job] = {devices: Job(devices, root / f"devices{devices}", *SIZES) for devices in (1, WORLD_SIZE)}
    # Lightning's default progress bar, one epoch; a deadlock fails its collectives after 30 s instead of 30 min.
    jobs["progress_bar"] = Job(
        WORLD_SIZE, root / "progress_bar", *SIZES, "--phases", "fit", "--epochs", "1", "--progress-bar",
        "--collective-timeout", "30",
    )  # fmt: skip
    return {key: job.wait(check=key != "progress_bar") for key, job in jobs.items()}


# --------------------------------------------------------------------------------------------------- helpers
def _metric_names(prefix: str) -> dict[str, tuple[str, int | None]]:
    """Logged metric name -> (reference key, class index)."""
    names: dict[str, tuple[str, int | None]] = {
        f"{prefix}/head/accuracy": ("accuracy", None),
        f"{prefix}/head/more/accuracy_micro": ("accuracy_micro", None),
        f"{prefix}/head/more/auroc": ("auroc", None),
    }
    for index in range(4):
        names[f"{prefix}/head/more/accuracy_per_class/class_{index}"] = ("accuracy_per_class", index)
    return names


def _flatten(value: Any) -> list[float]:
    if isinstance(value, list):
        return [item for element in value for item in _flatten(element)]
    return [float(value)]


def _loss_names(prefix: str) -> list[str]:
    return [f"{prefix}/loss", f"{prefix}/head/loss_ce"]


def _metric_mismatches(
    logged: dict[str, float], prefix: str, matrices: dict[str, Any], reference: dict[str, Any]
) -> list[str]:
    problems = []
    for name, (key, index) in _metric_names(prefix).items():
        expected = reference[key] if index is None else reference[key][index]
        if name not in logged:
            problems.append(f"{name} was not logged (logged: {sorted(logged)})")
        elif not math.isclose(logged[name], expected, rel_tol=0, abs_tol=EVAL_TOL):
            problems.append(f"{name} = {logged[name]!r}, but on all {reference['n']} samples it is {expected!r}")
    confusion = matrices.get("head/confusion")
    if confusion != reference["confusion"]:
        counted = None if confusion is None else sum(map(sum, confusion))
        problems.append(
            f"confusion matrix {confusion} (counts {counted} samples), but on all {reference['n']} samples it is "
            f"{reference['confusion']}"
        )
    return problems


def _shards(run: dict[str, Any], loader: str) -> list[dict[str, Any]]:
    """Each rank's sampler and indices: ``loader`` is ``validation`` or ``test`` (the datamodule's loaders) or
    ``unpadded`` (the job's own sampler)."""
    if loader == "unpadded":
        return [rank["eval"]["unpadded_loader"] for rank in run["ranks"]]
    return [rank["eval"]["loaders"][loader] for rank in run["ranks"]]


def _coverage_problems(shards: list[dict[str, Any]], n: int) -> list[str]:
    """Every sample on exactly one rank: no padding (repeats) and nothing left out."""
    counts = Counter(index for shard in shards for index in shard["indices"])
    repeated = {index: count for index, count in counts.items() if count > 1}
    missing = sorted(set(range(n)) - set(counts))
    if not repeated and not missing and sum(counts.values()) == n:
        return []
    described = "; ".join(
        f"rank {rank}: {shard['sampler']} gives {len(shard['indices'])} samples {shard['indices']}"
        for rank, shard in enumerate(shards)
    )
    return [
        f"the ranks evaluate {sum(counts.values())} samples of a {n}-sample set (repeated: {repeated}, missing: "
        f"{missing}); a padding sampler repeats samples so that every rank gets as many. {described}"
    ]


def _loss_diagnosis(logged: float, reference: dict[str, Any], padded: bool) -> str:
    n = reference["n"]
    truncated = reference["loss"] * n / (WORLD_SIZE * (n // WORLD_SIZE))
    if padded:
        return "the evaluation sampler pads the set with repeated samples, which enter the mean twice"
    if math.isclose(logged, truncated, rel_tol=EVAL_TOL):
        return (
            f"it equals the true mean x {n}/{WORLD_SIZE * (n // WORLD_SIZE)}: Lightning 2.6 syncs the int64 "
            "sum of batch sizes behind a mean-reduced self.log(..., sync_dist=True) with a mean, which floors "
            f"({n}/{WORLD_SIZE} -> {n // WORLD_SIZE}); Lightning-AI/pytorch-lightning#21859"
        )
    return "unexplained"


def _check_losses(logged: dict[str, float], prefix: str, reference: dict[str, Any], padded: bool) -> None:
    problems = [
        f"{name} = {logged[name]!r}, but the mean over all {reference['n']} samples is {reference['loss']!r} "
        f"({_loss_diagnosis(logged[name], reference, padded)})"
        for name in _loss_names(prefix)
        if not math.isclose(logged[name], reference["loss"], rel_tol=EVAL_TOL)
    ]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------- tests
def test_jobs_ran_as_requested(runs: dict[Any, dict[str, Any]]) -> None:
    single, ddp = runs[1], runs[WORLD_SIZE]
    assert single["result"]["eval"]["world_size"] == 1
    assert ddp["result"]["eval"]["world_size"] == WORLD_SIZE
    assert [rank["rank"] for rank in ddp["ranks"]] == list(range(WORLD_SIZE))
    assert "distributed_backend=gloo" in ddp["log"]
    assert N_TEST % WORLD_SIZE  # uneven shards
    assert N_TEST % (WORLD_SIZE * EVAL_BATCH)  # uneven last batches
    # Both runs evaluate the same weights, and the model predicts every class (metrics are not trivially equal).
    for run in (single, ddp):
        assert {rank["eval"]["parameter_checksum"] for rank in run["ranks"]} == {
            single["ranks"][0]["eval"]["parameter_checksum"]
        }
        for reference in run["result"]["eval"]["reference"].values():
            assert reference["predicted_classes"] == [0, 1, 2, 3]
            assert 0.5 < reference["accuracy_micro"] < 1.0
    assert single["result"]["eval"]["reference"] == ddp["result"]["eval"]["reference"]


def test_ddp_eval_metrics_and_losses_equal_single_process(runs: dict[Any, dict[str, Any]]) -> None:
    """Validation on 64 images (32 per rank): every logged value and the confusion matrix as in one process."""
    single, ddp = runs[1]["result"]["eval"], runs[WORLD_SIZE]["result"]["eval"]
    coverage = _coverage_problems(_shards(runs[WORLD_SIZE], "validation"), N_VAL)
    assert not coverage, "\n".join(coverage)
    assert sorted(single["validate"]) == sorted(ddp["validate"])
    for name, value in single["validate"].items():
        assert ddp["validate"][name] == pytest.approx(value, rel=EVAL_TOL, abs=EVAL_TOL), name
    assert ddp["matrices"]["validation"] == single["matrices"]["validation"]
    reference = ddp["reference"]["validation"]
    for run in (single, ddp):
        assert not _metric_mismatches(run["validate"], "validation", run["matrices"]["validation"], reference)
        _check_losses(run["validate"], "validation", reference, padded=False)


def test_ddp_uneven_last_batches_metrics_match_all_samples(runs: dict[Any, dict[str, Any]]) -> None:
    """The datamodule's test loader, 37 images in batches of 4: metrics as torchmetrics computes them on the 37."""
    single, ddp = runs[1]["result"]["eval"], runs[WORLD_SIZE]["result"]["eval"]
    reference = ddp["reference"]["test"]
    assert not _metric_mismatches(single["test"], "test", single["matrices"]["test"], reference)
    problems = _coverage_problems(_shards(runs[WORLD_SIZE], "test"), N_TEST)
    problems += _metric_mismatches(ddp["test"], "test", ddp["matrices"]["test"], reference)
    assert not problems, "\n".join(problems)


def test_ddp_uneven_last_batches_loss_is_mean_over_all_samples(runs: dict[Any, dict[str, Any]]) -> None:
    """``test/loss`` from the datamodule's loader (a loss mean whose weighted sums torchmetrics adds up over the
    processes): the mean over exactly 37 samples."""
    single, ddp = runs[1]["result"]["eval"], runs[WORLD_SIZE]["result"]["eval"]
    reference = ddp["reference"]["test"]
    _check_losses(single["test"], "test", reference, padded=False)
    padded = bool(_coverage_problems(_shards(runs[WORLD_SIZE], "test"), N_TEST))
    _check_losses(ddp["test"], "test", reference, padded=padded)


def test_ddp_unpadded_sampler_metrics_match_all_samples(runs: dict[Any, dict[str, Any]]) -> None:
    """The same 37 images through an unpadded sampler (defined in the job, not the datamodule's) in batches of 2, so
    the ranks run 10 and 9 steps: torchmetrics' sync at compute (sum states, and list states of uneven lengths for
    AUROC) gives the 37-sample values."""
    ddp = runs[WORLD_SIZE]["result"]["eval"]
    shards = _shards(runs[WORLD_SIZE], "unpadded")
    assert [len(shard["indices"]) for shard in shards] == [len(range(r, N_TEST, WORLD_SIZE)) for r in range(2)]
    assert not _coverage_problems(shards, N_TEST)
    problems = _metric_mismatches(ddp["unpadded"], "validation", ddp["unpadded_matrices"], ddp["reference"]["test"])
    assert not problems, "\n".join(problems)


def test_ddp_training_matches_single_process_with_the_same_global_batch(runs: dict[Any, dict[str, Any]]) -> None:
    """Per-device batch 8 on 2 ranks against 16 on 1, same sample order: the same losses, metrics and weights."""
    single, ddp = runs[1]["result"]["fit"], runs[WORLD_SIZE]["result"]["fit"]
    assert single["global_step"] == ddp["global_step"] == 8  # 64 images / 16 per step x 2 epochs
    assert len(single["step_losses"]) == len(ddp["step_losses"]) == 8
    assert ddp["step_losses"] == pytest.approx(single["step_losses"], rel=TRAIN_TOL, abs=TRAIN_TOL)
    assert single["step_losses"][-1] < single["step_losses"][0]  # it trains

    # Epoch rows: train/loss_epoch and validation/loss (loss means), train and validation accuracy (torchmetrics).
    assert len(single["epoch_rows"]) == len(ddp["epoch_rows"]) == 4
    for expected, actual in zip(single["epoch_rows"], ddp["epoch_rows"], strict=True):
        assert sorted(actual) == sorted(expected)
        for name, value in expected.items():
            assert actual[name] == pytest.approx(value, rel=TRAIN_TOL, abs=TRAIN_TOL), name

    # DDP keeps the replicas identical, and they match the single-process weights.
    checksums = [rank["fit"]["parameter_checksum"] for rank in runs[WORLD_SIZE]["ranks"]]
    assert checksums[0] == checksums[1]
    assert sorted(ddp["parameters"]) == sorted(single["parameters"])
    for name, expected in single["parameters"].items():
        assert _flatten(ddp["parameters"][name]) == pytest.approx(_flatten(expected), abs=TRAIN_TOL), name


def test_ddp_fit_with_the_default_progress_bar_finishes(runs: dict[Any, dict[str, Any]]) -> None:
    """The same training with Lightning's default TQDMProgressBar (``enable_progress_bar=True``), one epoch."""
    run = runs["progress_bar"]
    if run["returncode"] != 0:
        deadlock = "Timed out waiting" in run["log"]
        cause = (
            "a deadlock at the end of the training epoch: on rank 0 only, TQDMProgressBar.on_train_epoch_end (a "
            "callback hook, which Lightning runs before the LightningModule's) reads trainer.progress_bar_metrics, "
            "which computes the epoch values logged so far (one collective each); rank 1 meanwhile is in "
            "LightningBrickCollection.on_train_epoch_end -> summarize -> torchmetrics' all_gather, so the ranks wait "
            "in different collectives (Lightning-AI/pytorch-lightning#21264, #19604)"
            if deadlock
            else "see the log"
        )
        pytest.fail(f"DDP fit with the progress bar exited with {run['returncode']}: {cause}.\n{run['log'][-3000:]}")
    expected = runs[WORLD_SIZE]["result"]["fit"]["step_losses"][:4]
    assert run["result"]["fit"]["step_losses"] == pytest.approx(expected, rel=TRAIN_TOL, abs=TRAIN_TOL)
