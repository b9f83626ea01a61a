from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.integration.harness import Server, start_server

_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A 2-worker ocm-control with default settings, shared by a test module."""
    with start_server(workers=2) as srv:
        yield srv


@pytest.fixture
def room_name(request: pytest.FixtureRequest) -> str:
    """A room name unique within the run."""
    return f"{request.node.name[:40]}-{next(_names)}"
