"""``predict --output_dir preds/``: the CLI's predictions streamed to disk by :class:`BrickPredictionWriter`.

LightningCLI takes each subcommand's options from the trainer method's signature, so :class:`BrickTrainer` (the
CLI's trainer class) adds ``output_dir`` and ``float_dtype`` to ``predict``. With ``--output_dir`` the predictions go
to ``.npz`` files and an ``index.json`` there, nothing is kept in memory, and the command prints where it wrote what.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from torchbricks_lightning.callbacks.prediction_writer import BrickPredictionWriter, FloatDtype

__all__ = ["BrickTrainer", "report_predictions"]


class BrickTrainer(pl.Trainer):
    """Lightning's ``Trainer`` whose ``predict`` can write the predictions to a folder as they come.

    The CLI uses it as its trainer class; everything else is ``Trainer``'s. The writer of a call with
    ``output_dir`` is in ``trainer.callbacks`` during that call only; :attr:`prediction_writer` keeps the last one.
    """

    prediction_writer: BrickPredictionWriter | None = None

    def predict(  # the same arguments as Trainer.predict, and two more at the end
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
        output_dir: str | None = None,
        float_dtype: FloatDtype = "float32",
    ) -> Any:
        """``Trainer.predict``; with ``output_dir``, a :class:`BrickPredictionWriter` writes the predictions there.

        Args:
            model: see ``Trainer.predict``.
            dataloaders: see ``Trainer.predict``.
            datamodule: see ``Trainer.predict``.
            return_predictions: see ``Trainer.predict``; with ``output_dir`` the default is False (flat memory).
            ckpt_path: see ``Trainer.predict``.
            weights_only: see ``Trainer.predict``.
            output_dir: the folder for one ``.npz`` file per batch and process, and ``index.json``.
            float_dtype: the dtype of floating outputs in those files (``"keep"`` keeps theirs).

        Raises:
            ConfigError: ``output_dir`` is a file, or lies under one.
            FileWriteError: ``output_dir`` cannot be created or written (a read-only filesystem, no permission).
        """
        if output_dir is None:
            return super().predict(
                model,
                dataloaders=dataloaders,
                datamodule=datamodule,
                return_predictions=return_predictions,
                ckpt_path=ckpt_path,
                weights_only=weights_only,
            )
        writer = self.prediction_writer = BrickPredictionWriter(output_dir, float_dtype=float_dtype)
        writer.check_output_dir()  # a file or a read-only folder there fails now, before the model is loaded
        callbacks: list[pl.Callback] = getattr(self, "callbacks")  # noqa: B009 - set in __init__, unseen by mypy
        callbacks.append(writer)  # for this call only: the next call with output_dir brings its own writer
        try:
            return super().predict(
                model,
                dataloaders=dataloaders,
                datamodule=datamodule,
                return_predictions=False if return_predictions is None else return_predictions,
                ckpt_path=ckpt_path,
                weights_only=weights_only,
            )
        finally:
            if writer in callbacks:
                callbacks.remove(writer)


def report_predictions(trainer: pl.Trainer) -> None:
    """Print where the predictions went (rank 0), or, when nothing wrote them, how to write them."""
    if not trainer.is_global_zero:
        return
    callbacks: list[pl.Callback] = getattr(trainer, "callbacks", [])
    writers = [callback for callback in callbacks if isinstance(callback, BasePredictionWriter)]
    last = getattr(trainer, "prediction_writer", None)  # BrickTrainer's writer of its last predict(output_dir=...)
    if last is not None and last not in writers:
        writers.append(last)
    if not writers:
        print(
            "predict wrote nothing: pass --output_dir DIR to write the predictions (one .npz file per batch and an "
            "index.json mapping samples to files).",
            file=sys.stderr,
        )
        return
    for writer in writers:
        if not isinstance(writer, BrickPredictionWriter):
            continue
        try:
            index = json.loads(writer.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            index = {"files": [{"file": name} for name in writer.written], "num_rows": None}
        files = [entry["file"] for entry in index["files"]]
        shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        outputs = ", ".join(f"{name} ({dtype})" for name, dtype in writer.dtypes.items())
        print(f"Wrote {len(files)} prediction file(s) ({index['num_rows']} samples) to {writer.output_dir}: {shown}")
        print(f"  outputs: {outputs or '-'}")
        print(f"  index:   {writer.index_path} (maps each sample to its file and row)")
