"""Turn summarised metrics into what loggers can show: scalars, per-class scalars and pictures."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetrics
from torchbricks_lightning.core.stages import Stage
from torchbricks_lightning.lightning.logging.images import image_loggers, log_images
from torchbricks_lightning.pictures import render_confusion_matrix, render_matrix

__all__ = [
    "MetricsToLog",
    "log_matrices",
    "metric_class_names",
    "render_confusion_matrix",
    "render_matrix",
    "split_metrics",
    "warn_once",
    "weights_epoch",
]


class MetricsToLog:
    """Metrics split by shape: ``scalars`` to log as numbers, ``matrices`` to draw as pictures."""

    def __init__(self) -> None:
        self.scalars: dict[str, torch.Tensor] = {}
        self.matrices: dict[str, torch.Tensor] = {}


def split_metrics(prefix: str, metrics: Mapping[str, torch.Tensor]) -> MetricsToLog:
    """Name every metric ``'{prefix}/{key}'``; vectors become one scalar per class (``.../class_3``).

    Example:
        >>> import torch
        >>> split = split_metrics("validation", {"acc": torch.tensor(0.5), "recall": torch.tensor([0.1, 0.9]),
        ...                                      "confusion": torch.eye(2)})
        >>> sorted(split.scalars), sorted(split.matrices)
        (['validation/acc', 'validation/recall/class_0', 'validation/recall/class_1'], ['validation/confusion'])
    """
    result = MetricsToLog()
    for key, value in metrics.items():
        name = f"{prefix}/{key}"
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if value.ndim == 0:
            result.scalars[name] = value
        elif value.ndim == 1:
            for index, element in enumerate(value):
                result.scalars[f"{name}/class_{index}"] = element
        else:
            result.matrices[name] = value
    return result


def warn_once(message: str, seen: set[str], key: str) -> None:
    """Warn with ``message`` the first time ``key`` is seen."""
    if key not in seen:
        seen.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def metric_class_names(collection: BrickCollection, stage: Stage) -> dict[str, list[str]]:
    """The class names of the metrics alive in ``stage`` that have them, by metric key.

    A metric names its classes with a ``class_names`` attribute (a list of strings, one per class); the pictures
    of its matrices then show them instead of class indices.

    Example:
        >>> from torchmetrics.classification import MulticlassConfusionMatrix
        >>> from torchbricks_lightning import BrickCollection, BrickMetricSingle
        >>> metric = MulticlassConfusionMatrix(num_classes=2)
        >>> metric.class_names = ["cat", "dog"]
        >>> collection = BrickCollection({"confusion": BrickMetricSingle(metric, ["pred", "targets"])})
        >>> metric_class_names(collection, Stage.VALIDATION)
        {'confusion': ['cat', 'dog']}
    """
    names: dict[str, list[str]] = {}
    for path, brick in collection.named_bricks():
        if not isinstance(brick, BrickMetrics) or stage not in brick.alive_stages:
            continue
        keys = iter(brick.metric_keys(path))  # in the order of the metrics, a dict-valued metric's values together
        for metric in brick.metrics_for(stage).values(copy_state=False):
            reported = getattr(metric, "value_names", None)
            count = 1 if reported is None else len((reported,) if isinstance(reported, str) else tuple(reported))
            class_names = getattr(metric, "class_names", None)
            for key in itertools.islice(keys, count):
                if class_names is not None:
                    names[key] = [str(name) for name in class_names]
    return names


def weights_epoch(trainer: pl.Trainer) -> int | None:
    """The epoch (counted from 0, as Lightning counts) whose training gave the module's weights; None when unknown.

    - In ``trainer.fit``: the epoch being trained (``trainer.current_epoch``); its validation runs at its end.
    - Otherwise, weights read from a checkpoint (``ckpt_path=`` or ``load_from_checkpoint``) and not trained since:
      that checkpoint's epoch.
    - Otherwise, after this trainer's fit: the last epoch it finished, ``trainer.current_epoch - 1`` (the count of
      finished epochs less one: ``trainer.validate`` after 30 epochs, 0 to 29, gives 29).
    - Otherwise (a trainer that never trained the module, weights not read from a checkpoint): None.
    """
    if trainer.state.fn == TrainerFn.FITTING:
        return trainer.current_epoch
    state = getattr(trainer.lightning_module, "checkpoint_state", None)  # the module's CheckpointState
    loaded = getattr(state, "loaded_epoch", None)
    if isinstance(loaded, int):
        return loaded
    return trainer.current_epoch - 1 if trainer.current_epoch > 0 else None


def log_matrices(
    trainer: pl.Trainer,
    collection: BrickCollection,
    stage: Stage,
    matrices: Mapping[str, torch.Tensor],
    warned: set[str],
) -> None:
    """Draw each matrix (``{stage}/{key}``) for the trainer's loggers that take images, on rank 0, at the current step
    (see :func:`~torchbricks_lightning.lightning.logging.images.log_images`).

    A square matrix is drawn as a confusion matrix, titled with its key and the epoch of the weights (see
    :func:`weights_epoch`; the key alone when that is unknown), its rows and columns named by
    the metric's ``class_names`` when it has them (see :func:`metric_class_names`). Without a TensorBoard logger,
    a warning, once per key, says that the matrix is not logged and how to see it.
    """
    takes_images = bool(image_loggers(trainer))
    class_names = metric_class_names(collection, stage) if takes_images else {}
    epoch = weights_epoch(trainer) if takes_images else None
    for name, matrix in matrices.items():
        if takes_images and trainer.is_global_zero:
            title = name if epoch is None else f"{name}, epoch {epoch}"
            names = class_names.get(name.partition("/")[2])
            square = matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]
            if square and (names is None or len(names) == matrix.shape[0]):
                image = render_confusion_matrix(matrix, title=title, class_names=names)
            else:
                image = render_confusion_matrix(matrix.reshape(-1, matrix.shape[-1]), title, None, ("row", "column"))
            log_images(trainer, name, [image], trainer.global_step)
        if trainer.loggers and not takes_images:  # with one, the picture is there: nothing to warn about
            others = ", ".join(type(logger).__name__ for logger in trainer.loggers)
            warn_once(
                f"Metric {name!r} is a {tuple(matrix.shape)} matrix; {others} cannot show pictures, so it is not "
                "logged. Add a TensorBoardLogger to see it as an image.",
                warned,
                name,
            )
