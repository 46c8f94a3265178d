"""Outer headers for tunnel mode and UDP encapsulation, prepared once per SA.

The outer IPv4 header's checksum is computed from a sum precomputed at SA install time (addresses,
TTL, protocol) plus the few words that change per packet (TOS, length, identification, flags), so
no header is ever re-parsed or summed byte by byte on the per-packet path.

Tunnel-mode header rules (RFC 4301 §5.1.2, RFC 6040):
* DSCP: copied from the inner header (default) or set to a fixed value;
* ECN: RFC 6040 *normal mode* on encapsulation — the outer ECN field is a copy of the inner one;
  on decapsulation :func:`ipsecsa.packet.ecn.ecn_decapsulate` combines them;
* DF (IPv4 outer): copied from an IPv4 inner header, or forced set/clear. For an IPv6 inner packet
  "copy" sets DF, since IPv6 is never fragmented en route (our choice, as Linux does);
* TTL / hop limit: a per-SA constant (default 64); the inner TTL is not touched here (forwarding
  decrements it, not IPsec);
* IPv6 flow label: copied from an IPv6 inner header, 0 for IPv4 inner (RFC 6437 allows either).
"""

from __future__ import annotations

import struct

from ipsecsa.errors import DropReason
from ipsecsa.packet.ipv4 import DF, HEADER_WORDS, IPIP, IPV6_IN_IP

_V6FIRST = struct.Struct("!IHBB")


def ident_start(spi: int) -> int:
    """Where an SA's outer IPv4 Identification counter starts: the SPI scrambled by a
    multiplicative hash (Knuth's 2654435761). Parallel SAs to one peer, or the old and new SA of
    a rekey, then do not send the same Identification sequence in lockstep, whose fragments
    could meet in the peer's reassembly; and two objects of the same SA number alike."""
    return ((spi * 2654435761) >> 16) & 0xFFFF


def inner_info(pkt: bytes) -> tuple[int, int, bool, int, int] | DropReason:
    """Tunnel mode, outbound: what the outer header and the ESP/AH next header take from the
    packet to protect, ``(length, tos, df, flow label, next header)``, or why it is refused.

    This is the reference statement of the rules; ``AhSA._out_tunnel`` calls it and
    ``EspSA._out_tunnel`` inlines the same checks on its hot path (a test holds the two equal):

    * fewer than 20 bytes: TRUNCATED; a version other than 4 or 6: MALFORMED;
    * IPv4: IHL below 5, or a total length beyond the buffer or below the header: MALFORMED;
      TOS and DF come from the header, flow label 0, next header 4 (IP-in-IP);
    * IPv6: fewer than 40 bytes: TRUNCATED; a payload length beyond the buffer: MALFORMED, as is
      a payload length of 0 with a Hop-by-Hop header next (an RFC 2675 jumbogram, unsupported);
      traffic class and flow label from the header, DF true (IPv6 is never fragmented en route),
      next header 41;
    * the length is the packet's own (IP total length, or 40 + payload length): bytes after it
      in the buffer are not part of the packet.
    """
    n = len(pkt)
    if n < 20:
        return DropReason.TRUNCATED
    first = pkt[0]
    version = first >> 4
    if version == 4:
        if first & 15 < 5:
            return DropReason.MALFORMED
        ilen = pkt[2] << 8 | pkt[3]
        if ilen > n or ilen < (first & 15) << 2:
            return DropReason.MALFORMED
        return ilen, pkt[1], bool(pkt[6] & 0x40), 0, IPIP
    if version == 6:
        if n < 40:
            return DropReason.TRUNCATED
        ilen = 40 + (pkt[4] << 8 | pkt[5])
        if ilen > n or (ilen == 40 and pkt[6] == 0):  # RFC 2675 jumbogram
            return DropReason.MALFORMED
        tc = (first & 15) << 4 | pkt[1] >> 4
        flow = (pkt[1] & 15) << 16 | pkt[2] << 8 | pkt[3]
        return ilen, tc, True, flow, IPV6_IN_IP
    return DropReason.MALFORMED


def _words(addr: bytes) -> int:
    """Sum of the 16-bit words of an address (for checksums)."""
    return sum(struct.unpack(f"!{len(addr) // 2}H", addr))


class OuterV4:
    """The outer IPv4 header of one SA."""

    __slots__ = (
        "_const",
        "_d1",
        "_d2",
        "_df_fixed",
        "_ident",
        "_s1",
        "_s2",
        "df_mode",
        "dscp",
        "dst",
        "proto",
        "src",
        "ttl",
    )

    def __init__(self, src: bytes, dst: bytes, proto: int, ttl: int, dscp: int | None,
                 df_mode: str, spi: int = 0) -> None:
        self.src, self.dst, self.proto, self.ttl = src, dst, proto, ttl
        self.dscp = dscp
        self.df_mode = df_mode
        #: DF decided once per SA: a fixed flags word, or None to copy the inner packet's DF.
        self._df_fixed = None if df_mode == "copy" else (DF if df_mode == "set" else 0)
        self._s1, self._s2 = struct.unpack("!HH", src)
        self._d1, self._d2 = struct.unpack("!HH", dst)
        self._const = (0x45 << 8) + (ttl << 8) + proto + _words(src) + _words(dst)
        self._ident = ident_start(spi)

    def build(self, payload_len: int, inner_tos: int, inner_df: bool) -> bytes:
        """The 20-byte header for ``payload_len`` bytes of payload."""
        tos = inner_tos if self.dscp is None else (self.dscp << 2) | (inner_tos & 3)
        ff = self._df_fixed
        if ff is None:
            ff = DF if inner_df else 0
        self._ident = ident = (self._ident + 1) & 0xFFFF
        total = payload_len + 20
        s = self._const + tos + total + ident + ff
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return HEADER_WORDS.pack(0x45, tos, total, ident, ff, self.ttl, self.proto, ~s & 0xFFFF,
                                 self._s1, self._s2, self._d1, self._d2)


class OuterV6:
    """The outer IPv6 header of one SA."""

    __slots__ = ("_tail", "dscp", "dst", "proto", "src", "ttl")

    def __init__(self, src: bytes, dst: bytes, proto: int, ttl: int, dscp: int | None) -> None:
        self.src, self.dst, self.proto, self.ttl = src, dst, proto, ttl
        self.dscp = dscp
        self._tail = src + dst

    def build(self, payload_len: int, inner_tc: int, flow_label: int) -> bytes:
        tc = inner_tc if self.dscp is None else (self.dscp << 2) | (inner_tc & 3)
        return _V6FIRST.pack((6 << 28) | (tc << 20) | flow_label, payload_len, self.proto,
                             self.ttl) + self._tail
