"""IPv6 chain tests.

Reference values: extension headers are laid out by hand here from RFC 8200 §4 (formats), RFC 4302
§3.1.1 / RFC 4303 §3.1.1 (where AH/ESP is inserted in transport mode), RFC 4302 §3.3.3.1.2 and
Appendix A.2 (AH view of mutable fields; a Type 0 routing header as seen at the final destination,
walked through RFC 2460 §4.4's per-hop swap by hand) and RFC 6275 §6.4 (Type 2). scapy 2.x builds
a few packets as an independent oracle of the chain offsets.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)

from ipsecsa.errors import ConfigError, DropReason, MalformedPacket
from ipsecsa.packet.ipv6 import (
    AH,
    DSTOPTS,
    ESP,
    FRAGMENT,
    HOPOPTS,
    ROUTING,
    build_ipv6_header,
    ipv6_ah_zero_mutable,
    parse_ipv6_chain,
)

SRC = bytes.fromhex("20010db8000000000000000000000001")
DST = bytes.fromhex("20010db8000000000000000000000002")
I1 = bytes.fromhex("20010db8000000000000000000000011")
I2 = bytes.fromhex("20010db8000000000000000000000012")
FIN = bytes.fromhex("20010db80000000000000000000000ff")


def ext(nh: int, body: bytes) -> bytes:
    """Generic extension header (RFC 8200 §4.3 length in 8-octet units beyond the first 8)."""
    assert (len(body) + 2) % 8 == 0
    return bytes([nh, (len(body) + 2) // 8 - 1]) + body


def packet(nh: int, rest: bytes, *, dst: bytes = DST, tc: int = 0, fl: int = 0, hl: int = 64):
    return (
        build_ipv6_header(
            traffic_class=tc,
            flow_label=fl,
            payload_length=len(rest),
            next_header=nh,
            hop_limit=hl,
            src=SRC,
            dst=dst,
        )
        + rest
    )


PADN4 = b"\x01\x04\x00\x00\x00\x00"  # PadN option, 6 bytes: fills a minimal header
TCP_HDR = bytes(20)
UDP_NH = 17


def test_build_matches_scapy():
    ours = build_ipv6_header(
        traffic_class=0xAB,
        flow_label=0x12345,
        payload_length=8,
        next_header=59,
        hop_limit=7,
        src=SRC,
        dst=DST,
    )
    ref = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0xAB, fl=0x12345, nh=59, hlim=7, plen=8)
    )
    assert ours == ref[:40]
    c = parse_ipv6_chain(ours + bytes(8))
    assert (c.traffic_class, c.flow_label, c.payload_length, c.next_header, c.hop_limit) == (
        0xAB,
        0x12345,
        8,
        59,
        7,
    )
    assert (c.src, c.dst) == (SRC, DST)


def test_build_rejects_caller_mistakes():
    with pytest.raises(ConfigError):
        build_ipv6_header(
            traffic_class=0,
            flow_label=1 << 20,
            payload_length=0,
            next_header=59,
            hop_limit=1,
            src=SRC,
            dst=DST,
        )
    with pytest.raises(ConfigError):
        build_ipv6_header(
            traffic_class=0,
            flow_label=0,
            payload_length=0,
            next_header=59,
            hop_limit=1,
            src=SRC[:4],
            dst=DST,
        )


def test_no_extension_headers():
    c = parse_ipv6_chain(packet(6, TCP_HDR))
    assert c.headers == [] and (c.upper_offset, c.upper_protocol) == (40, 6)
    assert (c.insert_offset, c.insert_nh_offset, c.fragment) == (40, 6, None)


def test_scapy_chain_hbh_routing_dstopts():
    raw = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["2001:db8::11"], segleft=0)
        / IPv6ExtHdrDestOpt()
        / TCP()
    )
    c = parse_ipv6_chain(raw)
    assert c.headers == [(HOPOPTS, 40, 8), (ROUTING, 48, 24), (DSTOPTS, 72, 8)]
    assert (c.upper_offset, c.upper_protocol) == (80, 6)
    # After Routing, before the final Destination Options header.
    assert (c.insert_offset, c.insert_nh_offset) == (72, 48)


def test_dstopts_before_routing_goes_before_ipsec():
    raw = packet(
        DSTOPTS,
        ext(ROUTING, PADN4)
        + bytes([FRAGMENT, 0, 0, 0])
        + bytes(4)  # routing: type 0, SL 0, no addresses
        + bytes([DSTOPTS, 0, 0, 0, 0, 0, 0, 1])  # fragment: offset 0, M 0, id 1
        + ext(UDP_NH, PADN4)
        + bytes(8),
    )
    c = parse_ipv6_chain(raw)
    assert [h[0] for h in c.headers] == [DSTOPTS, ROUTING, FRAGMENT, DSTOPTS]
    assert c.fragment == (0, False, 1)
    assert (c.insert_offset, c.insert_nh_offset) == (64, 56)  # after the Fragment header
    assert (c.upper_offset, c.upper_protocol) == (72, 17)


def test_final_dstopts_only():
    c = parse_ipv6_chain(packet(DSTOPTS, ext(UDP_NH, PADN4) + bytes(8)))
    assert (c.insert_offset, c.insert_nh_offset) == (40, 6)
    assert (c.upper_offset, c.upper_protocol) == (48, 17)


def test_stops_at_esp_and_ah():
    c = parse_ipv6_chain(packet(HOPOPTS, ext(ESP, PADN4) + bytes(16)))
    assert (c.upper_offset, c.upper_protocol) == (48, ESP)
    assert (c.insert_offset, c.insert_nh_offset) == (48, 40)
    ah = bytes([DSTOPTS, 4]) + bytes(2) + bytes(4) + bytes(4) + bytes(12)  # 24 bytes, 96-bit ICV
    raw = packet(AH, ah + ext(6, PADN4) + TCP_HDR)
    assert parse_ipv6_chain(raw).upper_protocol == AH
    c = parse_ipv6_chain(raw, stop_at_ipsec=False)
    assert c.headers == [(AH, 40, 24), (DSTOPTS, 64, 8)]
    assert (c.upper_offset, c.upper_protocol) == (72, 6)


def test_non_first_fragment_stops_at_fragment_data():
    raw = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrFragment(offset=10, m=1, id=0xDEADBEEF, nh=17)
        / (b"\x3c" * 16)
    )
    c = parse_ipv6_chain(raw)
    assert c.fragment == (10, True, 0xDEADBEEF)
    assert (c.upper_offset, c.upper_protocol) == (48, 17)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (packet(DSTOPTS, ext(HOPOPTS, PADN4) + ext(59, PADN4)), DropReason.MALFORMED),
        (
            packet(FRAGMENT, bytes([FRAGMENT, 0, 0, 0, 0, 0, 0, 1]) + bytes([59]) + bytes(7)),
            DropReason.MALFORMED,
        ),
        (packet(DSTOPTS, bytes([59, 1]) + PADN4), DropReason.TRUNCATED),
        (packet(DSTOPTS, bytes([59, 0, 0x05, 0x09, 0, 0, 0, 0])), DropReason.MALFORMED),
        (packet(DSTOPTS, bytes([59, 0, 1, 2, 0, 0, 0, 0x05])), DropReason.MALFORMED),
        (packet(DSTOPTS, ext(DSTOPTS, PADN4) * 17 + bytes(0)), DropReason.MALFORMED),
        (packet(6, b"")[:39], DropReason.TRUNCATED),
        (bytes([0x40]) + packet(6, b"")[1:], DropReason.MALFORMED),
    ],
)
def test_rejects(raw, reason):
    with pytest.raises(MalformedPacket) as exc:
        parse_ipv6_chain(raw)
    assert exc.value.reason is reason


def test_payload_length_beyond_buffer_and_padding():
    raw = packet(59, bytes(8))
    with pytest.raises(MalformedPacket) as exc:
        parse_ipv6_chain(raw[:-1])
    assert exc.value.reason is DropReason.TRUNCATED
    assert parse_ipv6_chain(raw + bytes(5)).payload_length == 8


def test_jumbogram_refused():
    jumbo = bytes([6, 0, 0xC2, 4, 0, 1, 0, 0])
    raw = (
        build_ipv6_header(
            traffic_class=0,
            flow_label=0,
            payload_length=0,
            next_header=HOPOPTS,
            hop_limit=1,
            src=SRC,
            dst=DST,
        )
        + jumbo
        + TCP_HDR
    )
    with pytest.raises(MalformedPacket) as exc:
        parse_ipv6_chain(raw)
    assert exc.value.reason is DropReason.MALFORMED


# --- AH zeroing -------------------------------------------------------------------------------------


def test_ah_zero_fixed_header_and_options():
    router_alert = b"\x05\x02\x00\x00"  # type 0x05: "may change" bit clear -> kept
    changing = b"\x3e\x04\xaa\xbb\xcc\xdd"  # type 0x3E: bit 0x20 set -> data zeroed
    pad1 = b"\x00"
    hbh = bytes([DSTOPTS, 1]) + router_alert + changing + pad1 + b"\x01\x01\x00"  # 16 bytes
    dst = bytes([AH, 0]) + b"\x01\x04\x00\x00\x00\x00"  # PadN kept
    ah = bytes([6, 4]) + bytes(22)
    raw = packet(HOPOPTS, hbh + dst + ah + TCP_HDR, tc=0xAB, fl=0x12345, hl=9)
    out = ipv6_ah_zero_mutable(raw, 64)
    expected_fixed = bytes([0x60, 0, 0, 0]) + raw[4:7] + b"\x00" + SRC + DST
    expected_hbh = (
        bytes([DSTOPTS, 1]) + router_alert + b"\x3e\x04" + bytes(4) + pad1 + b"\x01\x01\x00"
    )
    assert out == expected_fixed + expected_hbh + dst
    assert raw[6] == HOPOPTS and raw[4:6] == (len(raw) - 40).to_bytes(2, "big")


def routing0(nh: int, seg_left: int, addrs: list[bytes]) -> bytes:
    return bytes([nh, 2 * len(addrs), 0, seg_left]) + bytes(4) + b"".join(addrs)


def test_ah_zero_routing_type0_as_at_final_destination():
    # Sender's view: destination = first hop I1, list [I2, FIN], segments left 2.
    # RFC 2460 §4.4 swaps at I1 then I2; at FIN the header reads dst FIN, list [I1, I2], SL 0.
    final = routing0(AH, 0, [I1, I2])
    for dst, sl, addrs in [(I1, 2, [I2, FIN]), (I2, 1, [I1, FIN]), (FIN, 0, [I1, I2])]:
        raw = packet(ROUTING, routing0(AH, sl, addrs) + bytes([6, 1]) + bytes(10), dst=dst)
        out = ipv6_ah_zero_mutable(raw, 80)
        assert out[24:40] == FIN
        assert out[40:80] == final
        assert out[8:24] == SRC


def test_ah_zero_routing_type2():
    coa, hoa = I1, FIN
    rh2 = bytes([AH, 2, 2, 1]) + bytes(4) + hoa
    raw = packet(ROUTING, rh2 + bytes(16), dst=coa)
    out = ipv6_ah_zero_mutable(raw, 64)
    assert out[24:40] == hoa
    assert out[40:64] == bytes([AH, 2, 2, 0]) + bytes(4) + coa


def test_ah_zero_unpredictable_routing_refused():
    rh3 = bytes([AH, 2, 3, 1]) + bytes(4) + FIN  # RPL source route: not predictable here
    with pytest.raises(MalformedPacket) as exc:
        ipv6_ah_zero_mutable(packet(ROUTING, rh3 + bytes(16)), 64)
    assert exc.value.reason is DropReason.MALFORMED
    rh3_done = bytes([AH, 2, 3, 0]) + bytes(4) + FIN  # segments left 0: already final
    raw = packet(ROUTING, rh3_done + bytes(16))
    assert ipv6_ah_zero_mutable(raw, 64)[40:] == rh3_done


def test_ah_zero_bad_offsets():
    raw = packet(DSTOPTS, ext(AH, PADN4) + bytes(16))
    assert len(ipv6_ah_zero_mutable(raw, 48)) == 48
    for upto in (44, 39, 1000):
        with pytest.raises(MalformedPacket):
            ipv6_ah_zero_mutable(raw, upto)


# --- robustness -----------------------------------------------------------------------------------

SAMPLES = [
    packet(6, TCP_HDR),
    bytes(
        IPv6()
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["::1", "::2"], segleft=1)
        / IPv6ExtHdrDestOpt()
        / UDP()
        / b"data"
    ),
    bytes(IPv6() / IPv6ExtHdrFragment(offset=0, m=1, id=5) / UDP() / b"12345678"),
    packet(ROUTING, routing0(AH, 2, [I2, FIN]) + bytes([6, 1]) + bytes(10), dst=I1),
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_every_truncation_raises_malformed_only(raw):
    parse_ipv6_chain(raw)
    for i in range(len(raw)):
        try:
            parse_ipv6_chain(raw[:i])
        except MalformedPacket:
            pass
        for upto in range(0, i + 1, 4):
            try:
                ipv6_ah_zero_mutable(raw[:i], upto)
            except MalformedPacket:
                pass


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans(), st.integers(0, 220))
def test_random_bytes(data, stop, upto):
    buf = bytes([0x60]) + data  # version 6 so the walk is exercised
    for b in (data, buf):
        try:
            parse_ipv6_chain(b, stop_at_ipsec=stop)
        except MalformedPacket:
            pass
        try:
            ipv6_ah_zero_mutable(b, upto)
        except MalformedPacket:
            pass


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from([HOPOPTS, ROUTING, FRAGMENT, DSTOPTS, AH, ESP, 6, 17, 59]), max_size=20
    ),
    st.binary(max_size=64),
)
def test_random_chains(types, tail):
    body = b""
    for i, t in enumerate(types):
        nxt = types[i + 1] if i + 1 < len(types) else 59
        body += (
            bytes([nxt, i % 3]) + bytes(6 + 8 * (i % 3)) if t != AH else bytes([nxt, 1]) + bytes(10)
        )
    raw = packet(types[0] if types else 59, body + tail)
    for stop in (True, False):
        try:
            parse_ipv6_chain(raw, stop_at_ipsec=stop)
        except MalformedPacket:
            pass
    try:
        ipv6_ah_zero_mutable(raw, min(len(raw), 40 + len(body)))
    except MalformedPacket:
        pass
