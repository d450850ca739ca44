"""BrickPredictionWriter: predictions streamed to .npz files with an index, flat memory, safe under DDP."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import N_FEATURES, boring_bricks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import (
    BrickNotTrainable,
    BrickPredictionWriter,
    LightningBrickCollection,
    Stage,
    read_predictions,
)
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, FileWriteError

JOB = Path(__file__).parent / "prediction_jobs" / "predict_job.py"


def _trainer(**kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        **kwargs,
    }
    return pl.Trainer(**options)


class Doubled(nn.Module):
    """A float64 output, to see the writer's cast."""

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities.double() * 2


def _module(**kwargs: Any) -> LightningBrickCollection:
    torch.manual_seed(0)
    bricks = boring_bricks()
    bricks["doubled"] = BrickNotTrainable(Doubled(), input_names=["probabilities"], output_names=["doubled"])
    return LightningBrickCollection(bricks, **kwargs)


def _loader(n: int = 10, batch_size: int = 4, reverse: bool = False) -> DataLoader[tuple[torch.Tensor, ...]]:
    raw = torch.randn(n, N_FEATURES, generator=torch.Generator().manual_seed(1))
    order = list(range(n))[::-1] if reverse else None
    return DataLoader(TensorDataset(raw), batch_size=batch_size, sampler=order)


def test_each_batch_is_a_file_and_the_index_maps_samples_to_rows(tmp_path: Path) -> None:
    module = _module()
    writer = BrickPredictionWriter(str(tmp_path / "preds"))
    loader = _loader(reverse=True)  # the samples come in reverse: the index must say which row is which sample
    assert _trainer(callbacks=[writer]).predict(module, loader, return_predictions=False) is None

    index = json.loads((tmp_path / "preds" / "index.json").read_text())
    assert index["format"] == "torchbricks_lightning.predictions"
    assert (index["version"], index["file_format"], index["world_size"]) == (1, "npz", 1)
    assert index["output_names"] == ["class_prediction", "doubled"]  # the terminal outputs
    assert index["dtypes"] == {"class_prediction": "int64", "doubled": "float32"}  # float64 written as float32
    assert (index["num_files"], index["num_rows"]) == (3, 10)
    files = [entry["file"] for entry in index["files"]]
    assert files == ["rank0/dl0-batch000000.npz", "rank0/dl0-batch000001.npz", "rank0/dl0-batch000002.npz"]
    assert [entry["samples"] for entry in index["files"]] == [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0]]
    assert writer.written == files

    raw = loader.dataset.tensors[0]  # type: ignore[attr-defined]
    module.eval()
    with torch.no_grad():
        expected = module.brick_collection({"raw": raw}, Stage.INFERENCE)
    for entry in index["files"]:
        with np.load(tmp_path / "preds" / entry["file"], allow_pickle=False) as arrays:  # numpy alone reads them
            assert sorted(arrays.keys()) == ["class_prediction", "doubled"]
            rows = entry["samples"]
            np.testing.assert_array_equal(arrays["class_prediction"], expected["class_prediction"][rows].numpy())
            assert arrays["doubled"].dtype == np.float32
            np.testing.assert_allclose(arrays["doubled"], expected["doubled"][rows].numpy(), rtol=1e-6)
    assert not [path for path in (tmp_path / "preds").rglob("*") if ".tmp" in path.name]


def test_chosen_outputs_and_dtypes(tmp_path: Path) -> None:
    module = _module(predict_output_names=["logits", "doubled"])
    writer = BrickPredictionWriter(str(tmp_path), output_names=["doubled"], float_dtype="keep")
    _trainer(callbacks=[writer]).predict(module, _loader(), return_predictions=False)
    assert writer.dtypes == {"doubled": "float64"}
    with np.load(tmp_path / "rank0" / "dl0-batch000000.npz") as arrays:
        assert list(arrays.keys()) == ["doubled"]

    half = BrickPredictionWriter(str(tmp_path / "half"), float_dtype="float16")
    _trainer(callbacks=[half]).predict(module, _loader(), return_predictions=False)
    assert half.dtypes == {"logits": "float16", "doubled": "float16"}


