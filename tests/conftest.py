"""Settings for the whole test session.

Every ``ocm-control`` a test starts inherits this environment. Its admin HTTP server
would otherwise take the default 127.0.0.1:9100 (best effort), and a ``make run`` started
meanwhile on the same machine would lose it; so tests run without one unless they ask for
it with ``--admin-port 0`` (a flag beats ``OCM_ADMIN_PORT``). Every other port the tests
use is chosen by the kernel or found free (tests/integration/harness.py)."""

from __future__ import annotations

import os

os.environ.setdefault("OCM_ADMIN_PORT", "-1")
