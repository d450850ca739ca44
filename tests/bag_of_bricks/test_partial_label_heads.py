"""Partial labels in the bag of bricks: masked losses, metrics that count labelled elements only, and the new heads.

References are computed on the labelled subset with torch's and torchmetrics' own functions.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F  # noqa: N812
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

from torchbricks_lightning import BrickCollection, BrickMetricSingle, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import (
    ClassificationHead,
    ConfusionMatrixMetrics,
    MaskedCrossEntropyLoss,
    MaskedRegressionLoss,
    RegressionHead,
    RegressionMetrics,
    SegmentationHead,
    create_image_classification_head,
    create_regression_head,
    create_segmentation_head,
)
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError
from torchbricks_lightning.multitask import BrickLabelledLoss, labelled_count_names


def _partial_targets(n: int, num_classes: int, seed: int, missing: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (n,), generator=generator)
    targets[torch.rand(n, generator=generator) < missing] = -100
    return targets


# ------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("shape", [(12,), (4, 3, 5)])
def test_masked_cross_entropy_is_the_mean_over_labelled_elements(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(shape[0], 4, *shape[1:], generator=generator)
    targets = _partial_targets(int(torch.tensor(shape).prod()), 4, seed=1).view(shape)
    labelled = targets != -100
    loss, count = MaskedCrossEntropyLoss(return_count=True)(logits, targets)
    per_element = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
    torch.testing.assert_close(loss, per_element[labelled].mean())
    assert float(count) == int(labelled.sum())
    assert count.dtype == torch.float32


def test_a_batch_without_labels_gives_zero_connected_to_the_graph_with_zero_gradients() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    predictions = torch.randn(5, requires_grad=True)
    ce, ce_count = MaskedCrossEntropyLoss(return_count=True)(logits, torch.full((5,), -100))
    mse, mse_count = MaskedRegressionLoss(return_count=True)(predictions, torch.full((5,), float("nan")))
    for loss, count, source in ((ce, ce_count, logits), (mse, mse_count, predictions)):
        assert float(loss.detach()) == 0.0
        assert float(count) == 0.0
        assert loss.grad_fn is not None, "connected to the graph, so every parameter still gets a gradient"
        (gradient,) = torch.autograd.grad(loss, source)
        assert torch.equal(gradient, torch.zeros_like(source)), "zeros, not NaN"
    # The reason: torch's own mean over no labels is NaN.
    assert torch.isnan(F.cross_entropy(logits, torch.full((5,), -100)))


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_masked_regression_loss_skips_nan_targets(kind: str) -> None:
    predictions = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    targets = torch.tensor([[1.5, float("nan")], [float("nan"), float("nan")], [4.0, 8.0]])
    labelled = ~torch.isnan(targets)
    loss = MaskedRegressionLoss(kind)(predictions, targets)  # type: ignore[arg-type]
    reference = F.mse_loss if kind == "mse" else F.l1_loss
    torch.testing.assert_close(loss, reference(predictions[labelled], targets[labelled]))


def test_loss_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="kind to be 'mse' or 'l1'"):
        MaskedRegressionLoss("huber")  # type: ignore[arg-type]
    with pytest.raises(BrickDefinitionError, match="ignore_index to be an int"):
        MaskedCrossEntropyLoss(ignore_index=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"same shape.*\(3, 1\) and \(3,\).*broadcasting"):
        MaskedRegressionLoss()(torch.zeros(3, 1), torch.zeros(3))


# ------------------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("average", ["macro", "micro", "weighted", "none"])
def test_confusion_matrix_metrics_with_ignore_index_equal_torchmetrics(average: str) -> None:
    fused = ConfusionMatrixMetrics(5, values=("accuracy", "confusion", "mean_iou"), average=average, ignore_index=-100)  # type: ignore[arg-type]
    accuracy = MulticlassAccuracy(5, average=None if average == "none" else average, ignore_index=-100)  # type: ignore[arg-type]
    jaccard = MulticlassJaccardIndex(5, average="macro", ignore_index=-100)
    labelled_preds, labelled_targets = [], []
    for seed in range(4):
        targets = _partial_targets(30, 5, seed=seed)
        preds = torch.randint(0, 5, (30,), generator=torch.Generator().manual_seed(seed + 10))
        fused.update(preds, targets)
        accuracy.update(preds, targets)
        jaccard.update(preds, targets)
        labelled_preds.append(preds[targets != -100])
        labelled_targets.append(targets[targets != -100])
    result = fused.compute()
    torch.testing.assert_close(result["accuracy"], accuracy.compute(), rtol=0, atol=1e-6)
    torch.testing.assert_close(result["mean_iou"], jaccard.compute(), rtol=0, atol=1e-6)
    preds, targets = torch.cat(labelled_preds), torch.cat(labelled_targets)
    assert int(result["confusion"].sum()) == len(targets), "only labelled elements are counted"
    expected = torch.zeros(5, 5, dtype=torch.long).index_put_((targets, preds), torch.ones_like(preds), accumulate=True)
    assert torch.equal(result["confusion"], expected)


def test_pixel_accuracy_and_mean_iou_of_masks_equal_torchmetrics() -> None:
    generator = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 3, (4, 6, 6), generator=generator)
    targets[0] = 255  # a whole image without a mask
    targets[1, :2] = 255  # a partly labelled one
    logits = torch.randn(4, 3, 6, 6, generator=generator)
    metric = ConfusionMatrixMetrics(3, values=("pixel_accuracy", "mean_iou"), ignore_index=255)
    metric.update(logits, targets)  # scores are reduced by argmax over the class dimension
    result = metric.compute()
    labelled = targets != 255
    preds = logits.argmax(dim=1)
    expected_accuracy = (preds[labelled] == targets[labelled]).float().mean()
    torch.testing.assert_close(result["pixel_accuracy"], expected_accuracy)
    jaccard = MulticlassJaccardIndex(3, ignore_index=255)
    torch.testing.assert_close(result["mean_iou"], jaccard(preds, targets), rtol=0, atol=1e-6)


def test_a_label_outside_the_classes_that_is_not_ignore_index_is_still_refused() -> None:
    metric = ConfusionMatrixMetrics(3, ignore_index=-100)
    with pytest.raises(ConfigError, match=r"`targets` in \[0, 3\), but got values from -1 to 2.*ignore_index \(-100\)"):
        metric.update(torch.tensor([0, 1, 2]), torch.tensor([0, -1, 2]))
    with pytest.raises(ConfigError, match="Pass ignore_index"):
        ConfusionMatrixMetrics(3).update(torch.tensor([0, 1]), torch.tensor([0, -100]))


def test_ignore_index_that_is_a_class_is_refused_when_built() -> None:
    with pytest.raises(ConfigError, match=r"ignore_index 2 is a valid class index of its 3 classes"):
        ConfusionMatrixMetrics(3, ignore_index=2)
    for build in (
        lambda: create_image_classification_head(3, 4, "features", "targets", ignore_index=0),
        lambda: create_segmentation_head(2, 4, "features", "mask", ignore_index=1),
        lambda: ClassificationHead(num_classes=10, in_channels=4, ignore_index=9),
    ):
        with pytest.raises(ConfigError, match=r"is a valid class index.*outside \[0, \d+\)"):
            build()


def test_regression_metrics_skip_nan_targets_and_equal_torchmetrics() -> None:
    metric = RegressionMetrics()
    mae, mse = MeanAbsoluteError(), MeanSquaredError()
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        preds, targets = torch.randn(10, generator=generator), torch.randn(10, generator=generator)
        targets[torch.rand(10, generator=generator) < 0.4] = float("nan")
        metric.update(preds, targets)
        labelled = ~torch.isnan(targets)
        mae.update(preds[labelled], targets[labelled])
        mse.update(preds[labelled], targets[labelled])
    result = metric.compute()
    torch.testing.assert_close(result["mae"], mae.compute())
    torch.testing.assert_close(result["mse"], mse.compute())


def test_a_users_own_torchmetrics_metric_with_ignore_index_keeps_working() -> None:
    collection = BrickCollection(
        {
            "head": create_image_classification_head(3, 4, "features", "targets"),
            "f1": BrickMetricSingle(
                MulticlassAccuracy(3, average="micro", ignore_index=-100), input_names=["head/logits", "targets"]
            ),
        }
    )
    features = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, -100, 1, 2, -100, 0, 1, -100, 2])
    outputs = collection({"features": features, "targets": targets}, Stage.VALIDATION)
    labelled = targets != -100
    expected = (outputs["head/class_prediction"][labelled] == targets[labelled]).float().mean()
    summary = collection.summarize(Stage.VALIDATION)
    torch.testing.assert_close(summary["f1"], expected)


# ------------------------------------------------------------------------------------------------ heads
def test_regression_head_learns_from_labelled_values_only() -> None:
    collection = BrickCollection({"age": create_regression_head(1, 4, "features", "age", loss="l1")})
    assert labelled_count_names(collection) == {"age/loss_l1": "age/labelled"}
    assert isinstance(collection["age"]["loss"], BrickLabelledLoss)
    features = torch.randn(6, 4, 3, 3)
    age = torch.tensor([1.0, float("nan"), 3.0, float("nan"), 5.0, 6.0])
    outputs = collection({"features": features, "age": age}, Stage.TRAIN)
    predictions = outputs["age/predictions"]
    assert predictions.shape == (6,)
    labelled = ~torch.isnan(age)
    torch.testing.assert_close(outputs["age/loss_l1"], (predictions[labelled] - age[labelled]).abs().mean())
    assert float(outputs["age/labelled"]) == 4.0
    summary = collection.summarize(Stage.TRAIN)
    assert set(summary) == {"age/mae", "age/mse"}
    torch.testing.assert_close(summary["age/mae"], (predictions[labelled] - age[labelled]).abs().mean().detach())


def test_regression_head_with_several_outputs_and_its_collection_class() -> None:
    head = RegressionHead(num_outputs=3, in_channels=4, targets_name="box", loss="mse")
    outputs = BrickCollection({"box": head})({"features": torch.randn(2, 4), "box": torch.randn(2, 3)}, "train")
    assert outputs["box/predictions"].shape == (2, 3)
    assert outputs["box/loss_mse"].ndim == 0
    with pytest.raises(ConfigError, match="loss to be 'mse' or 'l1'"):
        create_regression_head(1, 4, "features", "age", loss="huber")  # type: ignore[arg-type]


def test_segmentation_head_classifies_every_pixel_of_the_mask() -> None:
    collection = BrickCollection(
        {"segment": SegmentationHead(num_classes=3, in_channels=8, upsample=4, targets_name="mask")}
    )
    assert collection.output_names(Stage.INFERENCE) == [
        "segment/logits",
        "segment/probabilities",
        "segment/class_prediction",
    ]
    features = torch.randn(2, 8, 2, 2)
    mask = torch.randint(0, 3, (2, 8, 8))
    mask[1] = -100  # the second image has no mask
    outputs = collection({"features": features, "mask": mask}, Stage.TRAIN)
    assert outputs["segment/logits"].shape == (2, 3, 8, 8)
    assert outputs["segment/class_prediction"].shape == (2, 8, 8)
    expected = F.cross_entropy(outputs["segment/logits"][:1], mask[:1])
    torch.testing.assert_close(outputs["segment/loss_ce"], expected)
    assert float(outputs["segment/labelled"]) == 64.0
    summary = collection.summarize(Stage.TRAIN)
    assert set(summary) == {"segment/pixel_accuracy", "segment/mean_iou"}
    predicted = outputs["segment/class_prediction"][0]
    torch.testing.assert_close(summary["segment/pixel_accuracy"], (predicted == mask[0]).float().mean())


def test_heads_are_usable_from_yaml_by_class_path() -> None:
    """What a recipe builds: the collection classes with keyword arguments only, nested in a collection."""
    collection = BrickCollection(
        {
            "backbone": BrickTrainable(
                torch.nn.Conv2d(1, 8, 3, padding=1), input_names=["raw"], output_names=["features"]
            ),
            "digit": ClassificationHead(num_classes=10, in_channels=8, ignore_index=-1),
            "age": RegressionHead(num_outputs=1, in_channels=8, targets_name="age"),
            "mask": SegmentationHead(num_classes=2, in_channels=8, targets_name="foreground"),
        }
    )
    assert collection.input_names(Stage.TRAIN) == ["raw", "targets", "age", "foreground"]
    assert collection.loss_names(Stage.TRAIN) == ["digit/loss_ce", "age/loss_mse", "mask/loss_ce"]
    assert collection.input_names(Stage.EXPORT) == ["raw"]


def test_every_head_reports_nan_not_zero_for_a_task_without_a_labelled_element() -> None:
    """An epoch in which no element of a task is labelled: its metrics are missing (NaN) for every head."""
    collection = BrickCollection(
        {
            "backbone": BrickTrainable(
                torch.nn.Conv2d(1, 8, 3, padding=1), input_names=["raw"], output_names=["features"]
            ),
            "digit": ClassificationHead(num_classes=10, in_channels=8, with_confusion_matrix=True),
            "age": RegressionHead(num_outputs=1, in_channels=8, targets_name="age"),
            "mask": SegmentationHead(num_classes=2, in_channels=8, targets_name="foreground"),
        }
    )
    batch = {
        "raw": torch.randn(4, 1, 8, 8),
        "targets": torch.full((4,), -100),
        "age": torch.full((4,), float("nan")),
        "foreground": torch.full((4, 8, 8), -100),
    }
    for _ in range(2):
        collection(batch, Stage.VALIDATION)
    summary = collection.summarize(Stage.VALIDATION)
    values = {key: float(value) for key, value in summary.items() if key != "digit/confusion"}
    assert set(values) == {"digit/accuracy", "age/mae", "age/mse", "mask/pixel_accuracy", "mask/mean_iou"}
    assert all(torch.isnan(torch.tensor(value)) for value in values.values()), values
    assert int(summary["digit/confusion"].sum()) == 0, "the confusion counts stay counts"


@pytest.mark.parametrize("average", ["macro", "micro", "weighted", "none"])
def test_confusion_matrix_metrics_without_a_labelled_element_are_nan(average: str) -> None:
    metric = ConfusionMatrixMetrics(
        3,
        values=("accuracy", "pixel_accuracy", "mean_iou"),
        average=average,
        ignore_index=-100,  # type: ignore[arg-type]
    )
    metric.update(torch.tensor([0, 2, 1]), torch.tensor([-100, -100, -100]))
    result = metric.compute()
    assert all(bool(torch.isnan(value).all()) for value in result.values()), result
    metric.update(torch.tensor([0]), torch.tensor([0]))  # one labelled element: a value again
    assert not any(bool(torch.isnan(value).any()) for value in metric.compute().values())
