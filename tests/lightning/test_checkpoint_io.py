"""SafeCheckpointIO: a checkpoint is the whole new file or the previous one, never a partial file.

Lightning's own ``TorchCheckpointIO`` writes through ``TMPDIR`` and moves the file into place, which is a copy when
the checkpoint folder is on another filesystem: a process killed during the copy leaves a truncated checkpoint. The
kill and full-disk tests put the checkpoint folder on a tmpfs mounted for the test (so another filesystem than
``TMPDIR``); where no tmpfs can be mounted (not root, no ``mount``), they are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytorch_lightning as pl
import torch
from conftest import N_FEATURES, boring_bricks
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import LightningBrickCollection, SafeCheckpointIO
from torchbricks_lightning.checkpoints.io import atomic_torch_save, with_safe_checkpoint_io
from torchbricks_lightning.checkpoints.reading import read_checkpoint
from torchbricks_lightning.errors import CheckpointError, CheckpointWriteError, UntrustedCheckpointError


class FailsHalfway:
    """Pickling this raises, after torch.save has written part of the file."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise RuntimeError("serialisation failed halfway")


def _files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ------------------------------------------------------------------------------------------------ saving
def test_a_save_that_fails_halfway_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"step": 1, "weights": torch.ones(1000)}, target)
    with pytest.raises(RuntimeError, match="halfway"):
        SafeCheckpointIO().save_checkpoint({"weights": torch.zeros(100_000), "bad": FailsHalfway()}, target)
    assert _files(tmp_path) == ["last.ckpt"]
    assert read_checkpoint(target)["step"] == 1


def test_a_folder_in_the_way_is_a_write_error_and_the_folder_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").mkdir()
    (tmp_path / "last.ckpt" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointWriteError, match=r"last\.ckpt'.*a folder of that name is in the way") as error:
        SafeCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert isinstance(error.value, OSError)
    assert (tmp_path / "last.ckpt" / "keep.txt").read_text() == "mine"
    SafeCheckpointIO().remove_checkpoint(tmp_path / "last.ckpt")  # not recursive: a folder is never removed
    assert (tmp_path / "last.ckpt" / "keep.txt").is_file()


def test_a_read_only_folder_is_a_write_error(tmp_path: Path) -> None:
    with _mounted_tmpfs(tmp_path / "read_only", "1m", options="ro") as folder:
        with pytest.raises(CheckpointWriteError, match=r"Could not write checkpoint .*: Read-only file system"):
            SafeCheckpointIO().save_checkpoint({"step": 1}, folder / "last.ckpt")
        assert _files(folder) == []


def test_temporaries_of_killed_saves_of_this_host_are_removed_by_the_next_save(tmp_path: Path) -> None:
    dead = _dead_pid()
    host = _temporaries_after_a_save(tmp_path)[0].split(".")[2]  # the name a real save uses
    assert host == _this_host()
    stale = tmp_path / f".last.{host}.{dead}.0123abcd.tmp.ckpt"
    alive = tmp_path / f".last.{host}.{os.getppid()}.0123abcd.tmp.ckpt"  # a running process: maybe still saving
    other = tmp_path / f".epoch=1.{host}.{dead}.0123abcd.tmp.ckpt"  # another file's: left to its save
    elsewhere = tmp_path / f".last.other-node.{dead}.0123abcd.tmp.ckpt"  # another host's: maybe saving there
    for path in (stale, alive, other, elsewhere):
        path.write_bytes(b"partial")
    SafeCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    assert not stale.exists()
    assert alive.exists()
    assert other.exists()
    assert elsewhere.exists(), "a temporary file of another host was removed: that host may be writing it"
    assert read_checkpoint(tmp_path / "last.ckpt")["step"] == 2


def test_the_checkpoints_mode_follows_the_umask(tmp_path: Path) -> None:
    for umask, mode in ((0o027, 0o640), (0o002, 0o664)):
        previous = os.umask(umask)
        try:
            SafeCheckpointIO().save_checkpoint({"step": 1}, tmp_path / f"umask{umask:o}.ckpt")
        finally:
            os.umask(previous)
        assert stat.S_IMODE((tmp_path / f"umask{umask:o}.ckpt").stat().st_mode) == mode  # not mkstemp's 0o600


