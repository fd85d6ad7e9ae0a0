"""Errors that reach the user as a one-line message instead of a traceback."""

import contextlib
from typing import Iterator


class UserError(Exception):
    """Bad input or environment the user can fix; the CLI prints the message and exits with 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by `timeout`, batch schedulers, container stops), raised where the program
    is, like Ctrl-C's KeyboardInterrupt, so the same clean-up runs; the CLI exits with 143."""


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread (a no-op elsewhere)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def plain_worker_signals() -> None:
    """Initializer of forked worker processes: they inherit the parent's SIGTERM handler, which
    would turn the SIGTERM that ends a pool into a Terminated traceback in every worker; a worker
    just ends on SIGTERM, and leaves Ctrl-C to the parent, which stops the pool."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
