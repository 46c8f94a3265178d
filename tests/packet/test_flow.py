"""flow_of tests.

Reference values: packets built with scapy 2.x (test-only oracle); the expected tuples are the
fields given to scapy. Non-first fragments have ports 0 by our documented rule (RFC 4301 §7).
"""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.sctp import SCTP

from ipsecsa.errors import DropReason, MalformedPacket
from ipsecsa.packet.flow import Flow, flow_of


def a(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


V4S, V4D = "192.0.2.10", "198.51.100.20"
V6S, V6D = "2001:db8::10", "2001:db8::20"


@pytest.mark.parametrize(
    "pkt, expected",
    [
        (IP(src=V4S, dst=V4D) / TCP(sport=1234, dport=80), (4, 6, 1234, 80)),
        (IP(src=V4S, dst=V4D) / UDP(sport=500, dport=4500), (4, 17, 500, 4500)),
        (IP(src=V4S, dst=V4D) / SCTP(sport=9, dport=10), (4, 132, 9, 10)),
        (IP(src=V4S, dst=V4D) / ICMP(type=8, code=0), (4, 1, 0, 0)),
        (IP(src=V4S, dst=V4D, proto=50) / (b"\x00\x00\x01\x00" + bytes(20)), (4, 50, 0, 0)),
        (IP(src=V4S, dst=V4D, proto=136) / b"\x01\x02\x03\x04\x00\x08\x00\x00", (4, 136, 258, 772)),
        (IPv6(src=V6S, dst=V6D) / TCP(sport=22, dport=2222), (6, 6, 22, 2222)),
        (
            IPv6(src=V6S, dst=V6D)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrRouting(addresses=[V6D])
            / IPv6ExtHdrDestOpt()
            / UDP(sport=53, dport=5353),
            (6, 17, 53, 5353),
        ),
        (IPv6(src=V6S, dst=V6D) / ICMPv6EchoRequest(), (6, 58, 0, 0)),
        (
            IPv6(src=V6S, dst=V6D)
            / IPv6ExtHdrFragment(offset=0, m=1, id=3)
            / UDP(sport=7, dport=8)
            / bytes(16),
            (6, 17, 7, 8),
        ),
    ],
)
def test_flow_of_scapy_packets(pkt, expected):
    raw = bytes(pkt)
    version, proto, sport, dport = expected
    src, dst = (V4S, V4D) if version == 4 else (V6S, V6D)
    assert flow_of(raw) == Flow(version, a(src), a(dst), proto, sport, dport)


def test_non_first_fragments_have_no_ports():
    v4 = bytes(IP(src=V4S, dst=V4D, proto=6, frag=2, flags="MF") / bytes(16))
    assert flow_of(v4) == Flow(4, a(V4S), a(V4D), 6, 0, 0)
    v6 = bytes(IPv6(src=V6S, dst=V6D) / IPv6ExtHdrFragment(offset=2, m=0, id=3, nh=6) / bytes(16))
    assert flow_of(v6) == Flow(6, a(V6S), a(V6D), 6, 0, 0)


def test_flow_is_hashable():
    raw = bytes(IP(src=V4S, dst=V4D) / UDP(sport=1, dport=2))
    assert {flow_of(raw): 1}[flow_of(raw)] == 1


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", DropReason.TRUNCATED),
        (b"\x50" + bytes(40), DropReason.MALFORMED),
        (bytes(IP(src=V4S, dst=V4D, proto=6) / b"\x00\x01"), DropReason.TRUNCATED),
        (bytes(IPv6(src=V6S, dst=V6D, nh=17) / b"\x00"), DropReason.TRUNCATED),
    ],
)
def test_flow_rejects(raw, reason):
    with pytest.raises(MalformedPacket) as exc:
        flow_of(raw)
    assert exc.value.reason is reason


@given(st.binary(max_size=120))
def test_random_bytes(data):
    for buf in (data, b"\x45" + data, b"\x60" + data):
        try:
            flow_of(buf)
        except MalformedPacket:
            pass


def test_every_truncation():
    for pkt in (IP(src=V4S, dst=V4D) / TCP(), IPv6(src=V6S, dst=V6D) / IPv6ExtHdrDestOpt() / UDP()):
        raw = bytes(pkt)
        for i in range(len(raw)):
            with pytest.raises(MalformedPacket):
                flow_of(raw[:i])
