"""The checkpoints of a results folder: what each one says it is, and the checks before one is used.

Every checkpoint carries its identity in its metadata (model name, regime, backbone, seed) and
results.json records its path (relative, inside the results folder) and its sha256. A model is
loaded from a run only through `load_run_model`, which refuses a path that leaves the folder, a
file whose sha256 differs from the recorded one (a file copied over another) and a file whose
identity is not the one asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from aigen.errors import UserError
from aigen.io import file_sha256

IDENTITY_KEYS = ("model", "regime", "backbone", "seed")


def identity(model_name: str, regime: str, backbone: str | None, seed: int) -> dict[str, Any]:
    """What a checkpoint's metadata must say for it to be `model_name` at `seed`."""
    return {"model": model_name, "regime": regime, "backbone": backbone, "seed": int(seed)}


def checkpoint_path(run_dir: str | os.PathLike, results: Mapping[str, Any], name: str,
                    seed: int) -> Path:
    """The checkpoint file of model `name` at `seed`, checked: inside `run_dir` (links resolved),
    a regular file, with the sha256 that results.json records. Anything else is a UserError."""
    run_dir = Path(run_dir)
    model = results["models"][name]
    relative = model.get("checkpoints", {}).get(str(seed))
    recorded = (model.get("checkpoint_sha256") or {}).get(str(seed))
    if not isinstance(relative, str) or not relative:
        raise UserError(f"{run_dir}/results.json records no checkpoint for {name} at seed {seed}")
    path = run_dir / relative
    if Path(relative).is_absolute() or not path.resolve().is_relative_to(run_dir.resolve()):
        raise UserError(f"{run_dir}/results.json: the checkpoint of {name} (seed {seed}), "
                        f"{relative}, is outside the results folder; refusing to load it")
    if not path.is_file():
        raise UserError(f"the checkpoint {path} of {name} (seed {seed}) is missing")
    if not isinstance(recorded, str):
        raise UserError(f"{run_dir}/results.json records no sha256 for the checkpoint of {name} "
                        f"(seed {seed}), so it cannot be verified; re-run the study")
    actual = file_sha256(path)
    if actual != recorded:
        raise UserError(f"the checkpoint {path} is not the one the run wrote for {name} (seed "
                        f"{seed}): sha256 {actual[:12]}..., results.json records "
                        f"{recorded[:12]}...")
    return path


def check_identity(model, path: str | os.PathLike, expected: Mapping[str, Any]) -> None:
    """A UserError unless the loaded `model`'s own record says it is `expected` (see identity)."""
    metadata = getattr(model, "metadata", None) or {}
    found = {key: metadata.get(key) for key in IDENTITY_KEYS}
    # The file format itself also tells the regime and backbone; both must agree.
    regime = getattr(model, "regime", "scratch")
    backbone = getattr(getattr(model, "backbone", None), "name", None)
    if regime != expected["regime"] or backbone != expected["backbone"]:
        found.update(regime=regime, backbone=backbone)
    wrong = [f"{key} {found[key]!r} (expected {expected[key]!r})" for key in IDENTITY_KEYS
             if found[key] != expected[key]]
    if wrong:
        raise UserError(f"the checkpoint {path} is not {expected['model']} at seed "
                        f"{expected['seed']}: it records " + ", ".join(wrong))


def load_run_model(run_dir: str | os.PathLike, results: Mapping[str, Any], name: str, seed: int,
                   *, weights=None, device=None, backbone=None):
    """Model `name` of a finished run at `seed`, after every check above (see the module text).

    `weights`, `device` and an already loaded `backbone` go to `aigen.models.load_model`."""
    from aigen.models import load_model

    path = checkpoint_path(run_dir, results, name, seed)
    info = results["models"][name]
    model = load_model(path, weights=weights, device=device, backbone=backbone)
    check_identity(model, path, identity(name, info["regime"], info.get("backbone"), seed))
    return model
