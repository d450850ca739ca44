"""The ``torchbricks-lightning`` command: Lightning's CLI for brick recipes in YAML, plus ``export``.

Subcommands ``fit``, ``validate``, ``test`` and ``predict`` come from ``LightningCLI`` and take
``--config recipe.yaml`` (``predict --output_dir preds/`` writes the predictions to files); ``export --ckpt_path
run.ckpt --output model.onnx`` turns a checkpoint into one or several checked artefacts (ONNX, ``.pt2``). Run it as
``torchbricks-lightning`` or ``python -m torchbricks_lightning.cli``.

- :mod:`~torchbricks_lightning.cli.app`: :class:`TorchBricksCLI` and :func:`main`.
- :mod:`~torchbricks_lightning.cli.recipe`: the checks that name the key of a mistake inside ``brick_collection``.
- :mod:`~torchbricks_lightning.cli.recipe_keys`: the checks of every other key, from the classes' signatures.
- :mod:`~torchbricks_lightning.cli.recipe_parser`: the parser that reports them (file, key, fix; no usage).
- :mod:`~torchbricks_lightning.cli.export`: the ``export`` subcommand.
- :mod:`~torchbricks_lightning.cli.predict`: ``predict --output_dir`` (the CLI's trainer class, ``BrickTrainer``).
"""

from torchbricks_lightning.cli.app import RecipeArgumentParser, TorchBricksCLI, check_ckpt_path, main

__all__ = ["RecipeArgumentParser", "TorchBricksCLI", "check_ckpt_path", "main"]
