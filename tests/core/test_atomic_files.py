"""The one writer of whole files (``core/atomic_files.py``): temporary names, stale-file cleanup, modes, syncing and
failures, through its JSON writer and its callback writer. SafeCheckpointIO's side is in
``tests/lightning/test_checkpoint_io.py``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from torchbricks_lightning.core import atomic_files
from torchbricks_lightning.core.atomic_files import atomic_path, write_atomically, write_json_atomically
from torchbricks_lightning.errors import FileWriteError, TorchBricksError

THIS_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(finished.stdout)


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ------------------------------------------------------------------------------------------------ temporary names
def test_the_temporary_file_is_named_for_this_host_and_process_and_keeps_the_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "model.onnx") as temporary:
        seen = temporary.name
    assert re.fullmatch(rf"\.model\.{re.escape(THIS_HOST)}\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp\.onnx", seen), seen
    assert atomic_files.HOST == THIS_HOST


def test_stale_cleanup_removes_only_this_hosts_temporaries_of_dead_processes(tmp_path: Path) -> None:
    """On a shared filesystem another node may be writing its temporary file: a process id means nothing here."""
    dead = _dead_pid()
    stale = tmp_path / f".manifest.{THIS_HOST}.{dead}.0badf00d.tmp.json"
    kept = {
        "another host's, same dead pid": tmp_path / f".manifest.other-node.{dead}.0badf00d.tmp.json",
        "another host's, no live pid here": tmp_path / f".manifest.other-node.{2**22 + 1}.c0ffee00.tmp.json",
        "this host's, live pid": tmp_path / f".manifest.{THIS_HOST}.{os.getppid()}.c0ffee00.tmp.json",
        "another target's": tmp_path / f".other.{THIS_HOST}.{dead}.0badf00d.tmp.json",
        "another suffix's": tmp_path / f".manifest.{THIS_HOST}.{dead}.0badf00d.tmp.onnx.json",
        "not a temporary name": tmp_path / ".manifest.a1b2c3d4.json.tmp",
    }
    for path in [stale, *kept.values()]:
        path.write_bytes(b"partial")
    write_json_atomically(tmp_path / "manifest.json", {"format": "onnx"})
    assert not stale.exists()
    removed = [why for why, path in kept.items() if not path.exists()]
    assert removed == [], f"removed: {removed}"
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"format": "onnx"}


# ------------------------------------------------------------------------------------------------ modes and syncing
@pytest.mark.parametrize(("umask", "mode"), [(0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_modes_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        written = [
            write_json_atomically(tmp_path / "index.json", {"files": []}),
            write_atomically(tmp_path / "batch.npz", lambda file: file.write(b"npz")),
        ]
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(path.stat().st_mode) for path in written] == [mode, mode]


def test_the_file_is_synced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(descriptor: int) -> None:
        events.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{descriptor}')).name}")
        fsync(descriptor)

    def logged_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        events.append("replace")
        replace(source, target)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a descriptor is")
    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    write_json_atomically(tmp_path / "manifest.json", {})
    monkeypatch.undo()
    assert len(events) == 3, events
    assert re.fullmatch(r"fsync \.manifest\..*\.tmp\.json", events[0]), events
    assert events[1:] == ["replace", f"fsync {tmp_path.name}"]


# ------------------------------------------------------------------------------------------------ failures
class _BrokenError(Exception):
    pass


def _half_then(error: BaseException) -> Callable[[IO[bytes]], None]:
    def write(file: IO[bytes]) -> None:
        file.write(b"half of a file")
        file.flush()
        raise error

    return write


def test_a_write_callback_that_raises_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "batch.npz"
    target.write_bytes(b"previous")
    with pytest.raises(_BrokenError):  # not about the file: propagates unchanged
        write_atomically(target, _half_then(_BrokenError("serialising failed")))
    assert _names(tmp_path) == ["batch.npz"]
    assert target.read_bytes() == b"previous"


def test_a_full_disk_in_the_write_is_an_os_error_and_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "batch.npz"
    target.write_bytes(b"previous")
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(FileWriteError, match=r"batch\.npz'.*No space left on device.*Free some space") as error:
        write_atomically(target, _half_then(full), what="prediction file")
    assert isinstance(error.value, OSError)
    assert isinstance(error.value, TorchBricksError)
    assert not isinstance(error.value, ValueError)
    assert error.value.errno == errno.ENOSPC
    assert error.value.__cause__ is full
    assert _names(tmp_path) == ["batch.npz"]
    assert target.read_bytes() == b"previous"


def test_a_full_disk_reported_through_another_error_is_an_os_error(tmp_path: Path) -> None:
    """torch.save reports a full disk as a RuntimeError raised while handling the OSError of the write."""

    def write(file: IO[bytes]) -> None:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0") from None

    with pytest.raises(FileWriteError, match="No space left on device") as error:
        write_atomically(tmp_path / "last.ckpt", write)
    assert error.value.errno == errno.ENOSPC
    assert _names(tmp_path) == []


def test_a_full_disk_at_fsync_through_the_json_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the JSON writer raised an ExportError, a ValueError, for a full disk (as CheckpointWriteError did)."""
    target = write_json_atomically(tmp_path / "index.json", {"files": ["previous"]})

    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    # suppress(ValueError): how a caller handles bad input; it must not swallow a full disk
    with pytest.raises(FileWriteError, match=r"Could not write index .*No space left"), contextlib.suppress(ValueError):
        write_json_atomically(target, {"files": ["new"]}, what="index")
    monkeypatch.undo()
    assert _names(tmp_path) == ["index.json"]
    assert json.loads(target.read_text()) == {"files": ["previous"]}


def test_a_folder_in_the_way_is_a_write_error_and_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "index.json").mkdir()
    with pytest.raises(FileWriteError, match=r"index\.json'.*a folder of that name is in the way") as error:
        write_json_atomically(tmp_path / "index.json", {})
    assert error.value.errno == errno.EISDIR
    assert _names(tmp_path) == ["index.json"]
    assert (tmp_path / "index.json").is_dir()


def test_a_folder_that_cannot_be_created_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FileWriteError, match=r"a_file/preds/index\.json'"):
        write_json_atomically(tmp_path / "a_file" / "preds" / "index.json", {})
    assert _names(tmp_path) == ["a_file"]
