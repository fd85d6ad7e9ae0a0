"""`python -m aigen ...`: the `aigen` command (what `torchrun -m aigen study ...` starts)."""

import sys

from aigen.cli import main

if __name__ == "__main__":
    sys.exit(main())
