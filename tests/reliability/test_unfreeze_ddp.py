"""An unfreeze schedule under DDP on CPU (gloo, 2 processes): with ``ddp_find_unused_parameters_true`` the frozen
backbone stays as built in epoch 0, trains from epoch 1, and both ranks hold the same parameters (DDP averages the
gradients of the unfrozen backbone as of every other brick). With plain ``"ddp"``, Lightning stops at the first
frozen step with its own message naming ``ddp_find_unused_parameters_true`` (checked by hand, not here)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import _job_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="kills the job's process group with os.killpg"),
]

JOB = Path(__file__).parent / "ddp_jobs" / "unfreeze_ddp_job.py"
TIMEOUT_S = 240


def test_an_unfreeze_schedule_under_ddp_keeps_the_ranks_equal(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(JOB), "--out", str(tmp_path)],
        env=_job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the session this job started, nothing else
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, log[-6000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [epoch["backbone_as_built"] for epoch in ranks[0]] == [True, False], "frozen in epoch 0 only"
    assert [epoch["parameters"] for epoch in ranks[0]] == [epoch["parameters"] for epoch in ranks[1]]
