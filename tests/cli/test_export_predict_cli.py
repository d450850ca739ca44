"""``torchbricks-lightning export`` writing several checked artefacts from one checkpoint, every export entry point
giving the same artefact when no option is given, and ``predict --output_dir`` streaming predictions to files. One
in-process fit of the tiny recipe serves every test; the commands users type run in a subprocess where it matters
(the console script, what it prints)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_runs import exit_code, run_script

from torchbricks_lightning import export_bricks, export_bricks_as_onnx
from torchbricks_lightning.datamodules.synthetic import make_images
from torchbricks_lightning.lightning import LightningBrickCollection
from torchbricks_lightning.lightning.export import export_checkpoint, export_checkpoint_as_onnx

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
QUIET = ["--trainer.enable_progress_bar", "false"]
HEAD = ["head0/logits", "head0/probabilities", "head0/class_prediction"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fit")
    assert exit_code(["fit", "--config", str(RECIPE), *QUIET], folder) == 0
    path = folder / "checkpoints" / "last.ckpt"
    assert path.is_file()
    return path


# ------------------------------------------------------------------------------------------------ export
def _what_the_options_decide(manifest_file: Path) -> dict[str, object]:
    """The manifest fields that the export options decide (not the weights, the checkpoint or the differences)."""
    manifest = json.loads(manifest_file.read_text())
    verification = dict(manifest["verification"])
    verification.pop("max_abs_diff")
    return {
        "format": manifest["artefact"]["format"],
        "opset": manifest["artefact"].get("opset"),
        "stage": manifest["stage"],
        "dtype": manifest["dtype"],
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "bricks": manifest["bricks"],
        "verification": verification,
    }


def test_every_entry_point_exports_the_same_artefact_when_no_option_is_given(checkpoint: Path, tmp_path: Path) -> None:
    """The recipe's ``OnnxExportCallback()`` wrote ``checkpoints/model.onnx`` at the end of the fit; the core
    functions, the Lightning helpers and the ``export`` command export the same checkpoint with no option given."""
    module = LightningBrickCollection.load_from_checkpoint(checkpoint, map_location="cpu")
    example = module.example_named_inputs()
    export_bricks(tmp_path / "core.onnx", module.brick_collection, example)
    export_bricks_as_onnx(tmp_path / "spec.onnx", module.brick_collection, example)
    export_checkpoint(checkpoint, tmp_path / "helper.onnx")
    export_checkpoint_as_onnx(checkpoint, tmp_path / "helper_as_onnx.onnx")
    assert exit_code(["export", "--ckpt_path", str(checkpoint), "--output", "cli.onnx"], tmp_path) == 0

    by_entry_point = {
        "OnnxExportCallback": checkpoint.parent / "model.onnx.json",
        "export_bricks": tmp_path / "core.onnx.json",
        "export_bricks_as_onnx": tmp_path / "spec.onnx.json",
        "export_checkpoint": tmp_path / "helper.onnx.json",
        "export_checkpoint_as_onnx": tmp_path / "helper_as_onnx.onnx.json",
        "torchbricks-lightning export": tmp_path / "cli.onnx.json",
    }
    decided = {name: _what_the_options_decide(path) for name, path in by_entry_point.items()}
    reference = decided["export_bricks"]
    assert reference["inputs"] == [{"name": "raw", "dtype": "float32", "shape": ["batch", 3, 8, 8]}]
    assert {name: options for name, options in decided.items() if options != reference} == {}
    for name in by_entry_point:
        path = by_entry_point[name].with_suffix("")
        dims = [dim.dim_param or dim.dim_value for dim in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, 8, 8], name


def test_export_one_artefact_per_head_in_float16(checkpoint: Path, tmp_path: Path) -> None:
    process = run_script(
        ["export", "--ckpt_path", str(checkpoint), "--output", "exports/{head}.onnx", "--dtype", "float16"], tmp_path
    )
    assert process.returncode == 0, process.stderr[-3000:]
    artefact = tmp_path / "exports" / "head0.onnx"
    assert "Wrote exports/head0.onnx (onnx, float16) and its manifest exports/head0.onnx.json" in process.stdout
    assert "inputs:  raw float16['batch', 3, 8, 8]" in process.stdout
    assert "checked in onnxruntime against the float32 model: max abs diff" in process.stdout
    assert sorted(path.name for path in (tmp_path / "exports").iterdir()) == ["head0.onnx", "head0.onnx.json"]
    manifest = json.loads((tmp_path / "exports" / "head0.onnx.json").read_text())
    assert manifest["dtype"] == "float16"
    assert [entry["name"] for entry in manifest["outputs"]] == HEAD
    assert manifest["checkpoint"] == {
        "path": str(checkpoint),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }
    assert onnx.load(artefact).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_export_several_artefacts_from_one_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    artefacts = (
        "[{path: probabilities.onnx, output_names: [head0/probabilities]}, "
        "{path: prediction.pt2, output_names: [head0/class_prediction]}]"
    )
    arguments = ["export", "--ckpt_path", str(checkpoint), "--artefacts", artefacts, "--opset", "18"]
    assert exit_code(arguments, tmp_path) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "prediction.pt2",
        "prediction.pt2.json",
        "probabilities.onnx",
        "probabilities.onnx.json",
    ]
    onnx_manifest = json.loads((tmp_path / "probabilities.onnx.json").read_text())
    assert onnx_manifest["artefact"]["opset"] == 18
    assert [entry["name"] for entry in onnx_manifest["outputs"]] == ["head0/probabilities"]
    module = LightningBrickCollection.load_from_checkpoint(checkpoint).eval()
    images = torch.rand(5, 3, 8, 8)
    (prediction,) = torch.export.load(str(tmp_path / "prediction.pt2")).module()(images)
    with torch.no_grad():
        expected = module({"raw": images})["head0/class_prediction"]
    assert torch.equal(prediction, expected)


def test_export_options_from_a_yaml_file(checkpoint: Path, tmp_path: Path) -> None:
    options = tmp_path / "export.yaml"
    options.write_text(
        f"ckpt_path: {checkpoint}\n"
        "dynamic_spatial: true\n"
        "artefacts:\n"
        "  - {path: out/model.pt2}\n"
        "  - {path: out/model.onnx, output_names: [head0/logits]}\n"
    )
    assert exit_code(["export", "--config", str(options)], tmp_path) == 0
    manifest = json.loads((tmp_path / "out" / "model.pt2.json").read_text())
    assert [entry["name"] for entry in manifest["outputs"]] == HEAD
    assert manifest["inputs"][0]["shape"] == ["batch", 3, "height", "width"]


def test_export_of_an_unknown_output_says_what_was_meant(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["export", "--ckpt_path", str(checkpoint), "--output", "m.onnx", "--output_names", "head0/probs"]
    assert exit_code(arguments, tmp_path) == 2
    assert "Did you mean 'head0/probabilities'?" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_nul_in_an_export_path_is_one_line_and_a_non_zero_exit(checkpoint: Path, tmp_path: Path) -> None:
    """A NUL cannot come through argv, but it can through YAML: ``--config`` or ``--artefacts`` (``"\\0"``)."""
    options = tmp_path / "export.yaml"
    options.write_text(f'ckpt_path: {checkpoint}\noutput: "exports/m\\0.onnx"\n')
    by_config = run_script(["export", "--config", str(options)], tmp_path)
    by_artefacts = run_script(
        ["export", "--ckpt_path", str(checkpoint), "--artefacts", '[{path: "a\\0b.pt2"}]'], tmp_path
    )
    for done, named in [(by_config, r"'exports/m\x00.onnx'"), (by_artefacts, r"'a\x00b.pt2'")]:
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            f"error: Artefact path {named} holds a NUL character ('\\x00'), which no file name can hold; remove it."
        ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export.yaml"]


def test_export_needs_an_output_or_artefacts(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(["export", "--ckpt_path", str(checkpoint)], tmp_path) == 2
    assert "Give either --output" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ predict
def test_predict_writes_the_predictions_and_says_where(checkpoint: Path, tmp_path: Path) -> None:
    arguments = ["predict", "--config", str(RECIPE), "--ckpt_path", str(checkpoint), "--output_dir", "preds", *QUIET]
    process = run_script(arguments, tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Wrote 1 prediction file(s) (16 samples) to preds: rank0/dl0-batch000000.npz" in process.stdout
    assert "head0/probabilities (float32)" in process.stdout
    assert "index:   preds/index.json" in process.stdout

    index = json.loads((tmp_path / "preds" / "index.json").read_text())
    assert index["output_names"] == HEAD  # the inference stage's terminal outputs: no images, no features
    (entry,) = index["files"]
    assert entry["samples"] == list(range(16))
    images, _ = make_images(16, 4, 8, seed=2)  # the datamodule's predict split
    module = LightningBrickCollection.load_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        expected = module({"raw": images})
    with np.load(tmp_path / "preds" / entry["file"]) as arrays:
        np.testing.assert_allclose(arrays["head0/probabilities"], expected["head0/probabilities"].numpy(), atol=1e-6)
        np.testing.assert_array_equal(arrays["head0/class_prediction"], expected["head0/class_prediction"].numpy())


def test_predict_without_an_output_dir_says_how_to_write_the_predictions(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(["predict", "--config", str(RECIPE), "--ckpt_path", str(checkpoint), *QUIET], tmp_path) == 0
    assert "predict wrote nothing: pass --output_dir DIR" in capsys.readouterr().err
