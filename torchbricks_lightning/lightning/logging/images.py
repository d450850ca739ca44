"""Pictures to the loggers that take images: the one path for the metric matrices and the visualisation bricks.

A logger takes images if it is a ``TensorBoardLogger`` (``SummaryWriter.add_image``) or has a public ``log_image``
method, as Lightning's ``WandbLogger`` has (``log_image(key, images, step)``). Other loggers (CSV) take none: the
pictures are skipped for them, and none is drawn when no logger takes them.

:class:`ImageLogging` is the component of ``LightningBrickCollection`` that logs the pictures of the
:class:`~torchbricks_lightning.core.visualization.BrickVisualization` bricks: at most ``images_per_epoch`` per brick,
epoch and stage, the first samples of the epoch. Each step hands it what the stage's forward returned, and it calls
``BrickCollection.visualize`` with the budget left, cut to the samples still wanted; once every brick has its
pictures, a step costs one dict lookup. Nothing is drawn on processes other than rank 0 or without a logger that
takes images. Lightning's sanity check draws one picture per brick and logs none: a misnamed input or a failing
visualiser then stops the run before it trains, not after its first epoch.

Where the pictures go, at the stage's epoch end:

- TensorBoard: one picture per tag ``{stage}/{brick path}/{k}`` (``k`` the sample's place in the epoch, from 0),
  with the epoch as step, so each card's slider shows one sample across the epochs;
- a logger with ``log_image``: the epoch's pictures as one list under ``{stage}/{brick path}``, at Lightning's step
  (the global step: ``WandbLogger`` records the step as ``trainer/global_step``, which an epoch would move back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger, TensorBoardLogger

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.stages import Stage

__all__ = ["ImageLogging", "image_loggers", "log_images"]


def image_loggers(trainer: pl.Trainer) -> list[Logger]:
    """The trainer's loggers that take images: TensorBoard, and any with a public ``log_image`` method."""
    return [
        logger
        for logger in trainer.loggers
        if isinstance(logger, TensorBoardLogger) or callable(getattr(logger, "log_image", None))
    ]


def log_images(
    trainer: pl.Trainer, name: str, images: Sequence[torch.Tensor], step: int, *, numbered: bool = False
) -> None:
    """Log ``images`` (each ``(3, H, W)``, ``uint8`` or float in ``[0, 1]``) under ``name`` to every image logger.

    Args:
        trainer: whose loggers to use (call on rank 0: TensorBoard's writer is a dummy elsewhere).
        name: the tag, or with ``numbered`` the prefix of the tags ``{name}/{k}`` of TensorBoard.
        images: the pictures.
        step: TensorBoard's step; a logger with ``log_image`` gets Lightning's global step.
        numbered: one TensorBoard tag per picture, ``{name}/0``, ``{name}/1``, ...
    """
    loggers = image_loggers(trainer)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            for index, image in enumerate(images):
                tag = f"{name}/{index}" if numbered else name
                logger.experiment.add_image(tag, image, global_step=step)
        else:
            logger.log_image(key=name, images=list(images), step=trainer.global_step)  # type: ignore[attr-defined]


class ImageLogging:
    """The pictures of the visualisation bricks: the budget left per stage and brick, and the pictures drawn.

    The module calls :meth:`start_epoch` from each stage's epoch start, :meth:`add_step` from each step and
    :meth:`end_epoch` from each epoch end.

    Example:
        >>> logging = ImageLogging()
        >>> logging.wanted  # budgets are set when an epoch starts under a Trainer
        {}
    """

    def __init__(self) -> None:
        self.wanted: dict[Stage, dict[str, int]] = {}
        """The pictures still wanted this epoch, by stage and brick path (only bricks that want some)."""
        self.drawn: dict[Stage, dict[str, list[torch.Tensor]]] = {}

    def start_epoch(self, trainer: pl.Trainer, collection: BrickCollection, stage: Stage) -> None:
        """Set the epoch's budget of each visualisation brick alive in ``stage`` (none if nothing would log it)."""
        self.drawn[stage] = {}
        if not trainer.is_global_zero or not image_loggers(trainer):
            self.wanted[stage] = {}
            return
        bricks = collection.visualization_bricks(stage)
        wanted = {path: brick.images_per_epoch for path, brick in bricks.items() if brick.images_per_epoch}
        self.wanted[stage] = dict.fromkeys(wanted, 1) if trainer.sanity_checking else wanted  # a check, not logged

    def add_step(self, collection: BrickCollection, stage: Stage, named_outputs: Mapping[str, Any]) -> None:
        """Draw the pictures still wanted from this step's values (nothing once the budgets are full)."""
        wanted = self.wanted.get(stage)
        if not wanted:
            return
        drawn = self.drawn.setdefault(stage, {})
        for path, images in collection.visualize(named_outputs, stage, wanted).items():
            drawn.setdefault(path, []).extend(images.unbind(0))
            wanted[path] -= len(images)
        self.wanted[stage] = {path: left for path, left in wanted.items() if left > 0}

    def end_epoch(self, trainer: pl.Trainer, stage: Stage) -> None:
        """Log the epoch's pictures, ``{stage}/{brick path}``, with the epoch as TensorBoard's step (none after the
        sanity check)."""
        drawn = self.drawn.pop(stage, {})
        self.wanted[stage] = {}
        if trainer.sanity_checking:
            return
        for path, images in drawn.items():
            log_images(trainer, f"{stage.value}/{path}", images, trainer.current_epoch, numbered=True)
