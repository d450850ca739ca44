"""Metric bricks in YAML recipes: the dict of metrics that BrickMetrics documents trains through the CLI, and a
mistake in one metric is one line that names its key (not jsonargparse's page of union alternatives)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runs import exit_code, in_folder

from torchbricks_lightning.cli import TorchBricksCLI
from torchbricks_lightning.cli.recipe import first_recipe_problem
from torchbricks_lightning.cli.recipe_metrics import first_metric_problem

RECIPE = Path(__file__).parent / "configs" / "tiny_recipe.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"]
METRICS = {
    "mse": {"class_path": "torchmetrics.MeanSquaredError"},
    "mae": {"class_path": "torchmetrics.MeanAbsoluteError", "init_args": {"num_outputs": 1}},
}


def _recipe_with(bricks: dict[str, Any]) -> dict[str, Any]:
    """The tiny recipe (one head of 4 classes) with more bricks, without its export callback."""
    config = yaml.safe_load(RECIPE.read_text())
    config["trainer"]["callbacks"] = []
    config["model"]["brick_collection"].update(bricks)
    return config


def _metrics_brick(metric_collection: Any) -> dict[str, Any]:
    """Metrics on the head's probabilities against themselves: any metric of two float tensors works."""
    return {
        "class_path": "torchbricks_lightning.BrickMetrics",
        "init_args": {
            "metric_collection": metric_collection,
            "input_names": ["head0/probabilities", "head0/probabilities"],
        },
    }


