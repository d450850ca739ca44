"""The detection head's parts: padded targets, bad input, NMS against torchvision's, mAP against torchmetrics', YAML.

References are computed here with ``torchvision.ops.batched_nms`` and torchmetrics' ``MeanAveragePrecision`` fed the
per-image list form directly.
"""

from __future__ import annotations

from typing import Any

import jsonargparse
import pytest
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import batched_nms

from torchbricks_lightning import BrickCollection, BrickTrainable
from torchbricks_lightning.bag_of_bricks import DetectionHead, create_detection_head, pad_detection_targets
from torchbricks_lightning.bag_of_bricks.detection import DetectionDecoder, DetectionMeanAP, assign_locations
from torchbricks_lightning.bag_of_bricks.detection.network import location_centers
from torchbricks_lightning.core.export.manifest import metadata_of
from torchbricks_lightning.errors import ConfigError, ExportError

NAN = float("nan")


# ------------------------------------------------------------------------------------------------ targets
def test_pad_detection_targets_encodes_objects_zero_objects_and_not_annotated() -> None:
    boxes, labels = pad_detection_targets(
        [
            (torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 8.0, 8.0]]), torch.tensor([2, 0])),
            (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
            None,
        ]
    )
    assert boxes.dtype == torch.float32
    assert labels.dtype == torch.long
    assert labels.tolist() == [[2, 0], [-100, -100], [-100, -100]]
    assert boxes[0].tolist() == [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 8.0, 8.0]]
    assert boxes[1].tolist() == [[0.0] * 4] * 2, "zero objects: padding rows only"
    assert bool(torch.isnan(boxes[2]).all()), "not annotated: NaN boxes"


def test_pad_detection_targets_pads_to_a_fixed_size_and_refuses_bad_annotations() -> None:
    boxes, labels = pad_detection_targets([(torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([1]))], max_objects=3)
    assert tuple(boxes.shape) == (1, 3, 4)
    assert labels.tolist() == [[1, -100, -100]]
    assert tuple(pad_detection_targets([None, None])[0].shape) == (2, 1, 4)
    with pytest.raises(ConfigError, match="more than max_objects=1"):
        pad_detection_targets([(torch.zeros(2, 4), torch.zeros(2))], max_objects=1)
    with pytest.raises(ConfigError, match=r"annotation 1 must hold boxes \(n, 4\) and labels \(n,\)"):
        pad_detection_targets([None, (torch.zeros(2, 5), torch.zeros(2))])
    with pytest.raises(ConfigError, match="annotation 0 must be"):
        pad_detection_targets([torch.zeros(2, 4)])  # type: ignore[list-item]


def test_a_location_claimed_by_two_boxes_goes_to_the_smaller() -> None:
    centers = location_centers(4, 4, 4)
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 12.0, 12.0], [NAN] * 4]])
    matched = assign_locations(centers, boxes.nan_to_num(), torch.tensor([[True, True, False]]), 4, 2.0)
    grid = matched.view(4, 4)
    assert grid[1:3, 1:3].eq(1).all(), "the inner box's locations"
    assert grid[0, 0] == 0, "the outer box alone (within 2 strides of its centre)"
    assert not grid.eq(2).any(), "padding rows claim nothing"


# ------------------------------------------------------------------------------------------------ bad input
def _model(**head: Any) -> BrickCollection:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
    settings = {"image_name": "image", **head}
    return BrickCollection(
        {
            "backbone": BrickTrainable(backbone, input_names=["image"], output_names=["features"]),
            "det": create_detection_head(3, 8, "features", "boxes", "labels", 4, **settings),
        }
    )


def _batch(boxes: list[list[float]], labels: list[int], size: int = 32) -> dict[str, torch.Tensor]:
    return {
        "image": torch.rand(1, 3, size, size),
        "boxes": torch.tensor([boxes]),
        "labels": torch.tensor([labels]),
    }


BAD_BATCHES = {
    "x2 < x1": (_batch([[10.0, 2.0, 4.0, 8.0]], [0]), r"row 0 has x2 < x1 or y2 < y1.*box_convert"),
    "box outside": (_batch([[10.0, 2.0, 40.0, 8.0]], [1]), r"outside the 32x32 image"),
    "label >= num_classes": (_batch([[1.0, 2.0, 4.0, 8.0]], [3]), r"has label 3, outside \[0, 3\).*num_classes"),
    "boxes of rank 2": (
        {"image": torch.rand(2, 3, 32, 32), "boxes": torch.zeros(2, 4), "labels": torch.zeros(2, 1).long()},
        r"expected target boxes of shape \(B, N, 4\).*2-D.*pad_detection_targets",
    ),
    "labels of rank 1": (
        {"image": torch.rand(2, 3, 32, 32), "boxes": torch.zeros(2, 1, 4), "labels": torch.zeros(2).long()},
        r"expected target labels of shape \(B, N\) = \(2, 1\)",
    ),
    "stride does not divide": (_batch([[1.0, 2.0, 4.0, 8.0]], [0], size=30), r"stride 4 does not divide .* 30x30"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES), ids=list(BAD_BATCHES))
