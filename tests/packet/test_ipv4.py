"""IPv4 codec tests.

Reference values: scapy 2.x (test-only oracle) builds headers we parse and checks headers we build;
the AH zeroing expectations are worked out by hand from RFC 4302 §3.3.3.1.1 and Appendix A.1
(immutable: EOL, NOP, Security 130, Extended Security 133, Commercial Security 134, Router Alert
148, SDMDD 149; everything else zeroed as a whole option).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from ipsecsa.errors import ConfigError, DropReason, MalformedPacket
from ipsecsa.packet import ipv4
from ipsecsa.packet.ipv4 import (
    DF,
    MF,
    build_ipv4_header,
    ipv4_ah_zero_mutable,
    parse_ipv4,
    verify_ipv4_checksum,
)

SRC = bytes([192, 0, 2, 1])
DST = bytes([198, 51, 100, 2])


def test_constants():
    assert (ipv4.ESP, ipv4.AH, ipv4.UDP, ipv4.TCP, ipv4.ICMP) == (50, 51, 17, 6, 1)
    assert (ipv4.IPV6_IN_IP, ipv4.IPIP, ipv4.ICMPV6, ipv4.NONE) == (41, 4, 58, 59)
    assert (DF, MF) == (0x4000, 0x2000)


def test_parse_scapy_packet():
    raw = bytes(
        IP(
            src="192.0.2.1",
            dst="198.51.100.2",
            tos=0xB8,
            id=777,
            flags="DF",
            ttl=9,
            options=b"\x94\x04\x00\x00",
        )
        / TCP(sport=1, dport=2)
        / b"xyz"
    )
    h = parse_ipv4(raw)
    assert (h.tos, h.ident, h.flags, h.frag_offset, h.ttl, h.protocol) == (0xB8, 777, DF, 0, 9, 6)
    assert h.src == SRC and h.dst == DST
    assert h.options == b"\x94\x04\x00\x00" and h.header_length == 24
    assert h.total_length == len(raw)
    assert verify_ipv4_checksum(raw)


def test_build_matches_scapy_and_round_trips():
    built = build_ipv4_header(
        tos=0x10,
        total_length=48,
        ident=0xBEEF,
        flags=MF,
        frag_offset=3,
        ttl=64,
        protocol=50,
        src=SRC,
        dst=DST,
        options=b"\x01\x01\x01\x00",
    )
    ref = bytes(
        IP(
            src="192.0.2.1",
            dst="198.51.100.2",
            tos=0x10,
            len=48,
            id=0xBEEF,
            flags="MF",
            frag=3,
            ttl=64,
            proto=50,
            options=b"\x01\x01\x01\x00",
        )
    )
    assert built == ref[:24]
    h = parse_ipv4(built + bytes(24))
    assert (h.flags, h.frag_offset, h.protocol, h.ident) == (MF, 3, 50, 0xBEEF)
    assert verify_ipv4_checksum(built)
    assert not verify_ipv4_checksum(built[:10] + b"\x00\x00" + built[12:])


def test_trailing_link_padding_allowed():
    hdr = build_ipv4_header(
        tos=0,
        total_length=20,
        ident=0,
        flags=0,
        frag_offset=0,
        ttl=1,
        protocol=59,
        src=SRC,
        dst=DST,
    )
    assert parse_ipv4(hdr + bytes(26)).total_length == 20


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda b: b[:19], DropReason.TRUNCATED),
        (lambda b: bytes([0x65]) + b[1:], DropReason.MALFORMED),  # version 6
        (lambda b: bytes([0x44]) + b[1:], DropReason.MALFORMED),  # IHL 4
        (lambda b: bytes([0x4F]) + b[1:], DropReason.TRUNCATED),  # IHL 15 > buffer
        (lambda b: b[:2] + b"\x00\x13" + b[4:], DropReason.MALFORMED),  # total < header
        (lambda b: b[:2] + b"\x00\x40" + b[4:], DropReason.TRUNCATED),  # total > buffer
    ],
)
def test_parse_rejects(mutate, reason):
    hdr = build_ipv4_header(
        tos=0,
        total_length=28,
        ident=0,
        flags=0,
        frag_offset=0,
        ttl=1,
        protocol=17,
        src=SRC,
        dst=DST,
    ) + bytes(8)
    with pytest.raises(MalformedPacket) as exc:
        parse_ipv4(mutate(hdr))
    assert exc.value.reason is reason


@pytest.mark.parametrize(
    "options",
    [
        b"\x07\x00\x00\x00",  # length 0
        b"\x07\x01\x00\x00",  # length 1
        b"\x01\x01\x01\x83",  # type without length octet
        b"\x07\x09\x04\x00",  # overruns the header
    ],
)
def test_bad_option_lengths(options):
    hdr = bytearray(
        build_ipv4_header(
            tos=0,
            total_length=24,
            ident=0,
            flags=0,
            frag_offset=0,
            ttl=1,
            protocol=59,
            src=SRC,
            dst=DST,
            options=bytes(4),
        )
    )
    hdr[20:24] = options
    with pytest.raises(MalformedPacket) as exc:
        parse_ipv4(bytes(hdr))
    assert exc.value.reason is DropReason.MALFORMED


def test_build_rejects_caller_mistakes():
    kw = {
        "tos": 0,
        "total_length": 20,
        "ident": 0,
        "flags": 0,
        "frag_offset": 0,
        "ttl": 1,
        "protocol": 0,
        "src": SRC,
        "dst": DST,
    }
    with pytest.raises(ConfigError):
        build_ipv4_header(**{**kw, "options": b"\x01"})
    with pytest.raises(ConfigError):
        build_ipv4_header(**{**kw, "total_length": 19})
    with pytest.raises(ConfigError):
        build_ipv4_header(**{**kw, "src": bytes(16)})
    with pytest.raises(ConfigError):
        build_ipv4_header(**{**kw, "frag_offset": 0x2000})


def test_ah_zero_mutable_fields_and_options():
    router_alert = b"\x94\x04\x00\x00"  # 148, immutable
    record_route = b"\x07\x07\x04\x0a\x00\x00\x01"  # 7, mutable
    nop = b"\x01"
    timestamp = b"\x44\x08\x05\x00\x11\x22\x33\x44"  # 68, mutable
    security = b"\x82\x03\x99"  # 130, immutable
    lsrr = b"\x83\x07\x04\x0a\x00\x00\x02"  # 131, mutable
    eol_pad = bytes(6)
    options = router_alert + record_route + nop + timestamp + security + lsrr + eol_pad
    assert len(options) == 36
    hdr = build_ipv4_header(
        tos=0xB9,
        total_length=56,
        ident=0x4242,
        flags=DF | MF,
        frag_offset=5,
        ttl=33,
        protocol=51,
        src=SRC,
        dst=DST,
        options=options,
    )
    out = ipv4_ah_zero_mutable(hdr)
    expected_opts = router_alert + bytes(7) + nop + bytes(8) + security + bytes(7) + eol_pad
    expected = (
        bytes([0x4E, 0x00])
        + (56).to_bytes(2, "big")
        + b"\x42\x42"
        + b"\x00\x00"
        + b"\x00"
        + b"\x33"
        + b"\x00\x00"
        + SRC
        + DST
        + expected_opts
    )
    assert out == expected
    # A whole packet may be passed: the payload is untouched.
    assert ipv4_ah_zero_mutable(hdr + b"payload") == expected + b"payload"


def test_ah_zero_keeps_all_immutable_types():
    opts = (
        b"\x82\x03\x01"
        + b"\x85\x03\x02"
        + b"\x86\x03\x03"
        + b"\x94\x04\x00\x00"
        + b"\x95\x03\x05"
        + b"\x01\x00"
    )
    opts += bytes(-len(opts) % 4)
    hdr = build_ipv4_header(
        tos=0,
        total_length=20 + len(opts),
        ident=1,
        flags=0,
        frag_offset=0,
        ttl=1,
        protocol=51,
        src=SRC,
        dst=DST,
        options=opts,
    )
    assert ipv4_ah_zero_mutable(hdr)[20:] == opts


def test_ah_zero_unknown_option_zeroed():
    opts = b"\x19\x04\xab\xcd"  # type 25, not in Appendix A.1's immutable list
    hdr = build_ipv4_header(
        tos=0,
        total_length=24,
        ident=1,
        flags=0,
        frag_offset=0,
        ttl=1,
        protocol=51,
        src=SRC,
        dst=DST,
        options=opts,
    )
    assert ipv4_ah_zero_mutable(hdr)[20:] == bytes(4)


@given(st.binary(max_size=80))
def test_random_bytes_parse_or_malformed(data):
    try:
        parse_ipv4(data)
    except MalformedPacket:
        pass
    try:
        ipv4_ah_zero_mutable(data)
    except MalformedPacket:
        pass
    verify_ipv4_checksum(data)


@given(st.binary(max_size=60))
def test_random_after_valid_version_nibble(tail):
    data = bytes([0x45 + (len(tail) % 11)]) + tail
    for fn in (parse_ipv4, ipv4_ah_zero_mutable):
        try:
            fn(data)
        except MalformedPacket:
            pass


def test_every_truncation():
    raw = bytes(
        IP(
            src="192.0.2.1",
            dst="198.51.100.2",
            options=b"\x94\x04\x00\x00\x07\x07\x04\x0a\x00\x00\x01\x00",
        )
        / TCP()
    )
    for i in range(len(raw)):
        with pytest.raises(MalformedPacket) as exc:
            parse_ipv4(raw[:i])
        assert exc.value.reason is DropReason.TRUNCATED
