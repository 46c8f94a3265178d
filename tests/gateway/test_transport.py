"""The gateway's UDP transport on loopback: trains sent with UDP segmentation offload arrive as
the same datagrams, in order, with their TOS; mixed sizes, peers and TOS values split trains."""

from __future__ import annotations

import ipaddress
import time

import pytest

from ipsecsa.gateway.transport import UdpTransport

LO = ipaddress.ip_address("127.0.0.1")


@pytest.fixture
def pair() -> tuple[UdpTransport, UdpTransport, UdpTransport]:
    socks = [UdpTransport(LO, 0) for _ in range(3)]
    yield tuple(socks)  # type: ignore[misc]
    for s in socks:
        s.close()


def _recv(t: UdpTransport, n: int) -> list:
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < n and time.monotonic() < deadline:
        got += t.recv_batch(1000)
        time.sleep(0.01)
    return got


@pytest.mark.parametrize("offload", [True, False])
def test_trains_arrive_as_the_datagrams_they_were(
        pair: tuple[UdpTransport, UdpTransport, UdpTransport], offload: bool) -> None:
    a, b, c = pair
    a.gso = a.gso and offload
    a.max_segment = 1472
    to_b = ("127.0.0.1", b.sock.getsockname()[1])
    to_c = ("127.0.0.1", c.sock.getsockname()[1])
    items = ([(bytes([i]) * 1400, 0, to_b) for i in range(70)]   # > 64: two trains
             + [(b"short", 0, to_b), (b"s" * 1400, 0, to_b)]     # a short one ends a train
             + [(bytes([i]) * 1400, 0x2E << 2, to_b) for i in range(3)]  # another TOS
             + [(b"c" * 1400, 0, to_c), (b"big" * 700, 0, to_b)])  # another peer; > max_segment
    assert a.send_batch(items) == 0
    got_b, got_c = _recv(b, 76), _recv(c, 1)
    assert [(d, t) for d, _addr, t in got_b] == [(bytes(d), t) for d, t, p in items if p == to_b]
    assert [d for d, _a, _t in got_c] == [b"c" * 1400]
    src = got_b[0][1]
    assert src == ("127.0.0.1", a.sock.getsockname()[1])
