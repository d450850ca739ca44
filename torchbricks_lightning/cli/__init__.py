"""The ``torchbricks-lightning`` command: Lightning's CLI for brick recipes in YAML, plus ``export``.

Subcommands ``fit``, ``validate``, ``test`` and ``predict`` come from ``LightningCLI`` and take
``--config recipe.yaml``; ``export --ckpt_path run.ckpt --output model.onnx`` turns a checkpoint into a verified
ONNX file. Run it as ``torchbricks-lightning`` or ``python -m torchbricks_lightning.cli``.

- :mod:`~torchbricks_lightning.cli.app`: :class:`TorchBricksCLI` and :func:`main`.
- :mod:`~torchbricks_lightning.cli.recipe`: the checks that name the key of a recipe mistake.
- :mod:`~torchbricks_lightning.cli.export`: the ``export`` subcommand.
"""

from torchbricks_lightning.cli.app import RecipeArgumentParser, TorchBricksCLI, check_ckpt_path, main
from torchbricks_lightning.errors import RecipeError

__all__ = ["RecipeArgumentParser", "RecipeError", "TorchBricksCLI", "check_ckpt_path", "main"]
