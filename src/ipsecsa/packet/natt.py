"""UDP encapsulation of ESP for NAT traversal (RFC 3948): telling ESP, IKE and keepalives apart.

On port 4500 three things share one UDP flow; RFC 3948 §2 tells them apart by the first bytes
alone, so classification needs no state and runs before any SA lookup.
"""

from __future__ import annotations

import enum

# --- specification constants (RFC 3948) ----------------------------------------------------------
NATT_PORT = 4500
#: §2.2: four zero octets where an ESP SPI would be; SPI 0 is reserved, so no clash with ESP.
NON_ESP_MARKER = bytes(4)
#: §2.3: a NAT-keepalive is a single 0xFF octet.
KEEPALIVE = b"\xff"
#: An ESP header is at least SPI + sequence number (RFC 4303 §2).
ESP_HEADER_LEN = 8


class UdpKind(enum.Enum):
    """What a UDP payload on the NAT-T port is."""

    ESP = "esp"
    IKE = "ike"
    KEEPALIVE = "keepalive"
    MALFORMED = "malformed"


def classify_udp_payload(payload: bytes | bytearray | memoryview) -> UdpKind:
    """Classify a UDP payload per RFC 3948 §2: keepalive, IKE (non-ESP marker) or ESP.

    Anything else (empty, a single byte other than 0xFF, or 2-7 bytes without the marker: too
    short for an ESP header) is MALFORMED. Checking in this order means an ESP verdict always has
    a non-zero SPI.
    """
    n = len(payload)
    if n == 1:
        return UdpKind.KEEPALIVE if payload[0] == 0xFF else UdpKind.MALFORMED
    if n >= 4 and payload[:4] == NON_ESP_MARKER:
        return UdpKind.IKE
    if n >= ESP_HEADER_LEN:
        return UdpKind.ESP  # the first four bytes are non-zero here, i.e. a valid SPI
    return UdpKind.MALFORMED


__all__ = ["KEEPALIVE", "NATT_PORT", "NON_ESP_MARKER", "UdpKind", "classify_udp_payload"]
