"""ECN across the IPsec tunnel boundary: RFC 6040 normal mode (which RFC 4301 §5.1.2 defers to).

Decapsulation is a lookup in RFC 6040 §4.2 Figure 4, kept as a table so that a test can walk
every cell and a reviewer can hold it against the RFC.
"""

from __future__ import annotations

# --- specification constants (RFC 3168 §5 codepoints) -------------------------------------------
NOT_ECT = 0
ECT1 = 1
ECT0 = 2
CE = 3
ECN_MASK = 0x03

#: RFC 6040 §4.2 Figure 4: (inner, outer) -> outgoing inner ECN, None = drop.
#: Rows are the arriving inner header, columns the arriving outer header.
DECAP_TABLE: dict[tuple[int, int], int | None] = {
    # inner Not-ECT: the endpoint cannot understand congestion marks; CE outer must drop.
    (NOT_ECT, NOT_ECT): NOT_ECT,
    (NOT_ECT, ECT0): NOT_ECT,
    (NOT_ECT, ECT1): NOT_ECT,
    (NOT_ECT, CE): None,
    (ECT0, NOT_ECT): ECT0,
    (ECT0, ECT0): ECT0,
    (ECT0, ECT1): ECT1,
    (ECT0, CE): CE,
    (ECT1, NOT_ECT): ECT1,
    (ECT1, ECT0): ECT1,
    (ECT1, ECT1): ECT1,
    (ECT1, CE): CE,
    (CE, NOT_ECT): CE,
    (CE, ECT0): CE,
    (CE, ECT1): CE,
    (CE, CE): CE,
}


def ecn_encapsulate(inner_ecn: int) -> int:
    """Outer ECN field for an inner one, RFC 6040 §4.1 normal mode: copied, CE included.

    (Compatibility mode, which clears it, exists only for legacy decapsulators; RFC 4301
    tunnels use normal mode.)
    """
    return inner_ecn & ECN_MASK


def ecn_decapsulate(outer_ecn: int, inner_ecn: int) -> int | None:
    """ECN field of the forwarded inner header, or None when RFC 6040 requires a drop."""
    return DECAP_TABLE[(inner_ecn & ECN_MASK, outer_ecn & ECN_MASK)]


__all__ = ["CE", "ECT0", "ECT1", "NOT_ECT", "ecn_decapsulate", "ecn_encapsulate"]


def set_ecn(packet: bytes, ecn: int) -> bytes:
    """``packet`` (IPv4 or IPv6) with its ECN field set to ``ecn``; an IPv4 header checksum is
    updated incrementally (RFC 1624: HC' = ~(~HC + ~m + m')), so nothing else is re-summed."""
    buf = bytearray(packet)
    if buf[0] >> 4 == 4:
        old = buf[0] << 8 | buf[1]
        buf[1] = (buf[1] & 0xFC) | ecn
        new = buf[0] << 8 | buf[1]
        csum = buf[10] << 8 | buf[11]
        s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        c = ~s & 0xFFFF
        buf[10], buf[11] = c >> 8, c & 0xFF
    else:
        buf[1] = (buf[1] & 0xCF) | (ecn << 4)
    return bytes(buf)
