"""ExportOptions: one set of defaults for every entry point, checked at construction, and export_artefacts, the one
function that writes several artefacts (each spec taking what it leaves out from the options)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import N_FEATURES, boring_bricks

from torchbricks_lightning import BrickCollection, Stage, export_bricks, export_bricks_as_onnx
from torchbricks_lightning.callbacks import OnnxExportCallback
from torchbricks_lightning.cli.export import export_parser
from torchbricks_lightning.core.export import ExportOptions, ExportSpec, export_artefacts, plan_artefacts
from torchbricks_lightning.core.export.options import ExportOptionFields
from torchbricks_lightning.errors import ConfigError, UnknownStageError
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx

DEFAULTS = {field.name: field.default for field in dataclasses.fields(ExportOptions)}


def _collection() -> BrickCollection:
    return BrickCollection(boring_bricks())  # type: ignore[arg-type]


def _inputs() -> dict[str, torch.Tensor]:
    return {"raw": torch.randn(3, N_FEATURES)}


# ------------------------------------------------------------------------------------------------ defaults
@pytest.mark.parametrize(
    "entry_point",
    [export_bricks_as_onnx, export_checkpoint_as_onnx, OnnxExportCallback.__init__],
    ids=lambda entry_point: entry_point.__qualname__,
)
def test_each_entry_points_defaults_are_the_options_defaults(entry_point: Any) -> None:
    parameters = inspect.signature(entry_point).parameters
    shared = {name: parameters[name].default for name in DEFAULTS if name in parameters}
    assert "dynamic_batch_size" in shared
    assert shared == {name: DEFAULTS[name] for name in shared}


def test_the_export_commands_defaults_are_the_options_defaults() -> None:
    defaults = vars(export_parser().get_defaults())
    shared = {name: defaults[name] for name in DEFAULTS if name in defaults}
    shared["stage"] = Stage(shared["stage"])
    assert set(shared) == set(DEFAULTS) - {"atol", "rtol"}
    assert shared == {name: DEFAULTS[name] for name in shared}


def test_the_keyword_overrides_name_every_option() -> None:
    assert set(ExportOptionFields.__annotations__) == set(DEFAULTS)


# ------------------------------------------------------------------------------------------------ checks
@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"format": "tflite"}, ConfigError, r"Unknown export format 'tflite'; expected one of \['onnx', 'pt2'\]"),
        ({"dtype": "bfloat16"}, ConfigError, r"dtype to be one of \['float32', 'float16'\]"),
        ({"dynamic_batch_size": "yes"}, ConfigError, "Expected `dynamic_batch_size` to be a bool, but got 'yes'"),
        ({"verify": 1}, ConfigError, "Expected `verify` to be a bool"),
        ({"opset": 0}, ConfigError, "Expected `opset` to be a positive int or None, but got 0"),
        ({"opset": True}, ConfigError, "Expected `opset` to be a positive int"),
        ({"opset": 18, "format": "pt2"}, ConfigError, "opset applies to ONNX exports only"),
        ({"atol": -1.0}, ConfigError, "Expected `atol` to be a non-negative number"),
        ({"rtol": float("nan")}, ConfigError, "Expected `rtol` to be a non-negative number"),
        ({"output_names": "probabilities"}, ConfigError, r"Wrap it in a list: \['probabilities'\]"),
        ({"stage": "exprot"}, UnknownStageError, "Did you mean 'export'"),
    ],
)
def test_bad_fields_fail_at_construction(fields: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ExportOptions(**fields)


def test_fields_are_normalised() -> None:
    options = ExportOptions(stage="inference", output_names=["logits"], dtype=torch.float16, atol=1)  # type: ignore[arg-type]
    assert (options.stage, options.output_names, options.dtype, options.atol) == (
        Stage.INFERENCE,
        ("logits",),
        "float16",
        1.0,
    )


def test_an_unknown_keyword_option_says_what_was_meant(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"export_bricks got an unknown option 'dynamic_batch'\. Did you mean"):
        export_bricks(tmp_path / "m.onnx", _collection(), _inputs(), dynamic_batch=False)  # type: ignore[call-arg]
    assert list(tmp_path.iterdir()) == []


def test_keyword_options_replace_those_of_the_options_object(tmp_path: Path) -> None:
    result = export_bricks(
        tmp_path / "m.onnx", _collection(), _inputs(), ExportOptions(dynamic_batch_size=False), verify=False
    )
    assert result.manifest["inputs"][0]["shape"] == [3, N_FEATURES]
    assert result.manifest["verification"] is None


# ------------------------------------------------------------------------------------------------ several artefacts
def test_specs_take_what_they_leave_out_from_the_options(tmp_path: Path) -> None:
    specs = [ExportSpec("a.onnx"), ExportSpec("b.pt2", dtype="float32"), ExportSpec("c.onnx", output_names=["logits"])]
    planned = plan_artefacts(specs, _collection(), ExportOptions(dtype="float16", opset=18), folder=tmp_path)
    assert [(each.path, each.options.format, each.options.dtype, each.options.opset) for each in planned] == [
        (tmp_path / "a.onnx", "onnx", "float16", 18),
        (tmp_path / "b.pt2", "pt2", "float32", None),  # a .pt2 among several has no opset
        (tmp_path / "c.onnx", "onnx", "float16", 18),
    ]
    assert [each.options.output_names for each in planned] == [None, None, ("logits",)]


def test_every_artefact_is_checked_before_the_first_is_written(tmp_path: Path) -> None:
    specs = [ExportSpec("a.onnx"), ExportSpec("b.onnx", output_names=["probabilites"])]
    with pytest.raises(ConfigError, match="Did you mean 'probabilities'"):
        export_artefacts(specs, _collection(), _inputs(), folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_head_paths_refuse_shared_output_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="writes one artefact per head"):
        export_artefacts("{head}.onnx", _collection(), _inputs(), ExportOptions(output_names=["logits"]))


def test_several_artefacts_share_the_options(tmp_path: Path) -> None:
    results = export_artefacts(
        [ExportSpec("a.onnx"), ExportSpec("b.pt2")],
        _collection(),
        _inputs(),
        ExportOptions(dynamic_batch_size=False, output_names=["probabilities"]),
        folder=tmp_path,
    )
    assert [(r.path.name, r.output_names, r.manifest["inputs"][0]["shape"]) for r in results] == [
        ("a.onnx", ["probabilities"], [3, N_FEATURES]),
        ("b.pt2", ["probabilities"], [3, N_FEATURES]),
    ]
