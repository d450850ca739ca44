"""ONNX export of one stage: names, dead bricks, dynamic batch, atomic writes and verification."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from conftest import boring_bricks
from torch import nn

from torchbricks_lightning import (
    BrickCollection,
    BrickLoss,
    BrickMetricSingle,
    BrickNotTrainable,
    BrickTrainable,
    ExportResult,
    Stage,
    export_bricks_as_onnx,
)
from torchbricks_lightning.bag_of_bricks import (
    ImageClassifier,
    Preprocessor,
    create_image_classification_head,
    resnet_to_brick,
)
from torchbricks_lightning.errors import BrickDefinitionError, ConfigError, ExportError, MissingInputError


def _inputs(batch_size: int = 4) -> dict[str, torch.Tensor]:
    return {"raw": torch.randn(batch_size, 5), "targets": torch.arange(batch_size) % 3}


def _session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _first_dims(values: list[onnx.ValueInfoProto]) -> dict[str, onnx.TensorShapeProto.Dimension]:
    return {value.name: value.type.tensor_type.shape.dim[0] for value in values}


def _modes(collection: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in collection.named_modules()}


class DataDependentBranch(nn.Module):
    """Python control flow on tensor values: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x + 1
        return x - 1


class BehavesDifferentlyWhenExporting(nn.Module):
    """Traces fine, but the traced model computes something else than the eager one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return x + 1
        return x


def _with_extra_brick(module: nn.Module) -> BrickCollection:
    bricks = boring_bricks()
    bricks["extra"] = BrickNotTrainable(module, input_names=["logits"], output_names=["extra"])
    return BrickCollection(bricks)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- names and stages
def test_export_with_dynamic_batch_size(tmp_path: Path) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    collection.train()
    collection["backbone"].eval()  # a mixed state that must come back exactly
    modes_before = _modes(collection)
    inputs = _inputs(batch_size=4)
    path = tmp_path / "nested" / "model.onnx"

    result = export_bricks_as_onnx(path, collection, inputs, dynamic_batch_size=True)

    assert isinstance(result, ExportResult)
    assert result.path == path
    assert path.is_file()
    assert _modes(collection) == modes_before
    # Only bricks alive in EXPORT: 'raw' is the only input (no targets), no loss and no metric; the outputs are the
    # terminal ones (values no alive brick reads), not the intermediate 'processed', 'features' and 'logits'.
    expected_outputs = ["probabilities", "class_prediction"]
    assert result.input_names == ["raw"]
    assert result.output_names == expected_outputs
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert [value.name for value in model.graph.input] == ["raw"]
    assert [value.name for value in model.graph.output] == expected_outputs
    for dim in [*_first_dims(model.graph.input).values(), *_first_dims(model.graph.output).values()]:
        assert dim.dim_param
        assert not dim.HasField("dim_value")
    assert set(result.max_abs_diff) == set(expected_outputs)
    assert max(result.max_abs_diff.values()) < 1e-5

    # A batch size other than the example's runs, and matches eager PyTorch.
    other = torch.randn(7, 5)
    session = _session(path)
    assert [value.name for value in session.get_inputs()] == ["raw"]
    onnx_outputs = session.run(None, {"raw": other.numpy()})
    collection.eval()
    with torch.no_grad():
        eager = collection({"raw": other}, Stage.EXPORT)
    for name, got in zip(expected_outputs, onnx_outputs, strict=True):
        assert got.shape[0] == 7
        np.testing.assert_allclose(got, eager[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_export_with_fixed_batch_size(tmp_path: Path) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    path = tmp_path / "fixed.onnx"

    result = export_bricks_as_onnx(path, collection, _inputs(batch_size=3), dynamic_batch_size=False)

    model = onnx.load(path)
    for name, dim in {**_first_dims(model.graph.input), **_first_dims(model.graph.output)}.items():
        assert dim.dim_value == 3, name
        assert not dim.dim_param, name
    session = _session(path)
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument, match="raw"):
        session.run(None, {"raw": np.zeros((5, 5), dtype=np.float32)})
    assert result.max_abs_diff["probabilities"] < 1e-5


def test_export_keeps_nested_names_and_selected_outputs(tmp_path: Path) -> None:
    collection = BrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(5, 6), input_names=["raw"], output_names=["features"]),
            "head0": create_image_classification_head(3, 6, features_name="features", targets_name="targets"),
            "head1": create_image_classification_head(4, 6, features_name="features", targets_name="targets"),
        }
    )
    path = tmp_path / "heads.onnx"
    inputs = _inputs()

    result = export_bricks_as_onnx(
        path, collection, inputs, output_names=["head0/logits", "head1/class_prediction"], dynamic_batch_size=True
    )

    assert result.output_names == ["head0/logits", "head1/class_prediction"]
    session = _session(path)
    assert [value.name for value in session.get_outputs()] == ["head0/logits", "head1/class_prediction"]
    assert [value.name for value in session.get_inputs()] == ["raw"]
    logits, prediction = session.run(None, {"raw": inputs["raw"].numpy()})
    collection.eval()
    with torch.no_grad():
        eager = collection({"raw": inputs["raw"]}, Stage.EXPORT)
    np.testing.assert_allclose(logits, eager["head0/logits"].numpy(), rtol=1e-4, atol=1e-5)
    assert prediction.dtype == np.int64
    np.testing.assert_array_equal(prediction, eager["head1/class_prediction"].numpy())


def test_export_a_custom_stage_only_exports_bricks_alive_there(tmp_path: Path) -> None:
    bricks = boring_bricks()
    del bricks["accuracy"]  # metrics are stateful and not traceable
    collection = BrickCollection(bricks)  # type: ignore[arg-type]
    inputs = _inputs()

    # The loss is alive in VALIDATION; asked for by name, it is exported, and targets become an input.
    result = export_bricks_as_onnx(
        tmp_path / "validation.onnx", collection, inputs, stage="validation", output_names=["logits", "loss_ce"]
    )

    assert result.input_names == ["raw", "targets"]
    assert "loss_ce" in result.output_names
    session = _session(result.path)
    assert [value.name for value in session.get_inputs()] == ["raw", "targets"]
    feeds = {"raw": inputs["raw"].numpy(), "targets": inputs["targets"].numpy()}
    loss = session.run(["loss_ce"], feeds)[0]
    collection.eval()
    with torch.no_grad():
        expected = collection(inputs, Stage.VALIDATION)["loss_ce"]
    np.testing.assert_allclose(loss, expected.numpy(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------- atomic writes
@dataclass
class FailedExport:
    error: ExportError
    folder_after: list[str]
    modes_before: dict[str, bool]
    modes_after: dict[str, bool]


@pytest.fixture(scope="module")
def untraceable_export(tmp_path_factory: pytest.TempPathFactory) -> FailedExport:
    """One export of a brick with data-dependent control flow, shared by the tests that inspect it."""
    folder = tmp_path_factory.mktemp("untraceable")
    collection = _with_extra_brick(DataDependentBranch())
    collection.train()
    modes_before = _modes(collection)
    with pytest.raises(ExportError, match=r"Could not export stage 'export'.*Nothing was written") as error:
        export_bricks_as_onnx(folder / "model.onnx", collection, _inputs())
    return FailedExport(error.value, sorted(p.name for p in folder.iterdir()), modes_before, _modes(collection))


def test_untraceable_brick_raises_and_writes_nothing(untraceable_export: FailedExport) -> None:
    assert type(untraceable_export.error) is ExportError
    assert untraceable_export.folder_after == []  # no .onnx file, no temporary file
    assert untraceable_export.modes_after == untraceable_export.modes_before


def test_failed_export_leaves_an_existing_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    good = export_bricks_as_onnx(path, BrickCollection(boring_bricks()), _inputs())  # type: ignore[arg-type]
    assert good.path == path
    content = path.read_bytes()

    with pytest.raises(ExportError):
        export_bricks_as_onnx(path, _with_extra_brick(DataDependentBranch()), _inputs())

    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]


def test_untraceable_brick_error_names_the_cause(untraceable_export: FailedExport) -> None:
    """The error should say why tracing failed (here, data-dependent control flow), in plain text.

    Only the first line of torch's exception is kept now, which is a generic "Failed to export the model
    with torch.export. This is step 1/3 ... Next steps:" with terminal colour codes, so the user cannot
    tell which brick or which line is the problem without reading the chained exception, although the
    collection already noted the failing brick ("While running brick 'extra' ...") on the root cause.
    """
    message = str(untraceable_export.error)
    assert "data-dependent" in message, message
    assert "brick 'extra'" in message, message  # the collection attaches this note to torch's error; keep it
    assert "\x1b[" not in message, message


def test_onnx_disagreeing_with_eager_raises_and_writes_nothing(tmp_path: Path) -> None:
    collection = _with_extra_brick(BehavesDifferentlyWhenExporting())
    path = tmp_path / "model.onnx"

    with pytest.raises(ExportError, match=r"disagrees with eager PyTorch in onnxruntime .*'extra': max abs diff 1"):
        export_bricks_as_onnx(path, collection, _inputs())

    assert list(tmp_path.iterdir()) == []


def test_verify_false_writes_the_disagreeing_file(tmp_path: Path) -> None:
    collection = _with_extra_brick(BehavesDifferentlyWhenExporting())
    path = tmp_path / "model.onnx"
    inputs = _inputs()

    result = export_bricks_as_onnx(path, collection, inputs, verify=False, output_names=["logits", "extra"])

    assert result.max_abs_diff == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]
    logits, extra = _session(path).run(None, {"raw": inputs["raw"].numpy()})
    np.testing.assert_allclose(extra, logits + 1, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- argument errors
def test_missing_input_for_the_export_stage_raises(tmp_path: Path) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    with pytest.raises(MissingInputError, match="needs input 'raw' in stage 'export'"):
        export_bricks_as_onnx(tmp_path / "model.onnx", collection, {"targets": torch.tensor([0, 1])})
    assert list(tmp_path.iterdir()) == []


def test_missing_input_of_a_stage_chosen_by_string_raises(tmp_path: Path) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    with pytest.raises(MissingInputError, match="needs input 'targets' in stage 'train'"):
        export_bricks_as_onnx(
            tmp_path / "model.onnx", collection, {"raw": torch.randn(2, 5)}, stage="train", output_names=["loss_ce"]
        )


@pytest.mark.parametrize("name", ["model.onx", "model", "model.onnx.bak"])
def test_path_not_ending_in_onnx_raises(tmp_path: Path, name: str) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Expected path_onnx to end with '\.onnx'"):
        export_bricks_as_onnx(tmp_path / name, collection, _inputs())
    assert list(tmp_path.iterdir()) == []


def test_unknown_output_name_raises(tmp_path: Path) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"output_names \['loss_ce'\] are not produced in stage 'export'"):
        export_bricks_as_onnx(tmp_path / "model.onnx", collection, _inputs(), output_names=["logits", "loss_ce"])
    assert list(tmp_path.iterdir()) == []


def test_non_tensor_input_raises(tmp_path: Path) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    with pytest.raises(BrickDefinitionError, match=r"Exported inputs must be tensors, but \['raw'\]"):
        export_bricks_as_onnx(tmp_path / "model.onnx", collection, {"raw": [[0.0] * 5]})


@pytest.mark.parametrize("named_inputs", [torch.randn(2, 5), [torch.randn(2, 5)]], ids=["tensor", "list"])
def test_named_inputs_that_are_not_a_dict_raise(tmp_path: Path, named_inputs: object) -> None:
    collection = BrickCollection(boring_bricks())  # type: ignore[arg-type]
    with pytest.raises(BrickDefinitionError, match=r"Expected named_inputs to be a dict") as info:
        export_bricks_as_onnx(tmp_path / "model.onnx", collection, named_inputs)  # type: ignore[arg-type]
    assert f"got {type(named_inputs).__name__}. Stage 'export' needs ['raw']" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- spec example
def test_spec_onnx_example_with_resnet18(tmp_path: Path) -> None:
    num_classes = 10
    resnet = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    resnet_brick = resnet_to_brick(resnet=resnet, input_name="normalized", output_name="features")
    n_features = resnet_brick.model.n_backbone_features
    bricks = {
        "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
        "backbone": resnet_brick,
        "head": BrickTrainable(
            ImageClassifier(num_classes=num_classes, n_features=n_features),
            input_names=["features"],
            output_names=["logits", "probabilities", "class_prediction"],
        ),
        "accuracy": BrickMetricSingle(torchmetrics_accuracy(num_classes), input_names=["class_prediction", "targets"]),
        "loss": BrickLoss(model=nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["loss_ce"]),
    }
    brick_collection = BrickCollection(bricks)
    batch_size = 2
    named_inputs = {"raw": torch.rand((batch_size, 3, 32, 32)), "targets": torch.ones(batch_size, dtype=torch.int64)}
    brick_collection(named_inputs=named_inputs, stage=Stage.TRAIN)  # a training step moves batch norm statistics
    brick_collection.train()
    path_onnx = tmp_path / "readme_model.onnx"

    result = export_bricks_as_onnx(
        path_onnx=path_onnx,
        brick_collection=brick_collection,
        named_inputs=named_inputs,
        dynamic_batch_size=True,
        stage=Stage.EXPORT,
    )

    assert brick_collection.training
    assert brick_collection["backbone"].model.bn1.training
    assert result.input_names == ["raw"]
    assert result.output_names == ["logits", "probabilities", "class_prediction"]
    assert result.max_abs_diff["probabilities"] < 1e-4
    session = _session(path_onnx)
    images = torch.rand(3, 3, 32, 32)
    probabilities = session.run(["probabilities"], {"raw": images.numpy()})[0]
    brick_collection.eval()
    with torch.no_grad():
        expected = brick_collection({"raw": images}, Stage.EXPORT)["probabilities"]
    np.testing.assert_allclose(probabilities, expected.numpy(), rtol=1e-3, atol=1e-5)


def torchmetrics_accuracy(num_classes: int) -> nn.Module:
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(num_classes=num_classes)
