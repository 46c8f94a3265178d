"""UDP and NAT-T framing tests.

Reference values: scapy 2.x (test-only oracle) computes UDP checksums over IPv4 and IPv6; RFC 768
(zero checksum sent as 0xFFFF); RFC 3948 §2.1-§2.3 (non-ESP marker, keepalive 0xFF, ESP SPI
non-zero) for the classification table.
"""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ipsecsa.errors import ConfigError, DropReason, MalformedPacket
from ipsecsa.packet.natt import (
    KEEPALIVE,
    NATT_PORT,
    NON_ESP_MARKER,
    UdpKind,
    classify_udp_payload,
)
from ipsecsa.packet.udp import UDP_HEADER, build_udp, fix_l4_checksum, parse_udp, udp_checksum

V4 = (bytes([192, 0, 2, 1]), bytes([203, 0, 113, 9]))
V6 = (bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02"))


@pytest.mark.parametrize("payload", [b"", b"x", b"hello", bytes(range(256)) * 3])
@pytest.mark.parametrize("family", [4, 6])
def test_build_udp_matches_scapy(payload, family):
    src, dst = V4 if family == 4 else V6
    ours = build_udp(src, dst, 4500, 4501, payload)
    if family == 4:
        ref = bytes(IP(src="192.0.2.1", dst="203.0.113.9") / UDP(sport=4500, dport=4501) / payload)[
            20:
        ]
    else:
        ref = bytes(
            IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=4500, dport=4501) / payload
        )[40:]
    assert ours == ref
    assert udp_checksum(src, dst, ours) == struct.unpack_from("!H", ours, 6)[0]


def test_checksum_disabled_only_for_ipv4():
    assert build_udp(*V4, 1, 2, b"abc", checksum=False)[6:8] == b"\x00\x00"
    assert build_udp(*V6, 1, 2, b"abc", checksum=False)[6:8] != b"\x00\x00"


def test_zero_checksum_sent_as_ffff():
    # Search a payload whose sum complements to zero: craft the last word to force it.
    src, dst = V4
    seg = bytearray(build_udp(src, dst, 1, 2, b"\x00\x00", checksum=False))
    csum = udp_checksum(src, dst, seg)
    # Adding csum into the payload word makes the new sum 0xFFFF, i.e. a computed checksum of 0.
    seg[8:10] = struct.pack("!H", csum)
    assert udp_checksum(src, dst, seg) == 0xFFFF


def test_parse_udp():
    seg = b"\x00" * 4 + build_udp(*V4, 500, 4500, b"payload")
    assert parse_udp(seg, 4) == (500, 4500, 15, struct.unpack_from("!H", seg, 10)[0])
    assert UDP_HEADER.size == 8


@pytest.mark.parametrize(
    "buf, offset, reason",
    [
        (bytes(7), 0, DropReason.TRUNCATED),
        (UDP_HEADER.pack(1, 2, 7, 0), 0, DropReason.MALFORMED),
        (UDP_HEADER.pack(1, 2, 9, 0), 0, DropReason.TRUNCATED),
        (UDP_HEADER.pack(1, 2, 8, 0), 1, DropReason.TRUNCATED),
        (UDP_HEADER.pack(1, 2, 8, 0), -1, DropReason.TRUNCATED),
    ],
)
def test_parse_udp_rejects(buf, offset, reason):
    with pytest.raises(MalformedPacket) as exc:
        parse_udp(buf, offset)
    assert exc.value.reason is reason


def test_build_udp_too_long():
    with pytest.raises(ConfigError):
        build_udp(*V4, 1, 2, bytes(65528))


@given(st.binary(max_size=40), st.integers(0, 40))
def test_parse_udp_random(buf, offset):
    try:
        parse_udp(buf, offset)
    except MalformedPacket:
        pass


@pytest.mark.parametrize(
    "payload, kind",
    [
        (KEEPALIVE, UdpKind.KEEPALIVE),
        (b"\x00", UdpKind.MALFORMED),
        (b"", UdpKind.MALFORMED),
        (b"\xff\xff", UdpKind.MALFORMED),
        (NON_ESP_MARKER, UdpKind.IKE),
        (NON_ESP_MARKER + b"ike header...", UdpKind.IKE),
        (b"\x00\x00\x00", UdpKind.MALFORMED),
        (b"\x00\x00\x00\x01\x00\x00\x00", UdpKind.MALFORMED),  # 7 bytes, not ESP
        (b"\x00\x00\x00\x01" + b"\x00\x00\x00\x01", UdpKind.ESP),
        (b"\xde\xad\xbe\xef" + bytes(40), UdpKind.ESP),
    ],
)
def test_classify(payload, kind):
    assert classify_udp_payload(payload) is kind
    assert NATT_PORT == 4500


@given(st.binary(max_size=20))
def test_classify_total(payload):
    kind = classify_udp_payload(payload)
    if kind is UdpKind.ESP:
        assert len(payload) >= 8 and payload[:4] != bytes(4)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_fix_l4_checksum_matches_scapy_after_address_change(family, proto):
    """RFC 3948 §3.1.2: the checksum made for the pre-NAT addresses is redone for the new ones."""
    l4 = TCP(sport=1, dport=2, flags="S") if proto == "tcp" else UDP(sport=1, dport=2)
    ip = IP if family == 4 else IPv6
    old, new = (("10.0.0.1", "10.0.0.2"), ("192.0.2.1", "203.0.113.9")) if family == 4 else (
        ("2001:db8::a", "2001:db8::b"), ("2001:db8::1", "2001:db8::2"))
    hlen = 20 if family == 4 else 40
    stale = bytes(ip(src=old[0], dst=old[1]) / l4 / b"payload!")[hlen:]
    ref = bytes(ip(src=new[0], dst=new[1]) / l4 / b"payload!")[hlen:]
    src, dst = V4 if family == 4 else V6
    assert stale != ref
    assert fix_l4_checksum(src, dst, 6 if proto == "tcp" else 17, stale) == ref


def test_fix_l4_checksum_leaves_zero_ipv4_udp_and_short_segments():
    zero = struct.pack("!HHHH", 1, 2, 12, 0) + b"abcd"
    assert fix_l4_checksum(*V4, 17, zero) == zero
    assert fix_l4_checksum(*V6, 17, zero) != zero  # IPv6 UDP always carries one
    assert fix_l4_checksum(*V4, 6, b"\x00" * 17) == b"\x00" * 17
    assert fix_l4_checksum(*V4, 17, b"\x00" * 7) == b"\x00" * 7
