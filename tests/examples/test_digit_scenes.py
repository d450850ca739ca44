"""The digit scenes example on tiny data through its real code path: the two partially labelled datasets mixed by
MultiTaskDataModule, the YAML recipe trained a few steps by the installed command, one ONNX file per head, and the
visualisations in TensorBoard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples.digit_scenes import build_datamodule
from examples.digit_scenes_data import DigitScenesDataModule, render_scenes
from torchbricks_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "configs" / "digit_scenes.yaml"
TINY = [
    *("--trainer.max_steps", "2"),
    *("--trainer.limit_train_batches", "2"),
    *("--trainer.limit_val_batches", "1"),
    *("--trainer.enable_progress_bar", "false"),
    *("--trainer.logger", "pytorch_lightning.loggers.TensorBoardLogger"),
    *("--trainer.logger.save_dir", "."),
    *("--data.init_args.batch_size", "8"),
]


def _tiny_datasets() -> list[str]:
    sizes = {"train_scenes": 8, "val_scenes": 8, "test_scenes": 0, "size": 32, "sides": [8, 16]}
    arguments = []
    for name in ("boxes", "dense"):
        for key, value in sizes.items():
            if name == "dense" and key == "val_scenes":
                value = 0
            arguments += [f"--data.init_args.datasets.{name}.init_args.{key}", str(value).replace(" ", "")]
    return arguments


def test_the_mixed_batches_hold_each_datasets_labels_and_the_missing_values_for_the_others() -> None:
    data = build_datamodule(train_scenes=16, val_scenes=8, test_scenes=8, size=32, batch_size=32)
    data.setup("fit")
    assert data.label_names() == {"boxes": ["raw", "boxes", "labels"], "dense": ["raw", "ink", "depth"]}
    batch = next(iter(data.train_dataloader()))
    not_boxed = batch["boxes"].isnan().flatten(1).all(1)
    no_depth = batch["depth"].isnan().flatten(1).all(1)
    no_ink = (batch["ink"] == -100).flatten(1).all(1)
    assert 0 < int(not_boxed.sum()) < 32, "a batch mixes both datasets"
    assert torch.equal(not_boxed, ~no_depth)
    assert torch.equal(no_depth, no_ink)
    assert bool((batch["labels"][not_boxed] == -100).all())
    assert bool((batch["labels"][~not_boxed, 0] >= 0).all()), "an annotated scene has at least one digit"
    assert not batch["depth"][~no_depth].isnan().any()
    assert set(batch["ink"][~no_ink].unique().tolist()) == {0, 1}
    validation = next(iter(data.val_dataloader()))  # every label
    assert not validation["boxes"].isnan().any()
    assert not validation["depth"].isnan().any()
    assert not (validation["ink"] == -100).any()


def test_a_scene_s_labels_agree_with_its_pixels() -> None:
    images = torch.zeros(1, 1, 8, 8)
    images[0, 0, 2:6, 3:5] = 1.0
    scenes = render_scenes(images, torch.tensor([7]), count=4, size=32, max_digits=2, sides=(16, 16), seed=3)
    for scene in range(4):
        kept = scenes["labels"][scene] >= 0
        assert scenes["labels"][scene][kept].tolist() == [7] * int(kept.sum())
        for x1, y1, x2, y2 in scenes["boxes"][scene][kept].long().tolist():  # the ink's box, at depth 128 / 16
            assert bool((scenes["ink"][scene, y1:y2, x1:x2] == 1).all())
            assert bool((scenes["depth"][scene, y1:y2, x1:x2] == 8.0).all())
        assert int(scenes["ink"][scene].sum()) == 8 * 4 * int(kept.sum())
        assert bool((scenes["depth"][scene][scenes["ink"][scene] == 0] == 10.0).all())
    with pytest.raises(ConfigError, match="sides"):
        DigitScenesDataModule(sides=(4, 8)).setup()


@pytest.mark.slow
def test_the_recipe_trains_exports_one_onnx_per_head_and_logs_pictures(tmp_path: Path) -> None:
    command = Path(sys.executable).with_name("torchbricks-lightning")
    # The recipe names examples.digit_scenes_data, importable from the repository's root.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [str(command), "fit", "--config", str(RECIPE), *TINY, *_tiny_datasets()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "checkpoints" / "digit_scenes"
    assert (folder / "last.ckpt").is_file()
    assert sorted(path.name for path in folder.glob("*.onnx")) == ["depth.onnx", "det.onnx", "ink.onnx"]
    (log_dir,) = (tmp_path / "lightning_logs").glob("version_*")
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    for brick in ("show_det", "show_ink", "show_depth"):
        assert f"validation/{brick}/0" in tags, tags


def test_the_python_entry_point_prints_its_figures_and_writes_the_readme_s_pictures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples.digit_scenes import main

    tiny = ["--max-epochs", "1", "--train-scenes", "8", "--val-scenes", "4", "--test-scenes", "4", "--size", "32"]
    figures = main([*tiny, "--root", str(tmp_path / "run"), "--docs", str(tmp_path / "docs")])
    printed = capsys.readouterr().out
    assert set(figures) == {"mAP@0.5", "mIoU", "AbsRel"}
    for label, value in figures.items():
        assert f"{label:<8} {value:.3f}" in printed
    record = json.loads((tmp_path / "docs" / "digit_scenes_figures.json").read_text())
    assert record == {"epochs": 1, "figures": figures}
    for name in ("detection", "depth"):
        with Image.open(tmp_path / "docs" / f"digit_scenes_{name}.png") as picture:
            assert picture.width > 200
            assert picture.height > 100
    assert sorted(path.name for path in (tmp_path / "run" / "onnx").glob("*.onnx")) == [
        "depth.onnx",
        "det.onnx",
        "ink.onnx",
    ]


def test_the_readme_shows_the_recorded_run_s_figures_and_pictures() -> None:
    from examples.digit_scenes import figures_table

    record = json.loads((ROOT / "docs" / "digit_scenes_figures.json").read_text())
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Example: digit scenes") : readme.index("### Task balancing")]
    assert figures_table(record["figures"]) in section, "rerun python examples/digit_scenes.py --docs docs"
    assert f"after {record['epochs']} epochs" in section
    assert record["figures"]["mAP@0.5"] >= 0.5, "the example's detector must work"
    for name in ("detection", "depth"):
        assert f"(docs/digit_scenes_{name}.png)" in section
        with Image.open(ROOT / "docs" / f"digit_scenes_{name}.png") as picture:
            assert picture.format == "PNG"


def test_the_scene_modules_docstring_examples_run() -> None:
    import doctest

    from examples import digit_scenes, digit_scenes_data

    for module in (digit_scenes, digit_scenes_data):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0, module.__name__
        assert result.failed == 0, module.__name__
