"""AES-GMAC in AH (RFC 4543 §4, AUTH_AES_{128,192,256}_GMAC).

What the tests hold the engine to, and where it comes from:

* RFC 4543 §4 Figure 5: the AH ICV field is IV (8 octets) ‖ ICV (16 octets); the IV is as in
  §3.1 (8 octets, never repeated under a key: the engine uses the 64-bit sequence number XOR
  the transform's random 64-bit ``iv_mask``, our CHOICE after Linux seqiv),
  the nonce is salt ‖ IV (§3.2), the tag is never truncated (§3.4); the key material is the
  AES key followed by the 4-octet salt (§5.4).
* RFC 4543 §4 with verified erratum EID 3643: no ICV padding under IPv4 (AH = 12 + 24 = 36
  octets), 4 octets under IPv6 (AH = 40 octets, a multiple of 64 bits).
* RFC 4543 §4: the GMAC AAD is the data AH authenticates (RFC 4302 §3.3.3: mutable IP fields
  zeroed, AH header, ICV field, everything after AH; with ESN the 32 high bits appended after the
  packet, RFC 4302 §2.5.1 / §3.3.3.2.2); §7: "in AUTH_AES_GMAC, the IV is included in the
  additional authenticated data". So the ICV field enters the AAD as IV ‖ zeros (only the
  output, the tag, is zeroed), and the GCM plaintext is empty (§2).

No published AH-GMAC packet vectors are known; :func:`_expected_wire` rebuilds whole packets
from these rules with raw ``cryptography`` AESGCM and compares bytes with the engine's.
"""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ipsecsa.crypto import INTEGRITY, make_ah_integrity
from ipsecsa.crypto.transforms import COUNTER_IV
from ipsecsa.datapath.ah import AhSA
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import ConfigError, DropReason, KeyLengthError

SPI = 0x2002
V4 = ("192.0.2.1", "192.0.2.2")
V6 = ("2001:db8::1", "2001:db8::2")
INNER_V4 = ("10.0.0.1", "10.0.1.1")
INNER_V6 = ("2001:db8:a::1", "2001:db8:b::1")
GMAC = INTEGRITY["aes-gmac"]
SEQ = (0x12 << 32) | 0x345


def _key(aes_len: int = 16) -> bytes:
    """AES key ‖ 4-byte salt (RFC 4543 §5.4)."""
    return bytes((i * 11 + 3) & 0xFF for i in range(aes_len)) + bytes.fromhex("cafebabe")


def _sa_dict(mode: str, family: int, esn: bool, aes_len: int = 16, **extra: object) -> dict:
    src, dst = V4 if family == 4 else V6
    obj: dict = {"spi": SPI, "protocol": "ah", "mode": mode, "src": src, "dst": dst, "esn": esn,
                 "integrity": {"algorithm": "aes-gmac", "key": _key(aes_len).hex()}}
    obj.update(extra)
    return obj


def _pair(mode: str = "transport", family: int = 4, esn: bool = False, aes_len: int = 16,
          **extra: object) -> tuple[AhSA, AhSA]:
    out = SecurityAssociation.from_dict(
        _sa_dict(mode, family, esn, aes_len, direction="outbound", **extra))
    inb = SecurityAssociation.from_dict(
        _sa_dict(mode, family, esn, aes_len, direction="inbound", **extra))
    assert isinstance(out, AhSA) and isinstance(inb, AhSA)
    return out, inb


def _packet(family: int, mode: str = "transport", payload: bytes = b"gmac in ah",
            **ip: object) -> bytes:
    if mode == "transport":
        src, dst = V4 if family == 4 else V6
    else:
        src, dst = INNER_V4 if family == 4 else INNER_V6
    if family == 4:
        return bytes(IP(src=src, dst=dst, **ip) / UDP(sport=1111, dport=2222) / Raw(payload))
    return bytes(IPv6(src=src, dst=dst, **ip) / UDP(sport=1111, dport=2222) / Raw(payload))


def _ah_off(wire: bytes) -> int:
    return (wire[0] & 15) * 4 if wire[0] >> 4 == 4 else 40


# --- the independent reference ---------------------------------------------------------------


