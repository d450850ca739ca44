"""A catalogue of bad inputs: every mistake a user can make, with the exception it must give.

The catalogue is data: one :class:`Case` per mistake, across the core (bricks and collections), the Lightning
module, CLI recipes, ONNX export and checkpoint loading, all run by one parametrised test. Each case asserts

- the exception type (exactly, unless the case says a subclass will do);
- that the message names what is wrong and where: the brick, the input or output name, the stage, and a fix
  hint where one applies (case-insensitive substrings, or regular expressions);
- that nothing was lost or left half-done: the case runs in a folder holding two good checkpoints (one written
  by a real ``Trainer``, one by the CLI); afterwards both are byte-for-byte unchanged and still load, and the
  folder holds nothing new (no ``.onnx`` file, no temporary file, no log or checkpoint folder) outside
  ``inputs/``, where a case puts the bad files it feeds in.

A case whose current behaviour is a package bug is written as the package should behave and carries ``bug``,
which marks it ``xfail(strict=True)``: fixing the bug makes the test pass, and pytest then asks for the mark to go.
CLI cases run ``torchbricks_lightning.cli.main`` in-process (one runs the installed console script) and turn a
non-zero exit into :class:`CliError`, whose message is the exit code and stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from torchbricks_lightning import (
    BrickCollection,
    BrickInterface,
    BrickLoss,
    BrickMetricSingle,
    BrickNotTrainable,
    BrickTrainable,
    export_bricks_as_onnx,
)
from torchbricks_lightning.bag_of_bricks import ClassificationHead, Preprocessor
from torchbricks_lightning.cli import main
from torchbricks_lightning.errors import (
    BrickDefinitionError,
    BrickOutputError,
    BricksNotStoredError,
    CheckpointError,
    ConfigError,
    CycleError,
    DuplicateOutputError,
    ExportError,
    InvalidNameError,
    LossNotFiniteError,
    LossNotScalarError,
    MissingInputError,
    TorchBricksError,
    UnknownStageError,
    UntrustedCheckpointError,
)
from torchbricks_lightning.lightning import LightningBrickCollection, load_brick_collection_weights
from torchbricks_lightning.lightning.export import export_checkpoint_as_onnx

pytestmark = [
    pytest.mark.filterwarnings("ignore::pytorch_lightning.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning"),
]

RECIPE = Path(__file__).parent / "catalogue_configs" / "tiny_recipe.yaml"
GOOD = "good.ckpt"
"""A checkpoint of :func:`tiny_bricks`, written by a real ``Trainer`` (a module built in Python)."""
CLI_GOOD = "cli_good.ckpt"
"""A checkpoint of the CLI recipe, written by ``torchbricks-lightning fit`` (it rebuilds itself)."""
INPUTS = "inputs"
"""The sub-folder where a case writes the bad files it feeds in (recipes, broken checkpoints)."""

N_FEATURES = 4
HIDDEN = 8
NUM_CLASSES = 3
BATCH = 4


# ------------------------------------------------------------------------------------------------ the catalogue
@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: ``{area}-{what}``; the area is core, lightning, cli, export or checkpoint.
        action: does the bad thing in the given work folder (which holds ``GOOD`` and ``CLI_GOOD``).
        error: the exception it must raise.
        message_parts: what the message must contain, case-insensitively: substrings, or compiled regexes.
        absent_parts: what the message must not contain.
        exact_type: whether ``type(error)`` must be ``error`` itself rather than a subclass.
        bug: a package bug, with what happens now; marks the case ``xfail(strict=True)``.
    """

    id: str
    action: Callable[[Path], object]
    error: type[Exception]
    message_parts: tuple[str | re.Pattern[str], ...]
    absent_parts: tuple[str, ...] = ()
    exact_type: bool = True
    bug: str | None = None

    @property
    def area(self) -> str:
        return self.id.split("-", 1)[0]


class CliError(Exception):
    """A CLI run that exited with a non-zero code; the message is the code and what it wrote to stderr."""

    def __init__(self, code: int | str | None, stderr: str) -> None:
        super().__init__(f"exit code {code}\n{stderr}")
        self.code = code
        self.stderr = stderr


# ------------------------------------------------------------------------------------------------ modules
class ArgMax(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)


class Copies(nn.Module):
    """Returns its input once (``n=1``) or a tuple of ``n`` copies."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> Any:
        return x if self.n == 1 else tuple(x + i for i in range(self.n))


class AsDict(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": x, "probabilities": x.softmax(dim=1)}


class Returns(nn.Module):
    """A "loss" that returns a fixed Python value, whatever its input."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value

    def forward(self, logits: torch.Tensor) -> object:
        return self.value


class Poisoned(nn.Module):
    """A scalar loss with a fixed non-finite value that still depends on the logits (so it has a gradient)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.mean() * 0 + self.value


class PerSample(nn.Module):
    """A loss that forgot to reduce over the batch."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sum(dim=1)


class DataDependentBranch(nn.Module):
    """Python control flow on tensor values: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x + 1
        return x - 1


class BehavesDifferentlyWhenExporting(nn.Module):
    """Traces fine, but the exported model computes something else than the eager one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return x + 1
        return x


