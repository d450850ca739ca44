"""Predictions killed with SIGKILL at every step of writing and publishing; run in a subprocess by
``tests/callbacks/test_prediction_publishing.py``.

    python tests/callbacks/prediction_jobs/kill_job.py --out /tmp/run

The job imports torch and Lightning once, then forks one child per run, so that each run costs a Trainer, not an
interpreter. A *step* is one change a reader could see in the output folder: an ``os.replace``, ``os.rename``,
``os.link``, ``os.unlink``, ``os.rmdir`` or ``shutil.rmtree`` of a path inside it. The child of a killed run sends
itself SIGKILL just before its step ``k``: no Python cleanup, no ``finally``, no callback hook runs.

It writes, under ``OUT``:

- ``pristine/``: a complete prediction of version 1 (10 samples in batches of 3: four files);
- ``count/``: that prediction replaced by version 2 (6 samples in batches of 2: three files), run to the end,
  counting its steps;
- ``killed{k}/`` for every step ``k``: a copy of ``pristine/`` into which version 2 was killed before step ``k``;
- ``again{k}/``: a copy of ``killed{k}/`` into which version 3 (5 samples in batches of 5) then ran to the end;
- ``result.json``: ``{"steps": [...the steps of the counted run...], "killed": {k: signal}, "again": {k: status}}``.

Each sample's ``value`` is ``1000 * version + sample index``, so a reader can tell which run wrote each row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchbricks_lightning import BrickPredictionWriter, BrickTrainable, LightningBrickCollection

RUNS = {1: (10, 3), 2: (6, 2), 3: (5, 5)}  # version: (samples, batch size)
_PATCHED = ("replace", "rename", "link", "unlink", "remove", "rmdir")


class Samples(Dataset[torch.Tensor]):
    def __init__(self, samples: int) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index)])


class Versioned(nn.Module):
    def __init__(self, version: int) -> None:
        super().__init__()
        self.version = version

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return raw[:, 0] + 1000 * self.version


def _count_steps(folder: Path, kill_at: int | None) -> list[str]:
    """Wrap the filesystem calls that change ``folder``; kill this process just before step ``kill_at``."""
    steps: list[str] = []
    inside = str(folder.resolve())

    def wrap(name: str, original: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], (str, os.PathLike)) and os.path.abspath(args[0]).startswith(inside):
                relative = os.path.relpath(args[0], inside)
                steps.append(f"{name} {relative}")
                if len(steps) == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        return counted

    for name in _PATCHED:
        setattr(os, name, wrap(f"os.{name}", getattr(os, name)))
    shutil.rmtree = wrap("shutil.rmtree", shutil.rmtree)  # type: ignore[assignment]
    return steps


def _predict(folder: Path, version: int, kill_at: int | None = None, steps_file: Path | None = None) -> None:
    samples, batch_size = RUNS[version]
    steps = _count_steps(folder, kill_at)
    module = LightningBrickCollection(
        {"versioned": BrickTrainable(Versioned(version), input_names=["raw"], output_names=["value"])}
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[BrickPredictionWriter(str(folder))],
    )
    trainer.predict(module, DataLoader(Samples(samples), batch_size=batch_size), return_predictions=False)
    if steps_file is not None:
        steps_file.write_text(json.dumps(steps))


def _in_child(run: Any, *args: Any, **kwargs: Any) -> int:
    """Run ``run`` in a forked child; its wait status (see ``os.waitstatus_to_exitcode``: negative: a signal)."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            run(*args, **kwargs)
        except BaseException as err:  # reported as the child's exit code
            print(f"run failed: {type(err).__name__}: {err}", file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    assert _in_child(_predict, out / "pristine", 1) == 0
    shutil.copytree(out / "pristine", out / "count")
    assert _in_child(_predict, out / "count", 2, steps_file=out / "steps.json") == 0
    steps = json.loads((out / "steps.json").read_text())
    killed, again = {}, {}
    for k in range(1, len(steps) + 1):
        shutil.copytree(out / "pristine", out / f"killed{k}")
        killed[k] = _in_child(_predict, out / f"killed{k}", 2, kill_at=k)
        shutil.copytree(out / f"killed{k}", out / f"again{k}", symlinks=True)
        again[k] = _in_child(_predict, out / f"again{k}", 3)
    (out / "result.json").write_text(json.dumps({"steps": steps, "killed": killed, "again": again}))


if __name__ == "__main__":
    main()
