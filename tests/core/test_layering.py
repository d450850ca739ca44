"""Layering: the core and the bag of bricks never import Lightning, and the public surface is importable."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import torchbricks_lightning
import torchbricks_lightning.bag_of_bricks
import torchbricks_lightning.core
import torchbricks_lightning.errors

PACKAGE_ROOT = Path(torchbricks_lightning.__file__).parent

_BLOCKED_IMPORT_SCRIPT = textwrap.dedent(
    """
    import importlib
    import json
    import sys

    BLOCKED = ("lightning", "pytorch_lightning")
    attempts = []

    class BlockLightning:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{name} is blocked by the layering test")
            return None

    sys.meta_path.insert(0, BlockLightning())

    # The blocker works: importing Lightning now fails.
    for name in BLOCKED:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} was importable despite the blocker")
    attempts.clear()

    for module in sys.argv[1:]:
        importlib.import_module(module)

    print(json.dumps({
        "attempts": attempts,
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
    }))
    """
)


def _import_with_lightning_blocked(*modules: str) -> dict[str, list[str]]:
    completed = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT_SCRIPT, *modules],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_core_and_bag_of_bricks_import_without_lightning() -> None:
    # One interpreter for all (importing torch costs seconds); importing any submodule imports the
    # package root first, so this covers every module of core/ and bag_of_bricks/.
    result = _import_with_lightning_blocked(
        "torchbricks_lightning",
        "torchbricks_lightning.core",
        "torchbricks_lightning.bag_of_bricks",
        "torchbricks_lightning.errors",
        "torchbricks_lightning.core.mermaid",
        "torchbricks_lightning.core.onnx_export",
    )
    assert result["attempts"] == []  # nothing even tried to import Lightning
    assert "pytorch_lightning" not in result["loaded"]
    assert result["loaded"] == []


def test_the_top_level_imports_lightning_only_when_a_lightning_name_is_used() -> None:
    """``import torchbricks_lightning`` (and listing its names) imports no Lightning; a Lightning name does."""
    script = _BLOCKED_IMPORT_SCRIPT.replace(
        "for module in sys.argv[1:]:\n    importlib.import_module(module)",
        textwrap.dedent(
            """
            import torchbricks_lightning as tbl
            listed = dir(tbl)
            assert "LightningBrickCollection" in listed and "OnnxExportCallback" in listed, listed
            assert tbl.Stage.TRAIN.value == "train"
            try:
                tbl.LightningBrickCollection
            except ImportError:
                pass
            else:
                raise SystemExit("LightningBrickCollection was reachable without Lightning")
            """
        ),
    )
    assert script != _BLOCKED_IMPORT_SCRIPT
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["attempts"], "using a Lightning name did not try to import Lightning"
    assert {name.split(".")[0] for name in result["attempts"]} <= {"pytorch_lightning", "lightning"}


def test_one_public_entry_point_for_the_lightning_layer_and_the_callbacks() -> None:
    import torchbricks_lightning.callbacks
    import torchbricks_lightning.lightning
    from torchbricks_lightning import LightningBrickCollection, OnnxExportCallback, load_brick_collection_weights

    assert LightningBrickCollection is torchbricks_lightning.lightning.LightningBrickCollection
    assert OnnxExportCallback is torchbricks_lightning.callbacks.OnnxExportCallback
    assert load_brick_collection_weights is torchbricks_lightning.lightning.load_brick_collection_weights
    for package in (torchbricks_lightning.lightning, torchbricks_lightning.callbacks):
        for name in package.__all__:
            assert name in torchbricks_lightning.__all__, name
            assert getattr(torchbricks_lightning, name) is getattr(package, name), name
    with pytest.raises(
        AttributeError, match="module 'torchbricks_lightning' has no attribute 'LightningBrickColection'"
    ):
        torchbricks_lightning.LightningBrickColection  # noqa: B018 - the lookup is what is tested


def _public_modules() -> list[object]:
    return [
        torchbricks_lightning,
        torchbricks_lightning.core,
        torchbricks_lightning.bag_of_bricks,
        torchbricks_lightning.errors,
    ]


@pytest.mark.parametrize("module", _public_modules(), ids=lambda m: m.__name__)  # type: ignore[attr-defined]
def test_every_public_name_is_importable(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert names, module
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(module, name), name
        namespace: dict[str, object] = {}
        exec(f"from {module.__name__} import {name}", namespace)  # type: ignore[attr-defined]
        assert namespace[name] is getattr(module, name)


def test_top_level_exports_the_core_api() -> None:
    expected = {
        "BrickCollection",
        "BrickInterface",
        "BrickLoss",
        "BrickMetricSingle",
        "BrickMetrics",
        "BrickModule",
        "BrickNotTrainable",
        "BrickTrainable",
        "Stage",
        "TorchBricksError",
        "create_mermaid_dag_graph",
        "export_bricks_as_onnx",
    }
    assert expected <= set(torchbricks_lightning.__all__)


def _all_subclasses(cls: type) -> list[type]:
    found: list[type] = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def test_every_error_lives_in_errors_py_and_is_a_value_or_type_error() -> None:
    """Walk every subclass of TorchBricksError defined by the package (after importing all of it)."""
    for info in pkgutil.walk_packages(torchbricks_lightning.__path__, "torchbricks_lightning."):
        importlib.import_module(info.name)
    base = torchbricks_lightning.errors.TorchBricksError
    subclasses = [cls for cls in _all_subclasses(base) if cls.__module__.startswith("torchbricks_lightning")]
    assert len(subclasses) >= 15
    for cls in subclasses:
        assert cls.__module__ == "torchbricks_lightning.errors", f"{cls.__name__} is defined in {cls.__module__}"
        assert cls.__name__ in torchbricks_lightning.errors.__all__, f"{cls.__name__} is not exported"
        # bad input is a ValueError or TypeError, a failed environment (a full disk) an OSError: see test_errors.py
        assert issubclass(cls, (ValueError, TypeError, OSError)), f"{cls.__name__} is no ValueError/TypeError/OSError"
    for name in torchbricks_lightning.errors.__all__:
        exported = getattr(torchbricks_lightning.errors, name)
        assert exported is base or not isinstance(exported, type) or issubclass(exported, base), name


def test_no_module_named_utils_in_the_package() -> None:
    # Looked up on disk (a utils.py module or a utils/ package at any depth), so nothing is imported.
    assert (PACKAGE_ROOT / "core").is_dir()  # the scan does look at the right folder
    on_disk = [
        str(path.relative_to(PACKAGE_ROOT))
        for path in PACKAGE_ROOT.rglob("*")
        if "__pycache__" not in path.parts and path.stem == "utils" and (path.is_dir() or path.suffix == ".py")
    ]
    assert on_disk == []


def test_every_module_of_core_and_bag_of_bricks_is_importable() -> None:
    for package in (torchbricks_lightning.core, torchbricks_lightning.bag_of_bricks):
        names = [info.name for info in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}.")]
        assert names
        for name in names:
            module = importlib.import_module(name)
            assert hasattr(module, "__all__"), name


def test_the_top_level_lists_only_its_public_api() -> None:
    """``dir(torchbricks_lightning)`` showed ``Any``, ``TYPE_CHECKING``, ``annotations`` and ``importlib``: every public
    name there is now in ``__all__`` or is a subpackage, and every name of ``__all__`` is there."""
    listed = {name for name in dir(torchbricks_lightning) if not name.startswith("_")}
    stray = sorted(
        name
        for name in listed - set(torchbricks_lightning.__all__)
        if not getattr(getattr(torchbricks_lightning, name), "__name__", "").startswith("torchbricks_lightning.")
    )
    assert stray == []
    assert set(torchbricks_lightning.__all__) - {"__version__"} <= listed
