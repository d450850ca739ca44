"""BrickGraphLogger: show the model's brick graph in TensorBoard, as mermaid text and as a picture."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from typing_extensions import override

from torchbricks_lightning.core.mermaid import create_mermaid_dag_graph
from torchbricks_lightning.core.stages import Stage, StageLike, parse_stage
from torchbricks_lightning.lightning.module import LightningBrickCollection
from torchbricks_lightning.pictures import render_brick_graph

__all__ = ["BrickGraphLogger"]


class BrickGraphLogger(pl.Callback):
    """At the start of fit, log each stage's brick graph to every TensorBoard logger.

    The mermaid text goes under the Text tab (``graph/{stage}``), the drawing under Images (``graph/{stage}``).
    The drawing needs matplotlib and grandalf; without them, the mermaid text is logged alone, with one warning.

    Args:
        stages: the stages to draw (training and inference by default).
    """

    def __init__(self, stages: Sequence[StageLike] = (Stage.TRAIN, Stage.INFERENCE)) -> None:
        self.stages = [parse_stage(stage, where="BrickGraphLogger") for stage in stages]

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, LightningBrickCollection) or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            for stage in self.stages:
                mermaid = create_mermaid_dag_graph(pl_module.brick_collection, stage=stage)
                logger.experiment.add_text(f"graph/{stage.value}", f"```mermaid\n{mermaid}\n```", global_step=0)
                try:
                    picture = render_brick_graph(pl_module.brick_collection, stage)
                except ImportError as error:  # drawing is impossible: the mermaid text above is the graph
                    warnings.warn(
                        f"BrickGraphLogger logs the brick graph as mermaid text only: drawing it needs {error.name} "
                        f"({error}). Install it (pip install matplotlib grandalf) to see the picture too.",
                        UserWarning,
                        stacklevel=2,
                    )
                    continue
                logger.experiment.add_image(f"graph/{stage.value}", picture, global_step=0)
