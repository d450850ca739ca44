"""An export killed with SIGKILL leaves its temporary file and never a broken artefact; the next export removes it.
Killed at any step of publishing, a reader finds the previous artefact with its manifest or the new pair, never a
mix."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.core.export import check_artefact, export_bricks

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

EXPORTING = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from torch import nn

    from torchbricks_lightning import BrickCollection, BrickTrainable
    from torchbricks_lightning.core.export import export_bricks

    collection = BrickCollection({"net": BrickTrainable(nn.Linear(64, 64), ["raw"], ["features"])})
    path = Path(sys.argv[1])
    while True:  # until killed
        export_bricks(path, collection, {"raw": torch.rand(2, 64)})
    """
)


def _temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if ".tmp" in path.name]


def test_a_killed_export_leaves_no_broken_artefact_and_the_next_export_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for _ in range(3):  # the kill must land while a temporary file exists; retry if the export was too quick
        process = subprocess.Popen([sys.executable, "-c", EXPORTING, str(path)], env=env)
        try:
            deadline = time.monotonic() + 120
            while not _temporaries(tmp_path) and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=60)
        if _temporaries(tmp_path):
            break
    left = _temporaries(tmp_path)
    assert left, "no export was killed while writing"
    if path.exists():  # an earlier round of the loop finished: the artefact in place is whole
        onnx.checker.check_model(onnx.load(path))

    collection = BrickCollection({"net": BrickTrainable(nn.Linear(64, 64), ["raw"], ["features"])})
    export_bricks(path, collection, {"raw": torch.rand(2, 64)})
    assert _temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]
    onnx.checker.check_model(onnx.load(path))


# A child process publishes a previous pair (a 2-wide model) in a folder per step, then forks an export of a 3-wide
# model that kills itself (SIGKILL) before its step-th call of os.replace or os.fsync: every rename and sync of
# publishing, in order, until an export runs to the end. Forking after the imports keeps each step at ~0.1 s.
KILLED_AT_EACH_STEP = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path

    import torch
    from torch import nn

    from torchbricks_lightning import BrickCollection, BrickTrainable
    from torchbricks_lightning.core.export import export_bricks

    def collection(width):
        return BrickCollection({"net": BrickTrainable(nn.Linear(4, width), ["raw"], ["features"])})

    def kill_before_call(step):
        calls = []
        for name in ("replace", "fsync"):
            real = getattr(os, name)
            def counted(*args, _name=name, _real=real):
                calls.append(_name)
                if len(calls) == step:
                    target = Path(args[1]).name if _name == "replace" else None
                    print(json.dumps({"step": step, "before": _name, "target": target}), flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
                return _real(*args)
            setattr(os, name, counted)

    root, inputs = Path(sys.argv[1]), {"raw": torch.rand(2, 4)}
    for step in range(1, 100):
        path = root / f"step{step}" / "model.pt2"
        export_bricks(path, collection(2), inputs)  # the previous complete pair
        pid = os.fork()
        if pid == 0:
            kill_before_call(step)
            export_bricks(path, collection(3), inputs)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if not os.WIFSIGNALED(status):
            print(json.dumps({"step": step, "finished": os.WEXITSTATUS(status) == 0}), flush=True)
            break
    """
)


def _width_of_artefact(path: Path) -> int:
    """The output width of the artefact itself, run after ``torch.export.load`` (not read from its manifest)."""
    return int(torch.export.load(str(path)).module()(torch.rand(2, 4))[0].shape[1])


def test_a_reader_finds_the_previous_pair_or_the_new_one_after_a_kill_at_every_step_of_publishing(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_AT_EACH_STEP, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    events = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    *kills, last = events
    assert last == {"step": len(kills) + 1, "finished": True}, child.stderr[-2000:]
    renames = [kill["target"] for kill in kills if kill["before"] == "replace"]
    assert set(renames) == {"model.pt2", "model.pt2.json"}, kills  # every rename of publishing was a step

    found = []
    for kill in [*kills, last]:
        path = tmp_path / f"step{kill['step']}" / "model.pt2"
        manifest = check_artefact(path)  # never a mismatch: the previous complete pair or the new one
        width = manifest["outputs"][0]["shape"][1]
        assert width == _width_of_artefact(path), kill
        assert manifest["artefact"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        found.append(width)
    artefact_rename = next(
        i for i, kill in enumerate(kills) if (kill["before"], kill["target"]) == ("replace", "model.pt2")
    )
    switch = artefact_rename + 1  # killed before the artefact's rename: the previous pair; after it: the new one
    assert found == [2] * switch + [3] * (len(found) - switch), list(zip(kills, found, strict=False))

    for kill in kills:  # the next export cleans up what each kill left, and publishes a complete pair
        folder = tmp_path / f"step{kill['step']}"
        export_bricks(folder / "model.pt2", _collection(4), {"raw": torch.rand(2, 4)})
        assert sorted(p.name for p in folder.iterdir()) == ["model.pt2", "model.pt2.json"]
        assert check_artefact(folder / "model.pt2")["outputs"][0]["shape"] == ["batch", 4]


def _collection(width: int) -> BrickCollection:
    return BrickCollection({"net": BrickTrainable(nn.Linear(4, width), ["raw"], ["features"])})
