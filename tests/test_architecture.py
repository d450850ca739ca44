"""The architecture, stated once: which part of the package may import which.

Every module of ``torchbricks_lightning`` belongs to one part (the first folder under the package, and for the
Lightning layer the folder under ``lightning/``). ``ALLOWED`` says, for each part, which other parts its modules may
import, directly, at any place in the file (a function-level or ``TYPE_CHECKING`` import counts too). The test reads
every import with ``ast`` and fails on any other, so a new dependency is a decision made here, in review, not an
accident. Dependencies point one way: ``core`` at the bottom, then the task code and checkpoint safety, then the
Lightning layer, then the callbacks and the command line at the top. The README's architecture section points here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import torchbricks_lightning

PACKAGE = Path(torchbricks_lightning.__file__).parent
ROOT = "torchbricks_lightning"

ALLOWED: dict[str, set[str]] = {
    # the ground floor: no part of the package below them
    "errors": set(),
    "random_state": set(),
    # bricks, the graph, stages, export: torch, torchmetrics and onnx only, never Lightning
    "core": {"errors", "random_state"},
    # task code on top of the core
    "multitask": {"core", "errors"},
    "bag_of_bricks": {"core", "multitask", "errors"},
    "pictures": {"core", "errors"},
    "datamodules": {"core", "multitask", "errors", "random_state"},
    # what a checkpoint may ask to build, and reading and writing checkpoints safely
    "checkpoints": {"core", "multitask", "errors"},
    # the Lightning layer: its components first, then the module that orchestrates them
    "lightning.state": {"core", "checkpoints", "errors", "random_state", "lightning.logging"},
    "lightning.logging": {"core", "pictures", "errors"},
    "lightning.optim": {"core", "errors"},
    "lightning": {
        "core",
        "multitask",
        "checkpoints",
        "errors",
        "random_state",
        "lightning.logging",
        "lightning.optim",
        "lightning.state",
    },
    # the top floor: callbacks and the command line use the Lightning layer
    "callbacks": {"core", "checkpoints", "errors", "pictures", "lightning"},
    "cli": {"core", "checkpoints", "errors", "lightning", "callbacks"},
    # the package root re-exports the public names
    "": {"core", "checkpoints", "errors", "lightning", "callbacks", "datamodules"},
}
"""For each part, the other parts its modules may import."""


def part_of(module: str) -> str:
    """The part a dotted module name belongs to: ``torchbricks_lightning.lightning.state.resume`` is
    ``lightning.state``, ``torchbricks_lightning.core.export.manifest`` is ``core``, the package root is ``''``."""
    names = module.split(".")[1:]
    if not names or names == ["__init__"]:
        return ""
    if names[0] == "lightning" and len(names) > 1 and (PACKAGE / "lightning" / names[1]).is_dir():
        return f"lightning.{names[1]}"
    return names[0]


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(relative.parts).removesuffix(".__init__"), path


def imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """The package modules ``path`` imports (absolute imports: the package uses no relative ones)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; the package uses absolute ones"
            names = [node.module or ""]
        else:
            continue
        for name in names:
            if name == ROOT or name.startswith(f"{ROOT}."):
                yield name, node.lineno


def test_every_part_is_in_the_table() -> None:
    parts = {part_of(module) for module, _ in modules()}
    assert parts == set(ALLOWED), (
        f"parts without a row: {parts - set(ALLOWED)}; rows without a part: {set(ALLOWED) - parts}"
    )


def test_each_part_imports_only_what_the_table_allows() -> None:
    wrong = []
    for module, path in modules():
        source = part_of(module)
        for name, line in imported_modules(path):
            target = part_of(name)
            if target != source and target not in ALLOWED[source]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source or ROOT} imports {name} ({target})")
    assert not wrong, "imports the architecture table does not allow:\n" + "\n".join(wrong)


def test_the_table_has_no_cycle() -> None:
    """Dependencies point one way: following the allowed imports never leads back to where it started."""
    done: set[str] = set()

    def visit(part: str, path: tuple[str, ...]) -> None:
        if part in path:
            pytest.fail(f"a cycle in the table: {' -> '.join((*path, part))}")
        if part in done:
            return
        for target in sorted(ALLOWED[part]):
            visit(target, (*path, part))
        done.add(part)

    for part in ALLOWED:
        visit(part, ())


def test_no_module_imports_back_into_its_importer() -> None:
    """No import cycle between modules either (within a part), counting imports at any place in the file."""
    graph = {module: {name for name, _ in imported_modules(path)} for module, path in modules()}
    packages = {module for module, path in modules() if path.name == "__init__.py"}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current in seen or current not in graph:
                continue
            seen.add(current)
            todo.extend(name for name in graph[current] if name not in packages)  # a package re-exports
        return False

    cycles = [
        f"{module} <-> {name}"
        for module in graph
        if module not in packages
        for name in graph[module]
        if name not in packages and name != module and reaches(name, module)
    ]
    assert not cycles, "modules that import each other (directly or not):\n" + "\n".join(sorted(set(cycles)))
