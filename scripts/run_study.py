#!/usr/bin/env python3
"""Run the whole study: the same as `aigen study` (see docs/study.md, or `--help`)."""

import sys

import aigen.cli

if __name__ == "__main__":
    sys.exit(aigen.cli.main(["study", *sys.argv[1:]]))
