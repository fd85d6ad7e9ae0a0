"""Errors raised by aigen.kernels."""

from aigen.errors import UserError


class KernelBuildError(UserError, ImportError):
    """The compiled kernels are missing or were built from other sources; the message says how to rebuild."""
