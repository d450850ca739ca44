"""The README's command-line export and predict sections run as written, print what they show, and write the files
they list (after a two-step fit of the recipe they use, with a lighter backbone). They run in-process, through the
console script's ``main``: tests/cli runs the script itself in subprocesses."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from torchbricks_lightning.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = [
    *("--trainer.max_steps", "2"),
    *("--trainer.limit_train_batches", "2"),
    *("--trainer.limit_val_batches", "1"),
    *("--trainer.enable_progress_bar", "false"),
]


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"### {title}")
    end = text.index("\n#", start + 4)
    return text[start:end]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)


def _run(line: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run a README command line in-process (the console script's ``main``) and return what it printed."""
    arguments = shlex.split(line)
    assert arguments[0] == "torchbricks-lightning", line
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["torchbricks-lightning"])
        code = main(arguments[1:])
    printed = capsys.readouterr()
    assert code == 0, f"{line}\n{printed.err[-3000:]}"
    return printed.out


def _lighter_recipe(folder: Path) -> None:
    """The recipe the README fits, with a small conv net instead of ResNet-18: the commands under test only name
    the checkpoint, and run in seconds instead of tens of seconds."""
    recipe = yaml.safe_load((README.parent / "examples" / "configs" / "synthetic_multitask.yaml").read_text())
    bricks = recipe["model"]["brick_collection"]
    bricks["backbone"]["init_args"]["model"] = {
        "class_path": "torchbricks_lightning.bag_of_bricks.SmallConvNet",
        "init_args": {"in_channels": 3, "widths": [8]},
    }
    for head in ("head0", "head1"):
        bricks[head]["init_args"]["in_channels"] = 8
    (folder / "examples" / "configs").mkdir(parents=True)
    (folder / "examples" / "configs" / "synthetic_multitask.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def test_readme_export_and_predict_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _lighter_recipe(tmp_path)
    _run(
        "torchbricks-lightning fit --config examples/configs/synthetic_multitask.yaml " + shlex.join(QUICK),
        tmp_path,
        capsys,
    )

    export = _section("Export from the command line")
    (commands,) = _blocks(export, "bash")
    predict = _section("Predictions, streamed to files")
    (command,) = _blocks(predict, "bash")
    *stdouts, predicted = [_run(line, tmp_path, capsys) for line in [*commands.strip().splitlines(), command.strip()]]

    (shown,) = _blocks(export, "text")
    for printed in shown.strip().splitlines():
        if "max abs diff" in printed:  # the figure depends on the weights
            assert "checked in onnxruntime against the float32 model: max abs diff" in stdouts[0]
        else:
            assert printed in stdouts[0], f"{printed!r} not in:\n{stdouts[0]}"
    listed = export.split("`exports/` then holds", 1)[1].split("\n\n")[0]
    names = re.findall(r"`(\w+\.(?:onnx|pt2))`", listed)
    assert len(names) == 5
    for name in names:
        assert (tmp_path / "exports" / name).is_file(), name
        assert (tmp_path / "exports" / f"{name}.json").is_file(), name

    (shown,) = _blocks(predict, "text")
    for printed in shown.strip().splitlines():
        assert printed.removesuffix(", ...") in predicted, f"{printed!r} not in:\n{predicted}"
    assert (tmp_path / "preds" / "index.json").is_file()
    assert sorted(path.name for path in (tmp_path / "preds" / "rank0").iterdir()) == [
        "dl0-batch000000.npz",
        "dl0-batch000001.npz",
        "index.json",
    ]
