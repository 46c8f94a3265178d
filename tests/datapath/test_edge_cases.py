"""Edge cases found in review, each pinned by a test (reference values built here by hand).

* Sequence numbers never cycle (RFC 4303 §3.3.3): an SA that can send and starts at its last
  number refuses to send, whatever its direction setting, and nothing escapes ``protect``.
* Encryption-only ESP has no ICV to protect the replay window (RFC 4303 §3.4.3 updates the
  window only after integrity verification): a forged packet must not lock out real traffic.
* A held fragment is not "ok"; an RFC 2675 jumbogram inner packet is refused, not truncated.
"""

from __future__ import annotations

import struct

import pytest

from ipsecsa import DropReason, SecurityAssociation
from ipsecsa.datapath.result import HELD
from ipsecsa.packet.ipv4 import build_ipv4_header
from ipsecsa.packet.udp import build_udp

#: Every test here runs on the Python reference and on the native fast path (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

SRC, DST = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
GCM_KEY = "00112233445566778899aabbccddeeff" + "cafebabe"


def udp4(payload: bytes = b"x") -> bytes:
    udp = build_udp(SRC, DST, 1000, 2000, payload)
    return build_ipv4_header(tos=0, total_length=20 + len(udp), ident=1, flags=0, frag_offset=0,
                             ttl=64, protocol=17, src=SRC, dst=DST) + udp


@pytest.mark.parametrize("protocol", ["esp", "ah"])
@pytest.mark.parametrize(("esn", "seq"), [(False, 2**32 - 1), (True, 2**64 - 1)])
def test_sa_at_its_last_sequence_number_never_sends(protocol: str, esn: bool, seq: int) -> None:
    obj = {"spi": 0xC0000101, "protocol": protocol, "src": "192.0.2.1", "dst": "198.51.100.7",
           "esn": esn, "seq": seq, "direction": "outbound"}
    if protocol == "esp":
        obj["encryption"] = {"algorithm": "aes-gcm-16", "key": GCM_KEY}
    else:
        obj["integrity"] = {"algorithm": "hmac-sha256-128", "key": "a5" * 32}
    sa = SecurityAssociation.from_dict(obj)
    assert sa.protect(udp4()).drop is DropReason.SEQ_EXHAUSTED
    assert sa.seq == seq  # no number was consumed, none wrapped
    # Without a direction the SA only receives: its seq is a window top, never "exhausted".
    del obj["direction"]
    rx = SecurityAssociation.from_dict(obj)
    assert rx.usable


def test_last_number_is_sent_once_then_the_sa_is_exhausted() -> None:
    sa = SecurityAssociation.from_dict({
        "spi": 0xC0000101, "protocol": "esp", "src": "192.0.2.1", "dst": "198.51.100.7",
        "direction": "outbound", "seq": 2**32 - 2,
        "encryption": {"algorithm": "aes-gcm-16", "key": GCM_KEY}})
    wire = sa.protect(udp4()).packet
    assert struct.unpack_from("!I", wire, 24)[0] == 2**32 - 1
    assert sa.protect(udp4()).drop is DropReason.SEQ_EXHAUSTED


def test_encryption_only_esp_cannot_be_locked_out_by_a_forged_sequence_number() -> None:
    cfg = {"spi": 0xC0000202, "protocol": "esp", "src": "192.0.2.1", "dst": "198.51.100.7",
           "encryption": {"algorithm": "aes-cbc", "key": "11" * 16}}
    out = SecurityAssociation.from_dict(dict(cfg, direction="outbound"))
    inb = SecurityAssociation.from_dict(dict(cfg, direction="inbound"))
    genuine = out.protect(udp4(b"genuine")).packet
    forged = bytearray(genuine)
    forged[24:28] = (0xFFFFFF00).to_bytes(4, "big")  # a far-ahead number, same ciphertext
    inb.unprotect(bytes(forged))  # delivered or dropped: without an ICV nobody can tell
    assert inb.unprotect(genuine).packet == udp4(b"genuine")


def test_held_fragment_is_not_ok() -> None:
    assert HELD.packet is None and HELD.drop is None and not HELD.ok


def test_jumbogram_inner_packet_is_refused_not_truncated() -> None:
    sa = SecurityAssociation.from_dict({
        "spi": 0xC0000303, "protocol": "esp", "mode": "tunnel", "direction": "outbound",
        "src": "192.0.2.1", "dst": "198.51.100.7",
        "encryption": {"algorithm": "aes-gcm-16", "key": GCM_KEY}})
    # IPv6 header with payload length 0 and a hop-by-hop header (RFC 2675 jumbo payload).
    jumbo = (struct.pack("!IHBB", 6 << 28, 0, 0, 64) + bytes(16) + bytes(15) + b"\x01"
             + bytes([17, 0, 0xC2, 4]) + (70000).to_bytes(4, "big") + bytes(64))
    assert sa.protect(jumbo).drop is DropReason.MALFORMED


def test_held_fragments_time_out_through_the_sa_timer() -> None:
    """Fragments held for reassembly are dropped by handle_timer at their deadline, counted
    once as FRAGMENT, without waiting for more traffic."""
    from scapy.layers.inet import IP, fragment

    cfg = {"spi": 0xC0000404, "protocol": "esp", "src": "192.0.2.1", "dst": "198.51.100.7",
           "encryption": {"algorithm": "aes-gcm-16", "key": GCM_KEY}}
    out = SecurityAssociation.from_dict(dict(cfg, direction="outbound"), now=0.0)
    inb = SecurityAssociation.from_dict(dict(cfg, direction="inbound"), now=0.0)
    wire = out.protect(udp4(b"z" * 600), now=0.0).packet
    first = bytes(fragment(IP(wire), fragsize=256)[0])
    assert inb.unprotect(first, now=1.0) == HELD
    deadline = inb.next_timer()
    assert deadline is not None and deadline > 1.0
    inb.handle_timer(deadline - 0.001)
    assert inb.counters.drops == {}
    inb.handle_timer(deadline)
    assert inb.counters.drops == {DropReason.FRAGMENT: 1}
    assert inb.next_timer() is None
