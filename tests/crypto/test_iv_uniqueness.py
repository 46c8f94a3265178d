"""Counter IVs are unique per key even across SA objects sharing a key (issue 10).

RFC 4106 §3.1, RFC 4309 §3.1, RFC 7634 §2.1, RFC 4543 §3.1 and RFC 3686 §3 require the 8-byte IV
of GCM/CCM/ChaCha20-Poly1305/GMAC/CTR never to repeat under one key. A bare sequence number
repeats as soon as two SA objects are built from one description (or an SA file is reloaded with a
stale ``seq``). Our CHOICE, after Linux's seqiv: IV = (seq XOR a random 64-bit per-object
``iv_mask``) as 8 bytes big-endian. These tests check that rule byte for byte, that two objects
from one description send different IVs for the same sequence number, that a receiver built
independently still decrypts (it reads the IV from the packet), and the known-answer override.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

import ipsecsa
from ipsecsa.crypto import ENCRYPTION, INTEGRITY, make_ah_integrity, make_esp_transform
from ipsecsa.crypto.transforms import COUNTER_IV
from ipsecsa.errors import ConfigError

U64 = (1 << 64) - 1

# (encryption, key length in bytes incl. salt) for every counter-IV ESP algorithm; the truncated
# GCM ICVs take another sealing path than the full one, so both are here.
COUNTER_ESP = [("aes-gcm-16", 20), ("aes-gcm-8", 20), ("aes-gcm-12", 36), ("aes-ccm-16", 19),
               ("aes-ccm-8", 35), ("chacha20-poly1305", 36), ("null-aes-gmac", 20),
               ("aes-ctr", 20)]


def _sa(enc: str, klen: int, direction: str, esn: bool, seq: int, **kw: object):
    obj: dict = {"spi": "0x1001", "protocol": "esp", "mode": "transport",
                 "direction": direction, "src": "192.0.2.1", "dst": "192.0.2.2", "esn": esn,
                 "seq": seq,
                 "encryption": {"algorithm": enc, "key": bytes(range(1, klen + 1)).hex()}}
    if enc == "aes-ctr":
        obj["integrity"] = {"algorithm": "hmac-sha256-128", "key": "ab" * 32}
    return ipsecsa.SecurityAssociation.from_dict(obj, **kw)


PKT = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2) / Raw(b"x" * 40))


def _iv(wire: bytes) -> bytes:
    return wire[28:36]  # IPv4 (20) + SPI (4) + seq (4)


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize(("enc", "klen"), COUNTER_ESP, ids=[e for e, _ in COUNTER_ESP])
def test_two_sas_from_one_description_never_share_an_iv(enc: str, klen: int, esn: bool) -> None:
    start = (5 << 32) + 7 if esn else 7
    a = _sa(enc, klen, "outbound", esn, start)
    b = _sa(enc, klen, "outbound", esn, start)
    rx = _sa(enc, klen, "inbound", esn, start)
    rx_b = _sa(enc, klen, "inbound", esn, start)
    ma, mb = a.transform.iv_mask, b.transform.iv_mask
    assert 0 <= ma <= U64 and 0 <= mb <= U64 and ma != mb
    for i in range(1, 4):
        wa, wb = a.protect(PKT).packet, b.protect(PKT).packet
        assert wa is not None and wb is not None
        seq = start + i
        assert _iv(wa) == ((seq ^ ma) & U64).to_bytes(8, "big")
        assert _iv(wb) == ((seq ^ mb) & U64).to_bytes(8, "big")
        assert _iv(wa) != _iv(wb)
        # Independent receivers read the IV from the packet: no mask to agree on.
        assert rx.unprotect(wa).packet == PKT
        assert rx_b.unprotect(wb).packet == PKT


def test_a_reloaded_sa_with_a_stale_seq_sends_other_ivs() -> None:
    first = _sa("aes-gcm-16", 20, "outbound", False, 0)
    old = first.to_dict()
    sent = {_iv(first.protect(PKT).packet or b"") for _ in range(20)}
    again = ipsecsa.SecurityAssociation.from_dict(old)  # seq 0 again: the same numbers
    resent = {_iv(again.protect(PKT).packet or b"") for _ in range(20)}
    assert len(sent) == len(resent) == 20
    assert not sent & resent


def test_ah_gmac_iv_is_masked_per_object() -> None:
    key = bytes(range(20))
    a = make_ah_integrity(INTEGRITY["aes-gmac"], key, esn=False)
    b = make_ah_integrity(INTEGRITY["aes-gmac"], key, esn=False)
    data = bytes(64)
    assert a.iv_mask != b.iv_mask
    assert a.compute(data, 9, 24)[:8] == (9 ^ a.iv_mask).to_bytes(8, "big")
    assert a.compute(data, 9, 24)[:8] != b.compute(data, 9, 24)[:8]
    assert b.verify(data, 9, a.compute(data, 9, 24), 24)  # IV travels in the ICV field
    assert make_ah_integrity(INTEGRITY["hmac-sha1-96"], bytes(20), esn=False).iv_mask == 0


def test_the_mask_stays_within_64_bits_at_the_top_of_the_esn_space() -> None:
    t = make_esp_transform(ENCRYPTION["aes-gcm-16"], bytes(20), None, None, esn=True)
    seq = U64
    iv, _ = t.seal(b"\0\0\0\1" + (seq & 0xFFFFFFFF).to_bytes(4, "big"), seq, bytes(16))
    assert iv == (seq ^ t.iv_mask).to_bytes(8, "big")


def test_cbc_ivs_stay_random_and_unmasked() -> None:
    sa = _sa("aes-cbc", 16, "outbound", False, 0)
    sa_obj = sa.to_dict()
    sa_obj["integrity"] = {"algorithm": "hmac-sha256-128", "key": "cd" * 32}
    sa = ipsecsa.SecurityAssociation.from_dict(sa_obj)
    assert sa.transform.iv_mask == 0
    ivs = {(sa.protect(PKT).packet or b"")[28:44] for _ in range(30)}
    assert len(ivs) == 30


def test_unsafe_iv_source_decides_and_the_mask_is_zero() -> None:
    sa = _sa("aes-gcm-16", 20, "outbound", False, 0, unsafe_iv_source=COUNTER_IV)
    assert sa.transform.iv_mask == 0
    assert [_iv(sa.protect(PKT).packet or b"") for _ in range(3)] == [
        n.to_bytes(8, "big") for n in (1, 2, 3)]
    fixed = _sa("chacha20-poly1305", 36, "outbound", False, 0,
                unsafe_iv_source=lambda seq: b"\xee" * 8)
    assert _iv(fixed.protect(PKT).packet or b"") == b"\xee" * 8
    assert COUNTER_IV(0x0102030405060708) == bytes.fromhex("0102030405060708")


@pytest.mark.parametrize("enc", ["aes-cbc", "3des-cbc"])
def test_counter_iv_is_refused_for_cbc(enc: str) -> None:
    e = ENCRYPTION[enc]
    with pytest.raises(ConfigError) as exc:
        make_esp_transform(e, bytes(e.key_sizes[0]), INTEGRITY["hmac-sha1-96"], bytes(20),
                           esn=False, unsafe_iv_source=COUNTER_IV)
    assert exc.value.field == "unsafe_iv_source"


def test_the_old_keyword_is_gone() -> None:
    with pytest.raises(TypeError):
        _sa("aes-gcm-16", 20, "outbound", False, 0, iv_source=COUNTER_IV)
