"""Algorithm registry: every alias family resolves, unknowns and bad keys name the field.

Sources for the tables: sa-format.md (canonical names), IANA IKEv2 Transform Type 1/3 registries,
Linux ip-xfrm(8) algorithm names, strongSwan proposal keywords, windows-ipsec-reference.md §C.5
and windows-layouts-x64.json (IPSEC_*_TYPE, OFFLOAD_IPSEC_* enums).
"""

from __future__ import annotations

import pytest

from ipsecsa.crypto import (
    ENCRYPTION,
    INTEGRITY,
    check_key,
    list_algorithms,
    lookup_encryption,
    lookup_integrity,
    resolve_encryption,
    resolve_integrity,
)
from ipsecsa.errors import (
    AmbiguousAlgorithmError,
    ConfigError,
    KeyLengthError,
    UnknownAlgorithmError,
)

ENC_ALIASES: list[tuple[object, str, int | None]] = [
    # canonical (case-insensitive)
    *((n, n, None) for n in ENCRYPTION),
    ("AES-GCM-16", "aes-gcm-16", None),
    # IKEv2 names and numbers
    ("ENCR_DES", "des-cbc", None), (2, "des-cbc", None),
    ("ENCR_3DES", "3des-cbc", None), (3, "3des-cbc", None),
    ("ENCR_NULL", "null", None), (11, "null", None),
    ("ENCR_AES_CBC", "aes-cbc", None), (12, "aes-cbc", None), ("12", "aes-cbc", None),
    ("ENCR_AES_CTR", "aes-ctr", None), (13, "aes-ctr", None),
    ("ENCR_AES_CCM_8", "aes-ccm-8", None), (14, "aes-ccm-8", None),
    ("ENCR_AES_CCM_12", "aes-ccm-12", None), (15, "aes-ccm-12", None),
    ("ENCR_AES_CCM_16", "aes-ccm-16", None), (16, "aes-ccm-16", None),
    ("ENCR_AES_GCM_8", "aes-gcm-8", None), (18, "aes-gcm-8", None),
    ("ENCR_AES_GCM_12", "aes-gcm-12", None), (19, "aes-gcm-12", None),
    ("ENCR_AES_GCM_16", "aes-gcm-16", None), (20, "aes-gcm-16", None),
    ("ENCR_NULL_AUTH_AES_GMAC", "null-aes-gmac", None), (21, "null-aes-gmac", None),
    ("ENCR_CHACHA20_POLY1305", "chacha20-poly1305", None), (28, "chacha20-poly1305", None),
    # ip xfrm
    ("rfc4106(gcm(aes))", "aes-gcm-16", None), ("rfc4106(gcm(aes)) 128", "aes-gcm-16", None),
    ("rfc4106(gcm(aes))/96", "aes-gcm-12", None), ("rfc4106(gcm(aes)) 64", "aes-gcm-8", None),
    ("rfc4309(ccm(aes))", "aes-ccm-16", None), ("rfc4309(ccm(aes)) 64", "aes-ccm-8", None),
    ("rfc4309(ccm(aes))/96", "aes-ccm-12", None),
    ("rfc7539esp(chacha20,poly1305)", "chacha20-poly1305", None),
    ("rfc7539esp(chacha20,poly1305) 128", "chacha20-poly1305", None),
    ("rfc4543(gcm(aes))", "null-aes-gmac", None), ("rfc4543(gcm(aes)) 128", "null-aes-gmac", None),
    ("rfc3686(ctr(aes))", "aes-ctr", None), ("cbc(aes)", "aes-cbc", None),
    ("cbc(des3_ede)", "3des-cbc", None), ("cbc(des)", "des-cbc", None),
    ("ecb(cipher_null)", "null", None),
    # strongSwan
    ("aes128gcm16", "aes-gcm-16", 16), ("aes256gcm8", "aes-gcm-8", 32),
    ("aes192gcm12", "aes-gcm-12", 24), ("aes256gcm128", "aes-gcm-16", 32),
    ("aes128gcm64", "aes-gcm-8", 16), ("aes128gcm", "aes-gcm-16", 16),
    ("aes128ccm12", "aes-ccm-12", 16), ("aes256ccm16", "aes-ccm-16", 32),
    ("chacha20poly1305", "chacha20-poly1305", None),
    ("aes128", "aes-cbc", 16), ("aes256", "aes-cbc", 32), ("aes", "aes-cbc", None),
    ("aes128ctr", "aes-ctr", 16), ("3des", "3des-cbc", None), ("des", "des-cbc", None),
    ("null", "null", None), ("aes128gmac", "null-aes-gmac", 16), ("aes256gmac", "null-aes-gmac", 32),
    # Windows
    ("IPSEC_CIPHER_TYPE_DES", "des-cbc", None), ("IPSEC_CIPHER_TYPE_3DES", "3des-cbc", None),
    ("IPSEC_CIPHER_TYPE_AES_128", "aes-cbc", 16), ("IPSEC_CIPHER_TYPE_AES_192", "aes-cbc", 24),
    ("IPSEC_CIPHER_TYPE_AES_256", "aes-cbc", 32),
    ("IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_256", "aes-gcm-16", 32),
    ("OFFLOAD_IPSEC_CONF_NONE", "null", None), ("OFFLOAD_IPSEC_CONF_DES", "des-cbc", None),
    ("OFFLOAD_IPSEC_CONF_3_DES", "3des-cbc", None),
]

