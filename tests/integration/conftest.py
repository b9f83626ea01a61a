from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.integration.harness import Server, start_server

_names = itertools.count()


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
