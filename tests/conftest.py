"""Settings for the whole test session.

Every ``ocm-control`` a test starts inherits this environment. Its admin HTTP server
would otherwise take the default 127.0.0.1:9100 (best effort), and a ``make run`` started
meanwhile on the same machine would lose it; so tests run without one unless they ask for
it with ``--admin-port 0`` (a flag beats ``OCM_ADMIN_PORT``). The TLS port is served by
default: tests take any free port for it (``OCM_TLS_PORT=0``), and the self-signed
certificate ``ocm-control`` makes goes to a state directory of this session, never to
the home directory. So does what the clients keep (``$XDG_CONFIG_HOME``: the pinned keys
of known servers, identity keys): a pin left in the home directory by an earlier session,
whose servers had another key, would refuse this session's server on the same port.
Every other port the tests use is chosen by the kernel or found free
(tests/integration/harness.py)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("OCM_ADMIN_PORT", "-1")
os.environ.setdefault("OCM_TLS_PORT", "0")
_session = tempfile.mkdtemp(prefix="ocm-test-state-")
atexit.register(shutil.rmtree, _session, True)
os.environ.setdefault("OCM_STATE_DIR", os.path.join(_session, "ocm"))
os.environ["XDG_CONFIG_HOME"] = os.path.join(_session, "config")


# --- make test in parallel (pytest-xdist, --dist loadgroup) ----------------------------------
# Each test file is one group, run whole by one pytest worker: a module's fixtures (its
# servers) start once and its tests keep their written order. The files that load the
# machine (load generators, floods, fuzzing a live server, memory under churn) share one
# group, so they run one after the other and never against each other: their thresholds
# (loss, join latency, a flood's count within its time) assume the other worker is running
# only ordinary tests.
HEAVY_FILES = frozenset({
    "tests/fuzz/test_fuzz_server.py",
    "tests/integration/test_churn_memory.py",
    "tests/integration/test_cluster.py",
    "tests/integration/test_floods.py",
    "tests/integration/test_loadgen_e2e.py",
    "tests/integration/test_loadgen_encrypted.py",
    "tests/integration/test_loadgen_loss.py",
    "tests/integration/test_percore_tokens.py",
    "tests/integration/test_stage1_flood.py",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group("heavy" if path in HEAVY_FILES else path))
