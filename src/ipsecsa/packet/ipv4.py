"""IPv4 header codec (RFC 791) and the AH mutable-field zeroing of RFC 4302 §3.3.3.1.1.

Parsing validates everything a later stage would otherwise trip over (version, IHL, total length,
option TLV lengths) so that the data path can index the buffer without further checks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ipsecsa.errors import ConfigError, DropReason, MalformedPacket
from ipsecsa.packet.checksum import internet_checksum, ones_sum

# --- specification constants: IANA "Assigned Internet Protocol Numbers" -------------------------
ICMP = 1
IPIP = 4
TCP = 6
UDP = 17
IPV6_IN_IP = 41
ESP = 50
AH = 51
ICMPV6 = 58
NONE = 59
SCTP = 132
UDPLITE = 136

# --- specification constants: RFC 791 ------------------------------------------------------------
IP_VERSION_4 = 4
#: Minimum Internet Header Length, in 32-bit words (RFC 791 §3.1).
IHL_MIN = 5
IPV4_MIN_HEADER_LEN = IHL_MIN * 4
IPV4_MAX_HEADER_LEN = 15 * 4
IPV4_MAX_TOTAL_LENGTH = 0xFFFF
#: Flags field bits as they sit in the 16-bit flags+fragment-offset word.
FLAG_RESERVED = 0x8000
DF = 0x4000
MF = 0x2000
FRAG_OFFSET_MASK = 0x1FFF
#: Offset of the header checksum inside the header.
CHECKSUM_OFFSET = 10

#: IPv4 option types (full type octet: copy flag, class, number).
OPT_EOL = 0
OPT_NOP = 1
OPT_RECORD_ROUTE = 7
OPT_TIMESTAMP = 68
OPT_SECURITY = 130
OPT_LSRR = 131
OPT_EXTENDED_SECURITY = 133
OPT_COMMERCIAL_SECURITY = 134
OPT_SSRR = 137
OPT_ROUTER_ALERT = 148
OPT_SDMDD = 149  # Sender Directed Multi-Destination Delivery (RFC 1770)

#: RFC 4302 Appendix A.1 "IMMUTABLE -- included in ICV calculation". Every other option
#: (mutable, experimental, superseded, unknown) is zeroed as a whole, type and length included
#: (RFC 4302 §3.3.3.1.1.2: "the entire option is zeroed").
AH_IMMUTABLE_OPTIONS = frozenset(
    {
        OPT_EOL,
        OPT_NOP,
        OPT_SECURITY,
        OPT_EXTENDED_SECURITY,
        OPT_COMMERCIAL_SECURITY,
        OPT_ROUTER_ALERT,
        OPT_SDMDD,
    }
)

# --- implementation constants --------------------------------------------------------------------
_FIXED = struct.Struct("!BBHHHBBH4s4s")
_FIXED_NO_CSUM = struct.Struct("!BBHHHBB")  # first 10 bytes, up to the checksum
#: The 20-byte fixed header as twelve numbers: version/IHL, TOS, total length, identification,
#: flags/fragment offset, TTL, protocol, checksum, then source and destination as two 16-bit
#: words each, so that a header checksum can be summed from the unpacked fields (data path).
HEADER_WORDS = struct.Struct("!BBHHHBBHHHHH")
_U16 = struct.Struct("!H")


@dataclass(slots=True)
class IPv4Header:
    """A parsed IPv4 header. ``flags`` holds the 3 flag bits (``DF``/``MF`` positions, i.e. the
    16-bit word masked with 0xE000) and ``frag_offset`` the offset in 8-octet units, so that
    ``flags | frag_offset`` is the wire word."""

    tos: int
    total_length: int
    ident: int
    flags: int
    frag_offset: int
    ttl: int
    protocol: int
    checksum: int
    src: bytes
    dst: bytes
    options: bytes

    @property
    def header_length(self) -> int:
        """Header length in bytes (IHL * 4)."""
        return IPV4_MIN_HEADER_LEN + len(self.options)


def _walk_options(
    options: bytes | bytearray | memoryview, base: int = 0
) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, start, length)`` per option, validating the TLV structure.

    Yields EOL and stops there: what follows EOL is padding (RFC 791). NOP has length 1.
    """
    i = 0
    n = len(options)
    while i < n:
        kind = options[i]
        if kind == OPT_EOL:
            yield kind, base + i, 1
            return
        if kind == OPT_NOP:
            yield kind, base + i, 1
            i += 1
            continue
        if i + 1 >= n:
            raise MalformedPacket(DropReason.MALFORMED, "IPv4 option without length octet")
        length = options[i + 1]
        if length < 2 or i + length > n:
            raise MalformedPacket(DropReason.MALFORMED, "IPv4 option length out of range")
        yield kind, base + i, length
        i += length