class TouchPayload:
    """Unpickling this creates a file (stands in for arbitrary code hidden in a checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


# ------------------------------------------------------------------------------------------------ bricks and data
def tiny_bricks(hidden: int = HIDDEN) -> dict[str, BrickInterface]:
    """backbone -> head -> (prediction, loss, accuracy): the model of the ``GOOD`` checkpoint."""
    return {
        "backbone": BrickTrainable(nn.Linear(N_FEATURES, hidden), input_names=["raw"], output_names=["features"]),
        "head": BrickTrainable(nn.Linear(hidden, NUM_CLASSES), input_names=["features"], output_names=["logits"]),
        "prediction": BrickNotTrainable(ArgMax(), input_names=["logits"], output_names=["class_prediction"]),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["logits", "targets"], output_names=["ce"]),
        "accuracy": BrickMetricSingle(
            MulticlassAccuracy(num_classes=NUM_CLASSES), input_names=["class_prediction", "targets"]
        ),
    }


def tiny(**replaced: BrickInterface | Mapping[str, BrickInterface]) -> dict[str, Any]:
    """:func:`tiny_bricks` with some bricks replaced or added."""
    return {**tiny_bricks(), **replaced}


def with_head(module: nn.Module, output_names: list[str]) -> dict[str, Any]:
    return tiny(head=BrickTrainable(module, input_names=["features"], output_names=output_names))


def with_extra_loss(module: nn.Module) -> dict[str, Any]:
    return tiny(extra=BrickLoss(module, input_names=["logits"], output_names=["extra_loss"]))


def with_extra_brick(module: nn.Module) -> BrickCollection:
    return BrickCollection(tiny(extra=BrickNotTrainable(module, input_names=["logits"], output_names=["extra"])))


def identity(inputs: list[str], outputs: list[str], **kwargs: Any) -> BrickNotTrainable:
    return BrickNotTrainable(nn.Identity(), input_names=inputs, output_names=outputs, **kwargs)


def renamed(bricks: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {new if name == old else name: brick for name, brick in bricks.items()}


def recipe_bricks() -> BrickCollection:
    """The bricks of ``RECIPE``, built in Python (to load ``CLI_GOOD`` into)."""
    return BrickCollection(
        {
            "preprocessor": BrickNotTrainable(Preprocessor(), input_names=["raw"], output_names=["normalized"]),
            "backbone": BrickTrainable(nn.Conv2d(3, 8, 3), input_names=["normalized"], output_names=["features"]),
            "head0": ClassificationHead(num_classes=4, in_channels=8),
        }
    )


def named_inputs(batch: int = BATCH) -> dict[str, torch.Tensor]:
    return {"raw": torch.randn(batch, N_FEATURES), "targets": torch.arange(batch) % NUM_CLASSES}


def run(bricks: Mapping[str, Any], inputs: Any, stage: Any = "inference") -> dict[str, Any]:
    return BrickCollection(bricks)(inputs, stage)


def nested_with_typo() -> BrickCollection:
    head = {
        "classify": BrickTrainable(
            nn.Linear(HIDDEN, NUM_CLASSES), input_names=["../features"], output_names=["./logits"]
        ),
        "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["./logit", "targets"], output_names=["./ce"]),
    }
    bricks = tiny_bricks()
    del bricks["head"], bricks["loss"], bricks["prediction"], bricks["accuracy"]
    return BrickCollection({**bricks, "head0": head})


# ------------------------------------------------------------------------------------------------ Lightning
def loader(*tensors: torch.Tensor, collate_fn: Callable[[Any], Any] | None = None) -> DataLoader[Any]:
    if not tensors:
        generator = torch.Generator().manual_seed(0)
        tensors = (torch.randn(16, N_FEATURES, generator=generator), torch.randint(0, NUM_CLASSES, (16,)))
    return DataLoader(TensorDataset(*tensors), batch_size=BATCH, collate_fn=collate_fn)


def dict_loader(**columns: torch.Tensor) -> DataLoader[Any]:
    n = len(next(iter(columns.values())))
    rows = [{name: value[i] for name, value in columns.items()} for i in range(n)]
    return DataLoader(rows, batch_size=BATCH)  # type: ignore[arg-type]  # a list is a map-style dataset


def trainer(work: Path) -> pl.Trainer:
    """A real Trainer on CPU that checkpoints into ``work`` (so a failed run that wrote anything is caught)."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=work,
    )


def fit(work: Path, bricks: Mapping[str, Any], data: DataLoader[Any] | None = None, **module_kwargs: Any) -> pl.Trainer:
    fitted = trainer(work)
    fitted.fit(LightningBrickCollection(bricks, **module_kwargs), data if data is not None else loader())
    return fitted


def validate(work: Path, bricks: Mapping[str, Any]) -> None:
    trainer(work).validate(LightningBrickCollection(bricks), loader())


# ------------------------------------------------------------------------------------------------ files and CLI
def inputs_folder(work: Path) -> Path:
    folder = work / INPUTS
    folder.mkdir(exist_ok=True)
    return folder


def truncated(work: Path, source: str = GOOD, fraction: float = 0.5) -> Path:
    data = (work / source).read_bytes()
    path = inputs_folder(work) / f"truncated_{source}"
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def saved(work: Path, name: str, content: object) -> Path:
    path = inputs_folder(work) / name
    torch.save(content, path)
    return path


def written(work: Path, name: str, text: str) -> Path:
    path = inputs_folder(work) / name
    path.write_text(text)
    return path


