"""Gateway core benchmark: the sans-IO packet logic alone (no TUN, socket or kernel), so that a
change to it can be measured without the noise of a loaded machine's network stack.

Two :class:`ipsecsa.gateway.GatewayCore` back to back, AES-GCM-128 ESP in UDP, 64-packet batches
of ``--size``-byte inner TCP-sized packets of one flow. Rows, in alternating slices of one run:

* ``from_tun`` (outbound: classify, protect_batch per SA run, address);
* ``from_net`` as the gateway does it (one ``SaDatabase.inbound_batch`` call per batch, served by
  the SA's ``unprotect_batch``: the native fast path's batch entry when it is built);
* ``from_net, per packet`` — the reference: the same core with one ``SaDatabase.inbound`` call
  per packet, as the gateway did before the batch entry point was used.

``python benchmarks/gateway_core.py [--seconds S] [--size N]``; prints packets/s and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ipsecsa import info
from ipsecsa.config import parse_sa
from ipsecsa.gateway import GatewayCore, InstalledSas
from ipsecsa.sad.database import SaDatabase
from tests.gateway.netns import SITE4, WIRE4, SaPair

BATCH = 64


class PerPacketCore(GatewayCore):
    """The reference: one SaDatabase.inbound call per received packet."""

    def _unprotect(self, pkts, now):  # type: ignore[no-untyped-def]
        inbound = self.sad.inbound
        return [inbound(p, now) for p in pkts]


def core(cls: type[GatewayCore], sas: list[dict], local: str) -> GatewayCore:
    sad = SaDatabase()
    InstalledSas(sad).sync([parse_sa(s) for s in sas])
    return cls(sad, local=local)


def inner(size: int, i: int) -> bytes:
    """An IPv4/TCP-shaped packet of ``size`` bytes from site A to site B (checksums not needed:
    the core does not read them)."""
    import ipaddress
    import struct

    src, dst = ipaddress.ip_address(SITE4[0]).packed, ipaddress.ip_address(SITE4[1]).packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, i & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, i * 1448, 1, 0x50, 0x10, 512, 0, 0)
    return ip + tcp + bytes(size - 40)


def run(seconds: float, size: int) -> None:
    pair = SaPair(0x1001, 0x2001)
    a = core(GatewayCore, pair.a_side(), WIRE4[0])
    pkts = [inner(size, i) for i in range(BATCH)]
    src = (WIRE4[0], 4500)
    rates: dict[str, list[float]] = {"from_tun": [], "from_net (inbound_batch)": [],
                                     "from_net, per packet (reference)": []}
    receivers = {"from_net (inbound_batch)": core(GatewayCore, pair.b_side(), WIRE4[1]),
                 "from_net, per packet (reference)": core(PerPacketCore, pair.b_side(),
                                                          WIRE4[1])}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        n = 0
        batches = []
        while time.perf_counter() - t0 < 0.2:
            out = a.from_tun(pkts)
            batches.append([(bytes(d), src, 0) for d, _tos, _addr in out.net])
            n += BATCH
        rates["from_tun"].append(n / (time.perf_counter() - t0))
        for name, b in receivers.items():
            t0 = time.perf_counter()
            got = 0
            for grams in batches:
                got += len(b.from_net(grams).tun)
            assert got == n, (name, got, n)
            rates[name].append(n / (time.perf_counter() - t0))
    print(f"{size}-byte inner packets, batches of {BATCH}, native fast path: "
          f"{info()['native']}; best of {len(rates['from_tun'])} slices")
    ref = max(rates["from_net, per packet (reference)"])
    for name, r in rates.items():
        ratio = f"  {max(r) / ref:.2f}x the reference" if name.startswith("from_net") else ""
        print(f"  {name:34} {max(r):>10,.0f} packets/s{ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--size", type=int, default=1400)
    args = ap.parse_args()
    run(args.seconds, args.size)


if __name__ == "__main__":
    main()
