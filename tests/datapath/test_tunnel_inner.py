"""Tunnel mode, outbound: ``EspSA._out_tunnel`` inlines the inner-packet rules that
:func:`ipsecsa.datapath.tunnel.inner_info` states (and ``AhSA._out_tunnel`` calls). These tests
hold the inline copy equal to the reference on odd inner packets: the same drop reason, or the
same length, TOS/traffic class, DF, flow label and ESP next header.
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, Jumbo
from scapy.packet import Raw

from ipsecsa import SecurityAssociation
from ipsecsa.datapath.tunnel import inner_info
from ipsecsa.errors import DropReason

GCM_KEY = "00112233445566778899aabbccddeeff" + "cafebabe"
OUTER = {4: ("192.0.2.1", "198.51.100.7"), 6: ("2001:db8::1", "2001:db8:ffff::7")}


def _sa(direction: str, family: int) -> SecurityAssociation:
    src, dst = OUTER[family]
    return SecurityAssociation.from_dict({
        "spi": 0xC0000301, "protocol": "esp", "mode": "tunnel", "direction": direction,
        "src": src, "dst": dst, "encryption": {"algorithm": "aes-gcm-16", "key": GCM_KEY},
    })


def _v4(**kw) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2", **kw) / UDP(sport=1, dport=2) / Raw(b"x" * 9))


def _v6(**kw) -> bytes:
    return bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::2", **kw) / UDP(sport=1, dport=2)
                 / Raw(b"y" * 9))


def _set(pkt: bytes, off: int, value: bytes) -> bytes:
    return pkt[:off] + value + pkt[off + len(value):]


_V4 = _v4()
_V6 = _v6()
_JUMBO = bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::2", plen=0)
               / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=70000)]) / UDP() / Raw(b"z" * 8))

ODD_PACKETS = {
    "v4": _V4,
    "v4 with options, TOS and DF": _v4(tos=0xB9, flags="DF",
                                       options=[IPOption_Router_Alert()]),
    "v4 trailing bytes after total length": _V4 + b"\x00" * 7,
    "v4 short": _V4[:19],
    "v4 IHL 4": bytes([0x44]) + _V4[1:],
    "v4 IHL 15 beyond total length": bytes([0x4F]) + _V4[1:],
    "v4 total length beyond buffer": _set(_V4, 2, struct.pack("!H", len(_V4) + 1)),
    "v4 total length below header": _set(_V4, 2, struct.pack("!H", 19)),
    "v6": _V6,
    "v6 with flow label and traffic class": _v6(tc=0x6D, fl=0xABCDE),
    "v6 trailing bytes after payload length": _V6 + b"\x00" * 5,
    "v6 short": _V6[:39],
    "v6 payload length beyond buffer": _set(_V6, 4, struct.pack("!H", len(_V6) - 39)),
    "v6 jumbogram": _JUMBO,
    "v6 payload length 0, no next header": bytes(IPv6(src="2001:db8:1::1",
                                                      dst="2001:db8:2::2", nh=59)),
    "version 5": bytes([0x55]) + _V4[1:],
    "version 0": bytes(40),
    "empty": b"",
}


def _decrypt(inbound: SecurityAssociation, protected: bytes) -> tuple[int, bytes]:
    """(ESP next header, inner packet) of a tunnel-mode ESP packet with no TFC padding."""
    off = 20 if protected[0] >> 4 == 4 else 40
    tr = inbound.transform  # type: ignore[attr-defined]
    seq = struct.unpack_from("!I", protected, off + 4)[0]
    plain = tr.open(protected[off:off + 8], seq, protected[off + 8:off + 8 + tr.iv_len],
                    protected[off + 8 + tr.iv_len:])
    assert plain is not None
    return plain[-1], plain[:len(plain) - 2 - plain[-2]]


def test_the_odd_packets_cover_each_outcome() -> None:
    outcomes = {r if isinstance(r, DropReason) else r[4]
                for r in map(inner_info, ODD_PACKETS.values())}
    assert outcomes == {DropReason.TRUNCATED, DropReason.MALFORMED, 4, 41}
    assert len(_JUMBO) > 40 and _JUMBO[4:7] == b"\x00\x00\x00"  # payload length 0, next HBH


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", sorted(ODD_PACKETS))
def test_esp_inline_parse_agrees_with_inner_info(name: str, family: int) -> None:
    pkt = ODD_PACKETS[name]
    out, inn = _sa("outbound", family), _sa("inbound", family)
    expected = inner_info(pkt)
    res = out.protect(pkt)
    if isinstance(expected, DropReason):
        assert res.packet is None and res.drop is expected
        return
    ilen, tos, df, flow, next_header = expected
    assert res.packet is not None, res.drop
    outer = res.packet
    if family == 4:
        assert outer[1] == tos  # dscp and ECN copied
        assert bool(outer[6] & 0x40) is df  # df "copy"
    else:
        assert ((outer[0] & 15) << 4 | outer[1] >> 4) == tos
        assert ((outer[1] & 15) << 16 | outer[2] << 8 | outer[3]) == flow
    nh, inner = _decrypt(inn, outer)
    assert nh == next_header
    assert inner == pkt[:ilen]