def test_bad_targets_fail_at_the_first_batch_naming_the_brick_and_the_fix(case: str) -> None:
    batch, message = BAD_BATCHES[case]
    with pytest.raises(ConfigError, match=message) as caught:
        _model()(batch, "train")
    assert "detection head (features 'features', targets 'boxes' and 'labels')" in str(caught.value)
    assert "brick '" in str(caught.value)


def test_a_feature_map_of_another_stride_is_refused() -> None:
    backbone = nn.Conv2d(3, 8, 3, 2, 1)  # stride 2, declared 4
    collection = BrickCollection(
        {
            "backbone": BrickTrainable(backbone, input_names=["image"], output_names=["features"]),
            "det": create_detection_head(3, 8, "features", "boxes", "labels", 4, image_name="image"),
        }
    )
    with pytest.raises(ConfigError, match=r"32x32 image gives a 16x16 feature map, so its stride is not 4"):
        collection(_batch([[1.0, 2.0, 4.0, 8.0]], [0]), "train")


@pytest.mark.parametrize("k", [0, -1])
def test_fewer_than_one_detection_row_is_refused_at_build(k: int) -> None:
    with pytest.raises(ConfigError, match=r"brick 'decode' .*max_detections \(K, the detection rows per image\)"):
        create_detection_head(3, 8, "features", "boxes", "labels", 4, max_detections=k)


def test_good_targets_with_padding_and_unannotated_images_pass_the_checks() -> None:
    boxes, labels = pad_detection_targets([(torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.tensor([2])), None])
    outputs = _model()({"image": torch.rand(2, 3, 32, 32), "boxes": boxes, "labels": labels}, "train")
    assert bool(torch.isfinite(outputs["det/loss_detection"]))


# ------------------------------------------------------------------------------------------------ decoding
def _reference(
    decoder: DetectionDecoder, logits: torch.Tensor, distances: torch.Tensor, centerness: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image, with torchvision's batched_nms: the detections the decoder should return."""
    batch, classes, height, width = logits.shape
    scores = torch.sqrt(logits.sigmoid() * centerness.sigmoid()).permute(0, 2, 3, 1).reshape(batch, -1)
    centers = location_centers(height, width, decoder.stride)
    side = torch.tensor([width, height, width, height]) * decoder.stride
    found = []
    for image in range(batch):
        values, index = scores[image].sort(descending=True)
        values, index = values[: decoder.pre_nms_top_k], index[: decoder.pre_nms_top_k]
        location, labels = index // classes, index % classes
        ltrb = distances[image].permute(1, 2, 0).reshape(-1, 4)[location]
        boxes = torch.cat([centers[location] - ltrb[:, :2], centers[location] + ltrb[:, 2:]], dim=1)
        boxes = torch.minimum(boxes.clamp(min=0), side)
        keep = batched_nms(boxes, values, labels, decoder.iou_threshold)
        keep = keep[values[keep] > decoder.score_threshold][: decoder.max_detections]
        found.append((boxes[keep], values[keep], labels[keep]))
    return found


@pytest.mark.parametrize(("top_k", "k"), [(1000, 30), (40, 30), (1000, 400)], ids=["all", "top-40", "K>candidates"])
def test_the_decoder_keeps_what_torchvision_batched_nms_keeps(top_k: int, k: int) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 8, 6, generator=generator) * 3
    distances = torch.rand(3, 4, 8, 6, generator=generator) * 12
    centerness = torch.randn(3, 1, 8, 6, generator=generator)
    decoder = DetectionDecoder(
        4, stride=4, max_detections=k, score_threshold=0.3, iou_threshold=0.5, pre_nms_top_k=top_k
    )
    boxes, scores, labels, count = decoder(logits, distances, centerness)
    reference = _reference(decoder, logits, distances, centerness)
    assert count.tolist() == [len(found[1]) for found in reference]
    assert min(count.tolist()) > 0, "each image has detections"
    for image, (ref_boxes, ref_scores, ref_labels) in enumerate(reference):
        n = int(count[image])
        torch.testing.assert_close(boxes[image, :n], ref_boxes)
        torch.testing.assert_close(scores[image, :n], ref_scores)
        assert torch.equal(labels[image, :n], ref_labels)
        assert bool((labels[image, n:] == -1).all())
    above = (torch.sqrt(logits.sigmoid() * centerness.sigmoid()) > 0.3).flatten(1).sum(dim=1)
    if k > above.max():
        assert bool((count < above).all()), "NMS removed boxes of every image"


