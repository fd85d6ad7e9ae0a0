"""Errors that reach the user as a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input or environment the user can fix; the CLI prints the message and exits with 2."""
