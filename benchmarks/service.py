"""The service under load: requests/s and latency percentiles of create/list/delete with 1, 10
and 50 concurrent clients over the Unix socket and TCP, and packets/s of POST /v1/packets with
batches of 64, each against the engine's own rate measured in the same run (in process, no HTTP).

    python benchmarks/service.py [--seconds 3] [--clients 1,10,50] [--threads]

A real ``ipsecsa serve`` in a temporary directory. The clients are tests/service/load.py's:
asyncio tasks with a connection each, every one creating a context (its own SPIs), listing,
deleting it, in a loop, with the load test's ledger checking that nothing acknowledged is lost
(a violation is printed and fails the run). Besides the rates, each row shows the CPU the server
and the load generator used (cores): on a small machine the generator competes with the server,
and these columns say how much. ``--threads`` adds a row with a thread and an
``ipsecsa.client.Client`` per client (the first version of this script), to show what that
generator costs at 50 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from ipsecsa import api
from tests.service import load
from tests.service.server import A, B, Server, esp, udp_packet


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process so far (all its threads, dead ones included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def engine_reference(seconds: float, contexts: int) -> tuple[float, dict[str, float]]:
    """The same create/list/delete loop on ``api.Engine(database=...)`` in this process, with
    ``contexts`` other contexts alive (what a listing carries at that concurrency):
    (operations/s, median seconds per operation)."""
    with tempfile.TemporaryDirectory() as tmp, api.Engine(database=f"{tmp}/ref.db") as engine:
        for n in range(contexts - 1):
            engine.create_context(outbound=esp(0xC6000000 + 2 * n, A, B, "01"),
                                  inbound=esp(0xC6000001 + 2 * n, B, A, "02"))
        lat: dict[str, list[float]] = {"create": [], "list": [], "delete": []}
        clock = time.perf_counter
        stop = time.monotonic() + seconds
        start, n = clock(), 0
        while time.monotonic() < stop:
            n += 1
            spi = 0xC7000000 + 2 * (n & 0x7FFF)
            t0 = clock()
            ctx = engine.create_context(outbound=esp(spi, A, B, "01"),
                                        inbound=esp(spi + 1, B, A, "02"))
            t1 = clock()
            engine.contexts()
            t2 = clock()
            engine.delete(ctx.id)
            t3 = clock()
            lat["create"].append(t1 - t0)
            lat["list"].append(t2 - t1)
            lat["delete"].append(t3 - t2)
        rate = 3 * n / (clock() - start)
    return rate, {op: percentile(v, 0.5) for op, v in lat.items()}


def control(server: Server, clients: int, seconds: float, tcp: bool) -> dict[str, Any]:
    target = {"url": server.url} if tcp else {"socket": str(server.socket)}
    srv0, gen0 = cpu_seconds(server.proc.pid), cpu_seconds(os.getpid())  # type: ignore[union-attr]
    result = load.run([target] * clients, server.admin_token, seconds, provoke=0)
    srv1, gen1 = cpu_seconds(server.proc.pid), cpu_seconds(os.getpid())  # type: ignore[union-attr]
    if result.problems:
        raise SystemExit(f"the ledger found problems: {result.problems[:5]}")
    with server.client() as c:  # what each client left alive
        for cid in result.alive:
            c.delete(cid)
    return {"rps": result.rate, "p50": result.percentile(None, 0.5),
            "p99": result.percentile(None, 0.99),
            **{f"{op}_p50": result.percentile(op, 0.5) for op in ("create", "list", "delete")},
            **{f"{op}_p99": result.percentile(op, 0.99) for op in ("create", "list", "delete")},
            "server_cpu": (srv1 - srv0) / result.seconds,
            "generator_cpu": (gen1 - gen0) / result.seconds}


def control_threads(server: Server, clients: int, seconds: float) -> dict[str, Any]:
    """The first generator: a thread and a blocking ``Client`` per client."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        with server.client() as c:
            n = 0
            while time.monotonic() < stop:
                n += 1
                spi = 0xC5000000 + (i << 16) + 2 * (n & 0x7FFF)
                t0 = time.perf_counter()
                ctx = c.create_context(outbound=esp(spi, A, B, "01"),
                                       inbound=esp(spi + 1, B, A, "02"))
                t1 = time.perf_counter()
                c.contexts()
                t2 = time.perf_counter()
                c.delete(ctx.id)
                latencies[i] += [t1 - t0, t2 - t1, time.perf_counter() - t2]

    srv0, gen0 = cpu_seconds(server.proc.pid), cpu_seconds(os.getpid())  # type: ignore[union-attr]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    srv1, gen1 = cpu_seconds(server.proc.pid), cpu_seconds(os.getpid())  # type: ignore[union-attr]
    flat = [x for per in latencies for x in per]
    return {"rps": len(flat) / elapsed, "p50": percentile(flat, 0.5),
            "p99": percentile(flat, 0.99), "server_cpu": (srv1 - srv0) / elapsed,
            "generator_cpu": (gen1 - gen0) / elapsed}


