"""The one writer of files that are whole or absent: artefacts, manifests, predictions and checkpoints.

A file is written to a temporary file beside its target, flushed and synced, renamed over the target (atomic on
POSIX filesystems), and the folder is synced so that the rename survives a crash. A write that fails or is killed
leaves whatever was at the target before as it was; a failed write removes its temporary file. Files get the mode
every new file gets (``0o666`` less the umask), as Lightning's checkpoints do, not the owner-only ``0o600`` of
``mkstemp``.

Temporary files are named ``.{stem}.{host}.{pid}.{token}.tmp{suffixes}``: ``.model.node1.4242.1a2b3c4d.tmp.onnx``
for ``model.onnx`` (writers that check the suffix, such as ``torch.export.save``, accept it). A new write to the
same target removes the temporary files that a killed write *of this host* left behind, those whose process is
gone. Another host's temporary files are never removed: on a shared filesystem that host may be writing them, and
whether its process lives cannot be told from here.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "numbers.txt") as temporary:
    ...     _ = temporary.write_text("1 2 3")
    >>> (folder / "numbers.txt").read_text(), sorted(p.name for p in folder.iterdir())
    ('1 2 3', ['numbers.txt'])
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from torchbricks_lightning.errors import ConfigError, ExportError, FileWriteError, TorchBricksError

__all__ = [
    "HOST",
    "atomic_path",
    "check_output_path",
    "process_is_alive",
    "remove_stale_temporaries",
    "remove_stale_temporary_folders",
    "temporary_name",
    "write_atomically",
    "write_json_atomically",
]

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
"""This host's name as temporary file names carry it (letters, digits and ``-`` only)."""

_OWNER = re.compile(r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}")


def temporary_name(path: str | os.PathLike[str], *, host: str = HOST, pid: int | None = None) -> str:
    """The name of a temporary file for a write to ``path`` by process ``pid`` (this one) of ``host`` (this one).

    Example:
        >>> re.sub("[0-9a-f]{8}", "TOKEN", temporary_name("exports/model.onnx", host="node1", pid=4242))
        '.model.node1.4242.TOKEN.tmp.onnx'
    """
    stem, dot, suffix = Path(path).name.partition(".")
    return f".{stem}.{host}.{os.getpid() if pid is None else pid}.{secrets.token_hex(4)}.tmp{dot}{suffix}"


def _owner(name: str, target: Path) -> tuple[str, int] | None:
    """The host and process id in ``name`` if it is a temporary file of a write to ``target``, else None."""
    stem, dot, suffix = target.name.partition(".")
    start, end = f".{stem}.", f".tmp{dot}{suffix}"
    if len(name) <= len(start) + len(end) or not name.startswith(start) or not name.endswith(end):
        return None
    owner = _OWNER.fullmatch(name[len(start) : len(name) - len(end)])
    return (owner["host"], int(owner["pid"])) if owner else None


def process_is_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (one of another user counts as alive): the owner of a temporary
    file named after it may still be writing it."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that writes to ``path`` by killed processes of this host left behind.

    A temporary file of a process that still runs (a concurrent write) is kept, and so is one of another host
    (it may be writing it on a shared filesystem), and anything else in the folder.

    Returns:
        The files removed.
    """
    removed = []
    for entry in _stale_entries(Path(path)):
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def remove_stale_temporary_folders(path: str | os.PathLike[str], *, keep: str | None = None) -> list[Path]:
    """Remove the temporary *folders* named after ``path`` (see :func:`temporary_name`) that killed processes of
    this host left behind, except the one named ``keep``: the staging folders of writes that publish several files
    at once (the prediction writer's). The same rules as :func:`remove_stale_temporaries` say what is stale, but a
    folder of this very process other than ``keep`` is stale too: an earlier write of this process that failed.

    Returns:
        The folders removed.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / temporary_name(folder / "predictions", pid=2**22 + 1)).mkdir()  # no such process
        >>> [path.name.split(".")[1] for path in remove_stale_temporary_folders(folder / "predictions")]
        ['predictions']
    """
    removed = []
    for entry in _stale_entries(Path(path), this_process_is_stale=True):
        if entry.name != keep and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _stale_entries(target: Path, this_process_is_stale: bool = False) -> list[os.DirEntry[str]]:
    """The entries beside ``target`` named as its temporaries by a process of this host that no longer runs (or,
    with ``this_process_is_stale``, by this very process): never another host's, which may be writing them."""
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    stale = []
    for entry in entries:
        owner = _owner(entry.name, target)
        if owner is None or owner[0] != HOST:
            continue
        if (this_process_is_stale and owner[1] == os.getpid()) or not process_is_alive(owner[1]):
            stale.append(entry)
    return stale


