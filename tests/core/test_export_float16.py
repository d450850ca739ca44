"""A float16 artefact is checked against, and reports its drift from, the float32 model the user trained.

It was compared with the model cast to float16, which agrees with it to the last bit: "max abs diff 0.00e+00"
(issue 22), however far float16 is from the float32 model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from torchbricks_lightning import BrickCollection, BrickTrainable, export_bricks
from torchbricks_lightning.errors import ExportError


def test_a_float16_artefact_reports_and_checks_its_drift_from_the_float32_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    collection = BrickCollection({"head": BrickTrainable(nn.Linear(16, 4), input_names=["x"], output_names=["y"])})
    x = torch.randn(8, 16)
    result = export_bricks(tmp_path / "half.onnx", collection, {"x": x}, dtype="float16", dynamic_batch_size=False)

    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (artefact,) = session.run(None, {"x": x.half().numpy()})
    with torch.no_grad():
        float32 = collection({"x": x}, "export")["y"].double().numpy()
    drift = float(np.abs(artefact.astype(np.float64) - float32).max())
    assert drift > 1e-5  # float16's rounding shows
    assert result.max_abs_diff["y"] == pytest.approx(drift)
    verification = result.manifest["verification"]
    assert (verification["reference"], verification["atol"], verification["rtol"]) == ("the float32 model", 0.01, 0.01)

    # The stated tolerance is checked against that drift.
    with pytest.raises(ExportError) as raised:
        export_bricks(tmp_path / "strict.onnx", collection, {"x": x}, dtype="float16", atol=1e-6, rtol=0.0)
    message = str(raised.value)
    assert "disagrees with the float32 model in onnxruntime" in message
    assert "max abs diff" in message
    assert "from the float32 model (atol=1e-06, rtol=0.0)" in message
    assert not (tmp_path / "strict.onnx").exists()
