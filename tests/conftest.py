"""Settings for the whole test session.

Every ``ocm-control`` a test starts inherits this environment. Its admin HTTP server
would otherwise take the default 127.0.0.1:9100 (best effort), and a ``make run`` started
meanwhile on the same machine would lose it; so tests run without one unless they ask for
it with ``--admin-port 0`` (a flag beats ``OCM_ADMIN_PORT``). The TLS port is served by
default: tests take any free port for it (``OCM_TLS_PORT=0``), and the self-signed
certificate ``ocm-control`` makes goes to a state directory of this session, never to
the home directory. Every other port the tests use is chosen by the kernel or found free
(tests/integration/harness.py)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OCM_ADMIN_PORT", "-1")
os.environ.setdefault("OCM_TLS_PORT", "0")
if "OCM_STATE_DIR" not in os.environ:
    _state = tempfile.mkdtemp(prefix="ocm-test-state-")
    os.environ["OCM_STATE_DIR"] = os.path.join(_state, "ocm")
    atexit.register(shutil.rmtree, _state, True)