INTEG_ALIASES: list[tuple[object, str, int | None]] = [
    *((n, n, None) for n in INTEGRITY),
    ("HMAC-SHA256-128", "hmac-sha256-128", None),
    ("AUTH_NONE", "none", None), (0, "none", None),
    ("AUTH_HMAC_MD5_96", "hmac-md5-96", None), (1, "hmac-md5-96", None),
    ("AUTH_HMAC_SHA1_96", "hmac-sha1-96", None), (2, "hmac-sha1-96", None),
    ("AUTH_AES_XCBC_96", "aes-xcbc-96", None), (5, "aes-xcbc-96", None),
    ("AUTH_AES_CMAC_96", "aes-cmac-96", None), (8, "aes-cmac-96", None),
    ("AUTH_AES_128_GMAC", "aes-gmac", 16), (9, "aes-gmac", 16),
    ("AUTH_AES_192_GMAC", "aes-gmac", 24), (10, "aes-gmac", 24),
    ("AUTH_AES_256_GMAC", "aes-gmac", 32), (11, "aes-gmac", 32),
    ("AUTH_HMAC_SHA2_256_128", "hmac-sha256-128", None), (12, "hmac-sha256-128", None),
    ("AUTH_HMAC_SHA2_384_192", "hmac-sha384-192", None), (13, "hmac-sha384-192", None),
    ("AUTH_HMAC_SHA2_512_256", "hmac-sha512-256", None), (14, "hmac-sha512-256", None),
    ("hmac(md5)", "hmac-md5-96", None), ("hmac(md5) 96", "hmac-md5-96", None),
    ("hmac(sha1)", "hmac-sha1-96", None), ("hmac(sha1)/96", "hmac-sha1-96", None),
    ("hmac(sha256) 128", "hmac-sha256-128", None), ("hmac(sha256) 96", "hmac-sha256-96", None),
    ("hmac(sha256)/96", "hmac-sha256-96", None), ("sha256_96", "hmac-sha256-96", None),
    ("sha2_256_96", "hmac-sha256-96", None), ("HMAC-SHA256-96", "hmac-sha256-96", None),
    ("hmac(sha384) 192", "hmac-sha384-192", None),
    ("hmac(sha512)/256", "hmac-sha512-256", None),
    ("xcbc(aes)", "aes-xcbc-96", None), ("cmac(aes)", "aes-cmac-96", None),
    ("md5", "hmac-md5-96", None), ("sha1", "hmac-sha1-96", None),
    ("sha256", "hmac-sha256-128", None), ("sha384", "hmac-sha384-192", None),
    ("sha512", "hmac-sha512-256", None), ("aesxcbc", "aes-xcbc-96", None),
    ("aescmac", "aes-cmac-96", None), ("aes128gmac", "aes-gmac", 16),
    ("IPSEC_AUTH_TYPE_MD5", "hmac-md5-96", None), ("IPSEC_AUTH_TYPE_SHA_1", "hmac-sha1-96", None),
    ("IPSEC_AUTH_TYPE_SHA_256", "hmac-sha256-128", None),
    ("IPSEC_AUTH_TYPE_AES_128", "aes-gmac", 16), ("IPSEC_AUTH_TYPE_AES_192", "aes-gmac", 24),
    ("IPSEC_AUTH_TYPE_AES_256", "aes-gmac", 32), ("IPSEC_AUTH_SHA_1", "hmac-sha1-96", None),
    ("OFFLOAD_IPSEC_INTEGRITY_NONE", "none", None),
    ("OFFLOAD_IPSEC_INTEGRITY_MD5", "hmac-md5-96", None),
    ("OFFLOAD_IPSEC_INTEGRITY_SHA", "hmac-sha1-96", None),
]


