"""Metrics of the heads: classification values from one confusion matrix, and masked regression errors.

A head that reports accuracy and a confusion matrix with two torchmetrics metrics pays for two sets of input
checks and two state updates per step (about 17x one bincount on a CPU). :class:`ConfusionMatrixMetrics` keeps
one ``(C, C)`` count matrix, filled by a single ``torch.bincount`` per step, and derives every value from it at
``compute``, with torchmetrics' definitions. :class:`RegressionMetrics` keeps error sums over the labelled targets.

Both count labelled elements only: targets equal to ``ignore_index`` (classes) or NaN (regression) are skipped.
A task without a single labelled element (in an epoch, on every process) has no value: both report NaN for every
value but the confusion counts, never 0 (an accuracy of 0 would read as a model that is always wrong, and Δm
would count it as -100%). ``DeltaM`` leaves such a task out and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torchmetrics import Metric

from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.labels import check_ignore_index

__all__ = ["ConfusionMatrixMetrics", "RegressionMetrics", "check_class_names"]

Average = Literal["macro", "micro", "weighted", "none"]
_VALUES = ("accuracy", "confusion", "mean_iou", "pixel_accuracy")
_AVERAGES = ("macro", "micro", "weighted", "none")


def check_class_names(class_names: Sequence[str] | None, num_classes: int, where: str) -> list[str] | None:
    """``class_names`` as a list, checked to name each of ``num_classes`` classes once (None stays None).

    Example:
        >>> check_class_names(("even", "odd"), 2, "parity head")
        ['even', 'odd']
    """
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise ConfigError(f"Expected class_names of {where} to be a list of names, but got {class_names!r}.")
    names = list(class_names)
    if len(names) != num_classes or len(set(names)) != len(names):
        raise ConfigError(
            f"Expected class_names of {where} to name each of its {num_classes} classes once, but got {names}. "
            f"Give one name per class, in class order, or leave class_names out."
        )
    return names


class ConfusionMatrixMetrics(Metric):
    """Multiclass accuracy, confusion matrix and IoU from one count matrix (one bincount per update).

    ``compute()`` returns a dict with the requested ``values``. A metric brick reports each value next to the
    brick, as ``'{directory}/{value}'`` (``'head0/accuracy'``, ``'head0/confusion'``).

    - ``accuracy`` equals torchmetrics' ``MulticlassAccuracy(num_classes, average=average)``: ``macro`` is the
      mean recall over the classes that occur in targets or predictions, ``micro`` the share of correct
      predictions, ``weighted`` the support-weighted recall, ``none`` the recall of each class.
    - ``confusion`` equals ``MulticlassConfusionMatrix(num_classes)``: rows are targets, columns predictions.
    - ``mean_iou`` equals ``MulticlassJaccardIndex(num_classes, average="macro")``: the mean over the classes that
      occur in targets or predictions of ``tp / (tp + fp + fn)``.
    - ``pixel_accuracy`` is the share of labelled elements predicted right (micro accuracy), whatever ``average``.

    Before a labelled element was counted (a task without labels in the epoch), every value but ``confusion`` is
    NaN: the value is missing, not 0.

    Targets equal to ``ignore_index`` are not counted (as torchmetrics' ``ignore_index``), at the cost of two
    elementwise operations: the bincount stays one call with a fixed size.

    Args:
        num_classes: the number of classes.
        values: which values ``compute`` returns, from ``('accuracy', 'confusion', 'mean_iou', 'pixel_accuracy')``.
        average: how ``accuracy`` averages over classes.
        ignore_index: the target value of a missing label (outside ``[0, num_classes)``), or None.
        validate_args: check shapes, dtypes and that every prediction lies in ``[0, num_classes)`` (one
            ``aminmax`` per update). Targets out of range are always caught, at no cost: they fall outside the
            count matrix. Turn it off when predictions come from an ``argmax`` over ``num_classes`` scores.
        class_names: a name per class, for the confusion-matrix picture (``class_names``).
        **kwargs: passed to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``).

    Example:
        >>> metric = ConfusionMatrixMetrics(3, values=("accuracy", "confusion"))
        >>> metric.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
        >>> result = metric.compute()
        >>> round(float(result["accuracy"]), 4), result["confusion"].tolist()
        (0.8333, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
        >>> partial = ConfusionMatrixMetrics(3, values=("pixel_accuracy", "mean_iou"), ignore_index=-100)
        >>> partial.update(torch.tensor([[0, 1], [2, 0]]), torch.tensor([[0, -100], [1, -100]]))
        >>> {name: round(float(value), 4) for name, value in partial.compute().items()}
        {'pixel_accuracy': 0.5, 'mean_iou': 0.3333}
        >>> unlabelled = ConfusionMatrixMetrics(3, values=("accuracy", "mean_iou"), ignore_index=-100)
        >>> unlabelled.update(torch.tensor([0, 1]), torch.tensor([-100, -100]))
        >>> unlabelled.compute()
        {'accuracy': tensor(nan), 'mean_iou': tensor(nan)}
    """

    is_differentiable: bool = False
    higher_is_better: bool = True
    full_state_update: bool = False
    counts: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        values: Sequence[str] = ("accuracy",),
        average: Average = "macro",
        validate_args: bool = True,
        ignore_index: int | None = None,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"Expected argument `num_classes` to be an int >= 2, but got {num_classes!r}.")
        if isinstance(values, str):
            values = (values,)
        unknown = [value for value in values if value not in _VALUES]
        if unknown or not values or len(set(values)) != len(values):
            raise ConfigError(
                f"Expected argument `values` to be distinct names from {list(_VALUES)}, but got {list(values)}."
            )
        if average not in _AVERAGES:
            raise ConfigError(f"Expected argument `average` to be one of {list(_AVERAGES)}, but got {average!r}.")
        self.num_classes = num_classes
        self.class_names = check_class_names(class_names, num_classes, "ConfusionMatrixMetrics")
        self.value_names: tuple[str, ...] = tuple(values)
        self.average = average
        self.validate_args = bool(validate_args)
        self.ignore_index = (
            None if ignore_index is None else check_ignore_index(ignore_index, num_classes, "ConfusionMatrixMetrics")
        )
        # The flattened matrix, then (with ignore_index) one cell that counts the ignored elements.
        size = num_classes * num_classes + (self.ignore_index is not None)
        self.add_state("counts", torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def confmat(self) -> torch.Tensor:
        """The confusion counts so far, flattened (row: target, column: prediction); ignored elements left out."""
        return self.counts[: self.num_classes * self.num_classes]

    def _wrap_update(self, update: Callable[..., None]) -> Callable[..., None]:
        # A deliberate use of torchmetrics internals, the only one in the package: torchmetrics' update wrapper
        # also enters torch.set_grad_enabled and rewrites device errors, which costs about as much as the bincount
        # itself on a CPU (metric brick 2.3x one bincount instead of 1.6x). Integer counts need neither, so keep only
        # the bookkeeping that compute() and reset() rely on. If torchmetrics renames the hook, the override stops
        # applying and updates get slower but stay correct; if it renames the two fields, updates fail loudly.
        # tests/bag_of_bricks/test_confusion_matrix_metrics.py::test_the_update_shortcut_matches_torchmetrics_internals
        # fails with a clear message when either changes.
        state = self.__dict__

        def counted_update(*args: Any, **kwargs: Any) -> None:
            state["_computed"] = None
            state["_update_count"] += 1
            update(*args, **kwargs)

        return counted_update

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Count a batch: ``preds`` as class indices ``(N, ...)`` or scores ``(N, C, ...)``, and ``targets``."""
        n = self.num_classes
        if preds.ndim == targets.ndim + 1:
            preds = preds.argmax(dim=1)
        if self.validate_args:
            self._check_predictions(preds, targets)
        index = torch.add(preds, targets, alpha=n)  # targets * n + preds, in one kernel
        size = n * n
        if self.ignore_index is not None:
            # Ignored elements are counted in the extra cell after the matrix: a bincount of a fixed size, no sync
            # (2 kernels; masking them out and subtracting their count took 4, and 60% longer per step).
            index.masked_fill_(targets == self.ignore_index, size)
            size += 1
        if index.ndim != 1:
            index = index.reshape(-1)
        try:
            counts = torch.bincount(index, minlength=size)
        except RuntimeError:  # a negative label or mismatched shapes: say which
            self._check_predictions(preds, targets)
            self._check_range("targets", targets)
            raise
        if counts.numel() != size:  # a target >= num_classes (or a prediction in the last row): say which
            self._check_predictions(preds, targets)
            self._check_range("targets", targets)
        self.counts.add_(counts)

    def _check_predictions(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        # Targets need no check of their own: one out of range makes the bincount fail or grow, which is caught.
        where = type(self).__name__
        if preds.shape != targets.shape:
            raise ConfigError(
                f"{where} expected `preds` of shape (N, ...) or (N, C, ...) and `targets` of shape (N, ...), "
                f"but got preds {tuple(preds.shape)} and targets {tuple(targets.shape)}."
            )
        for name, tensor in (("preds", preds), ("targets", targets)):
            if tensor.is_floating_point() or tensor.is_complex():
                raise ConfigError(f"{where} expected integer class indices in `{name}`, but got {tensor.dtype}.")
        self._check_range("preds", preds)

    def _check_range(self, name: str, tensor: torch.Tensor) -> None:
        if name == "targets" and self.ignore_index is not None:
            tensor = tensor[tensor != self.ignore_index]
        if not tensor.numel():
            return
        low, high = (int(value) for value in torch.aminmax(tensor))
        if low < 0 or high >= self.num_classes:
            hint = (
                f"Missing labels must equal ignore_index ({self.ignore_index})."
                if self.ignore_index is not None
                else "Pass ignore_index=... to skip missing labels."
            )
            raise ConfigError(
                f"{type(self).__name__} expected `{name}` in [0, {self.num_classes}), but got values from {low} to "
                f"{high}. Check num_classes. {hint}"
            )

    def compute(self) -> dict[str, torch.Tensor]:
        """The requested values, computed from the accumulated confusion matrix."""
        matrix = self.confmat.view(self.num_classes, self.num_classes)
        labelled = matrix.sum() > 0  # a tensor: no device sync
        result: dict[str, torch.Tensor] = {}
        for name in self.value_names:
            if name == "confusion":
                result[name] = matrix.clone()
                continue
            if name == "mean_iou":
                value = _mean_iou(matrix)
            elif name == "pixel_accuracy":
                value = (matrix.diagonal().sum() / matrix.sum().clamp(min=1)).float()
            else:
                value = self._accuracy(matrix)
            result[name] = torch.where(labelled, value, torch.full_like(value, float("nan")))  # no label: missing
        return result

    def _accuracy(self, matrix: torch.Tensor) -> torch.Tensor:
        matrix = matrix.double()
        tp = matrix.diagonal()
        support = matrix.sum(dim=1)  # tp + fn
        if self.average == "micro":
            return (tp.sum() / support.sum().clamp(min=1)).float()
        recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
        if self.average == "none":
            return recall.float()
        # macro: classes that never occur in targets or predictions do not count (as in torchmetrics)
        occurs = (support + matrix.sum(dim=0) - tp) > 0
        weights = support if self.average == "weighted" else occurs.double()
        return ((weights * recall).sum() / weights.sum().clamp(min=1e-12)).float()


def _mean_iou(matrix: torch.Tensor) -> torch.Tensor:
    """The macro IoU of a count matrix, over the classes that occur in targets or predictions (as torchmetrics)."""
    matrix = matrix.double()
    tp = matrix.diagonal()
    union = matrix.sum(dim=0) + matrix.sum(dim=1) - tp
    occurs = union > 0
    iou = torch.where(occurs, tp / union.clamp(min=1), torch.zeros_like(tp))
    return (iou.sum() / occurs.sum().clamp(min=1)).float()


class RegressionMetrics(Metric):
    """Mean absolute and mean squared error over the labelled targets (NaN targets are skipped).

    ``compute()`` returns a dict with the requested ``values`` (``'mae'``, ``'mse'``), reported next to the metric
    brick as ``'{directory}/mae'`` and ``'{directory}/mse'``. The sums are kept in float64, so the epoch value is
    the exact mean over every labelled element of every batch (and every process). Before any labelled element was
    seen (a task without labels in the epoch), the values are NaN: missing, not 0.

    Args:
        values: which values ``compute`` returns, from ``('mae', 'mse')``.
        **kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> metric = RegressionMetrics()
        >>> metric.update(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([2.0, float("nan"), 2.0]))
        >>> {name: float(value) for name, value in metric.compute().items()}
        {'mae': 1.5, 'mse': 2.5}
        >>> RegressionMetrics().compute()
        {'mae': tensor(nan), 'mse': tensor(nan)}
    """

    is_differentiable: bool = False
    higher_is_better: bool = False
    full_state_update: bool = False
    absolute: torch.Tensor
    squared: torch.Tensor
    count: torch.Tensor

    def __init__(self, values: Sequence[str] = ("mae", "mse"), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(values, str):
            values = (values,)
        if not values or any(value not in ("mae", "mse") for value in values) or len(set(values)) != len(values):
            raise ConfigError(f"Expected argument `values` to be distinct names from ['mae', 'mse'], but got {values}.")
        self.value_names: tuple[str, ...] = tuple(values)
        for name in ("absolute", "squared", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``preds`` and ``targets`` of the same shape, NaN targets skipped."""
        if preds.shape != targets.shape:
            raise ConfigError(
                f"RegressionMetrics expected predictions and targets of the same shape, but got {tuple(preds.shape)} "
                f"and {tuple(targets.shape)}."
            )
        labelled = ~torch.isnan(targets)
        difference = torch.where(labelled, preds.detach().double() - torch.nan_to_num(targets.double()), 0.0)
        self.absolute.add_(difference.abs().sum())
        self.squared.add_(difference.square().sum())
        self.count.add_(labelled.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        """The requested mean errors (float32)."""
        sums = {"mae": self.absolute, "mse": self.squared}
        return {name: (sums[name] / self.count).float() for name in self.value_names}