def _write(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_dict_of_metrics_in_yaml_trains_and_logs_each_under_the_brick_path(tmp_path: Path) -> None:
    bricks = {
        "metrics": _metrics_brick(METRICS),
        # A dict of metrics inside a nested dict of bricks, and input names given as a dict, parse as well.
        "extra": {
            "more": _metrics_brick({"mse": {"class_path": "torchmetrics.MeanSquaredError"}}),
            "single": {
                "class_path": "torchbricks_lightning.BrickMetricSingle",
                "init_args": {
                    "metric": {"class_path": "torchmetrics.MeanAbsoluteError"},
                    "input_names": {"preds": "head0/probabilities", "target": "head0/probabilities"},
                    "metric_name": "mae",
                },
            },
        },
    }
    path = _write(_recipe_with(bricks), tmp_path / "recipe.yaml")
    with in_folder(tmp_path):
        cli = TorchBricksCLI(args=["fit", "--config", str(path), *QUIET, "--trainer.logger", "false"])

    collection = cli.model.brick_collection
    assert collection.metric_keys() == ["head0/accuracy", "metrics/mae", "metrics/mse", "extra/more/mse", "extra/mae"]
    logged = set(cli.trainer.callback_metrics)
    for stage in ("train", "validation"):
        assert {
            f"{stage}/metrics/mse",
            f"{stage}/metrics/mae",
            f"{stage}/extra/more/mse",
            f"{stage}/extra/mae",
        } <= logged
    assert float(cli.trainer.callback_metrics["validation/metrics/mse"]) == 0.0  # a tensor against itself


def test_a_metric_collection_class_path_works_too(tmp_path: Path) -> None:
    collection = {"class_path": "torchmetrics.MetricCollection", "init_args": {"metrics": METRICS}}
    path = _write(_recipe_with({"metrics": _metrics_brick(collection)}), tmp_path / "recipe.yaml")
    with in_folder(tmp_path):
        cli = TorchBricksCLI(args=["--config", str(path), *QUIET], run=False)
    assert cli.model.brick_collection.metric_keys() == ["head0/accuracy", "metrics/mae", "metrics/mse"]


# ------------------------------------------------------------------------------------------------ mistakes
WHERE = "model.brick_collection.metrics.init_args.metric_collection"
MISTAKES: dict[str, tuple[Any, str]] = {
    "misspelt-argument": (
        {"mse": {"class_path": "torchmetrics.MeanSquaredError", "init_args": {"squard": False}}},
        f"{WHERE}.mse.init_args.squard: torchmetrics.MeanSquaredError takes no argument 'squard'. "
        "Did you mean 'squared'?",
    ),
    "value-of-the-wrong-type": (
        {"mse": {"class_path": "torchmetrics.MeanSquaredError", "init_args": {"squared": "maybe"}}},
        f"{WHERE}.mse.init_args.squared: Expected a <class 'bool'>. Got value: maybe",
    ),
    "not-a-metric": (
        {"mse": {"class_path": "torch.nn.MSELoss"}},
        f"{WHERE}.mse.class_path: 'torch.nn.MSELoss' is not a torchmetrics Metric.",
    ),
    "a-list-of-metrics": (
        [{"class_path": "torchmetrics.MeanSquaredError"}],
        f"{WHERE}: expected the metrics as a dict {{name: {{class_path: torchmetrics.<Metric>, init_args: {{...}}}}}}",
    ),
    "a-metric-without-class-path": (
        {"mse": "torchmetrics.MeanSquaredError"},
        f"{WHERE}.mse: expected a metric as {{class_path: torchmetrics.<Metric>, init_args: {{...}}}}, but got "
        "'torchmetrics.MeanSquaredError'.",
    ),
    "a-single-metric-class": (
        {"class_path": "torchmetrics.MeanSquaredError"},
        f"{WHERE}.class_path: 'torchmetrics.MeanSquaredError' is not a MetricCollection. Give the metrics as a dict",
    ),
    "in-a-metric-collection": (
        {
            "class_path": "torchmetrics.MetricCollection",
            "init_args": {"metrics": {"mse": {"class_path": "torch.nn.L1Loss"}}},
        },
        f"{WHERE}.init_args.metrics.mse.class_path: 'torch.nn.L1Loss' is not a torchmetrics Metric.",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_in_a_metric_names_its_key(case: str) -> None:
    metric_collection, message = MISTAKES[case]
    config = {"model": {"brick_collection": {"metrics": _metrics_brick(metric_collection)}}}
    problem = first_metric_problem(config)
    assert problem is not None
    assert problem.startswith(message), problem
    assert first_recipe_problem({"fit": config}) == f"fit.{problem}"


def test_good_metrics_have_no_problem() -> None:
    for metric_collection in (
        METRICS,
        {"class_path": "torchmetrics.MetricCollection", "init_args": {"metrics": METRICS}},
    ):
        assert first_metric_problem({"model": {"brick_collection": {"m": _metrics_brick(metric_collection)}}}) is None
    single = {"class_path": "torchbricks_lightning.BrickMetricSingle", "init_args": {"metric": METRICS["mse"]}}
    assert first_metric_problem({"model": {"brick_collection": {"head": {"m": single}}}}) is None


def test_a_misspelt_metric_argument_is_one_line_from_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = {"mse": {"class_path": "torchmetrics.MeanSquaredError", "init_args": {"squard": False}}}
    path = _write(_recipe_with({"metrics": _metrics_brick(metrics)}), tmp_path / "recipe.yaml")

    assert exit_code(["fit", "--config", str(path), *QUIET], tmp_path) == 2

    err = capsys.readouterr().err
    error_lines = err[err.index("error:") :].strip().splitlines()
    assert error_lines == [
        f"error: {path.name}: {WHERE}.mse.init_args.squard: torchmetrics.MeanSquaredError takes no argument 'squard'. "
        "Did you mean 'squared'? Its arguments are ['squared', 'num_outputs', 'compute_on_cpu', 'dist_sync_on_step', "
        "'process_group', 'dist_sync_fn', 'distributed_available_fn', 'sync_on_compute', 'compute_with_cache']."
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_the_readme_yaml_example_parses_and_names_its_checkpoints_as_its_comment_says() -> None:
    import re

    from jsonargparse import ArgumentParser

    from torchbricks_lightning.callbacks import KeyedModelCheckpoint
    from torchbricks_lightning.lightning import LightningBrickCollection

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", readme, flags=re.DOTALL | re.MULTILINE)
    (block,) = [block for block in blocks if "KeyedModelCheckpoint" in block]
    recipe = yaml.safe_load(block)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(LightningBrickCollection, "model")
    model = parser.instantiate(parser.parse_object({"model": recipe["model"]})).model
    assert model.brick_collection.metric_keys() == ["age_metrics/mae", "age_metrics/mse"]

    (callback,) = recipe["trainer"]["callbacks"]
    assert callback["class_path"] == "torchbricks_lightning.callbacks.KeyedModelCheckpoint"
    checkpoint = KeyedModelCheckpoint(**callback["init_args"])
    expected = re.search(r"# (epoch=\S+\.ckpt)", block)
    assert expected is not None
    name = checkpoint.format_checkpoint_name({"epoch": 3, "validation/age_metrics/mae": 0.412})
    assert Path(name).name == expected.group(1)
