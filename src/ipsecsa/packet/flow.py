"""The 5-tuple of an IP packet, for traffic-selector checks (RFC 4301 §4.4.1.1).

Ports are read for TCP, UDP, SCTP and UDP-Lite, which all put source and destination ports in
the first four bytes of their header; every other protocol gets ports 0 (ICMP type/code are
deliberately not mapped to ports here; selector code that wants them reads them itself).

A non-first fragment carries no transport header, so its ports are 0; RFC 4301 §7 has such
fragments matched by policy on addresses and protocol only ("OPAQUE" ports) or reassembled first.
For IPv6 the chain is walked to the upper layer and stops at ESP/AH: the flow of an IPsec packet
is its outer flow with protocol ESP or AH.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipsecsa.errors import DropReason, MalformedPacket
from ipsecsa.packet.ipv4 import SCTP, TCP, UDP, UDPLITE, parse_ipv4
from ipsecsa.packet.ipv6 import IPV6_HEADER_LEN, parse_ipv6_chain

#: Protocols whose header starts with 16-bit source and destination ports.
PORTED_PROTOCOLS = frozenset({TCP, UDP, SCTP, UDPLITE})

_PORTS = struct.Struct("!HH")


@dataclass(slots=True, frozen=True)
class Flow:
    """Selector view of a packet; addresses are 4 or 16 raw bytes. Hashable, for lookups."""

    version: int
    src: bytes
    dst: bytes
    protocol: int
    sport: int
    dport: int


def flow_of(packet: bytes | bytearray | memoryview) -> Flow:
    """Flow of an IPv4 or IPv6 packet; :class:`MalformedPacket` for anything else or garbage.

    A first fragment or unfragmented packet of a ported protocol too short to hold the ports
    is TRUNCATED.
    """
    if not packet:
        raise MalformedPacket(DropReason.TRUNCATED, "empty packet")
    version = packet[0] >> 4
    if version == 4:
        hdr = parse_ipv4(packet)
        proto = hdr.protocol
        start, end = hdr.header_length, hdr.total_length
        first = hdr.frag_offset == 0
        src, dst = hdr.src, hdr.dst
    elif version == 6:
        chain = parse_ipv6_chain(packet)
        proto = chain.upper_protocol
        start, end = chain.upper_offset, IPV6_HEADER_LEN + chain.payload_length
        first = chain.fragment is None or chain.fragment[0] == 0
        src, dst = chain.src, chain.dst
    else:
        raise MalformedPacket(DropReason.MALFORMED, "IP version is neither 4 nor 6")
    sport = dport = 0
    if first and proto in PORTED_PROTOCOLS:
        if start + _PORTS.size > end:
            raise MalformedPacket(DropReason.TRUNCATED, "transport header too short for ports")
        sport, dport = _PORTS.unpack_from(packet, start)
    return Flow(version, src, dst, proto, sport, dport)


__all__ = ["PORTED_PROTOCOLS", "Flow", "flow_of"]
