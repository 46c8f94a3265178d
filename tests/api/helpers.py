"""Shared builders for the Pythonic-API tests: SA descriptions (sa-format dicts) and packets
built by hand with struct (no ipsecsa code involved)."""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Any

A, B = "192.0.2.1", "198.51.100.2"
A6, B6 = "2001:db8::1", "2001:db8:1::2"


def sa(spi: int, src: str, dst: str, algorithm: str = "chacha20-poly1305", key_len: int = 36,
       **extra: Any) -> dict[str, Any]:
    """An ESP SA description with a fresh random key."""
    d: dict[str, Any] = {"spi": spi, "protocol": "esp", "src": src, "dst": dst,
                         "encryption": {"algorithm": algorithm, "key": os.urandom(key_len).hex()}}
    d.update(extra)
    return d


def pair(spi_ab: int = 0x1001, spi_ba: int = 0x2002, a: str = A, b: str = B,
         **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(A->B, B->A): A's outbound is B's inbound and the other way round."""
    return sa(spi_ab, a, b, **extra), sa(spi_ba, b, a, **extra)


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp4(src: str, dst: str, payload: bytes = b"hello", sport: int = 5000,
         dport: int = 6000, ident: int = 1) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0, allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + udp


def udp6(src: str, dst: str, payload: bytes = b"hello", sport: int = 5000,
         dport: int = 6000) -> bytes:
    """An IPv6/UDP packet with its (mandatory) UDP checksum."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    length = 8 + len(payload)
    pseudo = s + d + struct.pack("!I3xB", length, 17)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    data = pseudo + udp + (b"\0" if len(udp) % 2 else b"")
    csum = _checksum(data) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return struct.pack("!IHBB16s16s", 6 << 28, length, 17, 64, s, d) + udp


def esp_of(packet: bytes) -> tuple[int, int]:
    """(SPI, sequence number) of an IPv4 ESP packet (RFC 4303 §2)."""
    assert packet[9] == 50, "not ESP"
    off = (packet[0] & 15) * 4
    spi, seq = struct.unpack_from("!II", packet, off)
    return spi, seq
