"""A new prediction replaces the previous one only once it is complete: killed (SIGKILL) at any step of writing or
publishing, raising at batch 3, or out of disk space at any write, a run leaves a reader of ``index.json`` the
previous complete prediction or the new one, never a mix; the next complete run leaves nothing else behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchbricks_lightning import BrickPredictionWriter, BrickTrainable, LightningBrickCollection
from torchbricks_lightning.errors import FileWriteError

KILL_JOB = Path(__file__).parent / "prediction_jobs" / "kill_job.py"
RUNS = {1: (10, 3), 2: (6, 2), 3: (5, 5)}  # version: (samples, batch size), as in the kill job


def read_prediction(folder: Path) -> tuple[set[int], list[int]]:
    """What a reader gets from ``index.json`` and the files it lists: the versions of the runs that wrote the rows,
    and the samples. Fails if a listed file is missing or a row is not the sample the index says."""
    index = json.loads((folder / "index.json").read_text())
    versions: set[int] = set()
    samples: list[int] = []
    for entry in index["files"]:
        with np.load(folder / entry["file"], allow_pickle=False) as arrays:
            values = arrays["value"].astype(np.int64)
        assert len(values) == entry["rows"]
        assert (values % 1000).tolist() == entry["samples"], entry
        versions |= set((values // 1000).tolist())
        samples += entry["samples"]
    assert index["num_rows"] == len(samples)
    return versions, sorted(samples)


def complete(version: int) -> tuple[set[int], list[int]]:
    """What a reader gets from the complete prediction of ``version``."""
    return {version}, list(range(RUNS[version][0]))


def leftovers(folder: Path) -> list[str]:
    """Files and folders that are not the prediction's own (temporary files, staging folders, old batch files)."""
    index = json.loads((folder / "index.json").read_text())
    expected = {"index.json", "rank0", "rank0/index.json", *(entry["file"] for entry in index["files"])}
    return sorted(
        str(path.relative_to(folder)) for path in folder.rglob("*") if str(path.relative_to(folder)) not in expected
    )


# ------------------------------------------------------------------------------------------------ in-process runs
class Samples(Dataset[torch.Tensor]):
    def __init__(self, samples: int) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index)])


class Versioned(nn.Module):
    """``value = 1000 * version + sample index``; raises on its call ``fail_at`` (0-based batch index)."""

    def __init__(self, version: int, fail_at: int | None = None) -> None:
        super().__init__()
        self.version, self.fail_at, self.calls = version, fail_at, 0

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if self.calls == self.fail_at:
            raise RuntimeError(f"a bug at batch {self.calls}")
        self.calls += 1
        return raw[:, 0] + 1000 * self.version


def predict(folder: Path, version: int, *, batch_size: int | None = None, fail_at: int | None = None) -> None:
    samples, default_batch_size = RUNS[version]
    module = LightningBrickCollection(
        {"versioned": BrickTrainable(Versioned(version, fail_at), input_names=["raw"], output_names=["value"])}
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[BrickPredictionWriter(str(folder))],
    )
    loader = DataLoader(Samples(samples), batch_size=batch_size or default_batch_size)
    trainer.predict(module, loader, return_predictions=False)


def _files(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_run_that_raises_at_batch_3_leaves_the_previous_prediction_as_it_was(tmp_path: Path) -> None:
    predict(tmp_path, 1)
    before = _files(tmp_path)
    with pytest.raises(RuntimeError, match="a bug at batch 3"):
        predict(tmp_path, 2, batch_size=1, fail_at=3)  # batches 0, 1 and 2 were written
    assert read_prediction(tmp_path) == complete(1)
    assert _files(tmp_path) == before  # not a byte changed, nothing added: the failed run removed its staging
    predict(tmp_path, 2)
    assert read_prediction(tmp_path) == complete(2)
    assert leftovers(tmp_path) == []


def test_a_full_disk_at_batch_3_is_a_file_write_error_and_the_previous_prediction_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predict(tmp_path, 1)
    before = _files(tmp_path)
    savez, calls = np.savez, []

    def fills_the_disk(file: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            file.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        savez(file, *args, **kwargs)

    monkeypatch.setattr(np, "savez", fills_the_disk)
    with pytest.raises(FileWriteError, match=r"No space left on device.* Free some space") as raised:
        predict(tmp_path, 2)
    assert raised.value.errno == errno.ENOSPC
    assert read_prediction(tmp_path) == complete(1)
    assert _files(tmp_path) == before


def _replace_steps(folder: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int | None) -> list[str]:
    """Make the ``fail_at``-th ``os.replace`` into ``folder`` (every file the writer puts in place) fail with ENOSPC."""
    replace, steps = os.replace, []

    def counted(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if str(target).startswith(str(folder)):
            steps.append(os.path.relpath(target, folder))
            if len(steps) == fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", counted)
    return steps


def test_a_full_disk_at_any_write_leaves_one_complete_prediction(tmp_path: Path) -> None:
    counted = tmp_path / "counted"
    predict(counted, 1)
    with pytest.MonkeyPatch.context() as patch:
        steps = _replace_steps(counted, patch, fail_at=None)
        predict(counted, 2)
    # 3 batch files and rank 0's index staged, index.json, the 3 files and rank 0's index in place, index.json
    assert len(steps) == 10, steps
    seen = []
    for step in range(1, len(steps) + 1):
        folder = tmp_path / f"full{step}"
        predict(folder, 1)
        with pytest.MonkeyPatch.context() as patch:
            _replace_steps(folder, patch, fail_at=step)
            with pytest.raises(FileWriteError, match="No space left on device"):
                predict(folder, 2)
        seen.append(read_prediction(folder))
        assert seen[-1] in (complete(1), complete(2)), f"a mix after a full disk at {steps[step - 1]}: {seen[-1]}"
        predict(folder, 3)  # the next run cleans up what the failed one left
        assert read_prediction(folder) == complete(3)
        assert leftovers(folder) == [], steps[step - 1]
    assert seen[0] == complete(1)
    assert seen[-1] == complete(2)  # the last step only renames the index: the staged index already listed all


# ------------------------------------------------------------------------------------------------ kills
def test_a_prediction_killed_at_any_step_leaves_the_previous_complete_result_or_the_new_one(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    process = subprocess.run(
        [sys.executable, str(KILL_JOB), "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    steps = result["steps"]
    assert read_prediction(tmp_path / "pristine") == complete(1)
    assert read_prediction(tmp_path / "count") == complete(2)
    assert len(steps) >= 10, steps  # the writes of the batches, the index and every step of publishing
    outcomes = []
    for k in range(1, len(steps) + 1):
        assert result["killed"][str(k)] == -9, f"the run to be killed before {steps[k - 1]} was not killed"
        seen = read_prediction(tmp_path / f"killed{k}")
        assert seen in (complete(1), complete(2)), f"killed before {steps[k - 1]}: a mix {seen}"
        outcomes.append(2 if seen == complete(2) else 1)
        assert result["again"][str(k)] == 0
        assert read_prediction(tmp_path / f"again{k}") == complete(3)
        assert leftovers(tmp_path / f"again{k}") == [], f"left behind by the run killed before {steps[k - 1]}"
    # Killed while writing its batches, the new run left the previous prediction; from publishing on, the new one.
    first_new = outcomes.index(2)
    assert outcomes == [1] * first_new + [2] * (len(steps) - first_new)
    assert steps[first_new - 1].startswith("os.replace .index."), steps  # index.json is the switch
