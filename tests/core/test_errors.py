"""Every mistake a user can make gets a clear exception of the package's own type.

Each error is a ``TorchBricksError`` and also a ``ValueError`` or ``TypeError`` (never a bare assert,
``KeyError`` or ``AttributeError``), and its message names the brick, the data name and the stage, with
a "Did you mean" hint where a name is close. Errors raised inside a user's module keep their type and
get a note naming the brick and the stage.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import N_FEATURES, boring_bricks
from torch import nn

from torchbricks_lightning import (
    BrickCollection,
    BrickLoss,
    BrickMetricSingle,
    BrickNotTrainable,
    BrickTrainable,
    Stage,
    errors,
)
from torchbricks_lightning.errors import (
    BrickDefinitionError,
    BrickGraphError,
    BrickOutputError,
    CycleError,
    DuplicateOutputError,
    InvalidNameError,
    LossNotScalarError,
    MissingInputError,
    TorchBricksError,
    UnknownStageError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------- helpers
class AddOne(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Returns(nn.Module):
    """Returns a fixed number of copies of its input: one value for n=1, else a tuple of n."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> Any:
        return x if self.n == 1 else tuple(x + i for i in range(self.n))


class ReturnsFloat(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return 1.0


def brick(inputs: list[str], outputs: list[str], **kwargs: Any) -> BrickNotTrainable:
    return BrickNotTrainable(AddOne(), input_names=inputs, output_names=outputs, **kwargs)


def assert_message(err: BaseException, *fragments: str) -> str:
    message = str(err)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def embedding_typo_collection() -> BrickCollection:
    return BrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(N_FEATURES, 4), input_names=["raw"], output_names=["embedding"]),
            "head": BrickTrainable(nn.Linear(4, 2), input_names=["embeding"], output_names=["logits"]),
        }
    )


# ----------------------------------------------------------------------------------------------- hierarchy
@pytest.mark.parametrize(
    ("error_class", "builtin"),
    [
        (MissingInputError, ValueError),
        (DuplicateOutputError, ValueError),
        (CycleError, ValueError),
        (InvalidNameError, ValueError),
        (UnknownStageError, ValueError),
        (BrickOutputError, ValueError),
        (LossNotScalarError, ValueError),
        (BrickGraphError, ValueError),
        (BrickDefinitionError, TypeError),
    ],
)
def test_error_classes_are_package_errors_and_builtins(error_class: type[Exception], builtin: type) -> None:
    assert issubclass(error_class, TorchBricksError)
    assert issubclass(error_class, builtin)
    assert not issubclass(error_class, (KeyError, AttributeError, AssertionError))


ENVIRONMENT_FAILURES = {"FileWriteError", "CheckpointWriteError", "DatasetNotAvailableError"}
"""The errors that say the environment failed (a full disk, a folder that cannot be written, data not there)."""


def _error_classes() -> list[type[TorchBricksError]]:
    classes = [getattr(errors, name) for name in errors.__all__]
    return [cls for cls in classes if isinstance(cls, type) and issubclass(cls, TorchBricksError)]


@pytest.mark.parametrize(
    "error_class", [cls for cls in _error_classes() if cls is not TorchBricksError], ids=lambda cls: cls.__name__
)
def test_each_error_is_either_bad_input_or_a_failed_environment_never_both(error_class: type[Exception]) -> None:
    """Bug: CheckpointWriteError was also a ValueError, so ``except ValueError`` written for bad input swallowed a
    full disk; ExportError, RecipeError and DatasetNotAvailableError kept RuntimeError bases for callers of versions
    never released."""
    bad_input = issubclass(error_class, (ValueError, TypeError))
    environment = issubclass(error_class, OSError)
    assert bad_input != environment, f"{error_class.__name__}: bad input {bad_input}, environment {environment}"
    assert environment == (error_class.__name__ in ENVIRONMENT_FAILURES), error_class.__name__
    assert not issubclass(error_class, RuntimeError), f"{error_class.__name__} keeps a RuntimeError base"


def test_a_checkpoint_write_error_is_an_os_error_not_a_value_error() -> None:
    assert not issubclass(errors.CheckpointWriteError, ValueError)
    assert issubclass(errors.CheckpointWriteError, OSError)
    assert issubclass(errors.CheckpointWriteError, errors.FileWriteError)


