"""A classification head that names its classes: the names reach the confusion-matrix picture, the export manifest
and the errors; names that do not fit the classes are refused when the head is built, and a recipe says which key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from torchbricks_lightning import BrickCollection, BrickNotTrainable, Stage
from torchbricks_lightning.bag_of_bricks import (
    ClassificationHead,
    ConfusionMatrixMetrics,
    ImageClassifier,
    Preprocessor,
    create_image_classification_head,
)
from torchbricks_lightning.cli import main
from torchbricks_lightning.core.export import export_bricks
from torchbricks_lightning.errors import ConfigError
from torchbricks_lightning.lightning.logging.metrics import metric_class_names

PARITY = ["even", "odd"]
RECIPE = Path(__file__).parents[2] / "examples" / "configs" / "digits_multitask.yaml"


def test_the_head_gives_its_names_to_the_classifier_and_the_metric_pictures() -> None:
    head = ClassificationHead(num_classes=2, in_channels=4, with_confusion_matrix=True, class_names=PARITY)
    collection = BrickCollection({"parity": head})
    classifier = collection["parity"]["classify"].model
    metric = collection["parity"]["metrics"].metrics_for(Stage.VALIDATION)["ConfusionMatrixMetrics"]
    assert isinstance(classifier, ImageClassifier)
    assert isinstance(metric, ConfusionMatrixMetrics)
    assert classifier.class_names == PARITY
    assert metric.class_names == PARITY
    assert metric_class_names(collection, Stage.VALIDATION) == {"parity/accuracy": PARITY, "parity/confusion": PARITY}


def test_the_export_manifest_names_the_classes_of_the_head(tmp_path: Path) -> None:
    collection = BrickCollection(
        {
            "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["features"]),
            "parity": create_image_classification_head(2, 3, "features", "targets", class_names=PARITY),
        }
    )
    path = tmp_path / "parity.onnx"
    export_bricks(path, collection, {"raw": torch.rand(2, 3, 8, 8)})
    manifest = json.loads((tmp_path / "parity.onnx.json").read_text())
    (entry,) = manifest["class_names"].values()
    assert entry["names"] == PARITY
    assert "parity/class_prediction" in entry["outputs"]


@pytest.mark.parametrize(
    ("class_names", "expected"),
    [
        (["even"], "to name each of its 2 classes once, but got ['even']"),
        (["odd", "odd"], "to name each of its 2 classes once, but got ['odd', 'odd']"),
        ("eo", "to be a list of names, but got 'eo'"),
        ([0, 1], "to be a list of names, but got [0, 1]"),
    ],
)
def test_names_that_do_not_fit_the_classes_are_refused(class_names: object, expected: str) -> None:
    with pytest.raises(ConfigError, match="Expected class_names of ImageClassifier") as caught:
        ClassificationHead(num_classes=2, in_channels=4, class_names=class_names)  # type: ignore[arg-type]
    assert expected in str(caught.value)


def test_a_recipe_whose_head_cannot_be_built_names_its_key_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five digit classes with the ten digit names of the recipe: the brick's own error, under its key."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["model"]["brick_collection"]["digit"]["init_args"]["num_classes"] = 5
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setattr(sys, "argv", ["torchbricks-lightning"])
        code = main(["fit", "--config", str(path), "--trainer.max_epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RecipeError: model.brick_collection.digit: building it raised ConfigError: ")
    assert "Expected class_names of ImageClassifier to name each of its 5 classes once" in err
    assert "Give one name per class, in class order, or leave class_names out." in err
    assert "Union" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
