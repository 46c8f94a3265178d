"""Shared fixtures.

``backend`` runs a test once on the pure-Python data path (the reference) and once on the native
ESP fast path (``ipsecsa._fastesp``), by setting what SAs built with ``native=None`` use. Test
modules opt in with ``pytestmark = pytest.mark.usefixtures("backend")``. The native run is
skipped when the extension is unavailable, unless ``IPSECSA_REQUIRE_NATIVE=1`` (set by
scripts/test.sh when it can build it), which turns that skip into a failure so CI cannot fall
back silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ipsecsa.datapath import native

BACKENDS = ["python", "native"]


def require_native() -> None:
    """Skip (or, with IPSECSA_REQUIRE_NATIVE=1, fail) when the native path is off."""
    if native.available():
        return
    why = native.why_off()
    if os.environ.get("IPSECSA_REQUIRE_NATIVE") == "1":
        pytest.fail(f"IPSECSA_REQUIRE_NATIVE=1 but the native fast path is off: {why}")
    pytest.skip(f"native fast path off: {why}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """'python' (every SA on the reference path) or 'native' (every SA whose algorithms
    the native engine implements on it, the others on the Python path as in production)."""
    if request.param == "native":
        require_native()
    old = native.set_default(None if request.param == "native" else False)
    try:
        yield request.param
    finally:
        native.set_default(old)