@pytest.mark.parametrize(("alias", "canon", "size"), ENC_ALIASES, ids=str)
def test_encryption_alias(alias: object, canon: str, size: int | None) -> None:
    assert resolve_encryption(alias).name == canon  # type: ignore[arg-type]
    assert lookup_encryption(alias) == (ENCRYPTION[canon], size)  # type: ignore[arg-type]


@pytest.mark.parametrize(("alias", "canon", "size"), INTEG_ALIASES, ids=str)
def test_integrity_alias(alias: object, canon: str, size: int | None) -> None:
    assert resolve_integrity(alias).name == canon  # type: ignore[arg-type]
    assert lookup_integrity(alias) == (INTEGRITY[canon], size)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["rot13", "", 17, 99, 7, "ENCR_BLOWFISH", "aes512", "aes128gcm10", "rfc4106(gcm(aes)) 32",
     "cbc(aes) 128", "aes128ctr16", True, None, 1.5],
    ids=str,
)
def test_unknown_encryption_names_field(name: object) -> None:
    with pytest.raises(UnknownAlgorithmError) as exc:
        resolve_encryption(name)  # type: ignore[arg-type]
    assert exc.value.field == "encryption.algorithm"


@pytest.mark.parametrize(
    "name",
    ["rot13", 3, 6, 99, "hmac(sha256) 64", "hmac(sha1) 160", "hmac(sha512)/384", "sha384_96",
     "hmac(whirlpool)", "hmac(sha256)", "hmac(sha384)", "hmac(sha512)", False],
    ids=str,
)
def test_unknown_integrity_names_field(name: object) -> None:
    with pytest.raises(UnknownAlgorithmError) as exc:
        resolve_integrity(name)  # type: ignore[arg-type]
    assert exc.value.field == "integrity.algorithm"
    assert isinstance(exc.value, ConfigError)


def test_non_rfc_truncation_message_is_clear() -> None:
    with pytest.raises(UnknownAlgorithmError) as exc:
        resolve_integrity("hmac(sha256) 64")
    assert str(exc.value) == (
        "integrity.algorithm: hmac(sha256) truncated to 64 bits is not an ESP/AH algorithm we "
        "know; supported: 128 bits (hmac-sha256-128) or 96 bits (hmac-sha256-96, legacy)")


SHA256_SUGGESTION = ("did you mean 'hmac-sha256-128' (RFC 4868) or 'hmac-sha256-96' "
                     "(old Linux default)?")


@pytest.mark.parametrize(("name", "suggestion"), [
    ("hmac(sha256)", SHA256_SUGGESTION),
    ("HMAC(SHA256)", SHA256_SUGGESTION),
    ("hmac-sha256", SHA256_SUGGESTION),
    ("hmac(sha384)", "did you mean 'hmac-sha384-192' (RFC 4868)?"),
    ("hmac(sha512)", "did you mean 'hmac-sha512-256' (RFC 4868)?"),
    ("hmac-sha2-512", "did you mean 'hmac-sha512-256' (RFC 4868)?"),
])
def test_names_tools_read_differently_are_refused_with_a_suggestion(name: str,
                                                                     suggestion: str) -> None:
    """Bare ``hmac(sha256)``: a 96-bit ICV to ``ip xfrm``'s ``auth``, 128 bits to RFC 4868."""
    with pytest.raises(AmbiguousAlgorithmError) as exc:
        resolve_integrity(name)
    assert exc.value.field == "integrity.algorithm"
    assert isinstance(exc.value, ConfigError)
    assert str(exc.value).endswith(suggestion)