# ------------------------------------------------------------------------------------------------ metric
def test_map_equals_torchmetrics_over_the_annotated_images_only() -> None:
    generator = torch.Generator().manual_seed(1)
    targets = pad_detection_targets(
        [
            (torch.tensor([[2.0, 2.0, 12.0, 12.0], [20.0, 4.0, 30.0, 14.0]]), torch.tensor([0, 1])),
            (torch.zeros(0, 4), torch.zeros(0)),  # annotated without objects: its detections are false positives
            None,  # not annotated: its detections count for nothing
            (torch.tensor([[5.0, 15.0, 25.0, 30.0]]), torch.tensor([1])),
        ]
    )
    jitter = torch.rand(4, 3, 4, generator=generator) * 3
    detections = torch.tensor([[2.0, 2.0, 12.0, 12.0], [20.0, 4.0, 30.0, 14.0], [5.0, 15.0, 25.0, 30.0]]) + jitter
    scores = torch.rand(4, 3, generator=generator)
    labels = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 0, 1], [1, 0, 1]])
    count = torch.tensor([3, 1, 3, 2])
    metric = DetectionMeanAP()
    metric.update(detections[:2], scores[:2], labels[:2], count[:2], targets[0][:2], targets[1][:2])
    metric.update(detections[2:], scores[2:], labels[2:], count[2:], targets[0][2:], targets[1][2:])
    reference = MeanAveragePrecision(box_format="xyxy", backend="pycocotools")
    kept = [0, 1, 3]
    reference.update(
        [
            {"boxes": detections[i, : count[i]], "scores": scores[i, : count[i]], "labels": labels[i, : count[i]]}
            for i in kept
        ],
        [{"boxes": targets[0][i][targets[1][i] >= 0], "labels": targets[1][i][targets[1][i] >= 0]} for i in kept],
    )
    expected = reference.compute()
    values = metric.compute()
    assert set(values) == {"map", "map_50", "map_75"}
    for name, value in values.items():
        torch.testing.assert_close(value, expected[name].float())
    assert 0.0 < float(values["map_50"]) < 1.0, "false positives on the empty image count"


# ------------------------------------------------------------------------------------------------ YAML, manifest
def test_a_recipe_builds_the_detection_head_by_its_class_path() -> None:
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--head", type=BrickCollection)
    config = parser.parse_string(
        "head:\n  class_path: torchbricks_lightning.bag_of_bricks.DetectionHead\n"
        "  init_args: {num_classes: 2, in_channels: 8, stride: 8, max_detections: 5, class_names: [cat, dog]}\n"
    )
    head = parser.instantiate_classes(config).head
    assert isinstance(head, DetectionHead)
    collection = BrickCollection({"det": head})
    assert collection.metric_keys() == ["det/map", "det/map_50", "det/map_75"]
    outputs = collection({"features": torch.rand(2, 8, 3, 3)}, "inference")
    assert tuple(outputs["det/boxes"].shape) == (2, 5, 4)


def test_export_metadata_that_json_cannot_write_is_refused() -> None:
    module = nn.Identity()
    module.export_metadata = {"stride": torch.tensor(4)}  # type: ignore[assignment]
    collection = BrickCollection({"head": BrickTrainable(module, ["x"], ["y"])})
    with pytest.raises(ExportError, match=r"Brick 'head': export_metadata cannot be written .*\.tolist\(\)"):
        metadata_of(collection.plan("export").nodes, dict(collection.named_bricks()))


def test_focal_options_reach_the_loss_and_gamma_zero_is_binary_cross_entropy() -> None:
    head = DetectionHead(num_classes=2, in_channels=4, stride=4, focal_alpha=-1.0, focal_gamma=0.0)
    loss = head["loss"].model
    assert (loss.focal_alpha, loss.focal_gamma) == (-1.0, 0.0)
    boxes, labels = pad_detection_targets([(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([1]))])
    logits = torch.randn(1, 2, 2, 2)
    distances, centerness = torch.full((1, 4, 2, 2), 4.0), torch.zeros(1, 1, 2, 2)
    value, positives = loss(logits, distances, centerness, boxes, labels)
    plain = loss.__class__(num_classes=2, stride=4, focal_alpha=-1.0, focal_gamma=0.0)
    focal = loss.__class__(num_classes=2, stride=4)
    targets = torch.zeros(1, 4, 2)
    targets[0, :, 1] = 1.0  # the box covers all four locations: each is a positive of class 1
    bce = nn.functional.binary_cross_entropy_with_logits(
        logits.permute(0, 2, 3, 1).reshape(1, 4, 2), targets, reduction="sum"
    )
    others, _ = focal(torch.full_like(logits, -30.0), distances, centerness, boxes, labels)
    assert float(positives) == 4.0
    rest = (
        float(plain(torch.zeros_like(logits), distances, centerness, boxes, labels)[0]) - 4 * 2 * 0.6931471805599453 / 4
    )
    assert float(value) == pytest.approx(float(bce) / 4 + rest, rel=1e-5)
    assert float(others) > float(rest), "the default focal loss still scores the class logits"
    for options, name in (({"focal_gamma": -1.0}, "focal_gamma"), ({"focal_alpha": 2.0}, "focal_alpha")):
        with pytest.raises(ConfigError, match=name):
            create_detection_head(2, 4, "features", "boxes", "labels", 4, **options)
