"""ConfusionMatrixMetrics against torchmetrics, and dict-valued metrics inside metric bricks."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from torchbricks_lightning import BrickCollection, BrickMetrics, BrickMetricSingle, BrickNotTrainable, Stage
from torchbricks_lightning.bag_of_bricks import ConfusionMatrixMetrics, create_image_classification_head
from torchbricks_lightning.errors import BrickOutputError, ConfigError

NUM_CLASSES = 5


def random_batches(
    n_batches: int, seed: int, num_classes: int = NUM_CLASSES
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        size = int(torch.randint(1, 40, (1,), generator=generator))
        # Leave some classes out of targets and predictions, so the macro average's class filter is exercised.
        high = int(torch.randint(2, num_classes + 1, (1,), generator=generator))
        preds = torch.randint(0, high, (size,), generator=generator)
        targets = torch.randint(0, num_classes, (size,), generator=generator)
        batches.append((preds, targets))
    return batches


@pytest.mark.parametrize("average", ["macro", "micro", "weighted", "none"])
@pytest.mark.parametrize("seed", range(6))
def test_values_equal_torchmetrics(average: str, seed: int) -> None:
    fused = ConfusionMatrixMetrics(NUM_CLASSES, values=("accuracy", "confusion"), average=average)  # type: ignore[arg-type]
    accuracy = MulticlassAccuracy(NUM_CLASSES, average=None if average == "none" else average)  # type: ignore[arg-type]
    confusion = MulticlassConfusionMatrix(NUM_CLASSES)
    for preds, targets in random_batches(4, seed):
        fused.update(preds, targets)
        accuracy.update(preds, targets)
        confusion.update(preds, targets)

    result = fused.compute()

    assert list(result) == ["accuracy", "confusion"]
    torch.testing.assert_close(result["accuracy"], accuracy.compute(), rtol=0, atol=1e-6)
    assert torch.equal(result["confusion"], confusion.compute())


def test_scores_are_reduced_to_classes_and_multidim_inputs_are_flattened() -> None:
    logits = torch.randn(6, NUM_CLASSES, 3)
    targets = torch.randint(0, NUM_CLASSES, (6, 3))
    fused = ConfusionMatrixMetrics(NUM_CLASSES, values="confusion")
    reference = MulticlassConfusionMatrix(NUM_CLASSES)

    fused.update(logits, targets)
    reference.update(logits.argmax(dim=1), targets)

    assert torch.equal(fused.compute()["confusion"], reference.compute())


def test_reset_and_forward_follow_the_metric_protocol() -> None:
    fused = ConfusionMatrixMetrics(3)
    assert not fused.update_called
    batch_value = fused(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))  # forward: this batch's value
    fused.update(torch.tensor([2]), torch.tensor([2]))

    assert fused.update_called
    assert batch_value["accuracy"] == pytest.approx((1 + 1 + 0) / 3)
    assert fused.compute()["accuracy"] == pytest.approx((1 + 1 + 1 / 2) / 3)  # class 2: one of two right
    fused.reset()
    assert not fused.update_called
    assert int(fused.confmat.sum()) == 0


def test_copies_and_pickles_keep_their_own_state() -> None:
    fused = ConfusionMatrixMetrics(3)
    fused.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):  # noqa: S301 - our own bytes
        clone.update(torch.tensor([2]), torch.tensor([0]))
        assert int(clone.confmat.sum()) == 3
        assert clone._update_count == 2
    assert int(fused.confmat.sum()) == 2
    assert fused._update_count == 1


@pytest.mark.parametrize(
    ("preds", "targets", "message"),
    [
        (torch.tensor([0, 5]), torch.tensor([0, 1]), r"`preds` in \[0, 3\), but got values from 0 to 5"),
        (torch.tensor([0, 1]), torch.tensor([-1, 1]), r"`targets` in \[0, 3\), but got values from -1 to 1"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), r"preds \(3,\) and targets \(2,\)"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "integer class indices in `preds`"),
    ],
)
def test_bad_labels_are_reported(preds: torch.Tensor, targets: torch.Tensor, message: str) -> None:
    fused = ConfusionMatrixMetrics(3)
    with pytest.raises(ValueError, match=message):
        fused.update(preds, targets)
    assert int(fused.confmat.sum()) == 0


def test_a_target_out_of_range_is_caught_without_validation() -> None:
    fused = ConfusionMatrixMetrics(3, validate_args=False)
    with pytest.raises(ValueError, match=r"`targets` in \[0, 3\), but got values from 0 to 3"):
        fused.update(torch.tensor([0, 2]), torch.tensor([0, 3]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "`num_classes` to be an int >= 2"),
        ({"num_classes": 3, "values": ("accuracy", "f1")}, "distinct names from"),
        ({"num_classes": 3, "values": ()}, "distinct names from"),
        ({"num_classes": 3, "average": "mean"}, "`average` to be one of"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ConfusionMatrixMetrics(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- in metric bricks
def head_collection(with_confusion_matrix: bool) -> BrickCollection:
    return BrickCollection(
        {
            "head0": create_image_classification_head(
                NUM_CLASSES, 4, "features", "targets", with_confusion_matrix=with_confusion_matrix
            )
        }
    )


@pytest.mark.parametrize("with_confusion_matrix", [False, True])
def test_head_reports_its_values_beside_the_brick(with_confusion_matrix: bool) -> None:
    collection = head_collection(with_confusion_matrix)
    expected = ["head0/accuracy", "head0/confusion"] if with_confusion_matrix else ["head0/accuracy"]
    assert collection.metric_keys() == expected

    features = torch.randn(32, 4)
    targets = torch.randint(0, NUM_CLASSES, (32,))
    outputs = collection({"features": features, "targets": targets}, Stage.VALIDATION)
    summary = collection.summarize(Stage.VALIDATION, reset=True)

    assert list(summary) == expected
    reference = MulticlassAccuracy(NUM_CLASSES)
    reference.update(outputs["head0/class_prediction"], targets)
    torch.testing.assert_close(summary["head0/accuracy"], reference.compute())
    if with_confusion_matrix:
        assert int(summary["head0/confusion"].sum()) == 32
    assert collection.summarize(Stage.VALIDATION) == {}  # reset


class TwoValues(Metric):
    """A dict-valued metric that does not use ConfusionMatrixMetrics: the brick layer handles any such metric."""

    value_names = ("total", "count")

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.broken = broken
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        if self.broken:
            return {"total": self.total}
        return {"total": self.total, "count": self.count}


def identity_collection(metric_brick: BrickMetrics) -> BrickCollection:
    return BrickCollection(
        {
            "stats": {
                "copy": BrickNotTrainable(torch.nn.Identity(), input_names=["x"], output_names=["./y"]),
                "metric": metric_brick,
            }
        }
    )


def test_dict_valued_metrics_in_brick_metrics_use_the_brick_path() -> None:
    brick = BrickMetrics({"two": TwoValues(), "acc": MulticlassAccuracy(3)}, input_names=["./y"])
    brick_single = BrickMetricSingle(TwoValues(), input_names=["./y"])
    collection = identity_collection(brick)
    assert brick.report_names == ["acc", "total", "count"]  # MetricCollection orders metrics by name
    assert brick_single.report_names == ["total", "count"]
    assert identity_collection(brick_single).metric_keys() == ["stats/total", "stats/count"]
    assert collection.metric_keys() == ["stats/metric/acc", "stats/metric/total", "stats/metric/count"]


def test_dict_valued_metric_summarised_and_returned() -> None:
    brick = BrickMetricSingle(TwoValues(), input_names=["./y"], return_metrics=True)
    collection = identity_collection(brick)
    outputs = collection({"x": torch.tensor([1.0, 2.0, 3.0])}, Stage.TRAIN)
    assert float(outputs["stats/total"]) == 6.0
    assert int(outputs["stats/count"]) == 3
    collection({"x": torch.tensor([4.0])}, Stage.TRAIN)
    assert {key: float(value) for key, value in collection.summarize(Stage.TRAIN).items()} == {
        "stats/total": 10.0,
        "stats/count": 4.0,
    }


def test_a_metric_that_breaks_its_declared_values_is_named() -> None:
    collection = identity_collection(BrickMetricSingle(TwoValues(broken=True), input_names=["./y"]))
    collection({"x": torch.tensor([1.0])}, Stage.TRAIN)
    with pytest.raises(BrickOutputError, match=r"Metric 'TwoValues' of BrickMetricSingle declares value_names"):
        collection.summarize(Stage.TRAIN)


def test_reported_names_must_not_clash() -> None:
    with pytest.raises(ConfigError, match=r"report \['total'\] more than once"):
        BrickMetrics({"a": TwoValues(), "total": MulticlassAccuracy(3)}, input_names=["x"])


def test_fast_metric_path_still_fires_hooks_and_matches_slow_path() -> None:
    """The generated code updates metrics directly; with a hook registered it goes through the brick."""
    fast, hooked = head_collection(False), head_collection(False)
    hooked.load_state_dict(fast.state_dict())
    calls: list[str] = []
    metric_brick = hooked["head0"]["metrics"]  # type: ignore[index]
    metric_brick.register_forward_hook(lambda module, args, output: calls.append("hook"))
    batch = {"features": torch.randn(16, 4), "targets": torch.randint(0, NUM_CLASSES, (16,))}
    for collection in (fast, hooked):
        collection(batch, Stage.TRAIN)
        collection(batch, Stage.TRAIN)
    assert calls == ["hook", "hook"]
    torch.testing.assert_close(fast.summarize(Stage.TRAIN), hooked.summarize(Stage.TRAIN))
    assert int(metric_brick.metrics_for(Stage.TRAIN)["ConfusionMatrixMetrics"].confmat.sum()) == 32


def test_the_update_shortcut_matches_torchmetrics_internals() -> None:
    """ConfusionMatrixMetrics replaces torchmetrics' private update wrapper (for speed); fail clearly if it changes."""
    from torchmetrics import Metric

    assert hasattr(Metric, "_wrap_update"), (
        "torchmetrics no longer has Metric._wrap_update: ConfusionMatrixMetrics' faster update wrapper no longer "
        "applies. Remove the override in bag_of_bricks/metrics.py (correct, but slower)."
    )
    metric = ConfusionMatrixMetrics(3)
    for field in ("_update_count", "_computed"):
        assert field in vars(metric), (
            f"torchmetrics no longer keeps Metric.{field}: update ConfusionMatrixMetrics._wrap_update in "
            "bag_of_bricks/metrics.py to the bookkeeping torchmetrics now does."
        )
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    first = metric.compute()["accuracy"]
    metric.update(torch.tensor([2]), torch.tensor([2]))
    assert metric.update_count == 2  # counted, as torchmetrics counts
    assert float(metric.compute()["accuracy"]) != float(first)  # and the cached value was dropped
