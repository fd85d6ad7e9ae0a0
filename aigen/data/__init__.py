"""Data: discovery, robust decoding, the dataset, splits and preprocessing (docs/data.md).

The main names are re-exported here but imported on first use, so `import aigen.data` stays cheap.
(The function `preprocess` is not re-exported: that name is the submodule aigen.data.preprocess.)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LABEL_AI": "discover", "LABEL_REAL": "discover", "LABEL_NAMES": "discover", "Skipped": "discover",
    "parse_class_args": "discover",
    "ImageSkip": "loading", "open_image": "loading", "DEFAULT_MAX_PIXELS": "loading",
    "Dataset": "dataset", "ImageInfo": "dataset", "load_dataset": "dataset",
    "format_skip_summary": "dataset", "write_skipped": "dataset",
    "add_data_arguments": "dataset", "dataset_from_args": "dataset",
    "Split": "split", "make_split": "split", "write_split": "split", "read_split": "split",
    "Spec": "preprocess", "SCRATCH": "preprocess", "BACKBONE": "preprocess",
    "to_model_input": "preprocess", "dataset_arrays": "dataset", "load_model_input": "preprocess",
    "DECODE_MIN_SIDE": "preprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aigen.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aigen.data.{_EXPORTS[name]}"), name)
