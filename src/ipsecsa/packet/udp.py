"""UDP (RFC 768; checksum over IPv6 per RFC 8200 §8.1) for UDP-encapsulated ESP (RFC 3948)."""

from __future__ import annotations

import struct

from ipsecsa.errors import ConfigError, DropReason, MalformedPacket
from ipsecsa.packet.checksum import fold16, ones_sum, pseudo_header_sum
from ipsecsa.packet.ipv4 import TCP, UDP

# --- specification constants ---------------------------------------------------------------------
UDP_PROTOCOL = UDP
#: Offset of the checksum field in the TCP header (RFC 9293 §3.1).
TCP_CHECKSUM_OFFSET = 16
UDP_HEADER_LEN = 8
UDP_MAX_LENGTH = 0xFFFF
UDP_CHECKSUM_OFFSET = 6
#: RFC 768: a computed checksum of zero is transmitted as all ones (zero means "no checksum").
UDP_CHECKSUM_ZERO_AS = 0xFFFF

UDP_HEADER = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")


def parse_udp(buf: bytes | bytearray | memoryview, offset: int) -> tuple[int, int, int, int]:
    """Return ``(sport, dport, length, checksum)`` of the UDP header at ``offset``.

    The length field must cover the header and fit in ``buf``; bytes after the datagram (IP
    payload beyond the UDP length) are the caller's to reject or ignore. The checksum is returned,
    not verified: NAT-T ESP may legitimately carry a zero checksum over IPv4 (RFC 3948 §2.1).
    """
    if offset < 0 or offset + UDP_HEADER_LEN > len(buf):
        raise MalformedPacket(DropReason.TRUNCATED, "UDP header beyond buffer")
    sport, dport, length, checksum = UDP_HEADER.unpack_from(buf, offset)
    if length < UDP_HEADER_LEN:
        raise MalformedPacket(DropReason.MALFORMED, "UDP length below 8")
    if offset + length > len(buf):
        raise MalformedPacket(DropReason.TRUNCATED, "UDP length beyond buffer")
    return sport, dport, length, checksum


def udp_checksum(src: bytes, dst: bytes, udp_segment: bytes | bytearray | memoryview) -> int:
    """The checksum that belongs in ``udp_segment`` (header + payload) between ``src``/``dst``.

    The segment's own checksum field is ignored (treated as zero), so this serves both to fill a
    new header and to verify a received one by comparison. A computed 0 is returned as 0xFFFF
    (RFC 768). The pseudo-header length is ``len(udp_segment)``.
    """
    seg = memoryview(udp_segment)
    if len(seg) < UDP_HEADER_LEN:
        raise MalformedPacket(DropReason.TRUNCATED, "UDP segment shorter than its header")
    total = pseudo_header_sum(src, dst, UDP_PROTOCOL, len(seg))
    # Sum the header around the checksum field, then the payload, instead of copying the segment.
    total = ones_sum(seg[:UDP_CHECKSUM_OFFSET], total)
    total = ones_sum(seg[UDP_HEADER_LEN:], total)
    result = ~total & 0xFFFF
    return result or UDP_CHECKSUM_ZERO_AS


def build_udp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes | bytearray | memoryview,
    checksum: bool = True,
) -> bytes:
    """UDP header + ``payload``. Over IPv4, ``checksum=False`` sends 0 (RFC 3948 §2.1 allows it
    for ESP-in-UDP); over IPv6 the checksum is always computed (RFC 8200 §8.1)."""
    length = UDP_HEADER_LEN + len(payload)
    if length > UDP_MAX_LENGTH:
        raise ConfigError("payload", "UDP datagram would exceed 65535 bytes")
    segment = bytearray(length)
    UDP_HEADER.pack_into(segment, 0, sport, dport, length, 0)
    segment[UDP_HEADER_LEN:] = payload
    if checksum or len(src) != 4:
        struct.pack_into("!H", segment, UDP_CHECKSUM_OFFSET, udp_checksum(src, dst, segment))
    return bytes(segment)


def fix_l4_checksum(src: bytes, dst: bytes, proto: int, segment: bytes) -> bytes:
    """Recompute a TCP/UDP checksum over the addresses the packet now carries.

    ``segment`` is the TCP (``proto`` 6) or UDP (any other ``proto``; callers pass 17) header and
    payload; ``src``/``dst`` are the 4- or 16-byte addresses of the pseudo header. This is the
    RFC 3948 §3.1.2 fix-up after UDP-encapsulated transport-mode ESP: a NAT changed the addresses
    the transport checksum covered. A segment too short to hold its checksum field is returned
    unchanged, and so is an IPv4 UDP segment sent without a checksum (zero); a computed UDP
    checksum of zero is sent as 0xFFFF (RFC 768)."""
    off = TCP_CHECKSUM_OFFSET if proto == TCP else UDP_CHECKSUM_OFFSET
    if len(segment) < off + 2:
        return segment
    if proto == UDP and len(src) == 4 and segment[6:8] == b"\x00\x00":
        return segment  # IPv4 UDP without checksum stays without
    seg = bytearray(segment)
    seg[off:off + 2] = b"\x00\x00"
    s = ones_sum(seg, pseudo_header_sum(src, dst, proto, len(seg)))
    c = ~fold16(s) & 0xFFFF
    if proto == UDP and c == 0:
        c = UDP_CHECKSUM_ZERO_AS
    _U16.pack_into(seg, off, c)
    return bytes(seg)


__all__ = ["UDP_HEADER", "build_udp", "fix_l4_checksum", "parse_udp", "udp_checksum"]
