"""Export a stage's pruned graph as checked artefacts (ONNX, ``torch.export`` ``.pt2``), each with a JSON manifest.

* :mod:`~torchbricks_lightning.core.export.options`: :class:`ExportOptions`, every option and its one default;
* :mod:`~torchbricks_lightning.core.export.selection`: which outputs and bricks an artefact holds;
* :mod:`~torchbricks_lightning.core.export.shapes`: dynamic dimensions and the second shape checked;
* :mod:`~torchbricks_lightning.core.export.program`: the one ``torch.export`` trace;
* :mod:`~torchbricks_lightning.core.export.formats`: writing and loading ONNX and ``.pt2``;
* :mod:`~torchbricks_lightning.core.export.verify`: the comparison with eager PyTorch;
* :mod:`~torchbricks_lightning.core.export.manifest`: the manifest's fields;
* :mod:`~torchbricks_lightning.core.export.publishing`: how an artefact and its manifest go into place, and
  :func:`check_artefact`, the reader that takes only a pair that matches;
* :mod:`~torchbricks_lightning.core.export.specs`: several artefacts at once (one per head);
* :mod:`~torchbricks_lightning.core.export.exporting`: :func:`export_bricks`, one artefact, which runs them in order;
* :mod:`~torchbricks_lightning.core.export.artefacts`: :func:`export_artefacts`, several, the path every entry point
  takes.
"""

from torchbricks_lightning.core.export.artefacts import PlannedArtefact, export_artefacts, plan_artefacts
from torchbricks_lightning.core.export.exporting import ExportResult, export_bricks
from torchbricks_lightning.core.export.formats import FORMATS, ExportFormat
from torchbricks_lightning.core.export.manifest import MANIFEST_VERSION, manifest_path
from torchbricks_lightning.core.export.options import DTYPES, ExportOptions
from torchbricks_lightning.core.export.publishing import check_artefact
from torchbricks_lightning.core.export.specs import Artefacts, ExportSpec, artefact_specs, expand_specs

__all__ = [
    "DTYPES",
    "FORMATS",
    "MANIFEST_VERSION",
    "Artefacts",
    "ExportFormat",
    "ExportOptions",
    "ExportResult",
    "ExportSpec",
    "PlannedArtefact",
    "artefact_specs",
    "check_artefact",
    "expand_specs",
    "export_artefacts",
    "export_bricks",
    "manifest_path",
    "plan_artefacts",
]
