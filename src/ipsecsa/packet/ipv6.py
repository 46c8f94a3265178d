"""IPv6 header and extension-header chain (RFC 8200), with the AH view of RFC 4302 §3.3.3.1.2.

One walk of the chain answers everything the data path asks of an IPv6 packet: where the upper
layer starts, whether it is a fragment, and where ESP/AH goes in transport mode. The walk is
bounded (:data:`MAX_EXTENSION_HEADERS`) so that a crafted chain costs O(1) work.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ipsecsa.errors import ConfigError, DropReason, MalformedPacket

# --- specification constants: IANA "Assigned Internet Protocol Numbers" / RFC 8200 --------------
HOPOPTS = 0
TCP = 6
UDP = 17
ROUTING = 43
FRAGMENT = 44
ESP = 50
AH = 51
ICMPV6 = 58
NONE = 59
DSTOPTS = 60
MOBILITY = 135
HIP = 139
SHIM6 = 140

IP_VERSION_6 = 6
IPV6_HEADER_LEN = 40
IPV6_ADDR_LEN = 16
#: Byte offset of the Next Header field in the fixed header.
NEXT_HEADER_OFFSET = 6
HOP_LIMIT_OFFSET = 7
DST_OFFSET = 24
FRAGMENT_HEADER_LEN = 8
#: Options whose type has this bit "may change en route" (RFC 8200 §4.2); AH zeroes their data.
OPT_MAY_CHANGE = 0x20
OPT_PAD1 = 0
#: Routing types whose final-destination form can be predicted: Type 0 (RFC 2460, deprecated by
#: RFC 5095 but still parseable) and Type 2 (Mobile IPv6, RFC 6275 §6.4).
ROUTING_TYPE_0 = 0
ROUTING_TYPE_2 = 2
MAX_PAYLOAD_LENGTH = 0xFFFF

# --- implementation constants --------------------------------------------------------------------
#: Upper bound on extension headers walked; real packets carry a handful.
MAX_EXTENSION_HEADERS = 16
#: Headers that the walk steps over (AH only when not stopping at IPsec).
_WALKED = frozenset({HOPOPTS, ROUTING, FRAGMENT, DSTOPTS})
#: Headers that ESP/AH is inserted *after* in transport mode (RFC 4303 §3.1.1, RFC 4302 §3.1.1).
#: A Destination Options header that precedes a Routing header is covered because the Routing
#: header that follows it moves the insertion point past both.
_BEFORE_IPSEC = frozenset({HOPOPTS, ROUTING, FRAGMENT})

_FIXED = struct.Struct("!IHBB16s16s")
_FRAG = struct.Struct("!BxHI")
_ROUTING = struct.Struct("!BBBB")


@dataclass(slots=True)
class IPv6Chain:
    """Result of walking an IPv6 packet's header chain.

    ``headers`` lists ``(type, offset, length)`` of every extension header walked.
    ``upper_offset``/``upper_protocol``: first header not walked (upper layer, or ESP/AH when
    stopping at IPsec; for a non-first fragment the fragment data and the Fragment header's next
    header). ``insert_offset``: where ESP/AH goes in transport mode; ``insert_nh_offset``: the
    byte holding the next-header value that must then name ESP/AH (6 for the fixed header).
    ``fragment``: ``(offset in 8-octet units, more fragments, identification)`` or None.
    """

    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes
    headers: list[tuple[int, int, int]]
    upper_offset: int
    upper_protocol: int
    insert_offset: int
    insert_nh_offset: int
    fragment: tuple[int, bool, int] | None


def _header_length(buf: bytes | bytearray | memoryview, kind: int, off: int) -> int:
    """Length in bytes of the extension header of type ``kind`` at ``off`` (2 bytes readable)."""
    if kind == FRAGMENT:
        return FRAGMENT_HEADER_LEN
    if kind == AH:
        return (buf[off + 1] + 2) * 4  # RFC 4302 §2.2: in 32-bit words, minus 2
    return (buf[off + 1] + 1) * 8  # RFC 8200 §4.3: in 8-octet units, not counting the first 8


def _walk_options(
    buf: bytes | bytearray | memoryview, start: int, end: int
) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, offset, total_length)`` per option TLV in ``buf[start:end]``, validated."""
    i = start
    while i < end:
        kind = buf[i]
        if kind == OPT_PAD1:
            yield kind, i, 1
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedPacket(DropReason.MALFORMED, "IPv6 option without length octet")
        length = buf[i + 1] + 2
        if i + length > end:
            raise MalformedPacket(DropReason.MALFORMED, "IPv6 option overruns its header")
        yield kind, i, length
        i += length