async def _post_batches(server: Server, body: dict[str, Any], clients: int,
                        seconds: float) -> int:
    """Packets sent by ``clients`` concurrent connections posting ``body`` until the time."""
    sent = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal sent
        async with httpx.AsyncClient(
                base_url="http://ipsecsa", timeout=60,
                headers={"Authorization": f"Bearer {server.admin_token}"},
                transport=httpx.AsyncHTTPTransport(uds=str(server.socket), verify=False)) as http:
            while time.monotonic() < stop:
                r = await http.post("/v1/packets", json=body)
                r.raise_for_status()
                results = r.json()["results"]
                if any(x["drop"] is not None for x in results):
                    raise SystemExit(f"a packet was dropped: {results[0]}")
                sent += len(results)

    await asyncio.gather(*(one() for _ in range(clients)))
    return sent


def packets(server: Server, seconds: float) -> dict[str, float]:
    """Packets/s: the engine in process, the service with 1 and with 4 concurrent posters."""
    out, inb = esp(0xC2000001, A, B, "01"), esp(0xC2000002, B, A, "02")
    batch = [udp_packet(A, B, b"x" * 64)] * 64
    with api.Engine() as engine:
        engine.create_context(outbound=out, inbound=inb)
        sent = 0
        stop = time.monotonic() + seconds
        start = time.perf_counter()
        while time.monotonic() < stop:
            for p in batch:
                engine.outbound(p)
            sent += len(batch)
        rates = {"engine": sent / (time.perf_counter() - start)}
    body = {"direction": "outbound", "packets": [base64.b64encode(p).decode() for p in batch]}
    with server.client() as c:
        ctx = c.create_context(outbound=out, inbound=inb)
        try:
            for clients in (1, 4):
                srv0 = cpu_seconds(server.proc.pid)  # type: ignore[union-attr]
                start = time.perf_counter()
                sent = asyncio.run(_post_batches(server, body, clients, seconds))
                elapsed = time.perf_counter() - start
                rates[f"service{clients}"] = sent / elapsed
                rates[f"service{clients}_cpu"] = (
                    cpu_seconds(server.proc.pid) - srv0) / elapsed  # type: ignore[union-attr]
        finally:
            c.delete(ctx.id)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--threads", action="store_true",
                        help="also the thread-per-client generator at the largest count")
    args = parser.parse_args()
    counts = [int(x) for x in args.clients.split(",")]
    root = Path(tempfile.mkdtemp(prefix="ipsecsa-bench-"))
    server = Server(root).start()
    try:
        print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} seconds={args.seconds} "
              "(create+list+delete per round; latencies in ms; cpu in cores)")
        print(f"{'transport':9} {'clients':>7} {'req/s':>7} {'p50':>7} {'p99':>7} "
              f"{'create p50/p99':>15} {'list p50/p99':>15} {'delete p50/p99':>15} "
              f"{'srv cpu':>7} {'gen cpu':>7} {'vs engine':>9}")
        for tcp in (False, True):
            for n in counts:
                ref_rate, _ = engine_reference(min(args.seconds, 2.0), n)
                r = control(server, n, args.seconds, tcp)
                ops = "".join(f" {r[op + '_p50'] * 1e3:7.1f}/{r[op + '_p99'] * 1e3:<7.1f}"
                              for op in ("create", "list", "delete"))
                print(f"{'tcp' if tcp else 'unix':9} {n:7d} {r['rps']:7.0f} "
                      f"{r['p50'] * 1e3:7.1f} {r['p99'] * 1e3:7.1f}{ops} "
                      f"{r['server_cpu']:7.2f} {r['generator_cpu']:7.2f} "
                      f"{r['rps'] / ref_rate:9.2f}", flush=True)
        ref_rate, ref_lat = engine_reference(args.seconds, 1)
        print(f"engine in process (one context alive): {ref_rate:,.0f} operations/s; median "
              + ", ".join(f"{op} {v * 1e3:.2f} ms" for op, v in ref_lat.items()))
        if args.threads:
            n = max(counts)
            r = control_threads(server, n, args.seconds)
            print(f"threads generator, unix, {n} clients: {r['rps']:.0f} req/s, p50 "
                  f"{r['p50'] * 1e3:.1f} ms, p99 {r['p99'] * 1e3:.1f} ms, server cpu "
                  f"{r['server_cpu']:.2f}, generator cpu {r['generator_cpu']:.2f}")
        rates = packets(server, args.seconds)
        for clients in (1, 4):
            rate = rates[f"service{clients}"]
            print(f"packets: service {rate:,.0f}/s with {clients} poster(s), batches of 64 "
                  f"(server cpu {rates[f'service{clients}_cpu']:.2f}); engine in process "
                  f"{rates['engine']:,.0f}/s; ratio {rate / rates['engine']:.2f}")
        with server.client() as c:
            assert c.contexts() == [], "a context was left behind"
    finally:
        rc = server.stop()
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
