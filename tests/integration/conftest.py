from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.integration.harness import Server, start_server

_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _private_key_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every ``ocm-chat`` a test starts keeps its identity keys in a temporary
    ``$XDG_CONFIG_HOME``, never in the home directory of whoever runs the tests."""
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    yield
    if saved is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = saved


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A 2-worker ocm-control with default settings, shared by a test module."""
    with start_server(workers=2) as srv:
        yield srv
        srv.stop()
        if os.environ.get("OCM_TEST_DUMP"):
            print("\n".join(srv.lines))


@pytest.fixture
def room_name(request: pytest.FixtureRequest) -> str:
    """A room name unique within the run."""
    return f"{request.node.name[:40]}-{next(_names)}"
