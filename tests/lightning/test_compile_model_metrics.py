"""compile_model=True with a live metric brick: the compiled stage has no graph break, and the logged metrics and
losses equal eager's (the module updates the metrics right after the compiled call)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch._dynamo
from conftest import N_FEATURES, NUM_CLASSES, boring_bricks
from torch.utils.data import DataLoader, TensorDataset

from torchbricks_lightning import LightningBrickCollection


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _loader(seed: int) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(24, N_FEATURES, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (24,), generator=generator)
    return DataLoader(TensorDataset(raw, targets), batch_size=8)


def _fit(tmp_path: Path, compile_model: bool) -> dict[str, float]:
    torch.manual_seed(0)
    module = LightningBrickCollection(
        boring_bricks(),
        batch_names=["raw", "targets"],
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        compile_model=compile_model,
        compile_kwargs={"backend": "eager"},
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, _loader(0), _loader(1))
    return {name: float(value) for name, value in trainer.logged_metrics.items()}


def test_compiled_training_with_a_live_metric_brick_has_no_graph_break_and_logs_what_eager_logs(
    tmp_path: Path,
) -> None:
    eager = _fit(tmp_path, compile_model=False)
    torch._dynamo.utils.counters.clear()
    compiled = _fit(tmp_path, compile_model=True)

    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    assert not breaks, breaks
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # it did compile: train and validation
    accuracy = [name for name in eager if "accuracy" in name]
    assert accuracy  # the metric brick was alive and logged
    assert compiled.keys() == eager.keys()
    for name, value in eager.items():
        assert compiled[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
