"""ipsecsa.packet: sans-IO codecs for IPv4, IPv6 (+ extension headers), UDP, NAT-T framing, ECN,
flows, fragments and checksums. Bytes in, values or bytes out; bad input raises
:class:`ipsecsa.errors.MalformedPacket` and nothing else."""

from ipsecsa.packet.checksum import internet_checksum, ones_sum, pseudo_header_sum
from ipsecsa.packet.ecn import ecn_decapsulate, ecn_encapsulate
from ipsecsa.packet.flow import Flow, flow_of
from ipsecsa.packet.fragment import Reassembler, is_fragment
from ipsecsa.packet.ipv4 import (
    IPv4Header,
    build_ipv4_header,
    ipv4_ah_zero_mutable,
    parse_ipv4,
    verify_ipv4_checksum,
)
from ipsecsa.packet.ipv6 import IPv6Chain, build_ipv6_header, ipv6_ah_zero_mutable, parse_ipv6_chain
from ipsecsa.packet.natt import UdpKind, classify_udp_payload
from ipsecsa.packet.udp import build_udp, parse_udp, udp_checksum

__all__ = [
    "Flow",
    "IPv4Header",
    "IPv6Chain",
    "Reassembler",
    "UdpKind",
    "build_ipv4_header",
    "build_ipv6_header",
    "build_udp",
    "classify_udp_payload",
    "ecn_decapsulate",
    "ecn_encapsulate",
    "flow_of",
    "internet_checksum",
    "ipv4_ah_zero_mutable",
    "ipv6_ah_zero_mutable",
    "is_fragment",
    "ones_sum",
    "parse_ipv4",
    "parse_ipv6_chain",
    "parse_udp",
    "pseudo_header_sum",
    "udp_checksum",
    "verify_ipv4_checksum",
]
