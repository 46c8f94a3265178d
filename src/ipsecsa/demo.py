"""End-to-end demonstration of the data path: two gateways, several SAs, real packets.

Gateway A protects traffic with its outbound SAs; gateway B unprotects it with the matching
inbound SAs. Along the way the demo injects what a real network delivers — a tampered packet, a
replayed packet, traffic outside the SA's selectors, a NAT-T keepalive — and prints the per-SA
counters and events, so every drop reason shows where it is counted.

Run: ``python -m ipsecsa.demo`` (or ``ipsecsa-demo``). ``--packets N`` sets the traffic volume.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time

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


def _traffic_for(label: str, cfg: dict, n: int) -> list[bytes]:
    if cfg["mode"] == "tunnel":
        return [_udp_packet(f"10.1.0.{1 + i % 200}", f"10.2.0.{1 + i % 50}",
                            os.urandom(16 + (i * 37) % 1200)) for i in range(n)]
    return [_udp_packet(cfg["src"], cfg["dst"], os.urandom(16 + (i * 37) % 1200))
            for i in range(n)]


def run(packets: int, out=sys.stdout) -> int:
    """Run the demonstration; returns a process exit code (0 when every check held)."""
    now = time.monotonic()
    failures = 0
    print(f"ipsecsa data-path demo: {packets} packets per SA\n", file=out)
    for label, cfg in _sa_pairs(packets):
        a = SecurityAssociation.from_dict(dict(cfg, direction="outbound"), now=now)
        b = SecurityAssociation.from_dict(dict(cfg, direction="inbound"), now=now)
        sent = _traffic_for(label, cfg, packets)
        wire: list[bytes] = []
        for pkt in sent:
            r = a.protect(pkt, now)
            if r.packet is not None:
                wire.append(r.packet)
        delivered = 0
        for original, protected in zip(sent, wire):
            r = b.unprotect(protected, now)
            if r.packet == original:
                delivered += 1
        # What a hostile or lossy network adds:
        fresh = a.protect(sent[-1], now).packet
        if fresh is not None:
            tampered = bytearray(fresh)
            tampered[-1] ^= 0x01
            b.unprotect(bytes(tampered), now)          # -> icv_failure
        b.unprotect(wire[0], now)                       # -> replay
        if cfg["mode"] == "tunnel" and "selectors" in cfg:
            a.protect(_udp_packet("10.9.9.9", "10.2.0.1", b"stray"), now)  # -> selector_mismatch
        if "encapsulation" in cfg:
            ka = _udp_packet(cfg["src"], cfg["dst"], b"\xff", 4500, 4500)
            b.unprotect(ka, now)                        # -> natt_keepalive
        ok = delivered == len(sent)
        failures += not ok
        print(f"{label}", file=out)
        print(f"  {a!r}", file=out)
        for name, sa in (("outbound", a), ("inbound", b)):
            c = sa.counters
            drops = ", ".join(f"{r.value}={k}" for r, k in c.drops.items()) or "none"
            print(f"  {name:8} packets={c.packets:<6} bytes={c.bytes:<8} drops: {drops}",
                  file=out)
        events = [type(e).__name__ + f"({e.kind.value})" if hasattr(e, "kind")
                  else type(e).__name__ for e in a.drain_events()]
        print(f"  events (outbound): {', '.join(events) or 'none'}", file=out)
        print(f"  round trip: {delivered}/{len(sent)} delivered intact "
              f"{'OK' if ok else 'FAILED'}\n", file=out)
    reasons = ", ".join(r.value for r in DropReason)
    print(f"drop reasons counted by the data path: {reasons}", file=out)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipsecsa-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100, help="packets per SA (default 100)")
    args = parser.parse_args(argv)
    if args.packets < 2:
        parser.error("--packets must be at least 2")
    return run(args.packets)


if __name__ == "__main__":
    sys.exit(main())
