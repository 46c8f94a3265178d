from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.server import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One service for a module's tests (they clean up what they make)."""
    srv = Server(tmp_path_factory.mktemp("service")).start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    """A service of this test's own (restart, signal tests)."""
    srv = Server(tmp_path)
    yield srv
    if srv.proc is not None:
        srv.stop()