def parse_ipv6_chain(buf: bytes | bytearray | memoryview, stop_at_ipsec: bool = True) -> IPv6Chain:
    """Parse the fixed header and walk the extension headers of the IPv6 packet in ``buf``.

    Bytes beyond ``40 + payload_length`` are ignored (link padding). Jumbograms (payload length
    0 with a Hop-by-Hop header, RFC 2675) are refused as MALFORMED: IPsec SAs here never carry
    them. Hop-by-Hop anywhere but first (RFC 8200 §4.1), two Fragment headers, or more than
    :data:`MAX_EXTENSION_HEADERS` headers are MALFORMED; a header that runs past the payload is
    TRUNCATED. With ``stop_at_ipsec`` false, AH is stepped over (ESP never can be: it is
    encrypted).
    """
    n = len(buf)
    if n < IPV6_HEADER_LEN:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv6 header shorter than 40 bytes")
    vtf, plen, nh, hlim, src, dst = _FIXED.unpack_from(buf, 0)
    if vtf >> 28 != IP_VERSION_6:
        raise MalformedPacket(DropReason.MALFORMED, "IP version is not 6")
    if plen == 0 and nh == HOPOPTS:
        raise MalformedPacket(DropReason.MALFORMED, "IPv6 jumbogram not supported")
    end = IPV6_HEADER_LEN + plen
    if end > n:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv6 payload length beyond buffer")
    headers: list[tuple[int, int, int]] = []
    off = IPV6_HEADER_LEN
    cur = nh
    insert_offset = IPV6_HEADER_LEN
    insert_nh_offset = NEXT_HEADER_OFFSET
    fragment: tuple[int, bool, int] | None = None
    while cur in _WALKED or (cur == AH and not stop_at_ipsec):
        if len(headers) >= MAX_EXTENSION_HEADERS:
            raise MalformedPacket(DropReason.MALFORMED, "too many IPv6 extension headers")
        if cur == HOPOPTS and off != IPV6_HEADER_LEN:
            raise MalformedPacket(DropReason.MALFORMED, "Hop-by-Hop header not first")
        if off + 8 > end:
            raise MalformedPacket(DropReason.TRUNCATED, "IPv6 extension header beyond payload")
        length = _header_length(buf, cur, off)
        if off + length > end:
            raise MalformedPacket(DropReason.TRUNCATED, "IPv6 extension header beyond payload")
        nxt = buf[off]
        if cur == HOPOPTS or cur == DSTOPTS:
            for _ in _walk_options(buf, off + 2, off + length):
                pass
        elif cur == FRAGMENT:
            if fragment is not None:
                raise MalformedPacket(DropReason.MALFORMED, "two IPv6 Fragment headers")
            _, offset_flags, ident = _FRAG.unpack_from(buf, off)
            fragment = (offset_flags >> 3, bool(offset_flags & 1), ident)
        headers.append((cur, off, length))
        if cur in _BEFORE_IPSEC:
            insert_offset = off + length
            insert_nh_offset = off
        off += length
        cur = nxt
        if fragment is not None and fragment[0] != 0:
            break  # what follows a non-first fragment's header is fragment data, not headers
    return IPv6Chain(
        traffic_class=(vtf >> 20) & 0xFF,
        flow_label=vtf & 0xFFFFF,
        payload_length=plen,
        next_header=nh,
        hop_limit=hlim,
        src=src,
        dst=dst,
        headers=headers,
        upper_offset=off,
        upper_protocol=cur,
        insert_offset=insert_offset,
        insert_nh_offset=insert_nh_offset,
        fragment=fragment,
    )


def build_ipv6_header(
    *,
    traffic_class: int,
    flow_label: int,
    payload_length: int,
    next_header: int,
    hop_limit: int,
    src: bytes,
    dst: bytes,
) -> bytes:
    """Serialise the 40-byte IPv6 fixed header. Bad arguments raise :class:`ConfigError`."""
    if len(src) != IPV6_ADDR_LEN or len(dst) != IPV6_ADDR_LEN:
        raise ConfigError("src", "IPv6 addresses must be 16 bytes")
    if not 0 <= payload_length <= MAX_PAYLOAD_LENGTH:
        raise ConfigError("payload_length", "must fit 16 bits")
    if not 0 <= flow_label <= 0xFFFFF or not 0 <= traffic_class <= 0xFF:
        raise ConfigError("flow_label", "flow label is 20 bits and traffic class 8 bits")
    return _FIXED.pack(
        (IP_VERSION_6 << 28) | (traffic_class << 20) | flow_label,
        payload_length,
        next_header & 0xFF,
        hop_limit & 0xFF,
        src,
        dst,
    )


