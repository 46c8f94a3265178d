"""The load generator of the service's load test and of ``benchmarks/service.py``: N concurrent
clients, each on its own connection, creating, listing and deleting SA contexts for a bounded
time, while a ledger checks that nothing acknowledged is lost.

Each client is an asyncio task with its own ``httpx.AsyncClient`` (one connection each), all in
one event loop: the server sees N connections with N requests in flight, and the ledger below
needs no locks. (The first benchmark's generator, a thread and an ``ipsecsa.client.Client`` per
client, collapsed at 50 clients for a reason of the client's: each built a verifying SSL
context it never used, 73 ms of CPU with the GIL held; docs/PERFORMANCE.md.)

The ledger: a create that was answered 201 is *acknowledged*; every list sent after that must
contain it, with the SPIs it was created with and state ``established``, unless its delete was
sent before the list's answer came; no list sent after its delete was answered 204 may contain
it; a listed context must be one whose create was sent. At the end each client
leaves one last context alive, and the caller checks the service's final state against
``Load.alive``. Expected errors are provoked on purpose and counted apart: every
``EXPECTED_EVERY``-th round a client repeats its live context's create (409
``FWP_E_ALREADY_EXISTS`` on ``inbound.spi``) and deletes its previous, already deleted context
again (404 ``FWP_E_NOT_FOUND``); ``provoke=0`` turns this off (the benchmark). Anything else,
including a transport error, is unexpected.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.service.server import A, B, esp

#: Every this many rounds (from the second), a client provokes the two expected errors.
EXPECTED_EVERY = 4
#: SPIs of the load: client i, round n -> 0xC4000000 + i << 16 + 2n (+1 inbound).
SPI_BASE = 0xC4000000


@dataclass
class Load:
    """What a run did and what it found."""

    clients: int
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"create": [], "list": [], "delete": []})
    expected: dict[str, int] = field(default_factory=lambda: {"409": 0, "404": 0})
    #: Unexpected answers and violations of the ledger: (what, detail).
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: The contexts left alive at the end: id -> (outbound SPI, inbound SPI).
    alive: dict[int, tuple[int, int]] = field(default_factory=dict)
    lists_checked: int = 0

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.expected.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, op: str | None, q: float) -> float:
        """Latency in seconds at quantile ``q`` of ``op`` (None: every operation)."""
        values = sorted(v for k, vs in self.latencies.items() if op in (None, k) for v in vs)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class _Ledger:
    def __init__(self, load: Load) -> None:
        self.load = load
        self.sent_spis: set[int] = set()  # inbound SPIs of every create sent
        self.acked: dict[int, tuple[int, int]] = {}  # acknowledged, delete not yet sent
        self.deleted: set[int] = set()  # delete acknowledged

    def problem(self, what: str, detail: str) -> None:
        self.load.problems.append((what, detail))

    def check_list(self, before: dict[int, tuple[int, int]], deleted_before: set[int],
                   views: list[dict[str, Any]]) -> None:
        """``before``/``deleted_before``: the ledger when the list was sent."""
        listed = {int(v["id"]): v for v in views}
        for cid, (out_spi, in_spi) in before.items():
            if cid not in self.acked:
                continue  # its delete was sent while the list was in flight: either is right
            view = listed.get(cid)
            if view is None:
                self.problem("lost", f"context {cid} acknowledged, not deleted, not listed")
            elif (view["outbound_spi"], view["inbound_spi"], view["state"]) != (
                    out_spi, in_spi, "established"):
                self.problem("changed", f"context {cid}: listed as {view['outbound_spi']:#x}/"
                                        f"{view['inbound_spi']:#x} {view['state']}")
        for cid, view in listed.items():
            if cid in deleted_before:
                self.problem("resurrected", f"context {cid} listed after its delete was "
                                            "acknowledged")
            if view["inbound_spi"] is None:
                continue  # a create in flight, between Create and SetSpi: it has no SPI yet
            if view["inbound_spi"] not in self.sent_spis:
                self.problem("phantom", f"context {cid} (SPI {view['inbound_spi']:#x}) was "
                                        "never created by this load")
        self.load.lists_checked += 1


async def _client(i: int, http: httpx.AsyncClient, ledger: _Ledger, stop: float,
                  provoke: int) -> None:
    load, lat = ledger.load, ledger.load.latencies
    clock = time.perf_counter
    n = 0
    previous: int | None = None

    async def create(n: int) -> tuple[int, tuple[int, int]] | None:
        spi = SPI_BASE + (i << 16) + 2 * (n % 0x7FFF)
        ledger.sent_spis.add(spi + 1)
        body = {"outbound": esp(spi, A, B, "01"), "inbound": esp(spi + 1, B, A, "02")}
        t0 = clock()
        r = await http.post("/v1/contexts", json=body)
        if r.status_code != 201:
            ledger.problem("create", f"client {i}: {r.status_code} {r.text[:200]}")
            return None
        lat["create"].append(clock() - t0)
        cid = int(r.json()["id"])
        ledger.acked[cid] = (spi, spi + 1)
        return cid, (spi, spi + 1)

    try:
        while time.monotonic() < stop:
            n += 1
            made = await create(n)
            if made is None:
                continue
            cid, spis = made
            before, deleted_before = dict(ledger.acked), set(ledger.deleted)
            t0 = clock()
            r = await http.get("/v1/contexts")
            if r.status_code == 200:
                lat["list"].append(clock() - t0)
                ledger.check_list(before, deleted_before, r.json())
            else:
                ledger.problem("list", f"client {i}: {r.status_code} {r.text[:200]}")
            if provoke and n % provoke == 2:
                again = {"outbound": esp(spis[0], A, B, "01"),
                         "inbound": esp(spis[1], B, A, "02")}
                r = await http.post("/v1/contexts", json=again)
                err = r.json().get("error", {}) if r.status_code >= 400 else {}
                if r.status_code == 409 and err.get("status_name") == "FWP_E_ALREADY_EXISTS" \
                        and err.get("field") == "inbound.spi":
                    load.expected["409"] += 1
                else:
                    ledger.problem("duplicate", f"client {i}: {r.status_code} {r.text[:200]}")
                if previous is not None:
                    r = await http.delete(f"/v1/contexts/{previous}")
                    if r.status_code == 404:
                        load.expected["404"] += 1
                    else:
                        ledger.problem("delete-again",
                                       f"client {i}: {r.status_code} {r.text[:200]}")
            del ledger.acked[cid]
            t0 = clock()
            r = await http.delete(f"/v1/contexts/{cid}")
            if r.status_code == 204:
                lat["delete"].append(clock() - t0)
                ledger.deleted.add(cid)
                previous = cid
            else:
                ledger.problem("delete", f"client {i}: {r.status_code} {r.text[:200]}")
        made = await create(n + 1)  # the one this client leaves alive
        if made is not None:
            load.alive[made[0]] = made[1]
    except httpx.HTTPError as exc:
        ledger.problem("transport", f"client {i}: {type(exc).__name__}: {exc}")


def _http(target: dict[str, Any], token: str) -> httpx.AsyncClient:
    """One client's own connection: ``target`` is ``{"socket": path}`` or ``{"url": url}``."""
    headers = {"Authorization": f"Bearer {token}"}
    # verify=False: no TLS here, and a verifying SSL context costs 20-70 ms of CPU to build.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    transport = httpx.AsyncHTTPTransport(uds=target.get("socket"), limits=limits, verify=False)
    return httpx.AsyncClient(base_url=target.get("url", "http://ipsecsa"), headers=headers,
                             timeout=60, transport=transport)


async def _run(targets: list[dict[str, Any]], token: str, seconds: float,
               provoke: int) -> Load:
    load = Load(len(targets))
    ledger = _Ledger(load)
    clients = [_http(t, token) for t in targets]
    try:
        start = time.perf_counter()
        stop = time.monotonic() + seconds
        await asyncio.gather(*(_client(i, c, ledger, stop, provoke)
                               for i, c in enumerate(clients)))
        load.seconds = time.perf_counter() - start
    finally:
        for c in clients:
            await c.aclose()
    return load


def run(targets: list[dict[str, Any]], token: str, seconds: float,
        provoke: int = EXPECTED_EVERY) -> Load:
    """Run one client per entry of ``targets`` (``{"socket": path}`` or ``{"url": url}``) for
    ``seconds``; see the module docstring."""
    return asyncio.run(_run(targets, token, seconds, provoke))
