"""Which torch device the backbones run on: `--device auto|cpu|cuda`."""

from __future__ import annotations

from aigen.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto"):
    """`torch.device` for `name`: "auto" is CUDA when available, else the CPU.

    Asking for "cuda" on a machine without a usable CUDA device is a UserError, not a silent
    fall-back, so that a run never reports CPU timings as GPU ones.
    """
    import torch

    name = str(name).strip().lower()
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {name} was asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
            "use --device cpu or --device auto"
        )
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return device