def _ipv4_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _expected_wire(pkt: bytes, seq: int, esn: bool, key: bytes, iv_mask: int,
                   iv_in_aad: bool = True) -> bytes:
    """The AH transport packet for ``pkt`` (no IPv4 options / IPv6 extension headers), built from
    RFC 4302 §2 / §3.3.3 and RFC 4543 §3-§4 with raw AESGCM. ``iv_in_aad=False`` gives the
    (wrong) reading in which the whole Authentication Data field is zeroed in the AAD."""
    aes_key, salt = key[:-4], key[-4:]
    iv = (seq ^ iv_mask).to_bytes(8, "big")  # RFC 4543 §3.1: unique per key (seqiv-style)
    if pkt[0] >> 4 == 4:
        ahlen, pad = 36, b""  # 12 + 8 + 16, already a multiple of 32 bits (EID 3643)
        tlen = len(pkt) + ahlen
        hdr = bytearray(pkt[:20])
        struct.pack_into("!H", hdr, 2, tlen)
        nh, hdr[9] = hdr[9], 51
        hdr[10:12] = b"\0\0"
        struct.pack_into("!H", hdr, 10, _ipv4_checksum(bytes(hdr)))
        # RFC 4302 §3.3.3.1.1.1: TOS, flags, fragment offset, TTL, checksum zeroed
        covered = bytearray(hdr)
        covered[1] = 0
        covered[6:9] = b"\0\0\0"
        covered[10:12] = b"\0\0"
        payload = pkt[20:]
    else:
        ahlen, pad = 40, bytes(4)  # 36 padded to a multiple of 64 bits (EID 3643)
        hdr = bytearray(pkt[:40])
        struct.pack_into("!H", hdr, 4, len(pkt) - 40 + ahlen)
        nh, hdr[6] = hdr[6], 51
        # RFC 4302 §3.3.3.1.2: traffic class, flow label, hop limit zeroed
        covered = bytearray(hdr)
        covered[0] &= 0xF0
        covered[1:4] = b"\0\0\0"
        covered[7] = 0
        payload = pkt[40:]
    ah = struct.pack("!BBHII", nh, ahlen // 4 - 2, 0, SPI, seq & 0xFFFFFFFF)
    aad = bytes(covered) + ah + (iv if iv_in_aad else bytes(8)) + bytes(16) + pad + payload
    if esn:
        aad += (seq >> 32).to_bytes(4, "big")  # RFC 4302 §3.3.3.2.2: implicitly appended
    tag = AESGCM(aes_key).encrypt(salt + iv, b"", aad)  # GMAC: empty plaintext, tag only
    assert len(tag) == 16
    return bytes(hdr) + ah + iv + tag + pad + payload


@pytest.mark.parametrize("aes_len", [16, 24, 32])
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
def test_ipv4_transport_icv_by_hand(esn: bool, aes_len: int) -> None:
    start = (0x7 << 32) + 0x40 if esn else 0x40
    out, inb = _pair("transport", 4, esn, aes_len, seq=start)
    pkt = _packet(4, tos=0x2B, id=0x1234, flags="DF", ttl=61)
    wire = out.protect(pkt).packet
    assert wire is not None
    mask = out.integrity.iv_mask
    expected = _expected_wire(pkt, start + 1, esn, _key(aes_len), mask)
    assert wire == expected
    # The reading in which the IV is zeroed in the AAD would give another tag (RFC 4543 §7).
    assert wire != _expected_wire(pkt, start + 1, esn, _key(aes_len), mask, iv_in_aad=False)
    assert inb.unprotect(wire).packet == pkt


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
def test_ipv6_transport_icv_by_hand(esn: bool) -> None:
    start = (0x3 << 32) + 9 if esn else 9
    out, inb = _pair("transport", 6, esn, seq=start)
    pkt = _packet(6, tc=0x2A, fl=0xBEEF, hlim=7)
    wire = out.protect(pkt).packet
    assert wire is not None
    assert wire == _expected_wire(pkt, start + 1, esn, _key(), out.integrity.iv_mask)
    assert inb.unprotect(wire).packet == pkt


# --- framing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "ahlen"), [(4, 36), (6, 40)])
def test_ah_length_and_padding_per_erratum_3643(family: int, ahlen: int) -> None:
    out, _ = _pair("transport", family)
    pkt = _packet(family)
    wire = out.protect(pkt).packet
    assert wire is not None
    off = _ah_off(wire)
    assert len(wire) == len(pkt) + ahlen
    assert wire[off + 1] == ahlen // 4 - 2  # Payload Length: 7 (IPv4), 8 (IPv6)
    assert wire[off + 12:off + 20] == (1 ^ out.integrity.iv_mask).to_bytes(8, "big")
    assert wire[off + 36:off + ahlen] == bytes(ahlen - 36)  # IPv6: 4 zero octets of padding


LAYOUTS = [("transport", 4, 4), ("transport", 6, 6), ("tunnel", 4, 4), ("tunnel", 6, 6),
           ("tunnel", 4, 6), ("tunnel", 6, 4)]


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize(("mode", "outer", "inner"), LAYOUTS,
                         ids=["transport4", "transport6", "4in4", "6in6", "6in4", "4in6"])
def test_round_trip(mode: str, outer: int, inner: int, esn: bool) -> None:
    start = (1 << 32) - 2 if esn else 0  # ESN: cross a high-half boundary
    out, inb = _pair(mode, outer, esn, seq=start)
    ahlen = 36 if outer == 4 else 40
    ivs = set()
    for i in range(4):
        pkt = _packet(inner, mode, bytes([i]) * (i * 17))
        wire = out.protect(pkt).packet
        assert wire is not None
        off = _ah_off(wire)
        seq = start + i + 1
        assert struct.unpack_from("!I", wire, off + 8)[0] == seq & 0xFFFFFFFF
        iv = wire[off + 12:off + 20]
        assert iv == (seq ^ out.integrity.iv_mask).to_bytes(8, "big")
        ivs.add(iv)
        if mode == "tunnel":
            assert wire[off + ahlen:] == pkt
        res = inb.unprotect(wire)
        assert res.ok, res
        assert res.packet == pkt
    assert len(ivs) == 4  # a fresh IV per packet
    assert out.seq == inb.seq == start + 4


@pytest.mark.parametrize("aes_len", [16, 24, 32])
def test_key_sizes_round_trip_and_differ(aes_len: int) -> None:
    out, inb = _pair(aes_len=aes_len)
    pkt = _packet(4)
    wire = out.protect(pkt).packet
    assert wire is not None and inb.unprotect(wire).packet == pkt
    other = SecurityAssociation.from_dict(
        _sa_dict("transport", 4, False, 16 if aes_len != 16 else 32, direction="inbound"))
    assert other.unprotect(wire).drop is DropReason.ICV_FAILURE


def test_iv_source_is_used_and_the_receiver_reads_the_iv_from_the_packet() -> None:
    ivs = iter([bytes.fromhex("0123456789abcdef"), bytes.fromhex("fedcba9876543210")])
    out = SecurityAssociation.from_dict(_sa_dict("transport", 4, False, direction="outbound"),
                                        unsafe_iv_source=lambda seq: next(ivs))
    inb = SecurityAssociation.from_dict(_sa_dict("transport", 4, False, direction="inbound"))
    for iv in ("0123456789abcdef", "fedcba9876543210"):
        pkt = _packet(4, payload=iv.encode())
        wire = out.protect(pkt).packet
        assert wire is not None
        assert wire[32:40].hex() == iv
        assert inb.unprotect(wire).packet == pkt


def test_wrong_salt_fails() -> None:
    out, _ = _pair()
    wire = out.protect(_packet(4)).packet
    obj = _sa_dict("transport", 4, False, direction="inbound")
    obj["integrity"]["key"] = (_key()[:-4] + b"salt").hex()
    inb = SecurityAssociation.from_dict(obj)
    assert inb.unprotect(wire).drop is DropReason.ICV_FAILURE


# --- tampering ------------------------------------------------------------------------------


def _mutable_bits(family: int) -> set[int]:
    if family == 4:  # TOS, flags + offset, TTL, checksum (RFC 4302 §3.3.3.1.1.1)
        return {b * 8 + k for b in (1, 6, 7, 8, 10, 11) for k in range(8)}
    # traffic class, flow label (bits 4-31), hop limit (RFC 4302 §3.3.3.1.2)
    return set(range(4, 32)) | set(range(56, 64))


@pytest.mark.parametrize("family", [4, 6])
def test_every_immutable_bit_is_protected(family: int) -> None:
    out, inb = _pair("transport", family, esn=True)
    pkt = _packet(family, payload=b"x" * 5)
    wire = out.protect(pkt).packet
    assert wire is not None
    off = _ah_off(wire)
    ahlen = 36 if family == 4 else 40
    # Every other immutable bit (version, lengths, protocol, SPI, sequence number) must drop the
    # packet for some reason (malformed, wrong SPI, replay or ICV). Fields whose change can only surface as an ICV failure: IPv4 identification, source and
    # destination addresses, AH next header and reserved, IV, tag, padding, payload.
    must_icv = ({b * 8 + k for b in (4, 5) for k in range(8)} if family == 4 else set())
    addr = range(12, 20) if family == 4 else range(8, 40)
    must_icv |= {b * 8 + k for b in addr for k in range(8)}
    must_icv |= {(off + b) * 8 + k for b in [0, 2, 3, *range(12, ahlen)] for k in range(8)}
    must_icv |= set(range((off + ahlen) * 8, len(wire) * 8))
    mutable = _mutable_bits(family)
    for bit in range(len(wire) * 8):
        if bit in mutable:
            continue
        bad = bytearray(wire)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        if family == 4:  # as a router would: a bad header checksum is dropped before AH
            bad[10:12] = b"\0\0"
            struct.pack_into("!H", bad, 10, _ipv4_checksum(bytes(bad[:20])))
        res = inb.unprotect(bytes(bad))
        assert res.packet is None, bit
        if bit in must_icv:
            assert res.drop is DropReason.ICV_FAILURE, (bit, res.drop)
    assert inb.unprotect(wire).packet == pkt


@pytest.mark.parametrize(("mode", "family"), [("transport", 4), ("transport", 6),
                                               ("tunnel", 4), ("tunnel", 6)])
def test_mutable_fields_changed_still_verify(mode: str, family: int) -> None:
    out, _ = _pair(mode, family)
    pkt = _packet(family, mode)
    wire = bytearray(out.protect(pkt).packet or b"")
    if family == 4:
        wire[1] = 0xB8  # DSCP EF, ECN not-ECT
        wire[8] = 3  # TTL
        wire[6] |= 0x40  # DF
        wire[10:12] = b"\0\0"
        struct.pack_into("!H", wire, 10, _ipv4_checksum(bytes(wire[:20])))
    else:
        wire[0:4] = bytes((0x6B, 0x8A, 0xBC, 0xDE))  # traffic class 0xb8, flow label 0xabcde
        wire[7] = 1  # hop limit
    _, inb = _pair(mode, family)
    res = inb.unprotect(bytes(wire))
    assert res.ok, res
    if mode == "tunnel":
        assert res.packet == pkt


# --- the transform on its own ----------------------------------------------------------------


def _data(off: int = 32, n: int = 90) -> bytes:
    d = bytearray(os.urandom(n))
    d[off:off + 24] = bytes(24)  # the ICV field as the data path zeroes it
    return bytes(d)


@pytest.mark.parametrize("aes_len", [16, 24, 32])
def test_transform_shape_and_esn(aes_len: int) -> None:
    key = _key(aes_len)
    plain = make_ah_integrity(GMAC, key, esn=False, unsafe_iv_source=COUNTER_IV)
    esn = make_ah_integrity(GMAC, key, esn=True, unsafe_iv_source=COUNTER_IV)
    assert plain.icv_len == 24 and plain.iv_len == 8 and plain.algorithm == "aes-gmac"
    assert plain.iv_mask == 0  # the override decides the IVs
    data = _data()
    field = plain.compute(data, SEQ, 32)
    assert len(field) == 24 and field[:8] == SEQ.to_bytes(8, "big")
    aad = data[:32] + field[:8] + data[40:]
    assert field[8:] == AESGCM(key[:-4]).encrypt(key[-4:] + field[:8], b"", aad)
    assert plain.verify(data, SEQ, field, 32)
    # ESN: seq-high appended to the AAD (RFC 4302 §3.3.3.2.2)
    field_esn = esn.compute(data, SEQ, 32)
    assert field_esn[8:] == AESGCM(key[:-4]).encrypt(
        key[-4:] + field[:8], b"", aad + (SEQ >> 32).to_bytes(4, "big"))
    assert esn.verify(data, SEQ, field_esn, 32)
    assert not esn.verify(data, SEQ + (1 << 32), field_esn, 32)
    assert not plain.verify(data, SEQ, field_esn, 32)


def test_transform_rejects_tampering() -> None:
    ah = make_ah_integrity(GMAC, _key(), esn=False)
    data = _data()
    field = ah.compute(data, 5, 32)
    assert ah.verify(data, 5, field, 32)
    for i in range(24):  # IV or tag
        bad = bytearray(field)
        bad[i] ^= 1
        assert not ah.verify(data, 5, bytes(bad), 32), i
    for i in (0, 31, 40, len(data) - 1):  # data outside the ICV field
        bad = bytearray(data)
        bad[i] ^= 1
        assert not ah.verify(bytes(bad), 5, field, 32), i
    assert not ah.verify(data, 5, field, 36)  # the IV spliced elsewhere
    assert not ah.verify(data, 5, field[:-1], 32)
    assert not ah.verify(data, 5, field + b"\0", 32)


def test_transform_iv_source_and_keys() -> None:
    ah = make_ah_integrity(GMAC, _key(), esn=False, unsafe_iv_source=lambda seq: b"\xaa" * 8)
    assert ah.compute(_data(), 1, 32)[:8] == b"\xaa" * 8
    short = make_ah_integrity(GMAC, _key(), esn=False, unsafe_iv_source=lambda seq: b"\xaa" * 12)
    with pytest.raises(ConfigError):
        short.compute(_data(), 1, 32)
    for n in (16, 24, 32, 21):  # the AES key without its salt, or a wrong length
        with pytest.raises(KeyLengthError) as exc:
            make_ah_integrity(GMAC, bytes(n), esn=False)
        assert exc.value.field == "integrity.key"
    assert "cafebabe" not in repr(make_ah_integrity(GMAC, _key(), esn=False))