def test_a_disk_full_at_fsync_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filesystems with delayed allocation report a full disk when the data is synced, after every write passed."""
    target = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"step": 1}, target)

    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointWriteError, match=r"No space left on device.*previous checkpoint.*intact") as error:
        SafeCheckpointIO().save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert error.value.errno == errno.ENOSPC
    assert _files(tmp_path) == ["last.ckpt"]
    assert read_checkpoint(target)["step"] == 1


def _temporaries_after_a_save(folder: Path) -> list[str]:
    """The name of the temporary file a save uses, seen by interrupting one."""
    with pytest.raises(RuntimeError):
        atomic_torch_save({"bad": _Spy(folder)}, folder / "last.ckpt")
    return _Spy.seen


class _Spy:
    seen: ClassVar[list[str]] = []

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self) -> tuple[Any, ...]:
        _Spy.seen = [path.name for path in self.folder.iterdir() if ".tmp" in path.name]
        raise RuntimeError("spied")


def _dead_pid() -> int:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(dead.stdout)


def _this_host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def test_the_trainer_saves_and_restores_through_it(tmp_path: Path) -> None:
    data = DataLoader(TensorDataset(torch.randn(8, N_FEATURES), torch.arange(8) % 3), batch_size=4)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=1, monitor="train/loss")
    trainer = pl.Trainer(
        max_epochs=3,
        plugins=[SafeCheckpointIO()],
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(0)
    trainer.fit(LightningBrickCollection(boring_bricks()), data)  # type: ignore[arg-type]
    names = _files(tmp_path / "checkpoints")
    assert "last.ckpt" in names, names
    assert len(names) == 2, names  # top-1 kept, the others removed through the plugin
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 2

    resumed = pl.Trainer(
        max_epochs=4, plugins=[SafeCheckpointIO()], logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    resumed.fit(LightningBrickCollection(boring_bricks()), data, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")  # type: ignore[arg-type]
    assert resumed.current_epoch == 4


# ------------------------------------------------------------------------------------------------ loading
def test_loading_is_weights_only_and_refuses_to_be_told_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {}, "code": FailsHalfway.__reduce__}, path)  # a function: pickled code
    with pytest.raises(UntrustedCheckpointError, match="not tensors or plain values"):
        SafeCheckpointIO().load_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="weights_only=False was asked"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    assert SafeCheckpointIO().load_checkpoint(path, weights_only=True) == {"state_dict": {}}


def test_a_preloaded_checkpoint_is_served_once_instead_of_reading_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {}, "from": "file"}, path)
    io = SafeCheckpointIO()
    io.preload(path, {"state_dict": {}, "from": "memory"})
    assert io.load_checkpoint(str(path))["from"] == "memory"
    assert io.load_checkpoint(path)["from"] == "file"


def test_plugins_get_a_safe_checkpoint_io_unless_they_hold_one() -> None:
    assert [type(plugin).__name__ for plugin in with_safe_checkpoint_io("bf16-mixed")] == ["str", "SafeCheckpointIO"]
    mine = SafeCheckpointIO()
    assert with_safe_checkpoint_io([mine]) == [mine]


# ------------------------------------------------------------------------------------------------ other filesystems
@contextlib.contextmanager
def _mounted_tmpfs(folder: Path, size: str, options: str = "rw") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``folder``, another filesystem than TMPDIR, or skip saying why there is none."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and the mount command; this test runs where it can mount one")
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},{options}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        assert os.stat(folder).st_dev != os.stat(tempfile.gettempdir()).st_dev
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path: Path) -> None:
    with _mounted_tmpfs(tmp_path / "small", "2m") as folder:
        io = SafeCheckpointIO()
        io.save_checkpoint({"step": 1, "weights": torch.ones(300_000)}, folder / "last.ckpt")  # 1.2 MB
        with pytest.raises(
            CheckpointWriteError, match=r"No space left on device.*previous checkpoint.*intact"
        ) as error:
            io.save_checkpoint({"step": 2, "weights": torch.ones(300_000)}, folder / "last.ckpt")
        assert error.value.errno == 28
        assert _files(folder) == ["last.ckpt"]
        assert read_checkpoint(folder / "last.ckpt")["step"] == 1


def test_a_full_disk_is_an_os_error_that_except_value_error_does_not_swallow(tmp_path: Path) -> None:
    """Bug: CheckpointWriteError was also a ValueError, so ``except ValueError`` for bad input hid a full disk."""
    assert not issubclass(CheckpointWriteError, ValueError)
    with _mounted_tmpfs(tmp_path / "small", "1m") as folder:
        # suppress(ValueError): how a caller handles bad input; it must not swallow a full disk
        with pytest.raises(CheckpointWriteError, match="No space left") as error, contextlib.suppress(ValueError):
            SafeCheckpointIO().save_checkpoint({"weights": torch.ones(300_000)}, folder / "last.ckpt")  # 1.2 MB
        assert isinstance(error.value, OSError)
        assert error.value.errno == errno.ENOSPC
        assert _files(folder) == []


def test_a_full_disk_during_training_stops_it_with_a_clear_error(tmp_path: Path) -> None:
    """Through a real Trainer and ModelCheckpoint: the epoch that does not fit fails, the one before is whole."""

    class Heavy(LightningBrickCollection):
        def __init__(self) -> None:
            super().__init__(boring_bricks())  # type: ignore[arg-type]
            self.register_buffer("ballast", torch.ones(300_000))  # 1.2 MB per checkpoint

    data = DataLoader(TensorDataset(torch.randn(8, N_FEATURES), torch.arange(8) % 3), batch_size=4)
    with _mounted_tmpfs(tmp_path / "small", "2m") as folder:
        trainer = pl.Trainer(
            max_epochs=3,
            plugins=[SafeCheckpointIO()],
            callbacks=[ModelCheckpoint(dirpath=folder, save_top_k=-1)],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        with pytest.raises(CheckpointWriteError, match="No space left on device"):
            trainer.fit(Heavy(), data)
        assert _files(folder) == ["epoch=0-step=2.ckpt"]
        assert read_checkpoint(folder / "epoch=0-step=2.ckpt")["epoch"] == 0


KILL_HARNESS = textwrap.dedent(
    """
    import json, os, random, signal, sys, time
    import torch
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
    from torchbricks_lightning.checkpoints.io import SafeCheckpointIO

    folder, kills, plugin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    io, rng = SafeCheckpointIO() if plugin == "safe" else TorchCheckpointIO(), random.Random(11)

    def save(step):  # every value of a checkpoint of step N is N: a mixed or cut file cannot pass for whole
        checkpoint = {"step": step, "state_dict": {"weights": torch.full((2_000_000,), float(step))}}
        io.save_checkpoint(checkpoint, os.path.join(folder, "last.ckpt"))
        io.save_checkpoint(checkpoint, os.path.join(folder, f"step={step % 3}.ckpt"))

    def broken():
        found = []
        for name in sorted(os.listdir(folder)):
            if name.endswith(".ckpt") and not name.startswith("."):  # not the hidden temporary files
                try:
                    checkpoint = torch.load(os.path.join(folder, name), weights_only=True)
                    assert bool((checkpoint["state_dict"]["weights"] == checkpoint["step"]).all())
                except Exception:
                    found.append(name)
        return found

    save(0)
    report = {"interrupted": 0, "broken": []}
    for kill in range(kills):
        child = os.fork()
        if child == 0:
            step = 1 + 1000 * kill
            while True:
                save(step)
                step += 1
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        report["interrupted"] += any(f".{child}." in name for name in os.listdir(folder))  # killed mid-write
        report["broken"] += [f"kill {kill}: {name}" for name in broken()]
    if plugin == "safe":
        for step in (3000001, 3000002, 3000003):  # the next saves of each file remove the killed saves' temporaries
            save(step)
    print(json.dumps(report))
    """
)


def _kill_saves(folder: Path, script: Path, plugin: str) -> dict[str, Any]:
    script.write_text(KILL_HARNESS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.run(
        [sys.executable, str(script), str(folder), "20", plugin],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_control_sigkills_during_lightnings_own_saves_leave_broken_checkpoints(tmp_path: Path) -> None:
    """Lightning's TorchCheckpointIO writes through TMPDIR, so into another filesystem it copies: kills break files
    (5 of 20 kills here, 4 of them ``last.ckpt``). The test below is the same with SafeCheckpointIO."""
    with _mounted_tmpfs(tmp_path / "checkpoints", "256m") as folder:
        report = _kill_saves(folder, tmp_path / "harness.py", "torch")
    assert report["broken"], "no kill broke a checkpoint of Lightning's own plugin: the control proves nothing"


def test_sigkills_during_saves_leave_only_whole_checkpoints(tmp_path: Path) -> None:
    """20 SIGKILLs at random times while a process saves checkpoints (8 MB each, two files per step) into a folder
    on another filesystem: after every kill each checkpoint loads and is whole, and the next saves remove the
    temporary files of the killed ones."""
    with _mounted_tmpfs(tmp_path / "checkpoints", "256m") as folder:
        report = _kill_saves(folder, tmp_path / "harness.py", "safe")
        assert not report["broken"], report["broken"]
        assert report["interrupted"] >= 5, f"only {report['interrupted']} of 20 kills interrupted a save"
        names = _files(folder)
        assert names == ["last.ckpt", "step=0.ckpt", "step=1.ckpt", "step=2.ckpt"], names
        for name in names:
            checkpoint = read_checkpoint(folder / name)
            assert bool((checkpoint["state_dict"]["weights"] == checkpoint["step"]).all()), name