def parse_ipv4(buf: bytes | bytearray | memoryview) -> IPv4Header:
    """Parse and validate the IPv4 header at the start of ``buf``.

    Bytes beyond ``total_length`` are allowed (link-layer padding); the caller slices with
    ``total_length``. The checksum is *not* verified here (see :func:`verify_ipv4_checksum`):
    inside a tunnel the outer integrity check is what matters, and callers decide.
    """
    n = len(buf)
    if n < IPV4_MIN_HEADER_LEN:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv4 header shorter than 20 bytes")
    ver_ihl, tos, total_length, ident, frag, ttl, proto, csum, src, dst = _FIXED.unpack_from(buf, 0)
    if ver_ihl >> 4 != IP_VERSION_4:
        raise MalformedPacket(DropReason.MALFORMED, "IP version is not 4")
    hlen = (ver_ihl & 0x0F) * 4
    if hlen < IPV4_MIN_HEADER_LEN:
        raise MalformedPacket(DropReason.MALFORMED, "IPv4 IHL below 5")
    if hlen > n:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv4 header longer than buffer")
    if total_length < hlen:
        raise MalformedPacket(DropReason.MALFORMED, "IPv4 total length below header length")
    if total_length > n:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv4 total length beyond buffer")
    options = bytes(buf[IPV4_MIN_HEADER_LEN:hlen])
    for _ in _walk_options(options):
        pass
    return IPv4Header(
        tos=tos,
        total_length=total_length,
        ident=ident,
        flags=frag & 0xE000,
        frag_offset=frag & FRAG_OFFSET_MASK,
        ttl=ttl,
        protocol=proto,
        checksum=csum,
        src=src,
        dst=dst,
        options=options,
    )


