"""Checksum tests.

Reference values: RFC 1071 §3 numerical example (bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2);
scapy 2.x (test-only oracle) for IPv4 header and UDP-over-IPv4/IPv6 checksums; a naive
word-by-word end-around-carry adder written here for the property test.
"""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from ipsecsa.errors import ConfigError
from ipsecsa.packet.checksum import internet_checksum, ones_sum, pseudo_header_sum


def naive_ones_sum(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc1071_example():
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_zero_and_all_ones():
    assert ones_sum(b"") == 0
    assert ones_sum(bytes(10)) == 0
    assert ones_sum(b"\xff\xff") == 0xFFFF
    assert ones_sum(b"\xff\xff\xff\xff") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0


def test_odd_length_padded_on_the_right():
    assert ones_sum(b"\x12") == 0x1200
    assert ones_sum(b"\x00\x01\x02") == 0x0201


def test_initial_chains_partial_sums():
    a, b = b"\x12\x34\x56\x78", b"\x9a\xbc\xde\xf0\x11\x22"
    assert ones_sum(b, ones_sum(a)) == ones_sum(a + b)


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_matches_naive_adder(data, initial):
    assert ones_sum(data, initial) == naive_ones_sum(data, initial)


@given(st.binary(min_size=2, max_size=300).filter(lambda b: len(b) % 2 == 0))
def test_inserting_checksum_verifies(data):
    csum = internet_checksum(data)
    assert internet_checksum(data + struct.pack("!H", csum)) == 0


def test_ipv4_header_checksum_against_scapy():
    pkt = IP(src="192.0.2.1", dst="198.51.100.7", ttl=17, id=0x1234, options=b"\x01\x01\x01\x00")
    raw = bytes(pkt / UDP())
    hlen = (raw[0] & 0xF) * 4
    expected = struct.unpack_from("!H", raw, 10)[0]
    zeroed = raw[:10] + b"\x00\x00" + raw[12:hlen]
    assert internet_checksum(zeroed) == expected
    assert internet_checksum(raw[:hlen]) == 0


@pytest.mark.parametrize(
    "ip",
    [
        IP(src="10.1.2.3", dst="10.4.5.6"),
        IPv6(src="2001:db8::1", dst="2001:db8:ffff::2"),
    ],
)
def test_pseudo_header_udp_against_scapy(ip):
    raw = bytes(ip / UDP(sport=4500, dport=4500) / b"hello, pseudo header!")
    seg = raw[20:] if raw[0] >> 4 == 4 else raw[40:]
    expected = struct.unpack_from("!H", seg, 6)[0]
    src = raw[12:16] if raw[0] >> 4 == 4 else raw[8:24]
    dst = raw[16:20] if raw[0] >> 4 == 4 else raw[24:40]
    zeroed = seg[:6] + b"\x00\x00" + seg[8:]
    assert internet_checksum(zeroed, pseudo_header_sum(src, dst, 17, len(seg))) == expected


def test_pseudo_header_rejects_mixed_lengths():
    with pytest.raises(ConfigError):
        pseudo_header_sum(bytes(4), bytes(16), 17, 8)
