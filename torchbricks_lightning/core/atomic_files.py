"""Files written whole or not at all: a temporary file beside the target, flushed, synced, then renamed into place.

Exports and prediction writers use it, so that a killed or failed write never leaves a half-written file, and an
earlier file at the target is kept until the new one is complete. The files get the mode every new file gets
(``0o666`` less the umask), the same as Lightning's checkpoints, not the owner-only ``0o600`` of ``mkstemp``.

Temporary files are named ``.{stem}.{pid}-{token}.tmp{suffixes}`` (``.model.4242-1a2b3c4d.tmp.onnx`` for
``model.onnx``: writers that check the suffix, such as ``torch.export.save``, accept it), so a new write to the same
target removes those whose process is gone: what a killed export left behind. The ``.model.*.onnx.tmp`` files of
earlier versions are removed too.

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
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchbricks_lightning.errors import ExportError, TorchBricksError

__all__ = ["atomic_path", "check_output_path", "process_is_alive", "remove_stale_temporaries", "write_json_atomically"]


def _temporary_name(path: Path) -> str:
    stem, dot, suffix = path.name.partition(".")
    return f".{stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{dot}{suffix}"


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
    """Remove the temporary files that writes to ``path`` left behind when their process was killed.

    A temporary file of a process that still runs (a concurrent write) is kept, and so is anything else in the
    folder. Names without a process id (``mkstemp`` names of older versions) are always stale.

    Returns:
        The files removed.
    """
    target = Path(path)
    stem, dot, suffix = target.name.partition(".")
    removed = []
    try:
        candidates = [
            *target.parent.glob(f".{stem}.*.tmp{dot}{suffix}"),
            *target.parent.glob(f".{stem}.*{dot}{suffix}.tmp"),  # the mkstemp names of earlier versions
        ]
    except OSError:
        return []
    for candidate in candidates:
        token = candidate.name[len(stem) + 2 :].split(".", 1)[0]
        pid_text = token.split("-", 1)[0]
        if "-" in token and pid_text.isdigit() and process_is_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def check_output_path(path: str | os.PathLike[str], *, what: str = "output") -> Path:
    """Raise :class:`ExportError` unless a file can be written at ``path`` (its folder is created if needed).

    The message says what is wrong: the path is a folder, the file exists and is read-only, or the folder cannot
    be created or written.

    Example:
        >>> import tempfile
        >>> check_output_path(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ExportError: The output path '...' is a directory; give a file path ...
    """
    target = Path(path)
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


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a folder
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success, sync it and rename it to ``path``.

    The temporary file exists (empty) when the block starts, with the mode new files get under the umask; writers
    that replace it keep writing to the same name. If the block raises, the temporary file is removed and ``path``
    is left as it was. Stale temporary files of killed writes to ``path`` are removed first.

    Raises:
        ExportError: ``path`` cannot be written (see :func:`check_output_path`), or the rename fails.
    """
    target = check_output_path(path, what=what)
    remove_stale_temporaries(target)
    temporary = target.parent / _temporary_name(target)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    except OSError as err:
        raise ExportError(f"Cannot write beside the {what} path {str(target)!r}: {err.strerror or err}.") from err
    os.close(descriptor)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except TorchBricksError:
        raise
    except OSError as err:
        raise ExportError(f"Could not write the {what} {str(target)!r}: {err.strerror or err}.") from err
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    _fsync_folder(target.parent)


def write_json_atomically(path: str | os.PathLike[str], data: Any, *, what: str = "output") -> Path:
    """Write ``data`` as indented JSON to ``path``, atomically (see :func:`atomic_path`).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = write_json_atomically(Path(tempfile.mkdtemp()) / "manifest.json", {"format": "onnx"})
        >>> path.read_text()
        '{\\n  "format": "onnx"\\n}\\n'
    """
    text = json.dumps(data, indent=2) + "\n"
    with atomic_path(path, what=what) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)
