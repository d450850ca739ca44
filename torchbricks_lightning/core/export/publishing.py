"""How an artefact and its manifest go into place, and :func:`check_artefact`, the reader that trusts only a pair
that matches.

An artefact (``model.onnx``) and its manifest (``model.onnx.json``) are two files, so no single rename can replace
both. Each rename is atomic (see :mod:`~torchbricks_lightning.core.atomic_files`); a kill between two of them must
not leave a pair whose manifest describes another artefact. The manifest names the SHA-256 of its artefact, so a
reader can tell; the order of the renames decides what it finds:

1. The new artefact is written to a temporary file beside the target, checked against PyTorch and hashed.
2. **The manifest goes into place first.** It describes the new artefact and carries, under ``previous``, the
   manifest of the artefact still in place (the pair a reader found before this export, or ``null``).
3. The artefact is renamed into place.
4. The manifest is written again without ``previous``.

A reader (:func:`check_artefact`) hashes the artefact and takes the manifest that names that hash: after step 2 it
is the ``previous`` one (the old artefact is still there), after step 3 the new one. So after a kill at any step, a
reader finds the previous complete pair or the new one, never a mix, and a file that matches neither (edited, or
replaced by hand) is refused with an :class:`~torchbricks_lightning.errors.ExportError`. The next export removes the
temporary files that the kill left.

Why not the other two ways. Writing the artefact first (as before) leaves, after a kill, a new artefact beside the
old artefact's manifest, and the description of the new one (its inputs, preprocessing, class names) is lost with
the process. Writing the manifest first without ``previous`` leaves an old artefact that no manifest describes any
more: detected, but the previous good pair is lost. Putting both files in one folder swapped at once would change
what an export writes (a folder, not the ``model.onnx`` a runtime opens), and POSIX cannot rename a folder over a
non-empty one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchbricks_lightning.core.atomic_files import atomic_path, write_json_atomically
from torchbricks_lightning.core.export.manifest import file_sha256, manifest_path
from torchbricks_lightning.errors import ExportError

__all__ = ["PREVIOUS", "Publication", "check_artefact", "publishing"]

PREVIOUS = "previous"
"""The manifest field that holds, while an export is published, the manifest of the artefact it replaces."""


class Publication:
    """One artefact being published: the temporary file to write, and :meth:`announce` for its manifest."""

    def __init__(self, temporary: Path, target: Path, previous: dict[str, Any] | None) -> None:
        self.temporary = temporary
        self.target = target
        self.previous = previous
        self.manifest: dict[str, Any] | None = None

    def announce(self, manifest: dict[str, Any]) -> None:
        """Put the manifest of the new artefact in place (step 2), with the manifest of the one it replaces."""
        write_json_atomically(manifest_path(self.target), manifest | {PREVIOUS: self.previous}, what="manifest")
        self.manifest = manifest


@contextlib.contextmanager
def publishing(target: Path) -> Iterator[Publication]:
    """Publish the artefact written to ``publication.temporary`` in the block, with its manifest (see above).

    The block writes the artefact, checks it and calls :meth:`Publication.announce` with its manifest; the artefact
    is then renamed into place and the manifest rewritten without ``previous``. If the block raises, nothing
    changes that a reader sees: the temporary file is removed, and a manifest announced already still carries the
    previous pair, which the reader then finds.

    Raises:
        FileWriteError: the artefact or the manifest could not be written (see
            :func:`~torchbricks_lightning.core.atomic_files.atomic_path`).
    """
    previous = _readable_manifest(target)
    with atomic_path(target, what="artefact") as temporary:
        publication = Publication(temporary, target, previous)
        yield publication
        if publication.manifest is None:  # the block did not announce a manifest: the artefact stays out
            raise ExportError(f"No manifest was announced for {str(target)!r}, so the artefact was not put in place.")
    write_json_atomically(manifest_path(target), publication.manifest, what="manifest")


def check_artefact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the manifest of the artefact at ``path`` after checking that it describes that very file.

    The artefact's size and SHA-256 must be those its manifest names. While an export is published, or after one
    was killed, the manifest also holds the previous artefact's manifest: when the file in place is that artefact,
    that manifest is the one returned. Either way, the manifest returned describes the file at ``path``.

    Returns:
        The manifest (see :mod:`~torchbricks_lightning.core.export.manifest`), without ``previous``.

    Raises:
        ExportError: the artefact or its manifest is missing or unreadable, the manifest is not an export's, or the
            file is not the artefact the manifest names (changed or replaced after the export).

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch import nn
        >>> from torchbricks_lightning import BrickCollection, BrickTrainable, export_bricks
        >>> collection = BrickCollection({"net": BrickTrainable(nn.Linear(4, 2), ["raw"], ["logits"])})
        >>> path = export_bricks(Path(tempfile.mkdtemp()) / "net.pt2", collection, {"raw": torch.rand(2, 4)}).path
        >>> check_artefact(path)["outputs"]
        [{'name': 'logits', 'dtype': 'float32', 'shape': ['batch', 2]}]
        >>> _ = path.write_bytes(b"another model")
        >>> check_artefact(path)
        Traceback (most recent call last):
        ...
        torchbricks_lightning.errors.ExportError: Artefact '...net.pt2' is not the one its manifest ... describes: ...
    """
    artefact = Path(path)
    manifest_file = manifest_path(artefact)
    manifest = _load_manifest(artefact, manifest_file)
    if not artefact.is_file():
        raise ExportError(
            f"The manifest {str(manifest_file)!r} describes the artefact {str(artefact)!r}, which is not there (an "
            "export was killed before its first artefact went into place, or the file was removed). Export again."
        )
    described = [
        (candidate, named)
        for candidate in (manifest, manifest.get(PREVIOUS))
        if isinstance(candidate, dict) and (named := _described(candidate)) is not None
    ]
    size, digest = artefact.stat().st_size, None
    for candidate, (wanted_digest, wanted_size) in described:
        if wanted_size != size:
            continue
        digest = file_sha256(artefact) if digest is None else digest
        if digest == wanted_digest:
            return {key: value for key, value in candidate.items() if key != PREVIOUS}
    raise ExportError(
        f"Artefact {str(artefact)!r} is not the one its manifest {str(manifest_file)!r} describes: the file has "
        f"{size} bytes and SHA-256 {digest or file_sha256(artefact)}, the manifest names "
        f"{[named[0] for _, named in described]}. The file or the "
        "manifest was changed or replaced after the export; export again, and move or copy the two files together."
    )