def test_bfloat16_predictions_are_written_as_float32(tmp_path: Path) -> None:
    """Under bf16-mixed the outputs come back as bfloat16, which NumPy cannot hold."""
    module = _module(predict_output_names=["logits"])
    writer = BrickPredictionWriter(str(tmp_path), float_dtype="keep")
    _trainer(callbacks=[writer], precision="bf16-mixed").predict(module, _loader(), return_predictions=False)
    assert writer.dtypes == {"logits": "float32"}


def test_a_new_prediction_replaces_the_previous_files(tmp_path: Path) -> None:
    writer = BrickPredictionWriter(str(tmp_path))
    _trainer(callbacks=[writer]).predict(_module(), _loader(n=12), return_predictions=False)
    assert len(list((tmp_path / "rank0").glob("*.npz"))) == 3
    (tmp_path / "rank3").mkdir()  # a process of an earlier, larger run
    (tmp_path / "notes.txt").write_text("the user's own file")
    _trainer(callbacks=[writer]).predict(_module(), _loader(n=4), return_predictions=False)
    assert sorted(path.name for path in (tmp_path / "rank0").iterdir()) == ["dl0-batch000000.npz", "index.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index.json", "notes.txt", "rank0"]
    assert json.loads((tmp_path / "index.json").read_text())["num_rows"] == 4


class NotADict(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(N_FEATURES, 2)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0])


def test_predictions_that_are_not_named_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BrickDefinitionError, match="writes named outputs, but predict_step returned a Tensor"):
        _trainer(callbacks=[BrickPredictionWriter(str(tmp_path))]).predict(NotADict(), _loader())


def test_unknown_output_names_and_dtypes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="float_dtype"):
        BrickPredictionWriter(str(tmp_path), float_dtype="int8")  # type: ignore[arg-type]
    writer = BrickPredictionWriter(str(tmp_path), output_names=["logits"])
    with pytest.raises(ConfigError, match=r"output_names \['logits'\] are not in the predictions"):
        _trainer(callbacks=[writer]).predict(_module(), _loader())


def test_predict_output_names_are_checked_when_the_module_is_built() -> None:
    with pytest.raises(ConfigError, match=r"predict_output_names \['probabilites'\].*Did you mean 'probabilities'"):
        _module(predict_output_names=["probabilites"])


# ------------------------------------------------------------------------------------------------ subprocess jobs
def _job_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", PYTHONWARNINGS="ignore")
    return env


def _start(out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(JOB), "--out", str(out), *args],
        env=_job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-3000:]
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc (Linux)")
def test_predicting_ten_times_more_samples_keeps_peak_memory_flat(tmp_path: Path) -> None:
    """10,000 samples of 16 KB each (160 MB of predictions) written as they come: the peak RSS stays within 10% of
    predicting 1,000. The same 10,000 kept in memory (Lightning's default) show that the measure sees them."""
    runs = {
        "small": ("--samples", "1000"),
        "large": ("--samples", "10000"),
        "kept": ("--samples", "10000", "--mode", "memory"),
    }
    processes = {name: _start(tmp_path / name, *args) for name, args in runs.items()}
    results = {name: _finish(process, tmp_path / name) for name, process in processes.items()}
    small, large, kept = (results[name]["peak_rss_mib"] for name in ("small", "large", "kept"))
    assert large <= 1.10 * small, f"peak RSS {large:.0f} MiB for 10,000 samples vs {small:.0f} MiB for 1,000"
    assert results["kept"]["kept"] == 10_000
    assert kept > 1.10 * small, f"keeping the predictions did not show: {kept:.0f} vs {small:.0f} MiB"
    index = json.loads((tmp_path / "large" / "preds" / "index.json").read_text())
    assert (index["num_files"], index["num_rows"]) == (40, 10_000)


