"""End-to-end demonstration of the data path: two gateways, several SAs, real packets.

Gateway A protects traffic with its outbound SAs; gateway B unprotects it with the matching
inbound SAs. Per SA the demo sends ``--packets`` packets, and among them injects what a hostile or
lossy network delivers: a tampered copy of one packet (must be dropped as ``icv_failure``), a
replay of a delivered packet (``replay``), and where they apply a packet outside the SA's selectors
(``selector_mismatch``, refused by the sender) and a NAT-T keepalive (``natt_keepalive``). It then
*checks* every count -- packets sent and delivered intact, each drop under its expected reason and
nothing else -- prints them, and exits non-zero when any check fails.

Run: ``python -m ipsecsa.demo`` (or ``ipsecsa demo``). ``--packets N`` sets the traffic volume.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from typing import TextIO

from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import DropReason
from ipsecsa.packet.ipv4 import build_ipv4_header
from ipsecsa.packet.ipv6 import build_ipv6_header
from ipsecsa.packet.udp import build_udp


def _key(n: int) -> str:
    return os.urandom(n).hex()


def _sa_pairs(packets: int) -> list[tuple[str, dict]]:
    """(label, SA description) for each demo SA; outbound and inbound share everything else.
    The first SA's soft packet limit falls inside the run (to show the event); its hard limit
    lies well beyond it."""
    return [
        ("ESP tunnel 4-in-4, AES-GCM-16", {
            "spi": 0xC0000101, "protocol": "esp", "mode": "tunnel",
            "src": "192.0.2.1", "dst": "198.51.100.1",
            "encryption": {"algorithm": "aes-gcm-16", "key": _key(20)},
            "selectors": [{"src": "10.1.0.0/16", "dst": "10.2.0.0/16"}],
            "lifetime": {"soft": {"packets": max(1, packets * 2 // 5)},
                         "hard": {"packets": packets * 10 + 100}},
        }),
        ("ESP transport IPv6, AES-CBC + HMAC-SHA-256, ESN", {
            "spi": 0xC0000202, "protocol": "esp", "mode": "transport",
            "src": "2001:db8::1", "dst": "2001:db8::2", "esn": True,
            "encryption": {"algorithm": "aes-cbc", "key": _key(32)},
            "integrity": {"algorithm": "hmac-sha256-128", "key": _key(32)},
            "replay_window": 1024,
        }),
        ("ESP-in-UDP tunnel (RFC 3948), ChaCha20-Poly1305", {
            "spi": 0xC0000303, "protocol": "esp", "mode": "tunnel",
            "src": "192.0.2.1", "dst": "203.0.113.9",
            "encryption": {"algorithm": "chacha20-poly1305", "key": _key(36)},
            "encapsulation": {"type": "udp", "sport": 4500, "dport": 4500},
        }),
        ("AH transport IPv4, HMAC-SHA-256", {
            "spi": 0xC0000404, "protocol": "ah", "mode": "transport",
            "src": "192.0.2.1", "dst": "198.51.100.1",
            "integrity": {"algorithm": "hmac-sha256-128", "key": _key(32)},
        }),
    ]


def _udp_packet(src: str, dst: str, payload: bytes, sport: int = 5000, dport: int = 53) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = build_udp(s.packed, d.packed, sport, dport, payload)
    if s.version == 4:
        hdr = build_ipv4_header(tos=0, total_length=20 + len(udp), ident=1, flags=0,
                                frag_offset=0, ttl=64, protocol=17, src=s.packed, dst=d.packed)
        return hdr + udp
    return build_ipv6_header(traffic_class=0, flow_label=0, payload_length=len(udp),
                             next_header=17, hop_limit=64, src=s.packed, dst=d.packed) + udp


def _traffic_for(cfg: dict, n: int) -> list[bytes]:
    if cfg["mode"] == "tunnel":
        return [_udp_packet(f"10.1.0.{1 + i % 200}", f"10.2.0.{1 + i % 50}",
                            os.urandom(16 + (i * 37) % 1200)) for i in range(n)]
    return [_udp_packet(cfg["src"], cfg["dst"], os.urandom(16 + (i * 37) % 1200))
            for i in range(n)]


def _inject(a: SecurityAssociation, b: SecurityAssociation, cfg: dict, wire: list[bytes],
            now: float) -> tuple[list[str], dict[DropReason, int], dict[DropReason, int]]:
    """Deliver what a hostile or lossy network adds. Returns a description of each injection
    and the drops it must cause at the sender and at the receiver."""
    said: list[str] = []
    out_drops: dict[DropReason, int] = {}
    in_drops: dict[DropReason, int] = {}
    tampered = bytearray(wire[-1])
    tampered[-1] ^= 0x01  # the last byte of the ICV (AH: of the payload it covers)
    b.unprotect(bytes(tampered), now)
    said.append("a tampered copy of the last packet (one bit flipped) -> icv_failure")
    in_drops[DropReason.ICV_FAILURE] = 1
    # Replay a packet inside the window. One older than the window would not do under ESN: its
    # sequence number is then read as the next 2^32 epoch's (RFC 4303 Appendix A) and the packet
    # fails its ICV instead -- dropped all the same, but counted as icv_failure.
    b.unprotect(wire[-2], now)
    said.append("a replay of the packet before last (already delivered) -> replay")
    in_drops[DropReason.REPLAY] = 1
    if cfg["mode"] == "tunnel" and "selectors" in cfg:
        a.protect(_udp_packet("10.9.9.9", "10.2.0.1", b"stray"), now)
        said.append("a packet from 10.9.9.9, outside the selectors -> selector_mismatch")
        out_drops[DropReason.SELECTOR_MISMATCH] = 1
    if "encapsulation" in cfg:
        b.unprotect(_udp_packet(cfg["src"], cfg["dst"], b"\xff", 4500, 4500), now)
        said.append("a NAT-T keepalive (RFC 3948 §2.3) -> natt_keepalive")
        in_drops[DropReason.NATT_KEEPALIVE] = 1
    return said, out_drops, in_drops


def _drops(d: dict[DropReason, int]) -> str:
    return ", ".join(f"{r.value}={k}" for r, k in d.items()) or "none"


def run(packets: int, out: TextIO = sys.stdout) -> int:
    """Run the demonstration; returns a process exit code (0 when every check held)."""
    now = time.monotonic()
    failures = 0
    print(f"ipsecsa data-path demo: {packets} packets per SA, of which the last is also sent "
          "tampered before the genuine copy;\nthen per SA a replay of a delivered packet, and "
          "where they apply a stray packet and a NAT-T keepalive.\n", file=out)
    for label, cfg in _sa_pairs(packets):
        a = SecurityAssociation.from_dict(dict(cfg, direction="outbound"), now=now)
        b = SecurityAssociation.from_dict(dict(cfg, direction="inbound"), now=now)
        sent = _traffic_for(cfg, packets)
        wire = [r.packet for r in a.protect_batch(sent, now) if r.packet is not None]
        delivered = sum(b.unprotect(p, now).packet == o for o, p in zip(sent[:-1], wire[:-1]))
        said, out_expect, in_expect = _inject(a, b, cfg, wire, now)
        # The genuine last packet, after its tampered copy: the failed ICV moved no window.
        delivered += b.unprotect(wire[-1], now).packet == sent[-1]
        checks = {
            f"{packets} sent": a.counters.packets == packets and len(wire) == packets,
            f"{packets} delivered intact": delivered == packets and b.counters.packets == packets,
            "sender drops as expected": a.counters.drops == out_expect,
            "receiver drops as expected": b.counters.drops == in_expect,
        }
        failed = [name for name, ok in checks.items() if not ok]
        failures += bool(failed)
        print(f"{label}", file=out)
        print(f"  {a!r}", file=out)
        for line in said:
            print(f"  injected: {line}", file=out)
        for name, sa, expect in (("outbound", a, out_expect), ("inbound", b, in_expect)):
            c = sa.counters
            print(f"  {name:8} packets={c.packets:<6} bytes={c.bytes:<8} "
                  f"drops: {_drops(c.drops)} (expected: {_drops(expect)})", file=out)
        events = [type(e).__name__ + f"({e.kind.value})" if hasattr(e, "kind")
                  else type(e).__name__ for e in a.drain_events()]
        print(f"  events (outbound): {', '.join(events) or 'none'}", file=out)
        print(f"  round trip: {delivered}/{packets} delivered intact; checks "
              f"{'OK' if not failed else 'FAILED: ' + '; '.join(failed)}\n", file=out)
    print("all checks held" if not failures else f"{failures} SA(s) FAILED their checks",
          file=out)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """The demo's command line; returns the exit status (``ipsecsa demo`` calls this too)."""
    parser = argparse.ArgumentParser(prog="ipsecsa-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100, help="packets per SA (default 100)")
    args = parser.parse_args(argv)
    if args.packets < 2:
        parser.error("--packets must be at least 2")
    return run(args.packets)


if __name__ == "__main__":
    sys.exit(main())