def _described(manifest: dict[str, Any]) -> tuple[str, int] | None:
    """The SHA-256 and size of the artefact ``manifest`` describes, or None if it names none."""
    artefact = manifest.get("artefact")
    if not isinstance(artefact, dict):
        return None
    digest, size = artefact.get("sha256"), artefact.get("bytes")
    if not isinstance(digest, str) or not isinstance(size, int):
        return None
    return digest, size


def _load_manifest(artefact: Path, manifest_file: Path) -> dict[str, Any]:
    try:
        text = manifest_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(
            f"Artefact {str(artefact)!r} has no manifest: {str(manifest_file)!r} does not exist. Export the model "
            "again (export_bricks, or the export command) to write both, and move or copy the two files together."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ExportError(f"Could not read the manifest {str(manifest_file)!r}: {err}.") from err
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ExportError(
            f"The manifest {str(manifest_file)!r} is not valid JSON ({err}); it was changed after the export. "
            "Export again."
        ) from err
    if not isinstance(manifest, dict) or _described(manifest) is None:
        raise ExportError(
            f"{str(manifest_file)!r} is not an export manifest: it names no artefact.sha256 and artefact.bytes. "
            "Export again to write the manifest."
        )
    return manifest


def _readable_manifest(target: Path) -> dict[str, Any] | None:
    """The manifest a reader finds for ``target`` now (before this export), or None if it finds none."""
    try:
        return check_artefact(target)
    except ExportError:
        return None
