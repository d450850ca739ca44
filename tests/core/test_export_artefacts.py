"""Artefacts from one model: pruned heads, ONNX and .pt2 round trips, float16, dynamic image sizes, the opset, the
manifest, file modes, and the guard against exporting losses and metrics.

The model has a preprocessor, a small conv backbone, a digit head (with its loss and metrics, dead at export) and an
auxiliary head that also reads a second input, ``meta``. Exports are shared by module-scoped fixtures: each costs
about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import torchbricks_lightning
from torchbricks_lightning import BrickCollection, BrickMetricSingle, BrickNotTrainable, BrickTrainable, Stage
from torchbricks_lightning.bag_of_bricks import ConfusionMatrixMetrics, Preprocessor, create_image_classification_head
from torchbricks_lightning.core.atomic_files import HOST
from torchbricks_lightning.core.export import ExportResult, ExportSpec, expand_specs, export_bricks
from torchbricks_lightning.errors import ConfigError, ExportError

DIGITS = [f"digit {i}" for i in range(10)]


class Combine(nn.Module):
    """Pooled features and a per-sample vector, to three logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 + 2, 3)

    def forward(self, features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([features.mean(dim=(2, 3)), meta], dim=1))


def build_model() -> BrickCollection:
    torch.manual_seed(0)
    collection = BrickCollection(
        {
            "preprocessor": BrickNotTrainable(
                Preprocessor(mean=[0.5], std=[0.25]), input_names=["raw"], output_names=["normalized"]
            ),
            "backbone": BrickTrainable(
                nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU()),
                input_names=["normalized"],
                output_names=["features"],
            ),
            "digit": create_image_classification_head(10, 4, features_name="features", targets_name="targets"),
            "aux": {"combine": BrickTrainable(Combine(), input_names=["features", "meta"], output_names=["./logits"])},
        }
    )
    collection["digit"]["classify"].model.class_names = DIGITS
    return collection.eval()


def inputs(batch: int = 2, size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "raw": torch.rand(batch, 1, size, size, generator=generator),
        "meta": torch.rand(batch, 2, generator=generator),
        "targets": torch.zeros(batch, dtype=torch.int64),
    }


