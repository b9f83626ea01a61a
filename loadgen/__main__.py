"""``ocm-loadgen`` / ``python -m loadgen``: see loadgen/cli.py.

The loadgen needs the ``loadgen`` extra (numpy, hdrhistogram, rich; matplotlib for
``--plot``). Without it, this entry point says so in one line instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Final

EXTRA_MODULES: Final = frozenset({"numpy", "hdrh", "rich", "matplotlib"})
"""Top-level modules of the ``loadgen`` extra (pyproject.toml)."""
EXIT_MISSING_EXTRA: Final = 3
"""The run failed before it started (cli.EXIT_FAILED)."""


def main(argv: list[str] | None = None) -> int:
    try:
        from loadgen.cli import main as cli_main
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRA_MODULES:
            raise
        print(f"ocm-loadgen: {top} is missing: install the loadgen extra, "
              "pip install 'ocm[loadgen]'", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