def test_error_classes_are_exported_by_the_errors_module_only() -> None:
    """Every error class is defined in ``errors.py``, and no other module lists one in its ``__all__`` (the top-level
    package aside, which re-exports the common ones)."""
    defined = {cls.__name__ for cls in _error_classes()}
    assert all(getattr(errors, name).__module__ == "torchbricks_lightning.errors" for name in defined)
    package = REPO_ROOT / "torchbricks_lightning"
    listed = {}
    for path in sorted(package.rglob("*.py")):
        if path.name == "errors.py" or path == package / "__init__.py":
            continue
        text = path.read_text(encoding="utf-8")
        start = text.find("__all__")
        block = text[start : text.find("]", start)] if start >= 0 else ""
        found = sorted(name for name in defined if f'"{name}"' in block)
        if found:
            listed[str(path.relative_to(REPO_ROOT))] = found
    assert listed == {}, f"error classes re-exported outside errors.py: {listed}"


# ----------------------------------------------------------------------------------------------- missing inputs
@pytest.mark.parametrize("stage", list(Stage))
def test_missing_input_at_forward(stage: Stage) -> None:
    collection = embedding_typo_collection()
    with pytest.raises(MissingInputError, match=re.escape("Did you mean 'embedding'?")) as info:
        collection({"raw": torch.randn(2, N_FEATURES)}, stage=stage)
    assert type(info.value) is MissingInputError
    assert_message(info.value, "'head'", "'embeding'", f"stage {stage.value!r}", "['raw']", "'embedding'")


def test_missing_input_is_a_value_error_for_callers_who_do_not_know_the_package() -> None:
    with pytest.raises(ValueError, match="embeding"):
        embedding_typo_collection()({"raw": torch.randn(2, N_FEATURES)})