def edited_recipe(work: Path, changes: Mapping[str, object]) -> Path:
    """A copy of ``RECIPE`` with ``{'dotted.key': value}`` changes, in ``inputs/``."""
    config = yaml.safe_load(RECIPE.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return written(work, "recipe.yaml", yaml.safe_dump(config, sort_keys=False))


def run_cli(work: Path, *args: str) -> None:
    """``torchbricks-lightning *args`` in-process, in ``work``; raise :class:`CliError` unless it exits with 0."""
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.chdir(work)
        patch.setattr(sys, "argv", ["torchbricks-lightning"])  # not pytest's arguments
        try:
            code: int | str | None = main(list(args))
        except SystemExit as exit_:  # parser errors exit through SystemExit
            code = exit_.code
    if code not in (0, None):
        raise CliError(code, stderr.getvalue())


def run_console_script(work: Path, *args: str) -> None:
    """The installed ``torchbricks-lightning`` script in a subprocess (what users run); slow, so used once."""
    script = Path(sys.executable).with_name("torchbricks-lightning")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "torchbricks_lightning.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.run(
        [*command, *args], cwd=work, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    if process.returncode != 0:
        raise CliError(process.returncode, process.stderr)


def fit_recipe(changes: Mapping[str, object]) -> Callable[[Path], None]:
    return lambda work: run_cli(work, "fit", "--config", str(edited_recipe(work, changes)))


def cli_export(
    *extra: str, checkpoint: Callable[[Path], Path] = lambda work: work / CLI_GOOD
) -> Callable[[Path], None]:
    return lambda work: run_cli(
        work, "export", "--ckpt_path", str(checkpoint(work)), "--output", str(work / "model.onnx"), *extra
    )


def export(work: Path, collection: Any, inputs: Any, **kwargs: Any) -> None:
    export_bricks_as_onnx(work / "model.onnx", collection, inputs, **kwargs)


def brick_entry(class_path: str, **init_args: object) -> dict[str, object]:
    return {"class_path": class_path, "init_args": init_args}


IDENTITY = {"class_path": "torch.nn.Identity"}
BRICKS = "model.brick_collection"
UNRELATED_UNION_ERROR = "'backbone.init_args.model.init_args.in_channels' is not accepted"
"""What jsonargparse leads with for any mistake under ``model.brick_collection`` in ``RECIPE`` (a red herring)."""


# ------------------------------------------------------------------------------------------------ core cases
CORE_CASES = [
    # --- wrong types
    Case(
        "core-model-is-a-function",
        lambda work: BrickTrainable(torch.relu, input_names=["raw"], output_names=["features"]),  # type: ignore[arg-type]
        BrickDefinitionError,
        ("model of BrickTrainable", "torch.nn.Module", "Wrap plain functions in an nn.Module"),
    ),
    Case(
        "core-input-names-is-a-string",
        lambda work: BrickTrainable(nn.Identity(), input_names="raw", output_names=["features"]),
        BrickDefinitionError,
        ("input_names of BrickTrainable", "the string 'raw'", "input_names=['raw']"),
    ),
    Case(
        "core-output-names-is-a-dict",
        lambda work: BrickTrainable(nn.Identity(), input_names=["raw"], output_names={"a": "features"}),  # type: ignore[arg-type]
        BrickDefinitionError,
        ("output_names of BrickTrainable", "list of names", "dict"),
    ),
    Case(
        "core-input-name-is-not-a-string",
        lambda work: BrickTrainable(nn.Identity(), input_names=["raw", 3], output_names=["features"]),  # type: ignore[list-item]
        BrickDefinitionError,
        ("input_names of BrickTrainable", "to be a str", "got 3"),
    ),
    Case(
        "core-keyword-input-is-not-an-argument-name",
        lambda work: BrickTrainable(nn.Identity(), input_names={1: "raw"}, output_names=["features"]),
        BrickDefinitionError,
        ("keys of input_names of BrickTrainable", "argument names", "1"),
    ),
    Case(
        "core-plain-module-in-a-collection",
        lambda work: BrickCollection({**tiny_bricks(), "head": nn.Linear(HIDDEN, NUM_CLASSES)}),  # type: ignore[dict-item]
        BrickDefinitionError,
        ("'head'", "Linear", "Wrap it in a brick", "BrickTrainable(module, input_names="),
    ),
    Case(
        "core-collection-of-a-list",
        lambda work: BrickCollection(list(tiny_bricks().values())),  # type: ignore[arg-type]
        BrickDefinitionError,
        ("BrickCollection", "dict of bricks", "got list"),
    ),
    Case(
        "core-named-inputs-is-a-tensor",
        lambda work: run(tiny_bricks(), torch.randn(BATCH, N_FEATURES), "train"),
        BrickDefinitionError,
        ("named_inputs", "dict of named values", "got Tensor", "stage 'train'", "['raw', 'targets']"),
    ),
    Case(
        "core-metric-is-not-a-metric",
        lambda work: BrickMetricSingle(nn.Linear(2, 2), input_names=["class_prediction", "targets"]),  # type: ignore[arg-type]
        BrickDefinitionError,
        ("metric of BrickMetricSingle", "torchmetrics Metric", "got Linear", "BrickMetrics"),
    ),
    Case(
        "core-loss-weight-is-not-a-number",
        lambda work: BrickLoss(nn.L1Loss(), ["logits", "targets"], ["l1"], loss_weight="heavy"),  # type: ignore[arg-type]
        BrickDefinitionError,
        ("loss_weight of BrickLoss", "a number", "'heavy'"),
    ),
    Case(
        "core-loss-output-name-is-not-an-output",
        lambda work: BrickLoss(nn.L1Loss(), ["logits", "targets"], ["l1"], loss_output_names=["l2"]),
        ConfigError,
        ("loss_output_names ['l2']", "BrickLoss", "output_names ['l1']"),
    ),
    Case(
        "core-stage-is-not-a-string",
        lambda work: run(tiny_bricks(), named_inputs(), stage=3),
        BrickDefinitionError,
        ("Expected a stage", "BrickCollection", "got int: 3", "'validation'"),
    ),
    # --- missing names
    Case(
        "core-missing-input-with-a-typo",
        lambda work: run(
            tiny(head=BrickTrainable(nn.Linear(HIDDEN, NUM_CLASSES), input_names=["featurs"], output_names=["logits"])),
            {"raw": torch.randn(BATCH, N_FEATURES)},
        ),
        MissingInputError,
        ("Brick 'head' needs input 'featurs' in stage 'inference'", "Did you mean 'features'?"),
    ),
    Case(
        "core-missing-targets-in-train",
        lambda work: run(tiny_bricks(), {"raw": torch.randn(BATCH, N_FEATURES)}, "train"),
        MissingInputError,
        ("Brick 'loss' needs input 'targets' in stage 'train'", "Inputs given: ['raw']"),
    ),
    Case(
        "core-missing-relative-input-in-a-nested-collection",
        lambda work: nested_with_typo()(named_inputs(), "train"),
        MissingInputError,
        ("Brick 'head0/loss' needs input 'head0/logit' in stage 'train'", "Did you mean 'head0/logits'?"),
    ),
    Case(
        "core-check-input-names-before-any-data",
        lambda work: BrickCollection(tiny_bricks()).check_input_names("validation", ["raw", "target"]),
        MissingInputError,
        (
            "Brick 'loss' needs input 'targets' in stage 'validation'",
            "Inputs given: ['raw', 'target']",
            "Did you mean 'target'?",
        ),
    ),
    Case(
        "core-check-input-names-with-a-string",
        lambda work: BrickCollection(tiny_bricks()).check_input_names("train", "raw"),
        BrickDefinitionError,
        ("input_names", "list of names", "Wrap it in a list: ['raw']"),
    ),
    # --- clashing names
    Case(
        "core-two-bricks-produce-the-same-name",
        lambda work: BrickCollection(tiny(extra=identity(["raw"], ["features"]))),
        DuplicateOutputError,
        ("Bricks 'backbone' and 'extra' both produce 'features' in stage 'train'", "Rename one output"),
    ),
    Case(
        "core-nested-bricks-produce-the-same-name",
        lambda work: BrickCollection(
            {
                "head0": {"classify": identity(["features"], ["logits"])},
                "head1": {"classify": identity(["features"], ["logits"])},
            }
        ),
        DuplicateOutputError,
        ("'head0/classify' and 'head1/classify' both produce 'logits'", "stage 'train'"),
    ),
    Case(
        "core-two-metrics-report-the-same-key",
        lambda work: BrickCollection(
            {
                "head": {
                    name: BrickMetricSingle(MulticlassAccuracy(3), ["prediction", "targets"], metric_name="accuracy")
                    for name in ("first", "second")
                }
            }
        ),
        DuplicateOutputError,
        ("'head/first' and 'head/second'", "metric key 'head/accuracy'", "different metric_name"),
    ),
    Case(
        "core-brick-name-with-a-slash",
        lambda work: BrickCollection({"head/classify": identity(["features"], ["logits"])}),
        InvalidNameError,
        ("'head/classify'", "contains '/'", "nested dict"),
    ),
    Case(
        "core-brick-name-clashes-with-a-method",
        lambda work: BrickCollection({"train": identity(["raw"], ["features"])}),
        InvalidNameError,
        ("'train' clashes with the BrickCollection attribute", "Rename the brick"),
    ),
    Case(
        "core-empty-brick-name",
        lambda work: BrickCollection({"": identity(["raw"], ["features"])}),
        InvalidNameError,
        ("brick names", "non-empty", "''"),
    ),
    Case(
        "core-output-name-is-reserved",
        lambda work: identity(["raw"], ["stage"]),
        InvalidNameError,
        ("BrickNotTrainable", "output name 'stage'", "reserved", "Choose another name"),
    ),
    Case(
        "core-two-bricks-feed-each-other",
        lambda work: BrickCollection({"a": identity(["y"], ["x"]), "b": identity(["x"], ["y"])}),
        CycleError,
        ("'a' -(x)-> 'b'", "'b' -(y)-> 'a'", "cycle in stage 'train'", "Break the cycle"),
    ),
    Case(
        "core-brick-reads-its-own-output",
        lambda work: BrickCollection({"normalize": identity(["x"], ["x"], alive_stages=["export"])}),
        CycleError,
        ("Brick 'normalize' reads its own output 'x' in stage 'export'",),
    ),
    Case(
        "core-relative-name-climbs-above-the-root",
        lambda work: BrickCollection({"head0": {"loss": identity(["../../targets"], ["./ce"])}}),
        InvalidNameError,
        ("Brick 'head0/loss'", "input name '../../targets'", "climbs above the root", "Remove a '../'"),
    ),
    # --- bad stages
    Case(
        "core-unknown-stage-when-running",
        lambda work: run(tiny_bricks(), named_inputs(), "valdation"),
        UnknownStageError,
        ("Unknown stage 'valdation'", "BrickCollection", "Did you mean 'validation'?"),
    ),
    Case(
        "core-unknown-stage-in-alive-stages",
        lambda work: identity(["raw"], ["features"], alive_stages=["train", "infrence"]),
        UnknownStageError,
        ("Unknown stage 'infrence'", "BrickNotTrainable", "Did you mean 'inference'?"),
    ),
    Case(
        "core-alive-stages-is-one-stage-string",
        lambda work: identity(["raw"], ["features"], alive_stages="train"),
        UnknownStageError,
        ("alive_stages of BrickNotTrainable", "'all', 'none' or a list", "alive_stages=['train']"),
    ),
    Case(
        "core-alive-stages-is-a-number",
        lambda work: identity(["raw"], ["features"], alive_stages=3),
        BrickDefinitionError,
        ("alive_stages of BrickNotTrainable", "got int: 3"),
    ),
    Case(
        "core-unknown-stage-in-summarize",
        lambda work: BrickCollection(tiny_bricks()).summarize("tset"),
        UnknownStageError,
        ("Unknown stage 'tset'", "summarize", "Did you mean 'test'?"),
    ),
    # --- outputs of the wrong count and shape
    Case(
        "core-one-value-for-two-outputs",
        lambda work: run(with_head(Copies(1), ["logits", "probabilities"]), named_inputs()),
        BrickOutputError,
        (
            "Brick 'head' declares 2 output(s) ['logits', 'probabilities'] in stage 'inference'",
            "returned one Tensor",
            "Make output_names match",
        ),
    ),
    Case(
        "core-three-values-for-two-outputs",
        lambda work: run(with_head(Copies(3), ["logits", "probabilities"]), named_inputs()),
        BrickOutputError,
        ("Brick 'head' declares 2 output(s)", "stage 'inference'", "a tuple of 3 values"),
    ),
    Case(
        "core-two-values-for-one-output",
        lambda work: run(tiny(backbone=BrickTrainable(Copies(2), ["raw"], ["features"])), named_inputs(), "train"),
        BrickOutputError,
        ("Brick 'backbone' declares 1 output(s) ['features'] in stage 'train'", "a tuple of 2 values"),
    ),
    Case(
        "core-dict-for-two-outputs",
        lambda work: run(with_head(AsDict(), ["logits", "probabilities"]), named_inputs(), "test"),
        BrickOutputError,
        ("Brick 'head' declares 2 output(s)", "stage 'test'", "returned one dict", "a tuple for several outputs"),
    ),
    Case(
        "core-value-for-no-outputs",
        lambda work: run(
            tiny(probe=BrickNotTrainable(nn.Linear(HIDDEN, 2), input_names=["features"], output_names=[])),
            named_inputs(),
        ),
        BrickOutputError,
        ("Brick 'probe' declares 0 output(s)", "stage 'inference'", "returned one Tensor"),
    ),
    Case(
        "core-loss-is-not-a-scalar",
        lambda work: run(
            tiny(loss=BrickLoss(nn.CrossEntropyLoss(reduction="none"), ["logits", "targets"], ["ce"])),
            named_inputs(),
            "train",
        ),
        LossNotScalarError,
        ("Loss 'ce' of brick 'loss' in stage 'train'", "shape (4,)", "reduction='mean'"),
    ),
    Case(
        "core-loss-is-not-a-tensor",
        lambda work: run(with_extra_loss(Returns(0.5)), named_inputs(), "validation"),
        LossNotScalarError,
        ("Loss 'extra_loss' of brick 'extra' in stage 'validation'", "it is a float", "Return a scalar tensor"),
    ),
    Case(
        "core-input-of-the-wrong-shape",
        lambda work: run(tiny_bricks(), {"raw": torch.randn(BATCH, N_FEATURES + 3)}),
        RuntimeError,
        (
            "mat1 and mat2 shapes cannot be multiplied",
            "While running brick 'backbone' in stage 'inference'",
            "input_names=['raw']",
        ),
    ),
]


# ------------------------------------------------------------------------------------------------ Lightning cases
LIGHTNING_CASES = [
    # --- batches of the wrong structure
    Case(
        "lightning-batch-is-not-a-collection",
        lambda work: fit(work, tiny_bricks(), loader(collate_fn=lambda items: object())),
        BrickDefinitionError,
        ("train batch", "a dict, a tuple/list or a tensor", "got object", "batch_names"),
    ),
    Case(
        "lightning-batch-has-more-items-than-names",
        lambda work: fit(
            work,
            tiny_bricks(),
            loader(torch.randn(16, N_FEATURES), torch.zeros(16, dtype=torch.long), torch.ones(16)),
        ),
        ConfigError,
        ("train batch has 3 items", "['raw', 'targets']", "Pass batch_names with one name per item"),
    ),
    Case(
        "lightning-batch-without-targets",
        lambda work: fit(work, tiny_bricks(), loader(torch.randn(16, N_FEATURES))),
        MissingInputError,
        ("Brick 'loss' needs input 'targets' in stage 'train'", "Inputs given: ['raw']"),
    ),
    Case(
        "lightning-dict-batch-with-other-names",
        lambda work: fit(
            work, tiny_bricks(), dict_loader(image=torch.randn(16, N_FEATURES), label=torch.zeros(16, dtype=torch.long))
        ),
        MissingInputError,
        ("Brick 'backbone' needs input 'raw' in stage 'train'", "Inputs given: ['image', 'label']"),
    ),
    Case(
        "lightning-batch-names-that-the-bricks-do-not-read",
        lambda work: fit(work, tiny_bricks(), batch_names=["inputs", "labels"]),
        MissingInputError,
        ("needs input 'raw' in stage 'train'", "also missing: ['targets']", "['inputs', 'labels']"),
    ),
    Case(
        "lightning-batch-names-is-a-string",
        lambda work: LightningBrickCollection(tiny_bricks(), batch_names="raw"),
        BrickDefinitionError,
        ("batch_names", "list of names", "'raw'"),
    ),
    Case(
        "lightning-bricks-are-a-list",
        lambda work: LightningBrickCollection(list(tiny_bricks().values())),  # type: ignore[arg-type]
        BrickDefinitionError,
        ("brick_collection", "BrickCollection or a dict of bricks", "got list"),
    ),
    # --- losses that are not scalar, not finite, or not tensors
    Case(
        "lightning-loss-is-not-a-scalar",
        lambda work: fit(work, with_extra_loss(PerSample())),
        LossNotScalarError,
        ("Loss 'extra_loss' of brick 'extra' in stage 'train'", "shape (4,)", "Reduce it to a scalar"),
    ),
    Case(
        "lightning-validation-loss-is-not-a-scalar",
        lambda work: validate(work, with_extra_loss(PerSample())),
        LossNotScalarError,
        ("Loss 'extra_loss' of brick 'extra' in stage 'validation'", "shape (4,)"),
    ),
    Case(
        "lightning-loss-is-nan",
        lambda work: fit(work, with_extra_loss(Poisoned(float("nan")))),
        LossNotFiniteError,
        ("not finite at step 0", "'extra_loss': nan", "Lower the learning rate"),
        absent_parts=("'ce'",),  # only the culprit is named
    ),
    Case(
        "lightning-loss-is-infinite",
        lambda work: fit(work, with_extra_loss(Poisoned(float("inf")))),
        LossNotFiniteError,
        ("not finite at step 0", "'extra_loss': inf", "gradient clipping"),
    ),
    Case(
        "lightning-loss-is-a-float",
        lambda work: fit(work, with_extra_loss(Returns(0.5))),
        LossNotScalarError,
        ("Loss 'extra_loss' of brick 'extra' in stage 'train'", "it is a float", "Return a scalar tensor"),
    ),
    Case(
        "lightning-loss-is-none",
        lambda work: fit(work, with_extra_loss(Returns(None))),
        LossNotScalarError,
        ("Loss 'extra_loss' of brick 'extra' in stage 'train'", "NoneType", "Return a scalar tensor"),
    ),
    Case(
        "lightning-no-loss-alive-in-train",
        lambda work: fit(
            work, tiny(loss=BrickLoss(nn.CrossEntropyLoss(), ["logits", "targets"], ["ce"], alive_stages=["test"]))
        ),
        ConfigError,
        ("No loss is alive in the 'train' stage", "Add a BrickLoss alive in 'train'"),
    ),
    Case(
        "lightning-loss-weight-for-an-unknown-loss",
        lambda work: LightningBrickCollection(tiny_bricks(), loss_weights={"cross_entropy": 2.0}),
        ConfigError,
        ("loss_weights", "unknown losses ['cross_entropy']", "losses are ['ce']"),
    ),
]


# ------------------------------------------------------------------------------------------------ CLI cases
CLI_CASES = [
    # --- unknown classes
    Case(
        "cli-unknown-brick-class",
        fit_recipe({f"{BRICKS}.head0.class_path": "torchbricks_lightning.bag_of_bricks.ClasificationHead"}),
        CliError,
        (
            "exit code 2",
            "model.brick_collection.head0.class_path",
            "has no class 'ClasificationHead'",
            "Did you mean 'ClassificationHead'?",
        ),
    ),
    Case(
        "cli-unknown-module-of-a-wrapped-model",
        fit_recipe({f"{BRICKS}.backbone.init_args.model.class_path": "torch.nn.convolution.Conv2d"}),
        CliError,
        (
            "exit code 2",
            "model.brick_collection.backbone.init_args.model.class_path",
            "cannot import module 'torch.nn.convolution'",
        ),
    ),
    Case(
        "cli-unknown-optimizer",
        fit_recipe({"model.optimizer.class_path": "torch.optim.Adamm"}),
        CliError,
        ("exit code 2", "model.optimizer.class_path", "has no class 'Adamm'", "Did you mean 'Adam'?"),
    ),
    Case(
        "cli-unknown-datamodule",
        fit_recipe({"data.class_path": "torchbricks_lightning.datamodules.SyntheticImageDataModul"}),
        CliError,
        ("exit code 2", "data.class_path", "Did you mean 'SyntheticImageDataModule'?"),
    ),
    Case(
        "cli-a-plain-module-as-a-brick",
        fit_recipe({f"{BRICKS}.extra": brick_entry("torch.nn.Linear", in_features=8, out_features=2)}),
        CliError,
        ("exit code 2", "brick_collection.extra", "torch.nn.Linear", "BrickInterface"),
        absent_parts=(UNRELATED_UNION_ERROR,),
    ),
    # --- wrong arguments
    Case(
        "cli-unknown-argument-of-a-brick",
        fit_recipe({f"{BRICKS}.head0.init_args.num_clases": 4}),
        CliError,
        ("exit code 2", "brick_collection.head0", "'num_clases'", "Did you mean 'num_classes'?"),
        absent_parts=(UNRELATED_UNION_ERROR,),
    ),
    Case(
        "cli-unknown-argument-of-the-trainer",
        fit_recipe({"trainer.max_epoch": 1}),
        CliError,
        ("exit code 2", "recipe.yaml: trainer.max_epoch:", "Did you mean 'max_epochs'?", "Fix:"),
    ),
    Case(
        "cli-unknown-argument-of-the-datamodule",
        fit_recipe({"data.init_args.num_class": 4}),
        CliError,
        ("exit code 2", "recipe.yaml: data.init_args.num_class:", "takes no argument 'num_class'", "Fix:"),
    ),
    Case(
        "cli-unknown-argument-of-the-optimizer",
        fit_recipe({"model.optimizer.init_args.learning_rate": 0.1}),
        CliError,
        (
            "exit code 2",
            "recipe.yaml: model.optimizer.init_args.learning_rate:",
            "Did you mean 'lr'?",
            "Fix: rename it to 'lr'",
        ),
    ),
    Case(
        "cli-unknown-stage-in-alive-stages",
        fit_recipe({f"{BRICKS}.backbone.init_args.alive_stages": ["train", "valdation"]}),
        CliError,
        (
            "exit code 2",
            "recipe.yaml: model.brick_collection.backbone.init_args.alive_stages",
            "'valdation'",
            "Did you mean 'validation'?",
        ),
    ),
    Case(
        "cli-input-name-with-a-typo",
        fit_recipe({f"{BRICKS}.backbone.init_args.input_names": ["normalised"]}),
        CliError,
        ("exit code 2", "MissingInputError", "Brick 'backbone' needs input 'normalised'", "Did you mean 'normalized'?"),
    ),
    Case(
        "cli-two-bricks-produce-the-same-name",
        fit_recipe(
            {
                f"{BRICKS}.extra": brick_entry(
                    "torchbricks_lightning.BrickNotTrainable",
                    model=IDENTITY,
                    input_names=["normalized"],
                    output_names=["features"],
                )
            }
        ),
        CliError,
        ("exit code 2", "DuplicateOutputError", "Bricks 'backbone' and 'extra' both produce 'features'"),
    ),
    Case(
        "cli-brick-name-with-a-slash",
        fit_recipe(
            {
                f"{BRICKS}.extra/probe": brick_entry(
                    "torchbricks_lightning.BrickNotTrainable", model=IDENTITY, input_names=["features"], output_names=[]
                )
            }
        ),
        CliError,
        ("exit code 2", "InvalidNameError", "Brick name 'extra/probe' contains '/'", "nested dict"),
    ),
    Case(
        "cli-channels-that-do-not-fit",
        fit_recipe({f"{BRICKS}.head0.init_args.in_channels": 7}),
        CliError,
        ("exit code 2", "head0/", "stage 'validation'", "shapes cannot be multiplied"),
    ),
    # --- export and checkpoints on the command line
    Case(
        "cli-export-of-a-stage-that-needs-targets",
        cli_export("--stage", "train"),
        CliError,
        (
            "exit code 2",
            "loss and metric bricks are alive in it",
            "'head0/metrics' (metric)",
            "'head0/loss' (loss)",
            "--stage export",
        ),
    ),
    Case(
        "cli-export-of-an-unknown-stage",
        cli_export("--stage", "exprot"),
        CliError,
        ("exit code 2", "Unknown stage 'exprot'", "Did you mean 'export'?"),
    ),
    Case(
        "cli-export-to-a-file-that-is-not-onnx",
        lambda work: run_cli(
            work, "export", "--ckpt_path", str(work / CLI_GOOD), "--output", str(work / INPUTS / "model.onx")
        ),
        CliError,
        ("exit code 2", "must end with '.onnx' or '.pt2'", "model.onx"),
    ),
    Case(
        "cli-export-of-a-checkpoint-built-in-python",
        cli_export(checkpoint=lambda work: work / GOOD),
        CliError,
        ("exit code 2", GOOD, "built in Python", "brick_collection="),
    ),
    Case(
        "cli-export-of-a-missing-checkpoint",
        cli_export(checkpoint=lambda work: work / INPUTS / "nowhere.ckpt"),
        CliError,
        ("exit code 2", "nowhere.ckpt", "does not exist"),
    ),
    Case(
        "cli-export-of-a-truncated-checkpoint-in-the-console-script",
        lambda work: run_console_script(
            work, "export", "--ckpt_path", str(truncated(work, CLI_GOOD)), "--output", str(work / "model.onnx")
        ),
        CliError,
        ("exit code 2", f"truncated_{CLI_GOOD}", "The file is truncated"),
        absent_parts=("Traceback",),
    ),
    Case(
        "cli-validate-with-a-truncated-checkpoint",
        lambda work: run_cli(work, "validate", "--config", str(RECIPE), "--ckpt_path", str(truncated(work, CLI_GOOD))),
        CliError,
        ("exit code 2", f"truncated_{CLI_GOOD}", "truncated"),
    ),
    Case(
        "cli-validate-with-a-missing-checkpoint",
        lambda work: run_cli(
            work, "validate", "--config", str(RECIPE), "--ckpt_path", str(work / INPUTS / "nowhere.ckpt")
        ),
        CliError,
        ("exit code 2", "nowhere.ckpt", "does not exist"),
    ),
]


# ------------------------------------------------------------------------------------------------ export cases
EXPORT_CASES = [
    Case(
        "export-a-stage-that-needs-targets",
        lambda work: export(
            work,
            BrickCollection(tiny_bricks()),
            {"raw": torch.randn(2, N_FEATURES)},
            stage="train",
            output_names=["ce"],
        ),
        MissingInputError,
        ("Brick 'loss' needs input 'targets' in stage 'train'", "Inputs given: ['raw']"),
    ),
    Case(
        "export-a-checkpoint-stage-that-needs-targets",
        lambda work: export_checkpoint_as_onnx(
            work / GOOD, work / "model.onnx", brick_collection=tiny_bricks(), stage="validation", output_names=["ce"]
        ),
        MissingInputError,
        ("needs input 'targets' in stage 'validation'", "named_inputs"),
    ),
    Case(
        "export-a-brick-that-cannot-be-traced",
        lambda work: export(work, with_extra_brick(DataDependentBranch()), named_inputs()),
        ExportError,
        (
            "Could not export stage 'export'",
            "data-dependent",
            "brick 'extra'",
            "make bricks that are not",
            "dead in 'export'",
            "Nothing was written",
        ),
        absent_parts=("\x1b[",),
    ),
    Case(
        "export-a-metric-alive-in-export",
        lambda work: export(
            work,
            BrickCollection(
                tiny(accuracy=BrickMetricSingle(MulticlassAccuracy(3), ["class_prediction", "targets"], "all"))
            ),
            named_inputs(),
        ),
        ExportError,
        ("Could not export stage 'export'", "brick 'accuracy'", "metrics", "dead in 'export'"),
    ),
    Case(
        "export-onnx-disagrees-with-eager",
        lambda work: export(work, with_extra_brick(BehavesDifferentlyWhenExporting()), named_inputs()),
        ExportError,
        ("disagrees with eager PyTorch", "'extra': max abs diff 1", "was not written", "verify=False"),
    ),
    Case(
        "export-to-a-path-that-is-not-onnx",
        lambda work: export_bricks_as_onnx(work / "model.onx", BrickCollection(tiny_bricks()), named_inputs()),
        ConfigError,
        ("path_onnx", "end with '.onnx'", "model.onx"),
    ),
    Case(
        "export-an-output-the-stage-does-not-produce",
        lambda work: export(work, BrickCollection(tiny_bricks()), named_inputs(), output_names=["logits", "ce"]),
        ConfigError,
        ("output_names ['ce'] are not produced in stage 'export'", "it produces ['features', 'logits'"),
    ),
    Case(
        "export-an-input-that-is-not-a-tensor",
        lambda work: export(work, BrickCollection(tiny_bricks()), {"raw": [[0.0] * N_FEATURES]}),
        BrickDefinitionError,
        ("inputs must be tensors", "['raw']"),
    ),
    Case(
        "export-named-inputs-that-are-a-tensor",
        lambda work: export(work, BrickCollection(tiny_bricks()), torch.randn(2, N_FEATURES)),
        BrickDefinitionError,
        ("named_inputs", "dict", "Tensor", "['raw']"),
    ),
    Case(
        "export-an-unknown-stage",
        lambda work: export(work, BrickCollection(tiny_bricks()), named_inputs(), stage="exprot"),
        UnknownStageError,
        ("Unknown stage 'exprot'", "export_bricks_as_onnx", "Did you mean 'export'?"),
    ),
    Case(
        "export-a-stage-without-tensors",
        lambda work: export(
            work,
            BrickCollection({"accuracy": BrickMetricSingle(MulticlassAccuracy(3), ["raw", "targets"], "all")}),
            {"raw": torch.tensor([0, 1]), "targets": torch.tensor([0, 1])},
        ),
        ExportError,
        ("brick 'accuracy' is a metric brick alive in it", "dead in 'export'"),
    ),
    Case(
        "export-a-dict-of-bricks",
        lambda work: export(work, tiny_bricks(), named_inputs()),
        BrickDefinitionError,
        ("brick_collection", "BrickCollection", "got dict"),
    ),
]


# ------------------------------------------------------------------------------------------------ checkpoint cases
def trainer_validate_from(work: Path, bricks: Mapping[str, Any], checkpoint: Path) -> None:
    trainer(work).validate(LightningBrickCollection(bricks), loader(), ckpt_path=checkpoint)


CHECKPOINT_CASES = [
    # --- a checkpoint of a different collection
    Case(
        "checkpoint-of-a-wider-collection-load-from-checkpoint",
        lambda work: LightningBrickCollection.load_from_checkpoint(work / GOOD, brick_collection=tiny_bricks(hidden=6)),
        CheckpointError,
        (
            GOOD,
            "does not fit this brick collection",
            "backbone.model.weight: checkpoint (8, 4) vs model (6, 4)",
            "Build the collection as it was when trained",
        ),
    ),
    Case(
        "checkpoint-of-a-renamed-brick-load-brick-collection-weights",
        lambda work: load_brick_collection_weights(
            BrickCollection(renamed(tiny_bricks(), "head", "classifier")), work / GOOD
        ),
        CheckpointError,
        (
            GOOD,
            "Missing in the checkpoint: [classifier.model.bias, classifier.model.weight]",
            "unexpected in the checkpoint: [head.model.bias, head.model.weight]",
            "strict=False",
        ),
    ),
    Case(
        "checkpoint-with-a-brick-missing-load-brick-collection-weights",
        lambda work: load_brick_collection_weights(
            BrickCollection({name: brick for name, brick in tiny_bricks().items() if name != "head"}),
            work / GOOD,
        ),
        CheckpointError,
        (GOOD, "Missing in the checkpoint: none", "unexpected in the checkpoint: [head.model.bias, head.model.weight]"),
    ),
    Case(
        "checkpoint-of-the-cli-recipe-into-other-bricks",
        lambda work: LightningBrickCollection.load_from_checkpoint(work / CLI_GOOD, brick_collection=tiny_bricks()),
        CheckpointError,
        (
            CLI_GOOD,
            "does not fit",
            "unexpected in the checkpoint: [head0.classify",
            "backbone.model.weight: checkpoint (8, 3, 3, 3) vs model (8, 4)",
        ),
    ),
    Case(
        "checkpoint-of-a-different-collection-through-the-trainer",
        lambda work: trainer_validate_from(work, tiny_bricks(hidden=6), work / GOOD),
        CheckpointError,
        (GOOD, "does not fit", "backbone.model.weight: checkpoint (8, 4) vs model (6, 4)"),
    ),
    # --- broken files
    Case(
        "checkpoint-truncated-load-brick-collection-weights",
        lambda work: load_brick_collection_weights(BrickCollection(tiny_bricks()), truncated(work, GOOD, 0.5)),
        CheckpointError,
        (f"truncated_{GOOD}", "Could not read checkpoint", "The file is truncated", "not a PyTorch checkpoint"),
    ),
    Case(
        "checkpoint-truncated-load-from-checkpoint",
        lambda work: LightningBrickCollection.load_from_checkpoint(
            truncated(work, GOOD, 0.1), brick_collection=tiny_bricks()
        ),
        CheckpointError,
        (f"truncated_{GOOD}", "Could not read checkpoint", "truncated"),
    ),
    Case(
        "checkpoint-truncated-export",
        lambda work: export_checkpoint_as_onnx(truncated(work, CLI_GOOD, 0.9), work / "model.onnx"),
        CheckpointError,
        (f"truncated_{CLI_GOOD}", "Could not read checkpoint", "truncated"),
    ),
    Case(
        "checkpoint-empty-file",
        lambda work: load_brick_collection_weights(BrickCollection(tiny_bricks()), written(work, "empty.ckpt", "")),
        CheckpointError,
        ("empty.ckpt", "Could not read checkpoint", "truncated"),
    ),
    Case(
        "checkpoint-that-is-a-recipe",
        lambda work: load_brick_collection_weights(BrickCollection(tiny_bricks()), edited_recipe(work, {})),
        CheckpointError,
        ("recipe.yaml", "Could not read checkpoint", "not a PyTorch checkpoint"),
    ),
    Case(
        "checkpoint-missing",
        lambda work: load_brick_collection_weights(BrickCollection(tiny_bricks()), work / INPUTS / "nowhere.ckpt"),
        CheckpointError,
        ("nowhere.ckpt", "does not exist"),
    ),
    Case(
        "checkpoint-that-holds-a-list",
        lambda work: load_brick_collection_weights(BrickCollection(tiny_bricks()), saved(work, "list.ckpt", [1, 2])),
        CheckpointError,
        ("list.ckpt", "holds a list, not a checkpoint dict"),
    ),
    Case(
        "checkpoint-without-a-state-dict",
        lambda work: load_brick_collection_weights(
            BrickCollection(tiny_bricks()), saved(work, "bare.ckpt", {"epoch": 1})
        ),
        CheckpointError,
        ("bare.ckpt", "no 'state_dict'", "Lightning checkpoint"),
    ),
    Case(
        "checkpoint-with-pickled-code",
        lambda work: load_brick_collection_weights(
            BrickCollection(tiny_bricks()),
            saved(work, "payload.ckpt", {"state_dict": {}, "payload": TouchPayload(work / "pwned")}),
        ),
        UntrustedCheckpointError,
        ("payload.ckpt", "not tensors or plain values", "arbitrary code", "Unsupported global", "weights_only=False"),
    ),
    # --- wrong arguments to the loaders
    Case(
        "checkpoint-of-python-bricks-loaded-without-them",
        lambda work: LightningBrickCollection.load_from_checkpoint(work / GOOD),
        BricksNotStoredError,  # a CheckpointError
        (GOOD, "built in Python", "load_from_checkpoint(path, brick_collection=...)"),
    ),
    Case(
        "checkpoint-loaded-into-a-dict-of-bricks",
        lambda work: load_brick_collection_weights(tiny_bricks(), work / GOOD),  # type: ignore[arg-type]
        BrickDefinitionError,
        ("brick_collection", "BrickCollection", "dict"),
    ),
    Case(
        "checkpoint-loaded-with-a-list-of-bricks",
        lambda work: LightningBrickCollection.load_from_checkpoint(
            work / GOOD, brick_collection=list(tiny_bricks().values())
        ),
        BrickDefinitionError,
        ("brick_collection", "BrickCollection or a dict of bricks", "list"),
    ),
]

CASES: list[Case] = [*CORE_CASES, *LIGHTNING_CASES, *CLI_CASES, *EXPORT_CASES, *CHECKPOINT_CASES]
AREAS = ("core", "lightning", "cli", "export", "checkpoint")


def _params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(case, id=case.id, marks=[pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else [])
        for case in cases
    ]


# ------------------------------------------------------------------------------------------------ good checkpoints
@dataclass(frozen=True)
class GoodCheckpoints:
    """The two good checkpoints every case must leave intact, with what they hold."""

    folder: Path
    state: dict[str, torch.Tensor]
    cli_state: dict[str, torch.Tensor]
    digests: dict[str, str]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> GoodCheckpoints:
    """Train :func:`tiny_bricks` a few steps with a real Trainer, and fit the CLI recipe once; keep both checkpoints."""
    folder = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    module = LightningBrickCollection(tiny_bricks())
    fitted = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=folder,
    )
    fitted.fit(module, loader())
    fitted.save_checkpoint(folder / GOOD)

    cli_folder = folder / "cli"
    cli_folder.mkdir()
    run_cli(cli_folder, "fit", "--config", str(RECIPE))
    (folder / CLI_GOOD).write_bytes((cli_folder / "checkpoints" / "last.ckpt").read_bytes())

    return GoodCheckpoints(
        folder=folder,
        state={name: value.detach().clone() for name, value in module.brick_collection.state_dict().items()},
        cli_state=torch.load(folder / CLI_GOOD, weights_only=True)["state_dict"],
        digests={name: _digest(folder / name) for name in (GOOD, CLI_GOOD)},
    )


