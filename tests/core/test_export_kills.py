"""An export killed with SIGKILL leaves its temporary file and never a broken artefact; the next export removes it."""

from __future__ import annotations

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
from torchbricks_lightning.core.export import export_bricks

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