def test_hmac_sha256_96_is_legacy_sha256_truncated_to_96_bits() -> None:
    alg = INTEGRITY["hmac-sha256-96"]
    assert (alg.icv_len, alg.key_sizes, alg.legacy) == (12, (32,), True)
    rows = {(r["kind"], r["name"]): r for r in list_algorithms()}
    assert "[legacy]" in str(rows[("integrity", "hmac-sha256-96")]["description"])


def test_encryption_parameters() -> None:
    e = ENCRYPTION
    assert (e["aes-gcm-8"].icv_len, e["aes-gcm-12"].icv_len, e["aes-gcm-16"].icv_len) == (8, 12, 16)
    assert e["aes-ccm-8"].salt_len == 3 and e["aes-gcm-16"].salt_len == 4
    assert e["aes-ctr"].salt_len == 4 and e["aes-ctr"].block_size == 4
    assert e["aes-cbc"].iv_len == 16 and e["aes-cbc"].block_size == 16
    assert e["3des-cbc"].block_size == 8 and e["3des-cbc"].legacy and e["des-cbc"].legacy
    assert e["null"].iv_len == 0 and e["null"].block_size == 4
    assert e["null-aes-gmac"].aead and e["null-aes-gmac"].kind == "gmac"
    assert all(a.block_size >= 4 for a in e.values())
    assert INTEGRITY["hmac-sha512-256"].key_sizes == (64,)
    assert INTEGRITY["hmac-md5-96"].legacy and INTEGRITY["hmac-sha1-96"].legacy


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("aes-gcm-16", [20, 28, 36], [16, 24, 32, 19, 0]),
        ("aes-ccm-12", [19, 27, 35], [20, 16]),
        ("chacha20-poly1305", [36], [32, 40]),
        ("aes-ctr", [20, 28, 36], [16, 32]),
        ("aes-cbc", [16, 24, 32], [20, 15]),
        ("3des-cbc", [24], [8, 16]),
        ("des-cbc", [8], [7, 24]),
        ("null", [0], [1]),
        ("null-aes-gmac", [20, 28, 36], [16]),
    ],
)
def test_check_key_encryption(name: str, good: list[int], bad: list[int]) -> None:
    alg = ENCRYPTION[name]
    for n in good:
        check_key(alg, bytes(n), "encryption.key")
    for n in bad:
        with pytest.raises(KeyLengthError) as exc:
            check_key(alg, b"\x5a" * n, "encryption.key")
        assert exc.value.field == "encryption.key"
        assert f"got {n}" in str(exc.value)
        assert "5a" not in str(exc.value).lower()


def test_check_key_message_format() -> None:
    with pytest.raises(KeyLengthError, match=r"expected 20, 28 or 36 bytes \(key ‖ salt\), got 16"):
        check_key(ENCRYPTION["aes-gcm-16"], bytes(16), "encryption.key")
    with pytest.raises(KeyLengthError, match=r"expected 32 bytes, got 20"):
        check_key(INTEGRITY["hmac-sha256-128"], bytes(20), "integrity.key")


def test_check_key_with_alias_size_hint() -> None:
    alg, size = lookup_encryption("aes128gcm16")
    check_key(alg, bytes(20), "encryption.key", key_size=size)
    with pytest.raises(KeyLengthError, match="expected 20 bytes"):
        check_key(alg, bytes(36), "encryption.key", key_size=size)


def test_list_algorithms_marks_legacy() -> None:
    rows = {(r["kind"], r["name"]): r for r in list_algorithms()}
    assert len(rows) == len(ENCRYPTION) + len(INTEGRITY)
    assert rows[("encryption", "3des-cbc")]["legacy"] is True
    assert "[legacy]" in str(rows[("integrity", "hmac-md5-96")]["description"])
    assert rows[("encryption", "aes-gcm-16")]["legacy"] is False
    assert rows[("encryption", "aes-gcm-16")]["key_lengths"] == [20, 28, 36]