def _prepare(work: Path, good: GoodCheckpoints) -> Path:
    for name in (GOOD, CLI_GOOD):
        (work / name).write_bytes((good.folder / name).read_bytes())
    return work


def assert_nothing_lost(work: Path, good: GoodCheckpoints) -> None:
    """Nothing new outside ``inputs/`` (no .onnx, temporary, log or checkpoint file), and the good checkpoints load."""
    left = sorted(
        str(path.relative_to(work))
        for path in work.rglob("*")
        if path.relative_to(work).parts[0] != INPUTS and path.name not in (GOOD, CLI_GOOD)
    )
    assert left == [], f"left behind: {left}"
    for name in (GOOD, CLI_GOOD):
        assert _digest(work / name) == good.digests[name], f"{name} was changed"

    restored = LightningBrickCollection.load_from_checkpoint(work / GOOD, brick_collection=tiny_bricks())
    for name, value in good.state.items():
        assert torch.equal(restored.brick_collection.state_dict()[name], value), name
    plain = recipe_bricks()
    assert load_brick_collection_weights(plain, work / CLI_GOOD) == ([], [])
    for name, value in plain.state_dict().items():
        assert torch.equal(value, good.cli_state[f"brick_collection.{name}"]), name


def message_of(error: BaseException) -> str:
    """The message with the notes that Python prints under it (the collection notes the failing brick there)."""
    return "\n".join([str(error), *getattr(error, "__notes__", [])])


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input(case: Case, good: GoodCheckpoints, tmp_path: Path) -> None:
    work = _prepare(tmp_path, good)

    with pytest.raises(case.error) as info:
        case.action(work)

    if case.exact_type:
        assert type(info.value) is case.error, f"{type(info.value).__name__} is not exactly {case.error.__name__}"
    message = message_of(info.value)
    for part in case.message_parts:
        if isinstance(part, re.Pattern):
            assert re.search(part.pattern, message, re.IGNORECASE), f"/{part.pattern}/ not found in:\n{message}"
        else:
            assert part.lower() in message.lower(), f"{part!r} not found in:\n{message}"
    for part in case.absent_parts:
        assert part.lower() not in message.lower(), f"{part!r} should not be in:\n{message}"
    assert_nothing_lost(work, good)