@pytest.mark.slow
def test_two_processes_write_their_own_files_and_one_index(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    _finish(_start(out, "--samples", "1001", "--devices", "2", "--batch-size", "64"), out)
    preds = out / "preds"
    index = json.loads((preds / "index.json").read_text())
    assert index["world_size"] == 2
    assert "missing_ranks" not in index
    assert {entry["rank"] for entry in index["files"]} == {0, 1}
    seen: list[int] = []
    for entry in index["files"]:
        assert entry["file"].startswith(f"rank{entry['rank']}/")
        with np.load(preds / entry["file"]) as arrays:
            # The job's model returns each sample's own index: the index file says which sample each row is.
            np.testing.assert_array_equal(arrays["sample_value"], np.array(entry["samples"], dtype=np.float32))
            assert arrays["maps"].shape == (len(entry["samples"]), 4096)
        seen += entry["samples"]
    assert sorted(set(seen)) == list(range(1001))
    # read_predictions puts both processes' rows back in the dataset's order, each sample once.
    whole = read_predictions(preds)
    np.testing.assert_array_equal(whole["sample_value"], np.arange(1001, dtype=np.float32))
    assert whole["maps"].shape == (1001, 4096)
    for rank in (0, 1):
        part = json.loads((preds / f"rank{rank}" / "index.json").read_text())
        assert part["rank"] == rank
    assert not [path for path in preds.rglob("*") if ".tmp" in path.name]  # no staging folder, no temporary file


# ------------------------------------------------------------------------------------------------ names and folders
class Named(pl.LightningModule):
    """A module whose ``predict_step`` returns the given names: not a brick collection, so nothing checked them."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names
        self.layer = nn.Linear(N_FEATURES, 2)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        out = self.layer(batch[0])
        return {name: out + offset for offset, name in enumerate(self.names)}


def test_output_names_with_nul_are_refused_not_merged(tmp_path: Path) -> None:
    """A zip member name ends at its first NUL: the two outputs would both be read back as 'scores'."""
    writer = BrickPredictionWriter(str(tmp_path))
    with pytest.raises(ConfigError, match=r"Output 'scores\\x00a' holds the control character '\\x00' at position 6"):
        _trainer(callbacks=[writer]).predict(Named(["scores\x00a", "scores\x00b"]), _loader())
    assert not (tmp_path / "index.json").exists()
    assert not list(tmp_path.rglob("*.npz"))


def test_output_names_longer_than_a_zip_member_name_are_refused_with_the_limit(tmp_path: Path) -> None:
    longest = "x" * 65_531  # plus ".npy": 65,535 bytes, the most a zip member name holds
    _trainer(callbacks=[BrickPredictionWriter(str(tmp_path / "ok"))]).predict(
        Named([longest]), _loader(), return_predictions=False
    )
    with np.load(tmp_path / "ok" / "rank0" / "dl0-batch000000.npz") as arrays:
        assert list(arrays.keys()) == [longest]

    writer = BrickPredictionWriter(str(tmp_path / "long"))
    limit = r"is too long for a .npz file: zip member names hold at most 65,535 bytes"
    with pytest.raises(ConfigError, match=rf"Output 'x{{40}}\.\.\.' \(100,000 characters\) {limit}"):
        _trainer(callbacks=[writer]).predict(Named(["x" * 100_000]), _loader())
    with pytest.raises(ConfigError, match=rf"\(32,766 characters\) {limit}.*UTF-8 plus '.npy' \(65,536 here\)"):
        _trainer(callbacks=[writer]).predict(Named(["é" * 32_766]), _loader())  # two bytes each in UTF-8
    assert not (tmp_path / "long" / "index.json").exists()


def test_an_output_dir_that_is_a_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    file = tmp_path / "preds"
    file.write_text("the user's file")
    with pytest.raises(ConfigError, match=f"output_dir {re.escape(repr(str(file)))} is a file, not a folder. Give"):
        _trainer(callbacks=[BrickPredictionWriter(str(file))]).predict(_module(), _loader())
    below = file / "run1"
    with pytest.raises(ConfigError, match=f"cannot be created: {re.escape(repr(str(file)))} is a file, not a folder"):
        _trainer(callbacks=[BrickPredictionWriter(str(below))]).predict(_module(), _loader())
    assert file.read_text() == "the user's file"


def test_an_output_dir_on_a_read_only_filesystem_is_a_file_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only filesystem (simulated: this suite may run as root, which permissions do not stop)."""
    mount, mkdir = tmp_path / "read-only", os.mkdir
    mount.mkdir()

    def read_only_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).startswith(str(mount)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    target = mount / "preds"
    with pytest.raises(FileWriteError, match=rf"{re.escape(repr(str(target)))}: Read-only file system\..*you can") as e:
        _trainer(callbacks=[BrickPredictionWriter(str(target))]).predict(_module(), _loader())
    assert e.value.errno == errno.EROFS
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(mount)))
    with pytest.raises(FileWriteError, match=rf"{re.escape(repr(str(mount)))}: read-only filesystem or no write"):
        _trainer(callbacks=[BrickPredictionWriter(str(mount))]).predict(_module(), _loader())
