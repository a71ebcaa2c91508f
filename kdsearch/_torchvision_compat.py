"""Make CUDA-built torchvision importable next to CPU-only torch.

The only torchvision release paired with torch 2.13 ships as a CUDA build. Next to the
CPU torch wheel its compiled library fails to load, and ``import torchvision`` (hence
``import timm``) dies with ``operator torchvision::nms does not exist`` because its
Python side registers fake kernels for operators whose schemas were never declared.
Declaring those schemas first lets the pure-Python parts (models, transforms) import.
The C operators themselves stay unavailable; kdsearch never calls them. Where the
library loads (matching CUDA torch on a GPU node) this does nothing.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Any

_fragment: Any = None

_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _native_library_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # nothing to repair
    package_dir = Path(spec.origin).parent
    for candidate in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(candidate))
            return True
        except (OSError, RuntimeError):
            return False
    return False


def ensure_torchvision_importable() -> None:
    """Declare torchvision's operator schemas when its native library cannot load."""
    global _fragment
    if _fragment is not None or _native_library_loads():
        return
    import torch

    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_SCHEMAS:
        _fragment.define(schema)


class _RepairBeforeImport(importlib.abc.MetaPathFinder):
    """Runs the repair when torchvision is first imported, so importing kdsearch stays light."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            ensure_torchvision_importable()
        return None


def install_import_hook() -> None:
    """Repair before the first ``import torchvision`` (also inside Ray workers, which import kdsearch)."""
    if "torchvision" in sys.modules or any(isinstance(f, _RepairBeforeImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _RepairBeforeImport())