def session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def eager(collection: BrickCollection, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return collection(named, Stage.EXPORT)


@pytest.fixture(scope="module")
def model() -> BrickCollection:
    return build_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artefacts")


@pytest.fixture(scope="module")
def full_onnx(model: BrickCollection, folder: Path) -> ExportResult:
    return export_bricks(folder / "full.onnx", model, inputs())


@pytest.fixture(scope="module")
def digit_onnx(model: BrickCollection, folder: Path) -> ExportResult:
    return export_bricks(
        folder / "digit.onnx",
        model,
        inputs(),
        output_names=["digit/probabilities", "digit/class_prediction"],
        dynamic_spatial=True,
        checkpoint_path=_fake_checkpoint(folder),
    )


def _fake_checkpoint(folder: Path) -> Path:
    path = folder / "weights.ckpt"
    path.write_bytes(b"not really a checkpoint, only hashed")
    return path


# ------------------------------------------------------------------------------------------------ pruning
def test_default_outputs_are_the_terminal_outputs_and_every_needed_input(full_onnx: ExportResult) -> None:
    assert full_onnx.output_names == ["digit/logits", "digit/probabilities", "digit/class_prediction", "aux/logits"]
    assert full_onnx.input_names == ["raw", "meta"]
    assert [value.name for value in session(full_onnx.path).get_inputs()] == ["raw", "meta"]


def test_a_pruned_head_export_has_only_the_inputs_it_needs(digit_onnx: ExportResult, model: BrickCollection) -> None:
    assert digit_onnx.input_names == ["raw"]  # 'meta' feeds only the aux head
    onnx_session = session(digit_onnx.path)
    assert [value.name for value in onnx_session.get_inputs()] == ["raw"]
    assert [value.name for value in onnx_session.get_outputs()] == ["digit/probabilities", "digit/class_prediction"]
    named = inputs(batch=5, size=12, seed=3)  # another batch size and image size: both are dynamic
    probabilities, prediction = onnx_session.run(None, {"raw": named["raw"].numpy()})
    expected = eager(model, named)
    np.testing.assert_allclose(probabilities, expected["digit/probabilities"].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(prediction, expected["digit/class_prediction"].numpy())


def test_a_pruned_graph_runs_fewer_bricks(model: BrickCollection, digit_onnx: ExportResult) -> None:
    calls: Counter[str] = Counter()
    handles = [
        brick.register_forward_hook(lambda module, args, output, path=path: calls.update([path]))
        for path, brick in model.named_bricks()
    ]
    try:
        eager(model, inputs())
        full = dict(calls)
        calls.clear()
        with torch.no_grad():
            model.select(["digit/probabilities"], Stage.EXPORT)({"raw": inputs()["raw"]}, Stage.EXPORT)
        pruned = dict(calls)
    finally:
        for handle in handles:
            handle.remove()
    assert full == {"preprocessor": 1, "backbone": 1, "digit/classify": 1, "aux/combine": 1}
    assert pruned == {"preprocessor": 1, "backbone": 1, "digit/classify": 1}
    assert digit_onnx.manifest["bricks"] == ["preprocessor", "backbone", "digit/classify"]
    # The artefact holds no trace of the aux head: fewer ONNX nodes than the full export's, no 'meta'.
    digit_graph = onnx.load(digit_onnx.path).graph
    assert all("meta" not in node.input for node in digit_graph.node)


def test_eager_pruned_outputs_equal_the_full_runs(model: BrickCollection) -> None:
    named = inputs(batch=3, seed=1)
    full = eager(model, named)
    for head in (["digit/probabilities"], ["aux/logits"], ["digit/class_prediction", "aux/logits"]):
        pruned = model.select(head, Stage.EXPORT)
        with torch.no_grad():
            outputs = pruned({name: named[name] for name in pruned.input_names(Stage.EXPORT)}, Stage.EXPORT)
        for name in head:
            assert torch.equal(outputs[name], full[name]), name


def test_the_full_export_matches_eager_at_another_batch_size(full_onnx: ExportResult, model: BrickCollection) -> None:
    named = inputs(batch=7, seed=2)
    got = session(full_onnx.path).run(None, {"raw": named["raw"].numpy(), "meta": named["meta"].numpy()})
    expected = eager(model, named)
    for name, value in zip(full_onnx.output_names, got, strict=True):
        np.testing.assert_allclose(value, expected[name].numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------------ formats
def test_pt2_round_trip(model: BrickCollection, folder: Path) -> None:
    result = export_bricks(folder / "aux.pt2", model, inputs(), output_names=["aux/logits"])
    assert result.format == "pt2"
    assert result.input_names == ["raw", "meta"]
    assert result.manifest["verification"]["runtime"] == "torch.export.load"
    program = torch.export.load(str(result.path))
    named = inputs(batch=5, seed=4)
    (logits,) = program.module()(named["raw"], named["meta"])
    torch.testing.assert_close(logits, eager(model, named)["aux/logits"], rtol=1e-5, atol=1e-6)


def test_float16_onnx_round_trip(model: BrickCollection, folder: Path) -> None:
    result = export_bricks(folder / "half.onnx", model, inputs(), output_names=["digit/probabilities"], dtype="float16")
    assert result.dtype == "float16"
    graph = onnx.load(result.path).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    weight_types = {init.data_type for init in graph.initializer if init.data_type != onnx.TensorProto.INT64}
    assert weight_types == {onnx.TensorProto.FLOAT16}  # no float32 weights left
    assert result.manifest["inputs"][0]["dtype"] == "float16"
    assert result.manifest["verification"]["atol"] == pytest.approx(1e-2)  # a tolerance that fits float16
    named = inputs(batch=4, seed=5)
    (probabilities,) = session(result.path).run(None, {"raw": named["raw"].half().numpy()})
    assert probabilities.dtype == np.float16
    # Close to the float32 model the user trained, within float16's precision.
    np.testing.assert_allclose(probabilities, eager(model, named)["digit/probabilities"].numpy(), atol=2e-3)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left in float32


def test_float16_pt2_round_trip(model: BrickCollection, folder: Path) -> None:
    result = export_bricks(folder / "half.pt2", model, inputs(), output_names=["aux/logits"], dtype="float16")
    named = inputs(batch=3, seed=6)
    (logits,) = torch.export.load(str(result.path)).module()(named["raw"].half(), named["meta"].half())
    assert logits.dtype == torch.float16
    torch.testing.assert_close(logits.float(), eager(model, named)["aux/logits"], atol=1e-2, rtol=1e-2)


def test_dynamic_spatial_dimensions_are_named_and_checked_at_a_second_shape(digit_onnx: ExportResult) -> None:
    assert digit_onnx.manifest["inputs"] == [
        {"name": "raw", "dtype": "float32", "shape": ["batch", 1, "height", "width"]}
    ]
    dims = [d.dim_param or d.dim_value for d in onnx.load(digit_onnx.path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]  # the ONNX file names them too
    shapes = digit_onnx.manifest["verification"]["input_shapes"]
    assert shapes == [{"raw": [2, 1, 8, 8]}, {"raw": [3, 1, 16, 16]}]


class FixedSize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 2)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.fc(raw.flatten(start_dim=1))


def test_a_model_that_fixes_the_image_size_cannot_be_exported_with_dynamic_spatial(tmp_path: Path) -> None:
    collection = BrickCollection({"net": BrickTrainable(FixedSize(), ["raw"], ["logits"])})
    with pytest.raises(ExportError, match="dynamic_spatial=False"):
        export_bricks(tmp_path / "fixed.onnx", collection, {"raw": torch.rand(2, 1, 8, 8)}, dynamic_spatial=True)
    assert list(tmp_path.iterdir()) == []
    result = export_bricks(tmp_path / "fixed.onnx", collection, {"raw": torch.rand(2, 1, 8, 8)})
    assert result.manifest["inputs"][0]["shape"] == ["batch", 1, 8, 8]


def test_opset(model: BrickCollection, tmp_path: Path) -> None:
    result = export_bricks(tmp_path / "m.onnx", model, inputs(), output_names=["aux/logits"], opset=18)
    assert result.manifest["artefact"]["opset"] == 18
    assert {entry.version for entry in onnx.load(result.path).opset_import if entry.domain == ""} == {18}
    with pytest.raises(ExportError, match="opset 17 was asked for, but torch's ONNX exporter wrote opset 18"):
        export_bricks(tmp_path / "old.onnx", model, inputs(), output_names=["aux/logits"], opset=17)
    assert not (tmp_path / "old.onnx").exists()
    with pytest.raises(ConfigError, match="opset applies to ONNX exports only"):
        export_bricks(tmp_path / "m.pt2", model, inputs(), opset=18)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("model.onnx", {"format": "pt2"}, "Format 'pt2' writes '.pt2' files"),
        ("model.pt", {}, "must end with '.onnx' or '.pt2'"),
        ("model.onnx", {"dtype": "bfloat16"}, "dtype to be one of \\['float32', 'float16'\\]"),
        ("model.onnx", {"output_names": ["digit/probabilites"]}, "Did you mean 'digit/probabilities'"),
    ],
)
def test_bad_options_fail_before_anything_is_traced(
    model: BrickCollection, tmp_path: Path, name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        export_bricks(tmp_path / name, model, inputs(), **options)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ manifest
def test_the_manifest_records_every_field(digit_onnx: ExportResult, folder: Path) -> None:
    path = folder / "digit.onnx.json"
    assert digit_onnx.manifest_path == path
    manifest = json.loads(path.read_text())
    assert manifest == digit_onnx.manifest
    assert set(manifest) == {
        "manifest_version",
        "artefact",
        "stage",
        "dtype",
        "inputs",
        "outputs",
        "bricks",
        "preprocessing",
        "class_names",
        "checkpoint",
        "verification",
        "versions",
    }
    assert manifest["manifest_version"] == 1
    artefact = digit_onnx.path.read_bytes()
    assert manifest["artefact"] == {
        "file": "digit.onnx",
        "format": "onnx",
        "sha256": hashlib.sha256(artefact).hexdigest(),
        "bytes": len(artefact),
        "opset": onnx.load(digit_onnx.path).opset_import[0].version,
    }
    assert manifest["stage"] == "export"
    assert manifest["dtype"] == "float32"
    assert manifest["inputs"] == [{"name": "raw", "dtype": "float32", "shape": ["batch", 1, "height", "width"]}]
    assert manifest["outputs"] == [
        {"name": "digit/probabilities", "dtype": "float32", "shape": ["batch", 10]},
        {"name": "digit/class_prediction", "dtype": "int64", "shape": ["batch"]},
    ]
    assert manifest["bricks"] == ["preprocessor", "backbone", "digit/classify"]
    assert manifest["preprocessing"] == [
        {
            "brick": "preprocessor",
            "input": "raw",
            "output": "normalized",
            "mean": [0.5],
            "std": [0.25],
            "formula": "(raw - mean) / std",
        }
    ]
    assert manifest["class_names"] == {
        "digit/classify": {
            "outputs": ["digit/logits", "digit/probabilities", "digit/class_prediction"],
            "names": DIGITS,
        }
    }
    checkpoint = folder / "weights.ckpt"
    assert manifest["checkpoint"] == {
        "path": str(checkpoint),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }
    verification = manifest["verification"]
    assert verification["runtime"] == "onnxruntime"
    assert (verification["atol"], verification["rtol"]) == (1e-4, 1e-3)
    assert set(verification["max_abs_diff"]) == {"digit/probabilities", "digit/class_prediction"}
    assert verification["max_abs_diff"]["digit/probabilities"] < 1e-5
    assert verification["max_abs_diff"]["digit/class_prediction"] == 0
    assert manifest["versions"] == {
        "torchbricks_lightning": torchbricks_lightning.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def test_an_unverified_export_says_so_and_a_model_without_preprocessing_or_class_names_has_none(
    tmp_path: Path,
) -> None:
    collection = BrickCollection({"net": BrickTrainable(nn.Linear(3, 2), ["raw"], ["logits"])})
    result = export_bricks(tmp_path / "net.pt2", collection, {"raw": torch.rand(2, 3)}, verify=False)
    assert result.max_abs_diff == {}
    assert result.manifest["verification"] is None
    assert result.manifest["preprocessing"] == []
    assert result.manifest["class_names"] == {}
    assert result.manifest["checkpoint"] is None
    assert set(result.manifest["versions"]) == {"torchbricks_lightning", "torch"}


# ------------------------------------------------------------------------------------------------ losses and metrics
def test_a_loss_alive_in_the_exported_stage_is_an_error_that_names_it_and_the_fix(tmp_path: Path) -> None:
    collection = build_model()
    collection["digit"]["loss"].alive_stages = "all"
    with pytest.raises(ExportError) as info:
        export_bricks(tmp_path / "model.onnx", collection, inputs())
    message = str(info.value)
    assert "brick 'digit/loss' is a loss brick alive in it" in message
    assert "alive_stages=['train', 'validation', 'test']" in message
    assert "'digit/loss_ce'" in message  # how to export it on purpose
    assert list(tmp_path.iterdir()) == []
    # Pruned away by explicit outputs: nothing of the loss is exported.
    pruned = export_bricks(tmp_path / "digit.onnx", collection, inputs(), output_names=["digit/probabilities"])
    assert pruned.input_names == ["raw"]
    # Asked for by name: exported on purpose, with the targets as an input.
    asked = export_bricks(
        tmp_path / "loss.onnx", collection, inputs(), output_names=["digit/probabilities", "digit/loss_ce"]
    )
    assert asked.input_names == ["raw", "targets"]
    assert [value.name for value in session(asked.path).get_outputs()] == ["digit/probabilities", "digit/loss_ce"]


def test_a_metric_alive_in_the_exported_stage_is_an_error(tmp_path: Path) -> None:
    collection = build_model()
    collection["digit"]["metrics"] = BrickMetricSingle(
        ConfusionMatrixMetrics(10), input_names=["./class_prediction", "targets"], alive_stages="all"
    )
    with pytest.raises(ExportError, match=r"brick 'digit/metrics' is a metric brick alive in it.*dead in 'export'"):
        export_bricks(tmp_path / "model.pt2", collection, inputs())


# ------------------------------------------------------------------------------------------------ several artefacts
def test_one_artefact_per_head(model: BrickCollection, tmp_path: Path) -> None:
    specs = expand_specs([ExportSpec("{head}.onnx", dtype="float16")], model, "export", folder=tmp_path)
    assert [(Path(spec.path).name, spec.output_names, spec.dtype) for spec in specs] == [
        ("digit.onnx", ["digit/logits", "digit/probabilities", "digit/class_prediction"], "float16"),
        ("aux.onnx", ["aux/logits"], "float16"),
    ]
    with pytest.raises(ConfigError, match="cannot take output_names"):
        expand_specs([ExportSpec("{head}.onnx", output_names=["aux/logits"])], model, "export")
    with pytest.raises(ConfigError, match="Several artefacts would be written to"):
        expand_specs([ExportSpec("a.onnx"), ExportSpec("a.onnx")], model, "export")
    with pytest.raises(ConfigError, match="placeholder other than"):
        expand_specs([ExportSpec("{task}.onnx")], model, "export")


# ------------------------------------------------------------------------------------------------ files
def test_files_get_the_mode_the_umask_gives_new_files(model: BrickCollection, tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        result = export_bricks(tmp_path / "m.onnx", model, inputs(), output_names=["aux/logits"])
        reference = tmp_path / "plain.txt"
        reference.write_text("a file written the ordinary way")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(reference.stat().st_mode)
    assert mode == 0o640
    assert stat.S_IMODE(result.path.stat().st_mode) == mode  # not mkstemp's 0o600
    assert result.manifest_path is not None
    assert stat.S_IMODE(result.manifest_path.stat().st_mode) == mode


def test_stale_temporaries_of_killed_exports_are_removed(model: BrickCollection, tmp_path: Path) -> None:
    dead_pid = _dead_pid()
    stale = [
        tmp_path / f".m.{HOST}.{dead_pid}.0badf00d.tmp.onnx",
        tmp_path / f".m.{HOST}.{dead_pid}.0badf00d.tmp.onnx.json",
    ]
    alive = tmp_path / f".m.{HOST}.{os.getppid()}.c0ffee00.tmp.onnx"  # a concurrent export of a running process
    unrelated = tmp_path / f".other.{HOST}.1.00000000.tmp.onnx"
    for path in [*stale, alive, unrelated]:
        path.write_bytes(b"")
    export_bricks(tmp_path / "m.onnx", model, inputs(), output_names=["aux/logits"], verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", "m.onnx.json", alive.name, unrelated.name])


def _dead_pid() -> int:
    pid = 2**22 - 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_directory_as_the_output_path_is_an_export_error(model: BrickCollection, tmp_path: Path) -> None:
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(ExportError, match=r"'.*model\.onnx' is a directory; give a file path"):
        export_bricks(tmp_path / "model.onnx", model, inputs())


def test_a_read_only_artefact_is_kept_with_an_export_error(model: BrickCollection, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an artefact someone protected")
    path.chmod(0o444)
    with pytest.raises(ExportError, match="is read-only; make it writable or remove it"):
        export_bricks(path, model, inputs())
    assert path.read_bytes() == b"an artefact someone protected"


def test_an_unwritable_folder_is_an_export_error(model: BrickCollection, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="Cannot create the folder"):
        export_bricks(blocker / "exports" / "model.onnx", model, inputs())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_an_export_error(model: BrickCollection, tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ExportError, match="is not writable"):
            export_bricks(folder / "model.onnx", model, inputs())
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------------------------------------ random generators
def test_an_export_moves_no_random_generator(model: BrickCollection, tmp_path: Path) -> None:
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    export_bricks(tmp_path / "m.onnx", model, inputs(), output_names=["aux/logits"], dynamic_spatial=True)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0]
    assert np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
