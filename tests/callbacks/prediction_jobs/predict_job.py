"""A standalone prediction job, run in a subprocess by ``tests/callbacks/test_prediction_writer.py``.

    python tests/callbacks/prediction_jobs/predict_job.py --samples 10000 --out /tmp/run --mode writer

The dataset makes each sample from its index when asked (``raw = [index / samples, ...]``), so it holds nothing in
memory. The model returns ``sample_value`` (the index again, which lets a test check the index file's mapping) and
``maps``, 4,096 floats per sample (16 KB), so that predictions kept in memory show in the peak RSS. ``--mode
writer`` streams them to ``OUT/preds`` with :class:`BrickPredictionWriter` and ``return_predictions=False``;
``--mode memory`` keeps them (Lightning's default). With ``--devices 2`` the Trainer uses DDP (gloo) and Lightning
starts this script again for rank 1. Rank 0 writes ``OUT/result.json`` with its peak RSS in MiB (Linux only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchbricks_lightning import BrickPredictionWriter, BrickTrainable, LightningBrickCollection


class IndexDataset(Dataset[torch.Tensor]):
    def __init__(self, samples: int) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((8,), index / self.samples)


class Echo(nn.Module):
    def __init__(self, samples: int) -> None:
        super().__init__()
        self.samples = samples
        self.maps = nn.Linear(8, 4096)

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.round(raw[:, 0] * self.samples), self.maps(raw)


def _peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM, the high-water mark of its own memory map.

    (``getrusage``'s ``ru_maxrss`` keeps the parent's size from before ``exec``: a test runner's, here.)
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", choices=["writer", "memory"], default="writer")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    torch.manual_seed(0)
    module = LightningBrickCollection(
        {"echo": BrickTrainable(Echo(args.samples), input_names=["raw"], output_names=["sample_value", "maps"])}
    )
    callbacks: list[pl.Callback] = []
    if args.mode == "writer":
        callbacks.append(BrickPredictionWriter(str(args.out / "preds")))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    loader = DataLoader(IndexDataset(args.samples), batch_size=args.batch_size)
    predictions = trainer.predict(module, loader, return_predictions=args.mode == "memory")
    kept = sum(len(p["maps"]) for p in predictions or [])  # type: ignore[index]
    if trainer.is_global_zero:
        args.out.mkdir(parents=True, exist_ok=True)
        peak_mib = _peak_rss_mib()
        (args.out / "result.json").write_text(json.dumps({"peak_rss_mib": peak_mib, "kept": kept}))


if __name__ == "__main__":
    main()
