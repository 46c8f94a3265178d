"""Benchmark of the engine gateway's once-a-second housekeeping over many reopened SA contexts.

Usage: ``python benchmarks/gateway_housekeeping.py [--contexts N] [--changes K]``

A database with N established tunnel contexts (ESP in UDP on 4500, one peer each) is written
through ``ipsecsa.api``, closed and reopened as a restarted ``ipsecsa serve --tun`` would; an
:class:`~ipsecsa.gateway.enginecore.EngineGatewayCore` is put over it. Measured in the same run:

* **previous pass** (the reference): what housekeeping did before it followed events -- list
  every context to make the engine run its timers, list them again to rebuild the peer set and
  the SPI -> context map. Best of 3.
* **first pass**: the gateway's start (subscription and its one full listing); right after the
  reopen, so it also reads the stored SAs once, as the service's first listing would.
* **idle pass**: ``handle_timer`` with nothing changed (median of 50).
* **pass after K changes**: K/2 contexts deleted and K/2 created before the pass (median of 5;
  the changes themselves are not timed).

Prints seconds and the ratio previous / idle.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ipsecsa import api
from ipsecsa.gateway.enginecore import EngineGatewayCore

A = "192.0.2.1"
KEY = os.urandom(20).hex()


def tunnel_sa(spi: int, src: str, dst: str, inner_src: str, inner_dst: str) -> dict[str, Any]:
    return {"spi": spi, "protocol": "esp", "mode": "tunnel", "src": src, "dst": dst,
            "encryption": {"algorithm": "aes-gcm-16", "key": KEY},
            "selectors": [{"src": inner_src, "dst": inner_dst}],
            "encapsulation": {"type": "udp", "sport": 4500, "dport": 4500}}


def context_args(i: int) -> dict[str, Any]:
    """Peer i: its own outer address and inner /24."""
    b = str(ipaddress.IPv4Address("100.64.0.1") + i)
    net = f"10.{64 + i // 256}.{i % 256}.0/24"
    return {"outbound": tunnel_sa(0x80000000 + i, A, b, "10.1.0.0/24", net),
            "inbound": tunnel_sa(0x10000 + i, b, A, net, "10.1.0.0/24")}


def previous_pass(core: EngineGatewayCore) -> None:
    """The housekeeping replaced here, step for step: a listing to run the timers, a listing
    for the peers and the SPI map."""
    engine = core.engine
    engine.contexts()
    contexts = engine.contexts()
    core._spi_ctx = {c.inbound_spi: c.id for c in contexts if c.inbound_spi is not None}
    peers = set()
    for c in contexts:
        if c.state in ("established", "expiring") and c.outbound and core._usable(c):
            port = c.udp_encapsulation["remote_port"] if c.udp_encapsulation else 0
            dst = ipaddress.ip_address(c.remote).packed
            peers.add(core._dests.get((dst, port)) or core._dest(dst, port))


def timed(fn: Any, *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, default=20000)
    ap.add_argument("--changes", type=int, default=10)
    args = ap.parse_args()
    n, k = args.contexts, args.changes
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "gw.db"
        t = time.perf_counter()
        with api.Engine(database=db) as engine:
            for i in range(n):
                engine.create_context(**context_args(i))
        print(f"wrote {n} contexts in {time.perf_counter() - t:.1f} s")
        gc.collect()
        t = time.perf_counter()
        engine = api.Engine(database=db)
        print(f"reopened in {time.perf_counter() - t:.1f} s")
        core = EngineGatewayCore(engine, local=A, keepalive=0)
        try:
            now = 0.0
            first = timed(core.handle_timer, now)
            assert len(core._peers) == n, len(core._peers)
            previous = min(timed(previous_pass, core) for _ in range(3))
            idle = []
            for _ in range(50):
                now += 1.0
                idle.append(timed(core.handle_timer, now))
            changed = []
            made = n
            for round_ in range(5):
                infos = engine.contexts()[round_ * k: round_ * k + k // 2]
                for info in infos:
                    engine.delete(info.id)
                for _ in range(k - k // 2):
                    engine.create_context(**context_args(made))
                    made += 1
                engine.flush_events()
                now += 1.0
                changed.append(timed(core.handle_timer, now))
            assert len(core._peers) == n + 5 * (k - k // 2) - 5 * (k // 2)
        finally:
            core.close()
            engine.close()
    idle_s, changed_s = statistics.median(idle), statistics.median(changed)
    print(f"{n} reopened contexts, one housekeeping pass:")
    print(f"  previous pass (two listings), best of 3: {previous * 1e3:10.1f} ms")
    print(f"  first pass (subscribe + one listing):    {first * 1e3:10.1f} ms")
    print(f"  idle pass, median of 50:                 {idle_s * 1e3:10.3f} ms"
          f"   previous/idle = {previous / idle_s:,.0f}x")
    print(f"  pass after {k} changes, median of 5:     {changed_s * 1e3:10.3f} ms"
          f"   previous/changed = {previous / changed_s:,.0f}x")


if __name__ == "__main__":
    main()