def test_missing_input_does_not_run_any_brick() -> None:
    class Exploding(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("must not run before the inputs are checked")

    collection = BrickCollection(
        {
            "first": BrickNotTrainable(Exploding(), input_names=["raw"], output_names=["y"]),
            "loss": BrickLoss(nn.MSELoss(), input_names=["y", "targets"], output_names=["loss"]),
        }
    )
    with pytest.raises(MissingInputError, match=r"Brick 'loss' needs input 'targets' in stage 'train'"):
        collection({"raw": torch.ones(1)}, stage=Stage.TRAIN)


def test_missing_targets_in_train_names_the_loss_brick(boring_collection: BrickCollection) -> None:
    with pytest.raises(MissingInputError, match=r"'targets'") as info:
        boring_collection({"raw": torch.randn(4, N_FEATURES)}, stage="train")
    assert_message(info.value, "Brick 'loss'", "stage 'train'", "Inputs given: ['raw']")


def test_missing_relative_input_suggests_the_resolved_name() -> None:
    collection = BrickCollection(
        {
            "head0": {
                "classify": BrickTrainable(nn.Linear(N_FEATURES, 3), input_names=["raw"], output_names=["./logits"]),
                "post": brick(["./logit"], ["./post"]),
            }
        }
    )
    with pytest.raises(MissingInputError, match=re.escape("Did you mean 'head0/logits'?")) as info:
        collection({"raw": torch.randn(2, N_FEATURES)}, stage=Stage.TEST)
    assert_message(info.value, "'head0/post'", "'head0/logit'", "stage 'test'")


def test_a_label_missing_from_a_stage_is_not_matched_with_a_model_output_and_gets_the_real_fixes() -> None:
    """A label column absent from the validation batches ended with "Did you mean 'digit/logits'?" (issue 22)."""
    from torchmetrics.classification import MulticlassAccuracy

    collection = BrickCollection(
        {
            "digit": {
                "head": BrickTrainable(nn.Linear(N_FEATURES, 3), input_names=["raw"], output_names=["./logits"]),
                "loss": BrickLoss(nn.CrossEntropyLoss(), input_names=["./logits", "digits"], output_names=["./ce"]),
                "accuracy": BrickMetricSingle(MulticlassAccuracy(3), input_names=["./logits", "digits"]),
            }
        }
    )
    with pytest.raises(MissingInputError) as info:
        collection({"raw": torch.randn(2, N_FEATURES)}, stage="validation")
    message = assert_message(
        info.value,
        "Brick 'digit/loss' needs input 'digits' in stage 'validation'",
        "Only losses and metrics read 'digits' here (['digit/loss', 'digit/accuracy'])",
        "-100 for class labels, NaN for floating targets",
        "make ['digit/loss', 'digit/accuracy'] dead in stage 'validation'",
        "alive_stages",
    )
    assert "Did you mean" not in message
    # A batch column that is close is still suggested, and a misspelt output of the same namespace too.
    with pytest.raises(MissingInputError, match=re.escape("Did you mean 'digit'?")):
        collection({"raw": torch.randn(2, N_FEATURES), "digit": torch.zeros(2)}, stage="validation")


@pytest.mark.parametrize("names", [["raw"], ("raw",), {"raw": None}])
def test_check_input_names_raises_early(names: Any) -> None:
    collection = embedding_typo_collection()
    with pytest.raises(MissingInputError, match=re.escape("Did you mean 'embedding'?")) as info:
        collection.check_input_names(Stage.INFERENCE, names)
    assert type(info.value) is MissingInputError
    assert_message(info.value, "'head'", "'embeding'", "stage 'inference'")


def test_check_input_names_passes_when_everything_is_there(boring_collection: BrickCollection) -> None:
    boring_collection.check_input_names(Stage.INFERENCE, ["raw"])
    boring_collection.check_input_names("train", ["raw", "targets", "unused"])
    with pytest.raises(MissingInputError, match=r"'targets' in stage 'validation'"):
        boring_collection.check_input_names(Stage.VALIDATION, ["raw"])


def test_check_input_names_with_a_bare_string(boring_collection: BrickCollection) -> None:
    """A bare string must not be read as a list of its characters (``Inputs given: ['a', 'r', 'w']``)."""
    with pytest.raises(BrickDefinitionError, match=r"'raw'"):
        boring_collection.check_input_names(Stage.INFERENCE, "raw")


# ----------------------------------------------------------------------------------------------- duplicates and cycles
def test_duplicate_output_in_a_common_stage() -> None:
    with pytest.raises(DuplicateOutputError, match=r"'first' and 'second' both produce 'y'") as info:
        BrickCollection(
            {
                "first": brick(["x"], ["y"], alive_stages=[Stage.TRAIN, Stage.TEST]),
                "second": brick(["z"], ["y"], alive_stages=[Stage.TEST, Stage.EXPORT]),
            }
        )
    assert type(info.value) is DuplicateOutputError
    assert_message(info.value, "stage 'test'")


def test_duplicate_output_between_nested_bricks_names_both_paths() -> None:
    with pytest.raises(DuplicateOutputError, match=r"'head0/a' and 'head1/b' both produce 'shared'"):
        BrickCollection({"head0": {"a": brick(["x"], ["../shared"])}, "head1": {"b": brick(["x"], ["shared"])}})


def test_cycle_of_two_bricks() -> None:
    with pytest.raises(CycleError, match=r"cycle in stage 'train'") as info:
        BrickCollection({"a": brick(["y"], ["x"]), "b": brick(["x"], ["y"])})
    assert type(info.value) is CycleError
    assert_message(info.value, "'a'", "'b'")


def test_cycle_of_three_bricks() -> None:
    with pytest.raises(CycleError, match=r"cycle in stage 'validation'") as info:
        BrickCollection(
            {
                "a": brick(["z"], ["x"], alive_stages=[Stage.VALIDATION]),
                "b": brick(["x"], ["y"], alive_stages=[Stage.VALIDATION]),
                "c": brick(["y"], ["z"], alive_stages=[Stage.VALIDATION]),
                "outside": brick(["raw"], ["w"]),
            }
        )
    message = assert_message(info.value, "'a'", "'b'", "'c'")
    assert "'outside'" not in message


def test_self_loop() -> None:
    with pytest.raises(CycleError, match=r"Brick 'normalize' reads its own output 'x' in stage 'export'") as info:
        BrickCollection({"normalize": brick(["x"], ["x"], alive_stages=[Stage.EXPORT])})
    assert type(info.value) is CycleError


def test_cycle_only_in_dead_stages_is_fine() -> None:
    collection = BrickCollection(
        {"a": brick(["y"], ["x"], alive_stages=[Stage.TRAIN]), "b": brick(["x"], ["y"], alive_stages=[Stage.TEST])}
    )
    assert collection.input_names(Stage.TRAIN) == ["y"]
    assert collection.input_names(Stage.TEST) == ["x"]


# ----------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("bricks", "path", "name"),
    [
        ({"a": brick(["../x"], ["y"])}, "a", "../x"),
        ({"h": {"a": brick(["../../x"], ["y"])}}, "h/a", "../../x"),
        ({"h": {"g": {"a": brick(["x"], ["../../../y"])}}}, "h/g/a", "../../../y"),
    ],
)
def test_relative_name_above_the_root(bricks: dict, path: str, name: str) -> None:
    with pytest.raises(InvalidNameError, match=r"climbs above the root") as info:
        BrickCollection(bricks)
    assert type(info.value) is InvalidNameError
    assert_message(info.value, repr(path), repr(name))


