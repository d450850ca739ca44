"""A run's output folder, replaced whole by the next run: the demo writes into a staging folder beside it and puts
the staging folder in its place only once everything is written.

A rerun therefore leaves one ``best.ckpt``, one TensorBoard folder and one CSV log (no ``best-v1.ckpt``, no
``version_1``), and a run that fails or is killed leaves the previous run's folder as it was. The staging folders
are named as :mod:`torchbricks_lightning.core.atomic_files` names temporaries (``.demo.{host}.{pid}.{token}.tmp``),
so the next run removes those of killed runs.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "demo"
    >>> with replaced_folder(folder) as staging:
    ...     _ = (staging / "figures.json").write_text("{}")
    >>> with replaced_folder(folder) as staging:
    ...     _ = (staging / "other.txt").write_text("")
    >>> sorted(path.name for path in folder.parent.iterdir()), sorted(path.name for path in folder.iterdir())
    (['demo'], ['other.txt'])
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from torchbricks_lightning.core.atomic_files import remove_stale_temporary_folders, temporary_name


@contextlib.contextmanager
def replaced_folder(folder: Path) -> Iterator[Path]:
    """Yield a new, empty staging folder beside ``folder``; when the block ends without an error, the staging
    folder takes the place of ``folder`` (whose previous content is removed). If the block raises, the staging
    folder is removed and ``folder`` is left as it was.

    The swap is two renames within the parent folder: only a kill between the two (microseconds) leaves ``folder``
    absent, with the previous run under a hidden ``.{name}.*.tmp`` name beside it.
    """
    if folder.resolve() == Path.cwd().resolve() or folder.name in ("", ".", ".."):
        raise SystemExit(f"The output {str(folder)!r} must be a folder of its own (a rerun replaces it whole).")
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"The output {str(folder)!r} is a file, not a folder: remove it or give another --output.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporary_folders(folder)
    staging = folder.parent / temporary_name(folder)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = folder.parent / temporary_name(folder)
    if folder.exists():
        os.replace(folder, previous)
    os.replace(staging, folder)
    shutil.rmtree(previous, ignore_errors=True)
