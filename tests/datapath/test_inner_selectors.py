"""The IPv4 fast path of the inner selector check gives the verdict of the general path
(``selectors_match(flow_of(packet))``) on every packet, including fragments, truncated transport
headers, options and lengths that do not fit: hypothesis draws the packets and the selectors."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecsa import SecurityAssociation
from ipsecsa.errors import MalformedPacket
from ipsecsa.packet.flow import flow_of
from ipsecsa.selectors import Selector, selectors_match

_SA = {"spi": 0x1001, "protocol": "esp", "mode": "tunnel", "direction": "outbound",
       "src": "192.0.2.1", "dst": "192.0.2.2",
       "encryption": {"algorithm": "aes-gcm-16", "key": "00" * 20}}

ADDRS = ["198.51.100.1", "198.51.100.200", "203.0.113.7", "192.0.2.9"]
selector = st.builds(
    lambda src, dst, proto, sport, dport: {k: v for k, v in {
        "src": src, "dst": None if src and ":" in src else dst,  # one family per selector
        "protocol": proto, "sport": sport, "dport": dport}.items() if v},
    st.sampled_from([None, "198.51.100.0/24", "198.51.100.1", "0.0.0.0/0", "2001:db8::/32"]),
    st.sampled_from([None, "203.0.113.0/24", "192.0.2.0/25"]),
    st.sampled_from([0, 1, 6, 17, 132]),
    st.sampled_from([0, 53, 1000]),
    st.sampled_from([0, 80, 443]))


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    proto = draw(st.sampled_from([1, 6, 17, 132, 50]))
    # Ports the selectors name at the start of the payload, often: a fragment whose payload
    # looks like ports must still be matched with ports 0.
    ports = struct.pack("!HH", draw(st.sampled_from([53, 1000, 7])),
                        draw(st.sampled_from([80, 443, 9])))
    payload = draw(st.sampled_from([b"", ports[:2], ports])) + draw(st.binary(max_size=8))
    ihl = draw(st.sampled_from([5, 5, 5, 6]))
    options = b"\x01\x01\x01\x00" if ihl == 6 else b""
    frag = draw(st.sampled_from([0, 0x2000, 0x0001, 0x2010, 0x4000]))
    total = 4 * ihl + len(payload) + draw(st.sampled_from([0, 0, -2, 3]))
    src = bytes(map(int, draw(st.sampled_from(ADDRS)).split(".")))
    dst = bytes(map(int, draw(st.sampled_from(ADDRS)).split(".")))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, max(total, 0), 1, frag, 64, proto, 0,
                      src, dst)
    return hdr + options + payload + draw(st.binary(max_size=3))


def _general(sels: tuple[Selector, ...], pkt: bytes) -> bool | str:
    try:
        return selectors_match(sels, flow_of(pkt))
    except MalformedPacket as exc:
        return exc.reason.value


@settings(max_examples=600, deadline=None)
@given(st.lists(selector, max_size=3), packets())
def test_fast_path_equals_flow_of(sels: list[dict], pkt: bytes) -> None:
    sa = SecurityAssociation.from_dict({**_SA, "selectors": sels})
    try:
        fast: bool | str = sa._inner_selectors_ok(pkt)
    except MalformedPacket as exc:
        fast = exc.reason.value
    assert fast == _general(sa._selectors, pkt)


def _v4(proto: int, frag: int, payload: bytes, total_extra: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload) + total_extra, 1, frag, 64,
                       proto, 0, bytes([198, 51, 100, 1]), bytes([203, 0, 113, 7])) + payload


def test_named_cases() -> None:
    ports = struct.pack("!HH", 53, 80)
    sa = SecurityAssociation.from_dict({**_SA, "selectors": [{"sport": 53}]})
    none = SecurityAssociation.from_dict(_SA)
    cases = [
        (sa, _v4(6, 0, ports + b"rest"), True),  # ports read
        (sa, _v4(6, 0x0001, ports + b"rest"), False),  # non-first fragment: ports are 0
        (sa, _v4(6, 0x2000, ports + b"rest"), True),  # first fragment: ports read
        (sa, _v4(1, 0, ports + b"rest"), False),  # ICMP has no ports
        (sa, _v4(6, 0, ports[:3] + b"", 0), "truncated"),  # too short for the ports
        (none, _v4(6, 0, ports + b"rest"), True),  # no selectors: everything
    ]
    for s, pkt, want in cases:
        try:
            got: bool | str = s._inner_selectors_ok(pkt)
        except MalformedPacket as exc:
            got = exc.reason.value
        assert got == want == _general(s._selectors, pkt), (pkt, got, want)