def _rewrite_routing(out: bytearray, off: int, length: int) -> None:
    """Rewrite the routing header at ``off`` (and the destination address) in ``out`` as they
    will look at the final destination (RFC 4302 §3.3.3.1.2 / Appendix A.2)."""
    _, hdr_ext_len, rtype, seg_left = _ROUTING.unpack_from(out, off)
    if seg_left == 0:
        return  # already in final form: nothing will change en route
    if rtype not in (ROUTING_TYPE_0, ROUTING_TYPE_2):
        raise MalformedPacket(DropReason.MALFORMED, "routing type with unpredictable final form")
    if hdr_ext_len % 2:
        raise MalformedPacket(DropReason.MALFORMED, "routing header length not whole addresses")
    count = hdr_ext_len // 2
    if seg_left > count or (rtype == ROUTING_TYPE_2 and count != 1):
        raise MalformedPacket(DropReason.MALFORMED, "routing segments left exceeds addresses")
    base = off + 8
    addrs = [bytes(out[base + 16 * i : base + 16 * (i + 1)]) for i in range(count)]
    visited = count - seg_left
    # The full path in order: addresses already swapped in, the current destination, the rest.
    path = addrs[:visited] + [bytes(out[DST_OFFSET : DST_OFFSET + 16])] + addrs[visited:]
    out[DST_OFFSET : DST_OFFSET + 16] = path[count]
    out[base : base + 16 * count] = b"".join(path[:count])
    out[off + 3] = 0


def ipv6_ah_zero_fixed(header: bytes | bytearray | memoryview) -> bytes:
    """The 40-byte fixed IPv6 header at the start of ``header`` as AH covers it: traffic class,
    flow label and hop limit zeroed (RFC 4302 §3.3.3.1.2). The fast path of
    :func:`ipv6_ah_zero_mutable` when no extension header precedes AH; nothing is validated."""
    return b"".join((bytes((header[0] & 0xF0, 0, 0, 0)), header[4:7], b"\x00", header[8:40]))


def ipv6_ah_zero_mutable(buf: bytes | bytearray | memoryview, upto: int) -> bytes:
    """Copy of ``buf[:upto]`` (fixed header and extension headers before AH) as AH covers it.

    RFC 4302 §3.3.3.1.2: traffic class, flow label and hop limit zeroed; data of Hop-by-Hop and
    Destination options whose type has the "may change en route" bit zeroed (type and length
    kept); a Routing header of Type 0 or 2 with segments left rewritten as it will appear at the
    final destination, the fixed header's destination address included. Routing headers of other
    types with segments left non-zero cannot be predicted and raise MALFORMED, as does an
    ``upto`` that does not fall on a header boundary. Payload length and next-header fields are
    left as they are: the caller has already set them to their post-AH values.
    """
    if upto < IPV6_HEADER_LEN or upto > len(buf):
        raise MalformedPacket(DropReason.TRUNCATED, "AH offset outside the packet")
    if upto == IPV6_HEADER_LEN:
        return ipv6_ah_zero_fixed(buf)
    out = bytearray(buf[:upto])
    if out[0] >> 4 != IP_VERSION_6:
        raise MalformedPacket(DropReason.MALFORMED, "IP version is not 6")
    out[0] &= 0xF0
    out[1] = out[2] = out[3] = 0
    out[HOP_LIMIT_OFFSET] = 0
    off = IPV6_HEADER_LEN
    cur = out[NEXT_HEADER_OFFSET]
    walked = 0
    while off < upto:
        if cur not in _WALKED:
            raise MalformedPacket(DropReason.MALFORMED, "unexpected header before AH")
        walked += 1
        if walked > MAX_EXTENSION_HEADERS:
            raise MalformedPacket(DropReason.MALFORMED, "too many IPv6 extension headers")
        if off + 8 > upto:
            raise MalformedPacket(DropReason.TRUNCATED, "extension header crosses AH offset")
        length = _header_length(out, cur, off)
        if off + length > upto:
            raise MalformedPacket(DropReason.TRUNCATED, "extension header crosses AH offset")
        if cur == HOPOPTS or cur == DSTOPTS:
            for kind, opt, opt_len in _walk_options(out, off + 2, off + length):
                if kind & OPT_MAY_CHANGE:
                    out[opt + 2 : opt + opt_len] = bytes(opt_len - 2)
        elif cur == ROUTING:
            _rewrite_routing(out, off, length)
        cur = out[off]
        off += length
    return bytes(out)


__all__ = [
    "IPv6Chain",
    "build_ipv6_header",
    "ipv6_ah_zero_mutable",
    "parse_ipv6_chain",
]
