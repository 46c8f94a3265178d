"""The service under load: requests/s and latency percentiles of create/list/delete with 1, 10
and 50 concurrent clients over the Unix socket and TCP, and packets/s of POST /v1/packets with
batches of 64 against the engine's own rate measured in the same run (in process, no HTTP).

    python benchmarks/service.py [--seconds 3] [--clients 1,10,50]

A real ``ipsecsa serve`` in a temporary directory. Each client is a thread with its own
connection (httpx keeps it alive); every client creates a context, lists, deletes it, in a loop,
each with its own SPIs. Errors are counted and reported; none are expected.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipsecsa import api
from ipsecsa.client import Client
from tests.service.server import A, B, Server, esp, udp_packet


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def control(server: Server, clients: int, seconds: float, tcp: bool) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        with server.client(tcp=tcp) as c:
            n = 0
            while time.monotonic() < stop:
                n += 1
                spi = 0xC1000000 + (i << 16) + 2 * (n & 0x7FFF)
                try:
                    t0 = time.perf_counter()
                    ctx = c.create_context(outbound=esp(spi, A, B, "01"),
                                           inbound=esp(spi + 1, B, A, "02"))
                    t1 = time.perf_counter()
                    c.contexts()
                    t2 = time.perf_counter()
                    c.delete(ctx.id)
                    t3 = time.perf_counter()
                    latencies[i] += [t1 - t0, t2 - t1, t3 - t2]
                except api.WfpError:
                    errors[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    print(f"  ({len(flat)} requests in {elapsed:.1f} s)", flush=True)
    return {"rps": len(flat) / elapsed, "p50_ms": percentile(flat, 0.5) * 1e3,
            "p99_ms": percentile(flat, 0.99) * 1e3, "errors": sum(errors)}


def packets(server: Server, seconds: float) -> tuple[float, float]:
    """(service packets/s with batches of 64, engine packets/s in process)."""
    out, inb = esp(0xC2000001, A, B, "01"), esp(0xC2000002, B, A, "02")
    batch = [udp_packet(A, B, b"x" * 64)] * 64
    with server.client() as c:
        ctx = c.create_context(outbound=out, inbound=inb)
        sent = 0
        stop = time.monotonic() + seconds
        start = time.perf_counter()
        while time.monotonic() < stop:
            sent += len(c.send("outbound", batch))
        service_rate = sent / (time.perf_counter() - start)
        c.delete(ctx.id)
    with api.Engine() as engine:
        engine.create_context(outbound=out, inbound=inb)
        sent = 0
        stop = time.monotonic() + seconds
        start = time.perf_counter()
        while time.monotonic() < stop:
            for p in batch:
                engine.outbound(p)
            sent += len(batch)
        engine_rate = sent / (time.perf_counter() - start)
    return service_rate, engine_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,10,50")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ipsecsa-bench-"))
    server = Server(root).start()
    try:
        print(f"cpus={os.cpu_count()} seconds={args.seconds} (create+list+delete per loop)")
        print(f"{'transport':9} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} errors")
        for tcp in (False, True):
            for n in (int(x) for x in args.clients.split(",")):
                r = control(server, n, args.seconds, tcp)
                print(f"{'tcp' if tcp else 'unix':9} {n:7d} {r['rps']:8.0f} {r['p50_ms']:8.2f} "
                      f"{r['p99_ms']:8.2f} {r['errors']:.0f}")
        service_rate, engine_rate = packets(server, args.seconds)
        print(f"packets: service {service_rate:,.0f}/s (batches of 64), engine in process "
              f"{engine_rate:,.0f}/s, ratio {service_rate / engine_rate:.2f}")
        with Client(socket=str(server.socket), token=server.admin_token) as c:
            assert c.contexts() == [], "a context was left behind"
    finally:
        rc = server.stop()
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
