"""The README's command-line export and predict sections run as written, print what they show, and write the files
they list (after a two-step fit of the recipe they use)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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


def _start(line: str, cwd: Path) -> subprocess.Popen[str]:
    script = Path(sys.executable).parent / "torchbricks-lightning"
    arguments = shlex.split(line)
    assert arguments[0] == "torchbricks-lightning", line
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [str(script), *arguments[1:]], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen[str], line: str) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, f"{line}\n{stderr[-3000:]}"
    return stdout


def test_readme_export_and_predict_commands(tmp_path: Path) -> None:
    shutil.copytree(README.parent / "examples" / "configs", tmp_path / "examples" / "configs")
    fit = "torchbricks-lightning fit --config examples/configs/synthetic_multitask.yaml " + shlex.join(QUICK)
    _finish(_start(fit, tmp_path), fit)

    export = _section("Export from the command line")
    (commands,) = _blocks(export, "bash")
    predict = _section("Predictions, streamed to files")
    (command,) = _blocks(predict, "bash")
    lines = [*commands.strip().splitlines(), command.strip()]
    started = [_start(line, tmp_path) for line in lines]  # at once: each spends seconds starting up
    *stdouts, predicted = [_finish(process, line) for process, line in zip(started, lines, strict=True)]

    (shown,) = _blocks(export, "text")
    for printed in shown.strip().splitlines():
        if "max abs diff" in printed:  # the figure depends on the weights
            assert "checked in onnxruntime against PyTorch: max abs diff" in stdouts[0]
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
