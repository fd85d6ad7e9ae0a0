"""The study's models: the scratch CNN (scratch.py) and pretrained backbones (backbones.py).

`load_model(path)` reads either kind of saved model, telling them apart by the file's content.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from aigen.errors import UserError

__all__ = ["load_model", "model_kind"]


def model_kind(path: str | os.PathLike) -> str:
    """"scratch" for a ScratchCNN .npz, "backbone" for a BackboneClassifier checkpoint.

    Both are zip archives: numpy's .npz holds only `*.npy` members, torch.save's holds a
    `*/data.pkl`. Anything else is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path} is not a saved aigen model ({exc})") from exc
    if any(name.endswith("data.pkl") for name in names):
        return "backbone"
    if names and all(name.endswith(".npy") for name in names):
        return "scratch"
    raise UserError(f"{path} is not a saved aigen model (unrecognised archive contents)")


def load_model(path: str | os.PathLike, *, weights=None, device=None, backend: str | None = None,
               backbone=None):
    """A saved ScratchCNN or BackboneClassifier, whichever `path` holds, with the `metadata` dict
    it was saved with as its `metadata` attribute.

    `backend` applies to the scratch CNN (default: the one it was trained with); `weights`,
    `device` and an already loaded `backbone` apply to backbone classifiers (see
    `aigen.models.backbones.load_classifier`).
    """
    if model_kind(path) == "scratch":
        from aigen.models.scratch import ScratchCNN

        model, header = ScratchCNN.load_with_header(path, backend=backend)
        model.metadata = dict(header.get("metadata") or {})
        return model
    from aigen.models.backbones import load_classifier

    return load_classifier(path, weights=weights, device=device, backbone=backbone)
