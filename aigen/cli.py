"""The `aigen` command: one subcommand per job, each owned by the module that does the work.

Each module named in COMMANDS exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aigen import __version__
from aigen.errors import Terminated, UserError, terminate_like_interrupt

COMMANDS = {
    "study": ("aigen.study.driver", "run the whole study and write a results folder"),
    "explore": ("aigen.data.explore", "summarise a dataset and run the metadata shortcut audit"),
    "synth": ("aigen.data.synth", "generate the embedded synthetic two-class dataset"),
    "predict": ("aigen.study.predict", "score images with the models of a finished run"),
    "evaluate": ("aigen.study.evaluate", "evaluate a finished run's models on another labelled "
                                         "folder"),
    "fetch-data": ("aigen.data.fetch", "download the Kaggle dataset (needs kaggle credentials)"),
}


DESCRIPTION = ("aigen: a reproducible study of how well convolutional networks tell AI-generated "
               "images from real photographs without leaning on trivial cues (resolution, file "
               "format, compression, metadata). `aigen study` trains and evaluates the models and "
               "writes a results folder; the other commands explore data, score new images and "
               "evaluate finished runs on other data.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigen", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"aigen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # which options were given
    try:
        with terminate_like_interrupt():
            return int(args._run(args) or 0)
    except UserError as exc:
        print(f"aigen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"aigen {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"aigen {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`aigen predict ... | head`): stop quietly
        _silence_stdout()
        return 141  # what a shell reports for a command ended by SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass


if __name__ == "__main__":
    sys.exit(main())
