"""How big an inner packet fits through an SA without the outer packet exceeding the path MTU.

The TUN is created with an MTU that leaves room for the ESP overhead of the SAs in use, so the
host sizes its packets (TCP MSS, path-MTU discovery) for the tunnel rather than for the wire; and a
packet that still does not fit (the administrator raised the TUN's MTU, or the path shrank) is
answered with an ICMP error when it may not be fragmented. Both need the same number: the largest
inner packet whose ESP packet fits the path, computed here from the SA's transform once per SA.
"""

from __future__ import annotations

from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.packet.natt import ESP_HEADER_LEN

# --- specification constants -------------------------------------------------------------------
IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
UDP_HEADER_LEN = 8
#: RFC 4303 §2.4: pad length and next header octets.
ESP_TRAILER_LEN = 2

# --- implementation constants ------------------------------------------------------------------
#: The outer MTU assumed when the route to the peer cannot be asked (Ethernet).
DEFAULT_PATH_MTU = 1500
#: Smallest TUN MTU we create: IPv4's minimum datagram (RFC 791).
MIN_TUN_MTU = 68


def outer_header_len(sa: SecurityAssociation) -> int:
    """Bytes in front of the ESP header on the wire: outer IP header and, for ESP-in-UDP, UDP."""
    ip = IPV6_HEADER_LEN if sa.config.src.version == 6 else IPV4_HEADER_LEN
    return ip + (UDP_HEADER_LEN if sa.config.encapsulation is not None else 0)


def max_inner(sa: SecurityAssociation, path_mtu: int) -> int:
    """The largest tunnel-mode inner packet whose ESP packet through ``sa`` fits ``path_mtu``.

    outer + ESP header + IV + align(inner + 2, block) + ICV <= path_mtu, where ``block`` is the
    cipher's alignment (at least 4, RFC 4303 §2.4). TFC padding only adds bytes to packets
    smaller than its target, so it lowers the limit only when the target is above it."""
    t = sa.transform  # type: ignore[attr-defined]
    block = max(t.block_size, 4)
    room = path_mtu - outer_header_len(sa) - ESP_HEADER_LEN - t.iv_len - t.icv_len
    limit = (room // block) * block - ESP_TRAILER_LEN
    tfc = sa.config.tfc_padding
    if tfc > limit:
        return 0
    return max(limit, 0)


def tun_mtu_for(sas: list[SecurityAssociation], path_mtu: int) -> int:
    """The TUN MTU that lets every packet through every outbound SA without outer fragmentation:
    the smallest :func:`max_inner` over them (the path MTU less a typical ESP-in-UDP overhead
    when there are none yet)."""
    if not sas:
        return max(MIN_TUN_MTU, path_mtu - 80)
    return max(MIN_TUN_MTU, min(max_inner(sa, path_mtu) for sa in sas))


__all__ = ["DEFAULT_PATH_MTU", "max_inner", "outer_header_len", "tun_mtu_for"]
