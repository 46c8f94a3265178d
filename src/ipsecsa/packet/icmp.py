"""ICMP errors a tunnel endpoint sends back to the host that gave it a packet too big for the tunnel.

A packet that, once protected, no longer fits the path and that must not be fragmented (IPv4 with
DF set; IPv6, which routers never fragment) is answered the way a router on the path would answer
it: ICMP "fragmentation needed" (RFC 792 type 3 code 4, with the next-hop MTU of RFC 1191 §4) or
ICMPv6 "packet too big" (RFC 4443 §3.2). The host's path-MTU discovery then lowers its packets.

Sans-IO: these functions take the offending packet and return the ICMP packet; where it goes (the
TUN it came from) is the caller's business. They return None for packets that must never be
answered with an ICMP error (RFC 1122 §3.2.2, RFC 4443 §2.4 (e)): ICMP errors themselves,
non-first fragments, and packets from unspecified, broadcast or multicast sources.
"""

from __future__ import annotations

import ipaddress
import struct

from ipsecsa.packet.checksum import fold16, internet_checksum, ones_sum, pseudo_header_sum

# --- specification constants -------------------------------------------------------------------
PROTO_ICMP = 1
PROTO_ICMPV6 = 58
#: RFC 792: destination unreachable / fragmentation needed and DF set.
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
#: RFC 792 types that are errors (never answered with another error, RFC 1122 §3.2.2).
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
#: RFC 4443 §3.2.
ICMPV6_PACKET_TOO_BIG = 2
#: RFC 4443 §2.1: types 0-127 are errors.
ICMPV6_FIRST_INFO_TYPE = 128
#: RFC 1812 §4.3.2.3: an ICMP error carries as much of the original as fits in 576 bytes.
ICMPV4_MAX_ERROR_LEN = 576
#: RFC 8200 §5 minimum link MTU; RFC 4443 §2.4 (c): an ICMPv6 error must not exceed it.
IPV6_MIN_MTU = 1280
#: RFC 791 minimum datagram every host must accept; the smallest next-hop MTU worth reporting
#: (RFC 1191 §4 plateaus start at 68).
IPV4_MIN_MTU = 68

# --- implementation constants ------------------------------------------------------------------
#: TTL / hop limit of the errors we originate.
ERROR_TTL = 64

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")


def _bad_source_v4(src: bytes) -> bool:
    a = ipaddress.IPv4Address(src)
    return a.is_unspecified or a.is_multicast or a == ipaddress.IPv4Address("255.255.255.255")


def frag_needed_v4(packet: bytes, mtu: int) -> bytes | None:
    """ICMP fragmentation-needed about ``packet`` (an IPv4 datagram), reporting next-hop ``mtu``.

    The error is addressed to the packet's source and comes *from its destination*: the tunnel
    endpoint has no address of its own on the TUN, and the destination is routed back through the
    TUN, so reverse-path filtering accepts it (the host's own address as a source would be a
    martian). This is our choice; a router would use its own interface address."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 15) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    frag_off = (packet[6] << 8 | packet[7]) & 0x1FFF
    if frag_off:  # only the first fragment is answered (RFC 1122 §3.2.2)
        return None
    proto = packet[9]
    if proto == PROTO_ICMP and (len(packet) <= ihl or packet[ihl] in ICMP_ERROR_TYPES):
        return None
    src, dst = packet[12:16], packet[16:20]
    if _bad_source_v4(src) or ipaddress.IPv4Address(dst).is_multicast:
        return None
    quoted = packet[:ICMPV4_MAX_ERROR_LEN - 20 - 8]
    mtu = max(IPV4_MIN_MTU, min(mtu, 0xFFFF))
    body = bytearray(struct.pack("!BBHHH", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu))
    body += quoted
    struct.pack_into("!H", body, 2, internet_checksum(body))
    total = 20 + len(body)
    hdr = bytearray(_V4.pack(0x45, 0, total, 0, 0, ERROR_TTL, PROTO_ICMP, 0, dst, src))
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr + body)


def packet_too_big_v6(packet: bytes, mtu: int) -> bytes | None:
    """ICMPv6 packet-too-big about ``packet`` (an IPv6 packet), reporting ``mtu`` (at least 1280).

    Addressed to the packet's source, from its destination (see :func:`frag_needed_v4`). Not sent
    about ICMPv6 errors or from the unspecified or a multicast source (RFC 4443 §2.4 (e))."""
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    src, dst = packet[8:24], packet[24:40]
    s = ipaddress.IPv6Address(src)
    if s.is_unspecified or s.is_multicast:
        return None
    if packet[6] == PROTO_ICMPV6 and len(packet) > 40 and packet[40] < ICMPV6_FIRST_INFO_TYPE:
        return None
    quoted = packet[:IPV6_MIN_MTU - 40 - 8]
    mtu = max(IPV6_MIN_MTU, mtu)
    body = bytearray(struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, mtu)) + quoted
    s_ = ones_sum(body, pseudo_header_sum(dst, src, PROTO_ICMPV6, len(body)))
    struct.pack_into("!H", body, 2, ~fold16(s_) & 0xFFFF)
    hdr = _V6.pack(6 << 28, len(body), PROTO_ICMPV6, ERROR_TTL, dst, src)
    return hdr + bytes(body)


__all__ = ["IPV4_MIN_MTU", "IPV6_MIN_MTU", "frag_needed_v4", "packet_too_big_v6"]
