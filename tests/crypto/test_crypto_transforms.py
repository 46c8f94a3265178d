"""ESP/AH transforms: round trips for every combination, tamper detection, ESN, key checks.

Specification references: RFC 4303 §2.2.1/§3.3.2.1 (ESN seq-high in the ICV), RFC 4106 §5 /
RFC 4309 §5 / RFC 7634 §2.3 / RFC 4543 §5 (AAD), RFC 4302 §2.5.1 (AH with ESN).
"""

from __future__ import annotations

import os

import pytest

from ipsecsa.crypto import (
    ENCRYPTION,
    INTEGRITY,
    make_ah_integrity,
    make_esp_transform,
)
from ipsecsa.errors import ConfigError, KeyLengthError, MalformedPacket

SPI = 0x1000
SEQ = (0x12 << 32) | 0x345  # high half non-zero, to exercise ESN
ESP_INTEG = [i for i in INTEGRITY.values() if i.name != "aes-gmac"]


def _combos() -> list[tuple[str, str]]:
    out = []
    for e in ENCRYPTION.values():
        for i in ESP_INTEG:
            if e.aead and i.name != "none":
                continue
            if e.kind == "null" and i.name == "none":
                continue
            out.append((e.name, i.name))
    return out


COMBOS = _combos()


def _keys(enc_name: str, integ_name: str, size_index: int = 0) -> tuple[bytes, bytes | None]:
    e, i = ENCRYPTION[enc_name], INTEGRITY[integ_name]
    ks = e.key_sizes[min(size_index, len(e.key_sizes) - 1)]
    ek = os.urandom(ks + e.salt_len) if ks else b""
    ik = os.urandom(i.key_sizes[0]) if i.name != "none" else None
    return ek, ik


def _make(enc_name: str, integ_name: str, esn: bool, size_index: int = 0, **kw):
    ek, ik = _keys(enc_name, integ_name, size_index)
    return make_esp_transform(ENCRYPTION[enc_name], ek, INTEGRITY[integ_name], ik, esn=esn, **kw)


def _header(seq: int) -> bytes:
    return SPI.to_bytes(4, "big") + (seq & 0xFFFFFFFF).to_bytes(4, "big")


def _plaintext(block: int, n: int = 37) -> bytes:
    body = os.urandom(n)
    pad = (-(n + 2)) % block
    return body + bytes(range(1, pad + 1)) + bytes([pad, 4])


def _flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


@pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
@pytest.mark.parametrize(("enc", "integ"), COMBOS, ids=[f"{e}+{i}" for e, i in COMBOS])
def test_round_trip_and_tamper(enc: str, integ: str, esn: bool) -> None:
    for size_index in range(3):
        t = _make(enc, integ, esn, size_index)
        assert t.block_size >= 4 and t.block_size % 4 == 0
        hdr = _header(SEQ)
        pt = _plaintext(t.block_size)
        assert len(pt) % t.block_size == 0
        iv, ct_icv = t.seal(hdr, SEQ, pt)
        assert len(iv) == t.iv_len
        assert len(ct_icv) == len(pt) + t.icv_len
        assert t.open(hdr, SEQ, iv, ct_icv) == pt
        if ENCRYPTION[enc].kind != "null" and ENCRYPTION[enc].kind != "gmac":
            assert pt not in ct_icv
        if t.icv_len == 0:
            continue  # encryption-only ESP: nothing to detect
        for i in range(len(iv)):
            assert t.open(hdr, SEQ, _flip(iv, i), ct_icv) is None
        for i in (0, len(ct_icv) // 2, len(ct_icv) - t.icv_len, len(ct_icv) - 1):
            assert t.open(hdr, SEQ, iv, _flip(ct_icv, i)) is None
        assert t.open(_flip(hdr, 0), SEQ, iv, ct_icv) is None  # SPI authenticated
        if esn:
            assert t.open(hdr, SEQ + (1 << 32), iv, ct_icv) is None  # wrong seq-high
        else:
            assert t.open(_flip(hdr, 7), SEQ, iv, ct_icv) is None  # seq-low authenticated
        assert t.open(hdr, SEQ, iv, ct_icv[: t.icv_len - 1]) is None  # shorter than an ICV


# Encryption-only ESP has no ICV, so nothing for ESN to change: left out rather than skipped.
WITH_ICV = [(e, i) for e, i in COMBOS if INTEGRITY[i].name != "none" or ENCRYPTION[e].aead]


@pytest.mark.parametrize(("enc", "integ"), WITH_ICV, ids=[f"{e}+{i}" for e, i in WITH_ICV])
def test_esn_and_non_esn_differ_only_when_high_bits_set(enc: str, integ: str) -> None:
    """With seq-high = 0 an ESN SA still puts 4 extra bytes in AAD/ICV: peers must agree on ESN."""
    ek, ik = _keys(enc, integ)
    fixed_iv = bytes(ENCRYPTION[enc].iv_len)
    a = make_esp_transform(ENCRYPTION[enc], ek, INTEGRITY[integ], ik, esn=False,
                           unsafe_iv_source=lambda s: fixed_iv)
    b = make_esp_transform(ENCRYPTION[enc], ek, INTEGRITY[integ], ik, esn=True,
                           unsafe_iv_source=lambda s: fixed_iv)
    pt = _plaintext(a.block_size)
    iv, c = a.seal(_header(5), 5, pt)
    assert b.open(_header(5), 5, iv, c) is None


def test_counter_iv_is_the_masked_sequence_number_and_cbc_iv_is_random() -> None:
    """Counter IVs are ``seq ^ iv_mask`` (tests/crypto/test_iv_uniqueness.py has the rest)."""
    gcm = _make("aes-gcm-16", "none", False)
    assert gcm.seal(_header(SEQ), SEQ, bytes(16))[0] == (SEQ ^ gcm.iv_mask).to_bytes(8, "big")
    cbc = _make("aes-cbc", "hmac-sha256-128", False)
    assert cbc.iv_mask == 0
    ivs = {cbc.seal(_header(1), 1, bytes(16))[0] for _ in range(50)}
    assert len(ivs) == 50


def test_iv_source_length_is_checked() -> None:
    t = _make("aes-cbc", "hmac-sha1-96", False, unsafe_iv_source=lambda s: bytes(8))
    with pytest.raises(ConfigError):
        t.seal(_header(1), 1, bytes(16))


def test_cbc_misaligned_ciphertext_is_a_bad_length_drop() -> None:
    t = _make("aes-cbc", "none", False)
    with pytest.raises(MalformedPacket):
        t.open(_header(1), 1, bytes(16), bytes(17))
    with pytest.raises(ConfigError):
        t.seal(_header(1), 1, bytes(15))


def test_des_is_3des_with_repeated_key() -> None:
    k = os.urandom(8)
    fixed = bytes(8)
    des = make_esp_transform(ENCRYPTION["des-cbc"], k, None, None, esn=False,
                             unsafe_iv_source=lambda s: fixed)
    tdes = make_esp_transform(ENCRYPTION["3des-cbc"], k * 3, None, None, esn=False,
                              unsafe_iv_source=lambda s: fixed)
    pt = os.urandom(24)
    assert des.seal(_header(1), 1, pt) == tdes.seal(_header(1), 1, pt)


@pytest.mark.parametrize(("enc", "integ"), COMBOS, ids=[f"{e}+{i}" for e, i in COMBOS])
def test_wrong_key_sizes_name_the_field(enc: str, integ: str) -> None:
    ek, ik = _keys(enc, integ)
    e, i = ENCRYPTION[enc], INTEGRITY[integ]
    with pytest.raises(KeyLengthError) as exc:
        make_esp_transform(e, ek + b"\x00", i, ik, esn=False)
    assert exc.value.field == "encryption.key"
    if ik is not None:
        with pytest.raises(KeyLengthError) as exc:
            make_esp_transform(e, ek, i, ik[:-1], esn=False)
        assert exc.value.field == "integrity.key"


def test_invalid_combinations() -> None:
    with pytest.raises(ConfigError) as exc:
        make_esp_transform(ENCRYPTION["null"], b"", None, None, esn=False)
    assert exc.value.field == "integrity.algorithm"
    with pytest.raises(ConfigError) as exc:
        make_esp_transform(ENCRYPTION["aes-gcm-16"], bytes(20), INTEGRITY["hmac-sha1-96"],
                           bytes(20), esn=False)
    assert exc.value.field == "integrity.algorithm"
    with pytest.raises(ConfigError):
        make_esp_transform(ENCRYPTION["aes-cbc"], bytes(16), INTEGRITY["aes-gmac"], bytes(20),
                           esn=False)


def test_keys_never_in_repr() -> None:
    key = bytes.fromhex("deadbeef" * 5)
    t = make_esp_transform(ENCRYPTION["aes-gcm-16"], key, None, None, esn=False)
    fields = {n: getattr(t, n) for c in type(t).__mro__ for n in getattr(c, "__slots__", ())
              if hasattr(t, n)}
    assert "deadbeef" not in repr(t).lower() and "deadbeef" not in str(fields).lower()
    ah = make_ah_integrity(INTEGRITY["hmac-sha256-128"], bytes.fromhex("deadbeef" * 8), esn=False)
    assert "deadbeef" not in repr(ah).lower()


# --- AH ------------------------------------------------------------------------------------------

AH_INTEG = [i.name for i in INTEGRITY.values() if i.name not in ("none", "aes-gmac")]


@pytest.mark.parametrize("name", AH_INTEG)
def test_ah_compute_verify(name: str) -> None:
    alg = INTEGRITY[name]
    key = os.urandom(alg.key_sizes[0])
    data = os.urandom(80)
    plain = make_ah_integrity(alg, key, esn=False)
    esn = make_ah_integrity(alg, key, esn=True)
    icv = plain.compute(data, SEQ)
    assert len(icv) == plain.icv_len == alg.icv_len
    assert plain.verify(data, SEQ, icv)
    assert not plain.verify(_flip(data, 3), SEQ, icv)
    assert not plain.verify(data, SEQ, _flip(icv, 0))
    # ESN: seq-high appended after the packet for the computation only (RFC 4302 §2.5.1)
    icv_esn = esn.compute(data, SEQ)
    assert icv_esn == plain.compute(data + (SEQ >> 32).to_bytes(4, "big"), 0)
    assert esn.verify(data, SEQ, icv_esn)
    assert not esn.verify(data, SEQ + (1 << 32), icv_esn)


def test_ah_refuses_none_and_bad_keys() -> None:
    with pytest.raises(ConfigError):
        make_ah_integrity(INTEGRITY["none"], b"", esn=False)
    with pytest.raises(KeyLengthError):
        make_ah_integrity(INTEGRITY["aes-gmac"], bytes(16), esn=False)  # salt missing
    with pytest.raises(KeyLengthError) as exc:
        make_ah_integrity(INTEGRITY["hmac-sha1-96"], bytes(16), esn=False)
    assert exc.value.field == "integrity.key"