@pytest.mark.parametrize("name", ["a/b", "a.b", ".hidden", "head0/"])
def test_brick_name_with_separator(name: str) -> None:
    with pytest.raises(InvalidNameError, match=re.escape(repr(name))) as info:
        BrickCollection({name: brick(["x"], ["y"])})
    assert type(info.value) is InvalidNameError
    with pytest.raises(InvalidNameError, match=re.escape(repr(name))):
        BrickCollection({"outer": {name: brick(["x"], ["y"])}})
    collection = BrickCollection({"ok": brick(["x"], ["y"])})
    with pytest.raises(InvalidNameError, match=re.escape(repr(name))):
        collection[name] = brick(["x"], ["z"])


@pytest.mark.parametrize("name", ["forward", "summarize", "plan", "to", "training"])
def test_brick_name_clashing_with_a_collection_attribute(name: str) -> None:
    with pytest.raises(InvalidNameError, match=rf"{name!r} clashes with the BrickCollection attribute"):
        BrickCollection({name: brick(["x"], ["y"])})


def test_empty_brick_name() -> None:
    with pytest.raises(InvalidNameError, match=r"non-empty"):
        BrickCollection({"": brick(["x"], ["y"])})


# ----------------------------------------------------------------------------------------------- stages
def test_unknown_stage_at_forward(boring_collection: BrickCollection, batch: dict) -> None:
    with pytest.raises(UnknownStageError, match=re.escape("Did you mean 'validation'?")) as info:
        boring_collection(batch, stage="valdation")
    assert type(info.value) is UnknownStageError
    assert_message(info.value, "'valdation'")
    with pytest.raises(UnknownStageError, match=re.escape("Did you mean 'train'?")):
        boring_collection.input_names("trian")


def test_unknown_stage_in_alive_stages() -> None:
    with pytest.raises(UnknownStageError, match=re.escape("Did you mean 'inference'?")) as info:
        brick(["x"], ["y"], alive_stages=["inferense"])
    assert_message(info.value, "'inferense'")


def test_unknown_stage_in_summarize(boring_collection: BrickCollection) -> None:
    with pytest.raises(UnknownStageError, match=re.escape("Did you mean 'test'?")):
        boring_collection.summarize("tset")


def test_alive_stages_as_a_bare_string() -> None:
    with pytest.raises(UnknownStageError, match=re.escape("alive_stages=['train']")) as info:
        brick(["x"], ["y"], alive_stages="train")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("stage", [None, 3, ["train"]])
def test_stage_of_the_wrong_type(boring_collection: BrickCollection, batch: dict, stage: Any) -> None:
    with pytest.raises(BrickDefinitionError, match=r"Expected a stage"):
        boring_collection(batch, stage=stage)


# ----------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize(
    ("returned", "declared", "got"),
    [(3, ["a", "b"], "a tuple of 3 values"), (1, ["a", "b"], "one Tensor"), (2, ["a"], "a tuple of 2 values")],
)
@pytest.mark.parametrize("stage", [Stage.TRAIN, Stage.EXPORT])
def test_output_count_mismatch(returned: int, declared: list[str], got: str, stage: Stage) -> None:
    collection = BrickCollection(
        {"head": BrickNotTrainable(Returns(returned), input_names=["x"], output_names=declared)}
    )
    with pytest.raises(BrickOutputError, match=re.escape(got)) as info:
        collection({"x": torch.ones(2)}, stage=stage)
    assert type(info.value) is BrickOutputError
    assert_message(info.value, "'head'", f"stage {stage.value!r}", str(declared), f"declares {len(declared)} output")


@pytest.mark.parametrize("hooked", [False, True], ids=["direct", "hooked"])
@pytest.mark.parametrize(("returned", "got"), [(1, "one Tensor"), (2, "a tuple of 2 values")])
def test_value_returned_by_a_brick_without_outputs(returned: int, got: str, hooked: bool) -> None:
    """A brick that declares no outputs must not return a value that would be silently dropped."""
    probe = BrickNotTrainable(Returns(returned), input_names=["x"], output_names=[])
    if hooked:  # through nn.Module.__call__ rather than the direct call of the wrapped module
        probe.register_forward_hook(lambda module, args, output: None)
    collection = BrickCollection({"probe": probe})
    with pytest.raises(BrickOutputError, match=re.escape(got)) as info:
        collection({"x": torch.ones(2)}, stage=Stage.INFERENCE)
    assert_message(info.value, "Brick 'probe' declares 0 output(s) []", "stage 'inference'", "return None")


