"""Every example recipe's model exports each of its heads as an artefact of its own, and each matches eager PyTorch.

The model is built from the recipe as the CLI builds it (``TorchBricksCLI(run=False)``, untrained weights: the
export does not depend on training) and exported with ``{head}.onnx``, the spelling a recipe's
``OnnxExportCallback(filename="{head}.onnx")`` or ``torchbricks-lightning export --output '{head}.onnx'`` uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from torchbricks_lightning import Stage
from torchbricks_lightning.cli import TorchBricksCLI
from torchbricks_lightning.core.export import ExportSpec, expand_specs, export_bricks
from torchbricks_lightning.core.outputs import head_output_names

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted((EXAMPLES / "configs").glob("*.yaml"))
IMAGE_SHAPES = {
    "cifar10_resnet18": [3, 32, 32],
    "digit_scenes": [1, 64, 64],
    "digits_multitask": [1, 8, 8],
    "synthetic_multitask": [3, 16, 16],
}


def _preprocessing(config: Path) -> dict[str, list[float]] | None:
    """The preprocessor's mean and std as the recipe writes them (None: its defaults)."""
    recipe = yaml.safe_load(config.read_text())
    preprocessor = recipe["model"]["brick_collection"]["preprocessor"]["init_args"]["model"]
    return preprocessor.get("init_args")


def test_every_recipe_is_covered() -> None:
    assert {config.stem for config in CONFIGS} == set(IMAGE_SHAPES)


@pytest.mark.parametrize("config", CONFIGS, ids=[config.stem for config in CONFIGS])
def test_each_head_of_the_recipe_exports_on_its_own_and_matches_eager(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["torchbricks-lightning"])
    module = TorchBricksCLI(args=["--config", str(config)], run=False).model
    collection = module.brick_collection.eval()
    heads = head_output_names(collection.plan(Stage.EXPORT))
    assert len(heads) >= 1
    example = {"raw": torch.rand(2, *IMAGE_SHAPES[config.stem], generator=torch.Generator().manual_seed(0))}
    specs = expand_specs([ExportSpec("{head}.onnx")], collection, Stage.EXPORT, folder=tmp_path)
    assert [Path(spec.path).stem for spec in specs] == list(heads)

    other = torch.rand(3, *IMAGE_SHAPES[config.stem], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = collection({"raw": other}, Stage.EXPORT)
    for spec in specs:
        head = Path(spec.path).stem
        result = export_bricks(Path(spec.path), collection, example, output_names=spec.output_names)
        assert result.input_names == ["raw"]
        assert result.output_names == heads[head]
        assert not [
            name
            for brick in result.manifest["bricks"]
            for name in heads
            if brick.startswith(f"{name}/") and name != head
        ], result.manifest["bricks"]  # no other head inside
        written = _preprocessing(config)
        (preprocessing,) = result.manifest["preprocessing"]
        if written is not None:
            assert preprocessing["mean"] == pytest.approx(written["mean"])
            assert preprocessing["std"] == pytest.approx(written["std"])
        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"raw": other.numpy()})  # another batch size than the export's
        for name, value in zip(result.output_names, outputs, strict=True):
            np.testing.assert_allclose(value, eager[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{head}: {name}")