def test_the_catalogue_covers_every_area() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 30
    assert {case.area for case in CASES} == set(AREAS), [case.id for case in CASES if case.area not in AREAS]
    for case in CASES:
        assert case.message_parts, f"{case.id} checks nothing in the message"
        if case.error.__module__.startswith("torchbricks_lightning"):
            # The package's own errors are TorchBricksErrors, and builtins for callers who do not know the package.
            assert issubclass(case.error, TorchBricksError), case.id
            assert issubclass(case.error, (ValueError, TypeError, RuntimeError)), case.id


def test_the_checks_catch_a_file_left_behind(good: GoodCheckpoints, tmp_path: Path) -> None:
    """The post-condition itself can fail: a stray temporary ONNX file or a changed checkpoint is caught."""
    work = _prepare(tmp_path, good)
    (work / ".model.abc.onnx.tmp").write_bytes(b"partial")
    with pytest.raises(AssertionError, match=r"left behind: \['\.model\.abc\.onnx\.tmp'\]"):
        assert_nothing_lost(work, good)
    (work / ".model.abc.onnx.tmp").unlink()
    (work / GOOD).write_bytes((work / GOOD).read_bytes()[:-10])
    with pytest.raises(AssertionError, match="was changed"):
        assert_nothing_lost(work, good)