def test_brick_without_outputs_may_return_none_or_an_empty_tuple() -> None:
    recorded: list[torch.Tensor] = []

    class Record(nn.Module):
        def forward(self, x: torch.Tensor) -> None:
            recorded.append(x)

    collection = BrickCollection(
        {
            "record": BrickNotTrainable(Record(), input_names=["x"], output_names=[]),
            "empty": BrickNotTrainable(Returns(0), input_names=["x"], output_names=[]),
        }
    )
    assert list(collection({"x": torch.ones(2)}, stage=Stage.TRAIN)) == ["x"]
    assert len(recorded) == 1


def test_loss_that_is_not_a_scalar(batch: dict) -> None:
    bricks = boring_bricks()
    bricks["loss"] = BrickLoss(
        nn.CrossEntropyLoss(reduction="none"), input_names=["logits", "targets"], output_names=["loss_ce"]
    )
    collection = BrickCollection(bricks)  # type: ignore[arg-type]
    with pytest.raises(LossNotScalarError, match=re.escape("shape (4,)")) as info:
        collection(batch, stage=Stage.TRAIN)
    assert type(info.value) is LossNotScalarError
    assert_message(info.value, "'loss_ce'", "brick 'loss'", "stage 'train'", "reduction='mean'")
    # Dead in inference: no loss, no error.
    assert "loss_ce" not in collection(batch, stage=Stage.INFERENCE)


def test_loss_that_is_not_a_tensor() -> None:
    collection = BrickCollection(
        {"head": {"loss": BrickLoss(ReturnsFloat(), input_names=["x", "y"], output_names=["./loss"])}}
    )
    with pytest.raises(LossNotScalarError, match=r"it is a float") as info:
        collection({"x": torch.ones(1), "y": torch.ones(1)}, stage=Stage.VALIDATION)
    assert_message(info.value, "'head/loss'", "stage 'validation'")
    assert isinstance(info.value, BrickOutputError)


# ----------------------------------------------------------------------------------------------- wrong types
def test_input_names_as_a_plain_string() -> None:
    with pytest.raises(BrickDefinitionError, match=re.escape("input_names=['raw']")) as info:
        BrickTrainable(nn.Linear(2, 2), input_names="raw", output_names=["y"])  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)


def test_output_names_as_a_dict() -> None:
    with pytest.raises(BrickDefinitionError, match=r"output_names of BrickTrainable to be a list of names"):
        BrickTrainable(nn.Linear(2, 2), input_names=["x"], output_names={"y": "z"})  # type: ignore[arg-type]


@pytest.mark.parametrize("input_names", [[1], [None], {1: "x"}, {"": "x"}, 5])
def test_malformed_input_names(input_names: Any) -> None:
    with pytest.raises(BrickDefinitionError, match=r"input_names of BrickTrainable"):
        BrickTrainable(nn.Linear(2, 2), input_names=input_names, output_names=["y"])


@pytest.mark.parametrize("model", [lambda x: x, "linear", None])
def test_model_that_is_not_a_module(model: Any) -> None:
    with pytest.raises(BrickDefinitionError, match=r"to be a torch.nn.Module") as info:
        BrickTrainable(model, input_names=["x"], output_names=["y"])
    assert isinstance(info.value, TypeError)


def test_plain_module_in_the_collection_gets_a_hint_to_wrap_it() -> None:
    with pytest.raises(BrickDefinitionError, match=r"Wrap it in a brick") as info:
        BrickCollection({"backbone": nn.Linear(2, 2)})
    assert_message(info.value, "'backbone'", "Linear")
    with pytest.raises(BrickDefinitionError, match=r"'head'"):
        BrickCollection({"outer": {"head": 3}})


def test_collection_of_a_list() -> None:
    with pytest.raises(BrickDefinitionError, match=r"dict of bricks"):
        BrickCollection([brick(["x"], ["y"])])  # type: ignore[arg-type]


