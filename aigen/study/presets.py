"""Named recipes of `aigen study --preset NAME` (docs/study.md#presets).

A preset is a set of option values applied before the command line's own: an option given on the
command line wins over the preset's value, and every option the preset leaves alone keeps its
default. The run records the preset's name and the resulting arguments in config.json, so
`--config` and `--resume` rerun exactly what ran.

* `seed`: the seed's protocol, every default as it is (the default).
* `best`: the strongest recipe measured on the Kaggle data (3 seeds; it does not reach the
  issue's 0.88 target: docs/models.md#the-best-recipe).
"""

from __future__ import annotations

from typing import Any

DEFAULT_PRESET = "seed"

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    # Lite1 fine-tuned: 0.826 over 3 seeds; crops (0.819) and the full regime (one seed, 0.812)
    # did not beat it (docs/models.md#the-best-recipe).
    "best": {
        "backbones": ["efficientnet_lite1"],
        "models": ["scratch", "frozen", "finetuned"],
        "harmonize": ["none", "jpeg:96"],
    },
}

DESCRIPTIONS = {
    "seed": "the seed's protocol (every default)",
    "best": "EfficientNet-Lite1, frozen and fine-tuned, raw and harmonised (jpeg:96) side by side",
}


def preset_arguments(name: str) -> dict[str, Any]:
    """The option values (argparse dests) of preset `name`; KeyError for an unknown one."""
    return {key: list(value) if isinstance(value, list) else value
            for key, value in PRESETS[name].items()}


def add_argument(group) -> None:
    """`--preset NAME` on the study's parser."""
    choices = ", ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items())
    group.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                       help=f"a named recipe whose option values apply unless the command line "
                            f"gives them itself ({choices}) (default: {DEFAULT_PRESET})")
