"""``ocm-loadgen`` / ``python -m loadgen``: see loadgen/cli.py."""

from __future__ import annotations

import sys

from loadgen.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
