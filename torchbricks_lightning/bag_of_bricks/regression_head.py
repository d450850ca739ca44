"""The regression head: pooling, a linear layer, a masked MSE or L1 loss, and MAE/MSE metrics."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from torchbricks_lightning.bag_of_bricks.losses import MaskedRegressionLoss
from torchbricks_lightning.bag_of_bricks.metrics import RegressionMetrics
from torchbricks_lightning.core.bricks import BrickInterface, BrickTrainable
from torchbricks_lightning.core.collection import BrickCollection
from torchbricks_lightning.core.metric_bricks import BrickMetricSingle
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.multitask.labels import BrickLabelledLoss

__all__ = ["RegressionHead", "Regressor", "create_regression_head"]


class Regressor(nn.Module):
    """A linear regressor on (pooled) features.

    Args:
        num_outputs: the number of values predicted per sample. With 1, predictions have shape ``(N,)``, like a
            target per sample; otherwise ``(N, num_outputs)``.
        n_features: the number of input features (channels).
        use_average_pooling: average-pool 4-D feature maps ``(N, C, H, W)`` before the linear layer.

    Example:
        >>> tuple(Regressor(1, 8)(torch.rand(2, 8, 4, 4)).shape), tuple(Regressor(3, 8)(torch.rand(2, 8)).shape)
        ((2,), (2, 3))
    """

    def __init__(self, num_outputs: int, n_features: int, use_average_pooling: bool = True) -> None:
        super().__init__()
        if num_outputs < 1 or n_features < 1:
            raise ConfigError(
                f"Expected num_outputs and n_features to be positive, but got {num_outputs} and {n_features}."
            )
        self.num_outputs = num_outputs
        self.use_average_pooling = use_average_pooling
        self.fc = nn.Linear(n_features, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.use_average_pooling and features.ndim == 4:
            features = features.mean(dim=(2, 3))
        predictions = self.fc(torch.flatten(features, start_dim=1))
        return predictions.squeeze(1) if self.num_outputs == 1 else predictions


def create_regression_head(
    num_outputs: int,
    in_channels: int,
    features_name: str,
    targets_name: str,
    loss: Literal["mse", "l1"] = "mse",
    loss_weight: float = 1.0,
) -> dict[str, BrickInterface]:
    """The bricks of one regression task: a regressor, its masked loss and its MAE/MSE metrics.

    Partial labels: a NaN target is a missing label. The loss (:class:`MaskedRegressionLoss` in a
    :class:`~torchbricks_lightning.multitask.BrickLabelledLoss`) averages over the labelled values and outputs their
    count (``./labelled``); the metrics (:class:`RegressionMetrics`) count labelled values only.

    Outputs use relative names: inside ``age`` they are ``age/predictions``, ``age/loss_mse`` (or ``age/loss_l1``)
    and ``age/labelled``; the metrics are reported as ``age/mae`` and ``age/mse``.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"age": create_regression_head(1, 8, "features", "age")})
        >>> collection.output_names("train"), collection.metric_keys()
        (['age/predictions', 'age/loss_mse', 'age/labelled'], ['age/mae', 'age/mse'])
    """
    if loss not in ("mse", "l1"):
        raise ConfigError(f"Expected loss to be 'mse' or 'l1', but got {loss!r}.")
    return {
        "regress": BrickTrainable(
            Regressor(num_outputs=num_outputs, n_features=in_channels),
            input_names=[features_name],
            output_names=["./predictions"],
        ),
        "metrics": BrickMetricSingle(RegressionMetrics(), input_names=["./predictions", targets_name]),
        "loss": BrickLabelledLoss(
            MaskedRegressionLoss(loss, return_count=True),
            input_names=["./predictions", targets_name],
            output_names=[f"./loss_{loss}", "./labelled"],
            loss_weight=loss_weight,
        ),
    }


class RegressionHead(BrickCollection):
    """:func:`create_regression_head` as a collection class, so a YAML recipe can name it.

    Example:
        >>> from torchbricks_lightning import BrickCollection
        >>> collection = BrickCollection({"age": RegressionHead(num_outputs=1, in_channels=8, targets_name="age")})
        >>> collection.loss_names("train")
        ['age/loss_mse']
    """

    def __init__(
        self,
        num_outputs: int,
        in_channels: int,
        features_name: str = "features",
        targets_name: str = "targets",
        loss: Literal["mse", "l1"] = "mse",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(
            create_regression_head(num_outputs, in_channels, features_name, targets_name, loss, loss_weight)
        )