def check_output_path(path: str | os.PathLike[str], *, what: str = "output") -> Path:
    """Raise :class:`ExportError` unless a file can be written at ``path`` (its folder is created if needed), and
    :class:`ConfigError` if no file can have that name (a NUL character in it).

    The export's check of its argument before any work: the message says what is wrong with the path given (a
    folder, a read-only file, a folder that cannot be created or written). :func:`atomic_path` does not call it:
    a write that fails later raises :class:`FileWriteError`.

    Example:
        >>> import tempfile
        >>> check_output_path(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ExportError: The output path '...' is a directory; give a file path ...
    """
    target = Path(path)
    if "\0" in os.fspath(target):  # the OS cuts names at NUL: Python refuses them with a bare ValueError
        raise ConfigError(
            f"The {what} path {str(target)!r} holds a NUL character ('\\x00'), which no file name can hold; remove it."
        )
    if target.is_dir():
        raise ExportError(f"The {what} path {str(target)!r} is a directory; give a file path inside it instead.")
    if target.exists() and (not target.stat().st_mode & 0o222 or not os.access(target, os.W_OK)):
        raise ExportError(
            f"The {what} path {str(target)!r} is read-only; make it writable or remove it, or choose another path."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(
            f"Cannot create the folder {str(target.parent)!r} of the {what} path: {err.strerror or err}."
        ) from err
    if not target.parent.is_dir():
        raise ExportError(f"The folder {str(target.parent)!r} of the {what} path is not a directory.")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise ExportError(
            f"The folder {str(target.parent)!r} of the {what} path is not writable; choose a folder you can write "
            "to, or change its permissions."
        )
    return target


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, what: str = "output", error: type[FileWriteError] = FileWriteError
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success, sync it, rename it to ``path``, sync the folder.

    The folder of ``path`` is created if needed. The temporary file exists (empty) when the block starts, with the
    mode new files get under the umask; writers that replace it keep writing to the same name. If the block raises,
    the temporary file is removed and ``path`` is left as it was. Stale temporary files of killed writes to
    ``path`` are removed first (see :func:`remove_stale_temporaries`).

    Args:
        path: the file to write.
        what: what the file is, for messages ("checkpoint", "manifest").
        error: the :class:`FileWriteError` class to raise.

    Raises:
        FileWriteError: (``error``) the file could not be written: its folder cannot be created, a folder is in the
            way, the disk is full, ... An error of the block whose cause is an ``OSError`` (``torch.save`` reports a
            full disk as a ``RuntimeError`` raised while handling one) is one too. Other errors of the block
            propagate unchanged.
    """
    target = Path(os.fspath(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(error, what, target, err) from err
    if target.is_dir():
        raise _write_error(error, what, target, IsADirectoryError(errno.EISDIR, "a folder of that name is in the way"))
    remove_stale_temporaries(target)
    temporary = target.parent / temporary_name(target)
    try:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            temporary.unlink()
        cause = _os_error(err) if isinstance(err, Exception) and not isinstance(err, TorchBricksError) else None
        if cause is None:
            raise
        raise _write_error(error, what, target, cause) from err
    _fsync_folder(target.parent)


def write_atomically(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    *,
    what: str = "output",
    error: type[FileWriteError] = FileWriteError,
) -> Path:
    """Call ``write`` with a binary file open on a temporary file, then put it at ``path`` (see :func:`atomic_path`).

    Raises:
        FileWriteError: (``error``) as in :func:`atomic_path`; errors of ``write`` that are not about the file
            propagate unchanged, and in every case nothing is left but the previous file at ``path``.

    Example:
        >>> import tempfile
        >>> path = write_atomically(Path(tempfile.mkdtemp()) / "bytes.bin", lambda file: file.write(b"abc"))
        >>> path.read_bytes()
        b'abc'
    """
    target = Path(os.fspath(path))
    with atomic_path(target, what=what, error=error) as temporary, open(temporary, "wb") as file:
        write(file)
    return target


def write_json_atomically(path: str | os.PathLike[str], data: Any, *, what: str = "output") -> Path:
    """Write ``data`` as indented JSON to ``path``, atomically (see :func:`write_atomically`).

    Example:
        >>> import tempfile
        >>> path = write_json_atomically(Path(tempfile.mkdtemp()) / "manifest.json", {"format": "onnx"})
        >>> path.read_text()
        '{\\n  "format": "onnx"\\n}\\n'
    """
    encoded = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    return write_atomically(path, lambda file: file.write(encoded), what=what)


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind a failed write: ``err`` itself, or its cause or context up to ten levels down."""
    seen: BaseException | None = err
    for _ in range(10):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _write_error(error: type[FileWriteError], what: str, target: Path, err: OSError) -> FileWriteError:
    reason = err.strerror or str(err)
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    hint = f" Free some space, or write the {what} elsewhere." if full else ""
    written = error(
        f"Could not write {what} {str(target)!r}: {reason}. Nothing was written there; a previous {what} at that "
        f"path is intact.{hint}"
    )
    written.errno = err.errno
    return written


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable. Some filesystems cannot open or sync a folder; the rename itself is atomic there."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
