"""Publishing an artefact with its manifest: what ``check_artefact`` accepts and refuses, the ``previous`` manifest
that an interrupted publication leaves, and paths no file can have (a NUL in them).

The kills at every step of publishing are in ``test_export_kills.py``; these tests build the states they leave by
hand. The model is one linear layer exported as ``.pt2`` (about 0.1 s an export).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.core.atomic_files import check_output_path
from torchbricks_lightning.core.export import ExportResult, check_artefact, export_artefacts, export_bricks
from torchbricks_lightning.core.export.publishing import PREVIOUS, publishing
from torchbricks_lightning.errors import ConfigError, ExportError


def _collection(width: int) -> BrickCollection:
    return BrickCollection({"net": BrickTrainable(nn.Linear(4, width), ["raw"], ["features"])})


def _export(path: Path, width: int) -> ExportResult:
    return export_bricks(path, _collection(width), {"raw": torch.rand(2, 4)})


def _manifest(path: Path) -> dict[str, object]:
    return json.loads(Path(f"{path}.json").read_text())


def _announce_then_stop(path: Path, manifest: dict[str, object]) -> None:
    """Write a new artefact and announce its manifest, then stop before the artefact goes into place."""
    with publishing(path) as publication:
        publication.temporary.write_bytes(b"the new artefact")
        publication.announce(manifest)
        raise KeyboardInterrupt


def test_a_published_manifest_describes_its_artefact_and_holds_no_previous(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    _export(path, 2)
    second = _export(path, 3)
    assert PREVIOUS not in _manifest(path)
    assert check_artefact(path) == second.manifest == _manifest(path)


def test_an_announced_manifest_carries_the_pair_a_reader_found_before(tmp_path: Path) -> None:
    """The state a kill between the manifest's rename and the artefact's leaves: the reader takes the previous."""
    path = tmp_path / "model.pt2"
    first = _export(path, 2)
    with pytest.raises(KeyboardInterrupt):
        _announce_then_stop(path, {"artefact": {"sha256": "0" * 64, "bytes": 16}, "outputs": "new"})
    announced = _manifest(path)
    assert announced["outputs"] == "new"
    assert announced[PREVIOUS] == first.manifest
    assert check_artefact(path) == first.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "model.pt2.json"]  # temporary removed


def test_a_second_interrupted_publication_keeps_the_pair_the_reader_finds(tmp_path: Path) -> None:
    """``previous`` is the pair a reader finds now, not the announced manifest of an earlier interruption."""
    path = tmp_path / "model.pt2"
    first = _export(path, 2)
    for outputs in ["second", "third"]:
        with pytest.raises(KeyboardInterrupt):
            _announce_then_stop(path, {"artefact": {"sha256": "0" * 64, "bytes": 16}, "outputs": outputs})
    assert _manifest(path)[PREVIOUS] == first.manifest
    assert check_artefact(path) == first.manifest


def test_a_first_export_interrupted_after_its_manifest_has_no_artefact_to_read(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    with pytest.raises(KeyboardInterrupt):
        _announce_then_stop(path, {"artefact": {"sha256": "0" * 64, "bytes": 16}})
    assert _manifest(path)[PREVIOUS] is None
    with pytest.raises(ExportError, match=r"describes the artefact '.*model\.pt2', which is not there.*Export again"):
        check_artefact(path)


def test_an_artefact_changed_after_the_export_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    _export(path, 2)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"is not the one its manifest .* describes: .* SHA-256 [0-9a-f]{64}"):
        check_artefact(path)


def test_an_artefact_swapped_with_another_export_is_refused(tmp_path: Path) -> None:
    """The mix that break 3 left: another export's artefact beside this manifest."""
    path, other = tmp_path / "model.pt2", tmp_path / "other.pt2"
    _export(path, 2)
    _export(other, 3)
    path.write_bytes(other.read_bytes())
    with pytest.raises(ExportError, match="move or copy the two files together"):
        check_artefact(path)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (None, r"has no manifest: '.*model\.pt2\.json' does not exist"),
        ("{not json", "is not valid JSON"),
        ('{"artefact": {"file": "model.pt2"}}', "is not an export manifest: it names no artefact.sha256"),
        ("[1, 2]", "is not an export manifest"),
    ],
    ids=["missing", "not-json", "no-hash", "not-a-dict"],
)
def test_a_missing_or_broken_manifest_is_refused(tmp_path: Path, manifest: str | None, message: str) -> None:
    path = tmp_path / "model.pt2"
    _export(path, 2)
    manifest_file = Path(f"{path}.json")
    if manifest is None:
        manifest_file.unlink()
    else:
        manifest_file.write_text(manifest)
    with pytest.raises(ExportError, match=message):
        check_artefact(path)


# ------------------------------------------------------------------------------------------------ NUL in a path
def test_a_nul_in_an_export_path_is_a_config_error_that_names_the_path(tmp_path: Path) -> None:
    collection, inputs = _collection(2), {"raw": torch.rand(2, 4)}
    with pytest.raises(ConfigError, match=r"path '.*a\\x00b\.pt2' holds a NUL character"):
        export_bricks(tmp_path / "a\x00b.pt2", collection, inputs)
    with pytest.raises(ConfigError, match=r"Artefact path 'm\\x00\.onnx' holds a NUL character"):
        export_artefacts("m\x00.onnx", collection, inputs, folder=tmp_path)
    with pytest.raises(ConfigError, match=r"path '.*x\\x00y.*model\.pt2' holds a NUL character"):
        export_artefacts("model.pt2", collection, inputs, folder=f"{tmp_path}/x\x00y")
    with pytest.raises(ConfigError, match=r"The manifest path .* holds a NUL character"):
        check_output_path(tmp_path / "m\x00.json", what="manifest")
    assert list(tmp_path.iterdir()) == []
