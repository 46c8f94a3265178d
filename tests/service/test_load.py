"""The load test of issue 15: 50 concurrent clients (25 on the Unix socket, 25 over TCP, each
on its own connection) creating, listing and deleting SA contexts against a real server process
for a bounded time (LOAD_SECONDS). Nothing acknowledged may be lost (the ledger of
tests/service/load.py checks every listing), no error but the ones provoked on purpose (409 for
a duplicate SPI, 404 for a second delete), and the final state, the contexts each client left,
must be exactly what the service lists, before and after a restart. Requests/s and latency
percentiles are printed (``pytest -s``) and recorded as junit properties; the numbers that go
in docs/PERFORMANCE.md come from benchmarks/service.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ipsecsa.service.server import tcp_listener
from tests.service import load
from tests.service.server import Server

CLIENTS = 50
LOAD_SECONDS = 6.0


def test_fifty_clients_lose_nothing(fresh: Server,
                                    record_property: pytest.RecordProperty) -> None:
    fresh.start()
    targets = [{"socket": str(fresh.socket)} if i % 2 == 0 else {"url": fresh.url}
               for i in range(CLIENTS)]
    result = load.run(targets, fresh.admin_token, LOAD_SECONDS)

    assert result.problems == [], result.problems[:10]
    assert result.expected["409"] > 0 and result.expected["404"] > 0, result.expected
    assert result.lists_checked >= CLIENTS, "every client listed at least once"
    assert len(result.alive) == CLIENTS
    report = {"requests": result.requests, "requests_per_second": round(result.rate, 1),
              **{f"{op}_p{int(q * 100)}_ms": round(result.percentile(op, q) * 1e3, 1)
                 for op in ("create", "list", "delete") for q in (0.5, 0.99)}}
    for key, value in report.items():
        record_property(key, value)
    print(f"\n{CLIENTS} clients, {result.seconds:.1f} s: {report}, expected errors "
          f"{result.expected}, listings checked {result.lists_checked}")

    def final_state() -> dict[int, tuple[int, int]]:
        with fresh.client() as c:
            views = c.contexts()
        assert all(v.state == "established" for v in views)
        return {v.id: (v.outbound_spi, v.inbound_spi) for v in views}

    assert final_state() == result.alive
    assert fresh.stop() == 0
    fresh.start()
    assert final_state() == result.alive, "a restart lost or changed an acknowledged context"
    with fresh.client() as c:
        for cid in result.alive:
            c.delete(cid)
        assert c.contexts() == []


def test_tcp_connections_have_nagle_off() -> None:
    """Accepted TCP connections get TCP_NODELAY from asyncio only when the listening socket's
    protocol is IPPROTO_TCP; with Nagle on, every response over TCP waited 40 ms for the
    client's delayed ACK (uvicorn writes the headers and the body separately)."""
    listener = tcp_listener("127.0.0.1", 0)

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                got.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, sock=listener)
        try:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            value = await asyncio.wait_for(got, 10)
            writer.close()
            return value
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0
