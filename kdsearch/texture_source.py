"""Where a DRAEM method's textures come from: the ``--textures`` option of ``train`` and
``ablate``, and the warning for a paper-budget run on the built-in procedural bank."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kdsearch.config import field_names
from kdsearch.errors import UserError
from kdsearch.methods import get_method_class, list_methods
from kdsearch.trial import Trial


def _uses_textures(method: str) -> bool:
    return "texture_root" in field_names(get_method_class(method).config_class)


def textures_setting(method: str, path: str | None) -> dict[str, Any]:
    """``--textures PATH`` as a method setting, checked: ``{"texture_root": absolute path}``."""
    if path is None:
        return {}
    if not _uses_textures(method):
        users = ", ".join(m for m in list_methods() if _uses_textures(m))
        raise UserError(f"--textures: {method} makes no DRAEM anomalies, so it reads no textures; "
                        f"it applies to {users}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"--textures {path}: no such folder; give the DTD images folder (dtd/images)")
    return {"texture_root": str(folder.resolve())}


def textures_warning(trial: Trial, profile: str | None) -> str | None:
    """The warning for a paper-budget run of a DRAEM method on the built-in textures, else None."""
    method = trial.train.method
    if profile != "paper" or not _uses_textures(method) or getattr(trial.method_config, "texture_root", None):
        return None
    return (f"{method} synthesises DRAEM anomalies from the built-in procedural textures, while the paper "
            f"uses DTD: these numbers are not comparable with the paper's; pass --textures PATH (DTD's "
            f"images folder) to reproduce it")
