"""KeyedModelCheckpoint: Lightning's ``ModelCheckpoint`` whose file names may name logged keys, ``/`` and all.

``LightningBrickCollection`` logs keys such as ``validation/digit/accuracy``. In Lightning's ``ModelCheckpoint``, a
``filename`` that names one (``"{epoch}-{validation/digit/accuracy:.4f}"``) writes nested folders
(``epoch=3-validation/digit/accuracy=0.9812.ckpt``), because the key's ``/`` ends up in the path.
:class:`KeyedModelCheckpoint` writes ``epoch=3-validation_digit_accuracy=0.9812.ckpt`` instead: in the names of the
keys it puts ``_`` for ``/``. Everything else is Lightning's ``ModelCheckpoint`` (monitor, mode, top-k, ``last``),
except that a resumed state keeps only the paths that lie inside its ``dirpath``, resolved (see
:func:`~torchbricks_lightning.checkpoints.callback_paths.confine_model_checkpoint_state`), whatever the
``CheckpointIO`` that read it.

Example:
    >>> import torch
    >>> checkpoint = KeyedModelCheckpoint(filename="{epoch}-{validation/digit/accuracy:.4f}")
    >>> logged = {"epoch": torch.tensor(3), "validation/digit/accuracy": torch.tensor(0.98125)}
    >>> checkpoint.format_checkpoint_name(logged)
    'epoch=3-validation_digit_accuracy=0.9812.ckpt'
"""

from __future__ import annotations

import re
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint
from typing_extensions import override

from torchbricks_lightning.checkpoints.callback_paths import confine_model_checkpoint_state

__all__ = ["KeyedModelCheckpoint", "flat_key"]

_KEY_IN_TEMPLATE = re.compile(r"\{([^{}:]+)")
"""The key of each ``{key}`` or ``{key:format}`` group of a filename template, as Lightning reads them."""


def flat_key(key: str) -> str:
    """A logged key as it appears in a checkpoint's file name: ``/`` becomes ``_``.

    Example:
        >>> flat_key("validation/digit/accuracy")
        'validation_digit_accuracy'
    """
    return key.replace("/", "_")


class KeyedModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``filename`` may name logged keys that contain ``/``, without writing folders.

    It takes Lightning's ``ModelCheckpoint`` arguments unchanged. In YAML::

        - class_path: torchbricks_lightning.callbacks.KeyedModelCheckpoint
          init_args:
            monitor: validation/digit/accuracy
            mode: max
            filename: "{epoch}-{validation/digit/accuracy:.4f}"
    """

    @override
    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        template = filename or self.filename
        if template and "/" in template:
            template = _KEY_IN_TEMPLATE.sub(lambda group: "{" + flat_key(group.group(1)), template)
            metrics = {**metrics, **{flat_key(key): value for key, value in metrics.items() if "/" in key}}
        return super().format_checkpoint_name(metrics, filename=template, ver=ver, prefix=prefix)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's ``load_state_dict``, after dropping (with a warning) each path outside this callback's
        ``dirpath``: a resumed ``ModelCheckpoint`` deletes the files its state names."""
        folders = [self.dirpath] if self.dirpath else []
        super().load_state_dict(confine_model_checkpoint_state(state_dict, folders, name=self.state_key))