@pytest.mark.parametrize("named_inputs", [[torch.ones(1)], torch.ones(1), "raw"])
def test_named_inputs_that_are_not_a_dict(boring_collection: BrickCollection, named_inputs: Any) -> None:
    with pytest.raises(BrickDefinitionError, match=r"Expected named_inputs to be a dict") as info:
        boring_collection(named_inputs, stage=Stage.INFERENCE)
    assert_message(info.value, "['raw']")


# ----------------------------------------------------------------------------------------------- user errors
def test_error_inside_a_user_module_keeps_its_type_and_gets_a_note() -> None:
    collection = BrickCollection(
        {
            "backbone": BrickTrainable(nn.Linear(N_FEATURES, 4), input_names=["raw"], output_names=["features"]),
            "head0": {"classify": BrickTrainable(nn.Linear(7, 3), input_names=["features"], output_names=["./y"])},
        }
    )
    with pytest.raises(RuntimeError, match=r"shapes cannot be multiplied") as info:
        collection({"raw": torch.randn(2, N_FEATURES)}, stage=Stage.VALIDATION)
    assert type(info.value) is RuntimeError
    assert not isinstance(info.value, TorchBricksError)
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1
    assert "'head0/classify'" in notes[0]
    assert "'validation'" in notes[0]
    assert "'backbone'" not in notes[0]


def test_key_error_inside_an_all_inputs_brick_keeps_its_type() -> None:
    class NeedsMissingKey(nn.Module):
        def forward(self, named: dict[str, Any]) -> torch.Tensor:
            return named["not_there"]

    collection = BrickCollection(
        {"debug": BrickNotTrainable(NeedsMissingKey(), input_names=["__all__"], output_names=["out"])}
    )
    with pytest.raises(KeyError, match=r"not_there") as info:
        collection({"raw": torch.ones(1)}, stage="export")
    assert any("'debug'" in note and "'export'" in note for note in info.value.__notes__)


def test_note_is_added_once_per_call() -> None:
    collection = BrickCollection({"bad": BrickTrainable(nn.Linear(3, 3), input_names=["x"], output_names=["y"])})
    for _ in range(2):
        with pytest.raises(RuntimeError) as info:
            collection({"x": torch.ones(2, 5)})
        assert len(info.value.__notes__) == 1


# ----------------------------------------------------------------------------------------------- python -O
_OPTIMIZED_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from torchbricks_lightning import BrickCollection, BrickNotTrainable

    if not sys.flags.optimize:
        raise SystemExit("not running under -O")

    class Three(nn.Module):
        def forward(self, x):
            return x, x, x

    def b(inputs, outputs, model=None):
        return BrickNotTrainable(model or nn.Identity(), input_names=inputs, output_names=outputs)

    cases = {
        "missing": lambda: BrickCollection({"a": b(["x"], ["y"])})({"z": torch.ones(1)}),
        "duplicate": lambda: BrickCollection({"a": b(["x"], ["y"]), "c": b(["x"], ["y"])}),
        "cycle": lambda: BrickCollection({"a": b(["y"], ["x"]), "c": b(["x"], ["y"])}),
        "self_loop": lambda: BrickCollection({"a": b(["x"], ["x"])}),
        "count": lambda: BrickCollection({"a": b(["x"], ["y", "z"], Three())})({"x": torch.ones(1)}),
        "above_root": lambda: BrickCollection({"a": b(["../x"], ["y"])}),
    }
    for case, run in cases.items():
        try:
            run()
        except Exception as err:
            print(f"{case}: {type(err).__module__}.{type(err).__qualname__}")
        else:
            print(f"{case}: no error")
    """
)


@pytest.mark.slow
def test_errors_do_not_rely_on_assert_under_python_optimize() -> None:
    result = subprocess.run(
        [sys.executable, "-O", "-c", _OPTIMIZED_SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert lines == {
        "missing": "torchbricks_lightning.errors.MissingInputError",
        "duplicate": "torchbricks_lightning.errors.DuplicateOutputError",
        "cycle": "torchbricks_lightning.errors.CycleError",
        "self_loop": "torchbricks_lightning.errors.CycleError",
        "count": "torchbricks_lightning.errors.BrickOutputError",
        "above_root": "torchbricks_lightning.errors.InvalidNameError",
    }


def test_metric_brick_errors_are_package_errors() -> None:
    with pytest.raises(BrickDefinitionError, match=r"torchmetrics Metric"):
        BrickMetricSingle(nn.Linear(2, 2), input_names=["a", "b"])  # type: ignore[arg-type]
