"""Export checks understand infinities (issue 19, break 10): a model that masks logits with -inf is a correct
artefact, and a float16 overflow is reported as one, through the real onnxruntime and ``torch.export.load`` checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnxruntime
import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.core.export import export_bricks
from torchbricks_lightning.core.export.verify import Tolerance, compare_outputs, raise_on_failures
from torchbricks_lightning.errors import ExportError

FORMATS = ["onnx", "pt2"]
DTYPES = ["float32", "float16"]


class MaskedLogits(nn.Module):
    """Logits of the classes a sample may take; the others are masked with -inf (a softmax gives them 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(features).masked_fill(features[:, :3] < 0, float("-inf"))
        return logits, logits.softmax(dim=1)


class Scaled(nn.Module):
    """Multiplies by a factor: beyond 65504, float16 overflows."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.factor


class Spread(nn.Module):
    """The standard deviation of each row: the variance overflows float16 though the result would not."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.var(dim=1, keepdim=True).sqrt()


def _features() -> torch.Tensor:
    features = torch.randn(4, 4)
    features[:, 1:3] = features[:, 1:3].abs()
    features[:, 0] = -1.0  # every row masks class 0
    features[1, 1] = -1.0  # and row 1 class 1 too
    return features


def _strict_json(path: Path) -> object:
    def refuse(constant: str) -> object:
        raise AssertionError(f"the manifest holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("artefact_format", FORMATS)
def test_a_model_masking_with_minus_inf_exports_and_its_artefact_masks_the_same(
    tmp_path: Path, artefact_format: str, dtype: str
) -> None:
    collection = BrickCollection(
        {"head": BrickTrainable(MaskedLogits(), input_names=["features"], output_names=["logits", "probabilities"])}
    )
    features = _features()
    result = export_bricks(tmp_path / f"masked.{artefact_format}", collection, {"features": features}, dtype=dtype)

    # The check passed, and what it reports is a number: the difference over the values finite in both.
    assert set(result.max_abs_diff) == {"logits", "probabilities"}
    assert all(0.0 <= value < 1e-2 for value in result.max_abs_diff.values())
    manifest = _strict_json(result.manifest_path)
    assert manifest["verification"]["max_abs_diff"] == result.max_abs_diff  # type: ignore[index]

    half = dtype == "float16"
    inputs = features.half() if half else features
    if artefact_format == "onnx":
        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(["logits"], {"features": inputs.numpy()})[0])
    else:
        logits = torch.export.load(str(result.path)).module()(inputs)[0]
    expected = collection({"features": features}, "export")["logits"]
    assert torch.equal(torch.isneginf(logits), torch.isneginf(expected))
    assert int(torch.isneginf(logits).sum()) == 5
    finite = torch.isfinite(expected)
    torch.testing.assert_close(logits[finite].float(), expected[finite], atol=1e-2 if half else 1e-4, rtol=1e-2)


@pytest.mark.parametrize("artefact_format", FORMATS)
def test_nan_where_eager_pytorch_has_nan_matches(tmp_path: Path, artefact_format: str) -> None:
    class Undefined(nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return torch.where(features > 0, features, torch.full_like(features, float("nan")))

    collection = BrickCollection({"b": BrickNotTrainable(Undefined(), input_names=["x"], output_names=["y"])})
    x = torch.tensor([[1.0, -1.0], [-2.0, 3.0]])
    result = export_bricks(tmp_path / f"nan.{artefact_format}", collection, {"x": x})
    assert result.max_abs_diff == {"y": 0.0}


@pytest.mark.parametrize("artefact_format", FORMATS)
def test_a_float16_overflow_is_reported_as_one_with_the_largest_values_and_the_fix(
    tmp_path: Path, artefact_format: str
) -> None:
    collection = BrickCollection({"b": BrickNotTrainable(Scaled(300.0), input_names=["x"], output_names=["y"])})
    x = torch.tensor([[1.0, 300.0], [2.0, -250.0]])  # 90000 and -75000 in float32
    target = tmp_path / f"half.{artefact_format}"
    with pytest.raises(ExportError) as raised:
        export_bricks(target, collection, {"x": x}, dtype="float16")
    message = str(raised.value)
    assert "'y': overflows float16: 2 of 4 values are inf or NaN in the artefact" in message
    assert "largest magnitude in the float32 model is 90000, beyond the largest finite float16, 65504" in message
    assert "Keep 'y' in float32" in message
    assert "or scale it" in message
    assert "nan" not in message.replace("NaN", "")
    assert "loosen atol" not in message
    assert "verify=False" not in message
    assert not target.exists()
    # The same model in float32 is a correct artefact.
    assert export_bricks(target, collection, {"x": x}).max_abs_diff["y"] < 1e-2


def test_an_overflow_on_the_way_to_a_small_output_says_so(tmp_path: Path) -> None:
    collection = BrickCollection({"b": BrickNotTrainable(Spread(), input_names=["x"], output_names=["spread"])})
    x = torch.tensor([[1000.0, -1000.0, 300.0, 200.0], [1.0, 2.0, 3.0, 4.0]])  # a variance of 6.9e5 > 65504
    with pytest.raises(ExportError, match=r"'spread': overflows float16: .*a value it is computed from overflows"):
        export_bricks(tmp_path / "spread.pt2", collection, {"x": x}, dtype="float16", dynamic_batch_size=False)


inf, nan = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("artefact", "eager", "fails"),
    [
        ([-inf, 1.0], [-inf, 1.0], None),
        ([inf, -inf, nan], [inf, -inf, nan], None),
        ([-inf, 1.0], [inf, 1.0], r"1 of 2 values are inf or NaN in only one of the two, or are infinities of opp"),
        ([-inf, 1.0], [0.0, 1.0], r"at \(0,\): -inf in the artefact vs 0.0 eager"),
        ([0.0, 1.0], [-inf, 1.0], r"at \(0,\): 0.0 in the artefact vs -inf eager"),
        ([nan, 1.0], [inf, 1.0], r"1 of 2 values are inf or NaN in only one"),
        ([1.0, -inf], [1.5, -inf], r"max abs diff 0.5 \(atol=0.001"),
    ],
)
def test_float32_outputs_compare_infinities_and_nan_as_values(
    artefact: list[float], eager: list[float], fails: str | None
) -> None:
    differences, failures = compare_outputs(["y"], [torch.tensor(artefact)], [torch.tensor(eager)], Tolerance(1e-3, 0))
    assert differences["y"] == pytest.approx(0.5 if fails and "0.5" in fails else 0.0)
    if fails is None:
        assert failures == []
    else:
        assert len(failures) == 1
        assert failures[0].startswith("'y': ")
        assert re.search(fails, failures[0])
        with pytest.raises(ExportError, match="loosen atol/rtol"):  # not an overflow: the usual advice
            raise_on_failures(failures, runtime="onnxruntime", shape="x(2,)")


def test_a_float16_output_judged_against_float32_where_eager_float16_overflows() -> None:
    half = torch.float16
    eager = torch.tensor([inf, 1.0], dtype=half)  # eager float16 overflowed; the float32 model gives 70000
    full = [torch.tensor([70000.0, 1.0])]
    tolerance = Tolerance(1e-2, 1e-2)
    # A runtime that computes that value in float32 inside and gives a finite float16 value is judged against
    # float32 (65504 is float16's nearest, within 7%: outside the tolerance, so it fails on the number).
    _, failures = compare_outputs(["y"], [torch.tensor([65504.0, 1.0], dtype=half)], [eager], tolerance, full)
    assert len(failures) == 1
    assert "max abs diff 4.5e+03" in failures[0]
    # Without the float32 outputs, equal infinities match: the artefact does what eager float16 does.
    assert compare_outputs(["y"], [eager.clone()], [eager], tolerance)[1] == []
    # With them, the same infinities are an overflow.
    _, failures = compare_outputs(["y"], [eager.clone()], [eager], tolerance, full)
    assert failures
    assert "overflows float16" in failures[0]
    assert "70000, beyond" in failures[0]
    # A genuine -inf (the float32 model gives -inf too) still matches.
    masked = torch.tensor([-inf, 1.0], dtype=half)
    assert compare_outputs(["y"], [masked.clone()], [masked], tolerance, [torch.tensor([-inf, 1.0])])[1] == []