def build_ipv4_header(
    *,
    tos: int,
    total_length: int,
    ident: int,
    flags: int,
    frag_offset: int,
    ttl: int,
    protocol: int,
    src: bytes,
    dst: bytes,
    options: bytes = b"",
) -> bytes:
    """Serialise an IPv4 header with a correct checksum.

    ``options`` must already be padded to a multiple of 4 bytes (padding is a choice of the
    caller: EOL or NOP). Invalid arguments are caller mistakes and raise :class:`ConfigError`.
    """
    if len(options) % 4 or len(options) > IPV4_MAX_HEADER_LEN - IPV4_MIN_HEADER_LEN:
        raise ConfigError("options", "must be a multiple of 4 bytes and at most 40 bytes")
    if len(src) != 4 or len(dst) != 4:
        raise ConfigError("src", "IPv4 addresses must be 4 bytes")
    hlen = IPV4_MIN_HEADER_LEN + len(options)
    if not hlen <= total_length <= IPV4_MAX_TOTAL_LENGTH:
        raise ConfigError("total_length", "must cover the header and fit 16 bits")
    if flags & ~0xE000 & 0xFFFF or flags < 0 or not 0 <= frag_offset <= FRAG_OFFSET_MASK:
        raise ConfigError("flags", "flags must be DF/MF bits and frag_offset 13 bits")
    header = bytearray(hlen)
    _FIXED.pack_into(
        header,
        0,
        (IP_VERSION_4 << 4) | (hlen // 4),
        tos & 0xFF,
        total_length,
        ident & 0xFFFF,
        flags | frag_offset,
        ttl & 0xFF,
        protocol & 0xFF,
        0,
        src,
        dst,
    )
    header[IPV4_MIN_HEADER_LEN:] = options
    _U16.pack_into(header, CHECKSUM_OFFSET, internet_checksum(header))
    return bytes(header)


def verify_ipv4_checksum(header: bytes | bytearray | memoryview) -> bool:
    """True if the header checksum of the IPv4 header at the start of ``header`` is correct.

    Only the IHL-long header is summed, so a whole packet may be passed. Garbage that has no
    readable IHL simply fails verification.
    """
    if len(header) < IPV4_MIN_HEADER_LEN:
        return False
    hlen = (header[0] & 0x0F) * 4
    if hlen < IPV4_MIN_HEADER_LEN or hlen > len(header):
        return False
    return internet_checksum(header[:hlen]) == 0


def ipv4_ah_zero_mutable(header: bytes | bytearray | memoryview) -> bytes:
    """Copy of ``header`` with the fields AH must not cover set to zero (RFC 4302 §3.3.3.1.1).

    Zeroed: TOS, flags + fragment offset, TTL, header checksum, and every option that RFC 4302
    Appendix A.1 does not list as immutable (as a whole: type, length and data). ``header`` may be
    the IPv4 header alone or a whole packet; the result has the same length and only the IHL-long
    header is changed. Raises :class:`MalformedPacket` if the header or its options are invalid.
    """
    n = len(header)
    if n < IPV4_MIN_HEADER_LEN:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv4 header shorter than 20 bytes")
    if header[0] >> 4 != IP_VERSION_4:
        raise MalformedPacket(DropReason.MALFORMED, "IP version is not 4")
    hlen = (header[0] & 0x0F) * 4
    if hlen < IPV4_MIN_HEADER_LEN:
        raise MalformedPacket(DropReason.MALFORMED, "IPv4 IHL below 5")
    if hlen > n:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv4 header longer than buffer")
    out = bytearray(header)
    out[1] = 0  # TOS (DSCP + ECN)
    out[6:8] = b"\x00\x00"  # flags + fragment offset
    out[8] = 0  # TTL
    out[10:12] = b"\x00\x00"  # header checksum
    for kind, start, length in _walk_options(out[IPV4_MIN_HEADER_LEN:hlen], IPV4_MIN_HEADER_LEN):
        if kind not in AH_IMMUTABLE_OPTIONS:
            out[start : start + length] = bytes(length)
    return bytes(out)


def ipv4_ah_zero_fixed(header: bytes | bytearray | memoryview) -> bytes:
    """The 20-byte fixed IPv4 header at the start of ``header`` as AH covers it: TOS, flags +
    fragment offset, TTL and header checksum zeroed (RFC 4302 §3.3.3.1.1.1).

    The fast path of :func:`ipv4_ah_zero_mutable` for a header without options: nothing is
    validated, only bytes 0..19 are read, and the result is always 20 bytes. Used by the AH data
    path (:mod:`ipsecsa.datapath.ah`) and the NIC model (:mod:`ipsecsa.ndis.miniport`).
    """
    return b"".join((header[0:1], b"\x00", header[2:6], b"\x00\x00\x00", header[9:10],
                     b"\x00\x00", header[12:20]))


def ipv4_source_route_final(options: bytes | bytearray | memoryview) -> bytes | None:
    """The final destination of an IPv4 loose/strict source route option among ``options`` (the
    bytes between the 20-byte fixed header and the end of the IHL-long header), or None.

    RFC 4302 §3.3.3.1.1.1: with source routing the destination address is "mutable but
    predictable"; a sender enters the value it will have at the final destination, the route's
    last address, into the ICV. Only an LSRR/SSRR option holding at least one address counts; the
    first one found decides. Raises :class:`MalformedPacket` if the option TLVs are invalid.
    """
    for kind, start, length in _walk_options(options):
        if kind in (OPT_LSRR, OPT_SSRR) and length >= 7:
            return bytes(options[start + length - 4:start + length])
    return None


__all__ = [
    "DF",
    "HEADER_WORDS",
    "MF",
    "IPv4Header",
    "build_ipv4_header",
    "ipv4_ah_zero_fixed",
    "ipv4_ah_zero_mutable",
    "ipv4_source_route_final",
    "parse_ipv4",
    "verify_ipv4_checksum",
]


def header_checksum_ok(packet: bytes | bytearray | memoryview, header_length: int) -> bool:
    """Whether the IPv4 header ``packet[:header_length]`` sums to 0xFFFF (RFC 791/1071): the
    receive-side check, cheaper than recomputing and comparing the checksum field."""
    return ones_sum(packet[:header_length]) == 0xFFFF
