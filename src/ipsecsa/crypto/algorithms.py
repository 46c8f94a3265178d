"""The algorithm registry: canonical names, their parameters, and every alias people paste.

The canonical names are those of ``docs/sa-format.md``. Everything an SA description may
say instead (IKEv2 transform names and numbers, Linux ``ip xfrm`` names, strongSwan proposal
keywords, Windows constants) resolves to one :class:`EncryptionAlgorithm` or
:class:`IntegrityAlgorithm` here, so that the rest of the engine only ever sees canonical objects.

Some aliases also fix the AES key size (``aes128``, ``IPSEC_CIPHER_TYPE_AES_256``,
``AUTH_AES_192_GMAC``). :func:`resolve_encryption` / :func:`resolve_integrity` return only the
algorithm (the key's length then selects the size, as sa-format.md says); callers that want the
alias's size enforced use :func:`lookup_encryption` / :func:`lookup_integrity`, which also return
that ``key_size`` hint, and pass it to :func:`check_key`.

Why the tables look the way they do:

* Specification constants (IANA numbers, RFC key and ICV sizes, Windows values) are spelled out
  with their source next to them; nothing is inferred from a name at run time except the
  strongSwan keyword grammar and the ``ip xfrm`` length suffix, which are parsed by two regexes.
* A length suffix on an ``ip xfrm`` integrity name is accepted when it is the truncation the RFC
  defines (``hmac(sha256) 128``) or a legacy algorithm we carry (``hmac(sha256) 96``, below);
  any other length is refused with the field named, because the peer would compute a different
  ICV length.
* A name that two tools read differently is refused with a "did you mean", never guessed. Bare
  ``hmac(sha256)`` is HMAC-SHA-256-96 to ``ip xfrm state add ... auth hmac(sha256)`` (the
  kernel's pre-RFC 4868 default truncation) but HMAC-SHA-256-128 to everything that follows
  RFC 4868; ``hmac(sha384)``/``hmac(sha512)`` and the suffixless ``hmac-sha256`` family are
  refused the same way, so a truncation is always written down.
* ``hmac-sha256-96`` is HMAC-SHA-256 truncated to 96 bits (draft-ietf-ipsec-ciph-sha-256-00,
  never an RFC; the old Linux default): non-standard, carried as a legacy algorithm (warned like
  3DES and MD5) so that captures of such tunnels can be read. Also reachable as ``ip xfrm``'s
  ``auth-trunc hmac(sha256) 96`` and strongSwan's ``sha256_96``/``sha2_256_96``.
* Keys never appear in messages: :func:`check_key` reports lengths only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from ipsecsa.errors import AmbiguousAlgorithmError, KeyLengthError, UnknownAlgorithmError

ENC_FIELD = "encryption.algorithm"
INTEG_FIELD = "integrity.algorithm"

# --- Specification constants -------------------------------------------------------------------

#: RFC 4303 §2.4: the ESP trailer must end on a 4-byte boundary whatever the cipher.
ESP_MIN_ALIGNMENT = 4
#: AES block size (FIPS 197); 8 for DES/3DES (FIPS 46-3).
AES_BLOCK = 16
DES_BLOCK = 8
AES_KEY_SIZES = (16, 24, 32)


@dataclass(frozen=True, slots=True)
class EncryptionAlgorithm:
    """An ESP encryption (or combined-mode) transform.

    ``key_sizes`` are the cipher key sizes in bytes *without* the salt; the SA's key material is
    ``key ‖ salt`` (RFC 4106 §8.1, RFC 4309 §7.1, RFC 7634 §2, RFC 4543 §3.2, RFC 3686 §5.1 nonce),
    so the accepted total lengths are ``k + salt_len``. ``block_size`` is the ESP padding
    alignment (the cipher block for CBC, 4 otherwise). ``icv_len`` is non-zero only for AEAD
    transforms, whose ICV is their tag.
    """

    name: str
    kind: str
    key_sizes: tuple[int, ...]
    salt_len: int
    iv_len: int
    block_size: int
    icv_len: int
    aead: bool
    legacy: bool


@dataclass(frozen=True, slots=True)
class IntegrityAlgorithm:
    """An ESP/AH integrity transform. ``icv_len`` is the (truncated) ICV length in bytes.

    ``salt_len`` (trailing, defaulted) is 4 for ``aes-gmac`` only: its key material is
    ``key ‖ salt`` like the GCM family (RFC 4543 §3.2), ``key_sizes`` excluding the salt.
    """

    name: str
    key_sizes: tuple[int, ...]
    icv_len: int
    legacy: bool
    salt_len: int = 0


def _enc(name, kind, key_sizes, salt, iv, block, icv, aead, legacy=False) -> EncryptionAlgorithm:
    return EncryptionAlgorithm(name, kind, tuple(key_sizes), salt, iv, block, icv, aead, legacy)


#: Canonical encryption algorithms (sa-format.md). Sources: RFC 2410 (null), RFC 3602 (AES-CBC),
#: RFC 3686 (AES-CTR), RFC 2451 (3DES-CBC), RFC 2405 (DES-CBC), RFC 4106 (GCM), RFC 4309 (CCM),
#: RFC 7634 (ChaCha20-Poly1305), RFC 4543 (null-aes-gmac).
ENCRYPTION: dict[str, EncryptionAlgorithm] = {
    a.name: a
    for a in (
        _enc("null", "null", (0,), 0, 0, ESP_MIN_ALIGNMENT, 0, False),
        _enc("aes-cbc", "cbc", AES_KEY_SIZES, 0, AES_BLOCK, AES_BLOCK, 0, False),
        _enc("aes-ctr", "ctr", AES_KEY_SIZES, 4, 8, ESP_MIN_ALIGNMENT, 0, False),
        _enc("3des-cbc", "cbc", (24,), 0, DES_BLOCK, DES_BLOCK, 0, False, legacy=True),
        _enc("des-cbc", "cbc", (8,), 0, DES_BLOCK, DES_BLOCK, 0, False, legacy=True),
        _enc("aes-gcm-8", "gcm", AES_KEY_SIZES, 4, 8, ESP_MIN_ALIGNMENT, 8, True),
        _enc("aes-gcm-12", "gcm", AES_KEY_SIZES, 4, 8, ESP_MIN_ALIGNMENT, 12, True),
        _enc("aes-gcm-16", "gcm", AES_KEY_SIZES, 4, 8, ESP_MIN_ALIGNMENT, 16, True),
        _enc("aes-ccm-8", "ccm", AES_KEY_SIZES, 3, 8, ESP_MIN_ALIGNMENT, 8, True),
        _enc("aes-ccm-12", "ccm", AES_KEY_SIZES, 3, 8, ESP_MIN_ALIGNMENT, 12, True),
        _enc("aes-ccm-16", "ccm", AES_KEY_SIZES, 3, 8, ESP_MIN_ALIGNMENT, 16, True),
        _enc("chacha20-poly1305", "chacha20-poly1305", (32,), 4, 8, ESP_MIN_ALIGNMENT, 16, True),
        _enc("null-aes-gmac", "gmac", AES_KEY_SIZES, 4, 8, ESP_MIN_ALIGNMENT, 16, True),
    )
}

#: Canonical integrity algorithms. Sources: RFC 2403 (MD5), RFC 2404 (SHA-1), RFC 4868 (SHA-2,
#: key = hash output length), RFC 3566 (XCBC), RFC 4494 (CMAC), RFC 4543 (GMAC, AH only).
INTEGRITY: dict[str, IntegrityAlgorithm] = {
    a.name: a
    for a in (
        IntegrityAlgorithm("none", (0,), 0, False),
        IntegrityAlgorithm("hmac-md5-96", (16,), 12, True),
        IntegrityAlgorithm("hmac-sha1-96", (20,), 12, True),
        IntegrityAlgorithm("hmac-sha256-128", (32,), 16, False),
        # draft-ietf-ipsec-ciph-sha-256-00 / old Linux default; non-standard, hence legacy.
        IntegrityAlgorithm("hmac-sha256-96", (32,), 12, True),
        IntegrityAlgorithm("hmac-sha384-192", (48,), 24, False),
        IntegrityAlgorithm("hmac-sha512-256", (64,), 32, False),
        IntegrityAlgorithm("aes-xcbc-96", (16,), 12, False),
        IntegrityAlgorithm("aes-cmac-96", (16,), 12, False),
        IntegrityAlgorithm("aes-gmac", AES_KEY_SIZES, 16, False, salt_len=4),
    )
}

_DESCRIPTIONS = {
    "null": "no encryption (RFC 2410); requires an integrity algorithm",
    "aes-cbc": "AES-CBC, 128/192/256 (RFC 3602)",
    "aes-ctr": "AES-CTR, key ‖ 4-byte nonce (RFC 3686)",
    "3des-cbc": "3DES-EDE-CBC (RFC 2451)",
    "des-cbc": "DES-CBC (RFC 2405)",
    "aes-gcm-8": "AES-GCM, 8-byte ICV, key ‖ 4-byte salt (RFC 4106)",
    "aes-gcm-12": "AES-GCM, 12-byte ICV, key ‖ 4-byte salt (RFC 4106)",
    "aes-gcm-16": "AES-GCM, 16-byte ICV, key ‖ 4-byte salt (RFC 4106)",
    "aes-ccm-8": "AES-CCM, 8-byte ICV, key ‖ 3-byte salt (RFC 4309)",
    "aes-ccm-12": "AES-CCM, 12-byte ICV, key ‖ 3-byte salt (RFC 4309)",
    "aes-ccm-16": "AES-CCM, 16-byte ICV, key ‖ 3-byte salt (RFC 4309)",
    "chacha20-poly1305": "ChaCha20-Poly1305, key ‖ 4-byte salt (RFC 7634)",
    "null-aes-gmac": "AES-GMAC, integrity only, key ‖ 4-byte salt (RFC 4543)",
    "none": "no integrity (AEAD, or encryption-only ESP)",
    "hmac-md5-96": "HMAC-MD5-96 (RFC 2403)",
    "hmac-sha1-96": "HMAC-SHA1-96 (RFC 2404)",
    "hmac-sha256-128": "HMAC-SHA-256-128 (RFC 4868)",
    "hmac-sha256-96": "HMAC-SHA-256 truncated to 96 bits (non-standard, old Linux default)",
    "hmac-sha384-192": "HMAC-SHA-384-192 (RFC 4868)",
    "hmac-sha512-256": "HMAC-SHA-512-256 (RFC 4868)",
    "aes-xcbc-96": "AES-XCBC-MAC-96 (RFC 3566)",
    "aes-cmac-96": "AES-CMAC-96 (RFC 4494)",
    "aes-gmac": "AES-GMAC for AH, key ‖ 4-byte salt (RFC 4543)",
}


class Resolved(NamedTuple):
    """An alias resolved: the algorithm, and the cipher key size (bytes) the alias fixes, if any."""

    algorithm: EncryptionAlgorithm | IntegrityAlgorithm
    key_size: int | None


# --- IKEv2 (IANA "IKEv2 Transform Type 1 / Type 3" registries) --------------------------------

#: Transform Type 1 (Encryption Algorithm Transform IDs) we implement.
IKEV2_ENCR: dict[int, tuple[str, str]] = {
    2: ("ENCR_DES", "des-cbc"),
    3: ("ENCR_3DES", "3des-cbc"),
    11: ("ENCR_NULL", "null"),
    12: ("ENCR_AES_CBC", "aes-cbc"),
    13: ("ENCR_AES_CTR", "aes-ctr"),
    14: ("ENCR_AES_CCM_8", "aes-ccm-8"),
    15: ("ENCR_AES_CCM_12", "aes-ccm-12"),
    16: ("ENCR_AES_CCM_16", "aes-ccm-16"),
    18: ("ENCR_AES_GCM_8", "aes-gcm-8"),
    19: ("ENCR_AES_GCM_12", "aes-gcm-12"),
    20: ("ENCR_AES_GCM_16", "aes-gcm-16"),
    21: ("ENCR_NULL_AUTH_AES_GMAC", "null-aes-gmac"),
    28: ("ENCR_CHACHA20_POLY1305", "chacha20-poly1305"),
}
#: Type 1 numbers that exist in the registry but are not implemented (named in the error).
IKEV2_ENCR_UNSUPPORTED: dict[int, str] = {
    1: "ENCR_DES_IV64", 4: "ENCR_RC5", 5: "ENCR_IDEA", 6: "ENCR_CAST", 7: "ENCR_BLOWFISH",
    8: "ENCR_3IDEA", 9: "ENCR_DES_IV32", 23: "ENCR_CAMELLIA_CBC", 24: "ENCR_CAMELLIA_CTR",
    25: "ENCR_CAMELLIA_CCM_8", 26: "ENCR_CAMELLIA_CCM_12", 27: "ENCR_CAMELLIA_CCM_16",
}

#: Transform Type 3 (Integrity Algorithm Transform IDs) we implement; the GMAC ids fix the key.
IKEV2_AUTH: dict[int, tuple[str, str, int | None]] = {
    0: ("AUTH_NONE", "none", None),
    1: ("AUTH_HMAC_MD5_96", "hmac-md5-96", None),
    2: ("AUTH_HMAC_SHA1_96", "hmac-sha1-96", None),
    5: ("AUTH_AES_XCBC_96", "aes-xcbc-96", None),
    8: ("AUTH_AES_CMAC_96", "aes-cmac-96", None),
    9: ("AUTH_AES_128_GMAC", "aes-gmac", 16),
    10: ("AUTH_AES_192_GMAC", "aes-gmac", 24),
    11: ("AUTH_AES_256_GMAC", "aes-gmac", 32),
    12: ("AUTH_HMAC_SHA2_256_128", "hmac-sha256-128", None),
    13: ("AUTH_HMAC_SHA2_384_192", "hmac-sha384-192", None),
    14: ("AUTH_HMAC_SHA2_512_256", "hmac-sha512-256", None),
}
IKEV2_AUTH_UNSUPPORTED: dict[int, str] = {
    3: "AUTH_DES_MAC", 4: "AUTH_KPDK_MD5", 6: "AUTH_HMAC_MD5_128", 7: "AUTH_HMAC_SHA1_160",
}

# --- Windows constants (windows-ipsec-reference.md §C.5 and the OFFLOAD_* enums) --------------
# Names only: the numeric values overlap between families (IPSEC_AUTH_TYPE MD5 = 0 = AUTH_NONE),
# so integers always mean IKEv2 numbers. CIPHER_TYPE AES_xxx alone means CBC (the GCM transform
# ids share the type but use configs 6-8); GCM is reachable through the *_TRANSFORM_ID_* names.

_WIN_ENC: dict[str, tuple[str, int | None]] = {
    "ipsec_cipher_type_des": ("des-cbc", None),
    "ipsec_cipher_type_3des": ("3des-cbc", None),
    "ipsec_cipher_type_aes_128": ("aes-cbc", 16),
    "ipsec_cipher_type_aes_192": ("aes-cbc", 24),
    "ipsec_cipher_type_aes_256": ("aes-cbc", 32),
    "ipsec_cipher_config_cbc_des": ("des-cbc", None),
    "ipsec_cipher_config_cbc_3des": ("3des-cbc", None),
    "ipsec_cipher_config_cbc_aes_128": ("aes-cbc", 16),
    "ipsec_cipher_config_cbc_aes_192": ("aes-cbc", 24),
    "ipsec_cipher_config_cbc_aes_256": ("aes-cbc", 32),
    "ipsec_cipher_config_gcm_aes_128": ("aes-gcm-16", 16),
    "ipsec_cipher_config_gcm_aes_192": ("aes-gcm-16", 24),
    "ipsec_cipher_config_gcm_aes_256": ("aes-gcm-16", 32),
    "ipsec_cipher_transform_id_cbc_des": ("des-cbc", None),
    "ipsec_cipher_transform_id_cbc_3des": ("3des-cbc", None),
    "ipsec_cipher_transform_id_aes_128": ("aes-cbc", 16),
    "ipsec_cipher_transform_id_aes_192": ("aes-cbc", 24),
    "ipsec_cipher_transform_id_aes_256": ("aes-cbc", 32),
    "ipsec_cipher_transform_id_gcm_aes_128": ("aes-gcm-16", 16),
    "ipsec_cipher_transform_id_gcm_aes_192": ("aes-gcm-16", 24),
    "ipsec_cipher_transform_id_gcm_aes_256": ("aes-gcm-16", 32),
    "offload_ipsec_conf_none": ("null", None),
    "offload_ipsec_conf_des": ("des-cbc", None),
    "offload_ipsec_conf_3_des": ("3des-cbc", None),
}

_WIN_INTEG: dict[str, tuple[str, int | None]] = {
    # The header spells the enum values IPSEC_AUTH_MD5 ...; docs say IPSEC_AUTH_TYPE_*: take both.
    **{
        f"{prefix}_{suffix}": value
        for prefix in ("ipsec_auth", "ipsec_auth_type")
        for suffix, value in (
            ("md5", ("hmac-md5-96", None)),
            ("sha_1", ("hmac-sha1-96", None)),
            ("sha_256", ("hmac-sha256-128", None)),
            ("aes_128", ("aes-gmac", 16)),
            ("aes_192", ("aes-gmac", 24)),
            ("aes_256", ("aes-gmac", 32)),
        )
    },
    "ipsec_auth_config_hmac_md5_96": ("hmac-md5-96", None),
    "ipsec_auth_config_hmac_sha_1_96": ("hmac-sha1-96", None),
    "ipsec_auth_config_hmac_sha_256_128": ("hmac-sha256-128", None),
    "ipsec_auth_config_gcm_aes_128": ("aes-gmac", 16),
    "ipsec_auth_config_gcm_aes_192": ("aes-gmac", 24),
    "ipsec_auth_config_gcm_aes_256": ("aes-gmac", 32),
    "ipsec_auth_transform_id_hmac_md5_96": ("hmac-md5-96", None),
    "ipsec_auth_transform_id_hmac_sha_1_96": ("hmac-sha1-96", None),
    "ipsec_auth_transform_id_hmac_sha_256_128": ("hmac-sha256-128", None),
    "ipsec_auth_transform_id_gcm_aes_128": ("aes-gmac", 16),
    "ipsec_auth_transform_id_gcm_aes_192": ("aes-gmac", 24),
    "ipsec_auth_transform_id_gcm_aes_256": ("aes-gmac", 32),
    "offload_ipsec_integrity_none": ("none", None),
    "offload_ipsec_integrity_md5": ("hmac-md5-96", None),
    "offload_ipsec_integrity_sha": ("hmac-sha1-96", None),
}

# --- Linux ip xfrm names ----------------------------------------------------------------------
# AEAD names carry the ICV length in bits; "auth-trunc" names the truncation in bits.

_XFRM_AEAD: dict[str, dict[int | None, str]] = {
    "rfc4106(gcm(aes))": {None: "aes-gcm-16", 64: "aes-gcm-8", 96: "aes-gcm-12", 128: "aes-gcm-16"},
    "rfc4309(ccm(aes))": {None: "aes-ccm-16", 64: "aes-ccm-8", 96: "aes-ccm-12", 128: "aes-ccm-16"},
    "rfc7539esp(chacha20,poly1305)": {None: "chacha20-poly1305", 128: "chacha20-poly1305"},
    "rfc4543(gcm(aes))": {None: "null-aes-gmac", 128: "null-aes-gmac"},
}
_XFRM_ENC: dict[str, str] = {
    "cbc(aes)": "aes-cbc",
    "rfc3686(ctr(aes))": "aes-ctr",
    "cbc(des3_ede)": "3des-cbc",
    "des3_ede": "3des-cbc",
    "cbc(des)": "des-cbc",
    "ecb(cipher_null)": "null",
    "cipher_null": "null",
}
#: Integrity name → (canonical, the truncation in bits its RFC defines).
_XFRM_INTEG: dict[str, tuple[str, int]] = {
    "hmac(md5)": ("hmac-md5-96", 96),
    "hmac(sha1)": ("hmac-sha1-96", 96),
    "hmac(sha256)": ("hmac-sha256-128", 128),
    "hmac(sha384)": ("hmac-sha384-192", 192),
    "hmac(sha512)": ("hmac-sha512-256", 256),
    "xcbc(aes)": ("aes-xcbc-96", 96),
    "cmac(aes)": ("aes-cmac-96", 96),
    "digest_null": ("none", 0),
    "rfc4543(gcm(aes))": ("aes-gmac", 128),
}
#: Further truncations accepted for an ``ip xfrm`` integrity name: legacy algorithms we carry.
_XFRM_INTEG_LEGACY: dict[tuple[str, int], str] = {("hmac(sha256)", 96): "hmac-sha256-96"}
#: Names read differently by different tools: refused without a truncation, with a suggestion.
#: ``ip xfrm ... auth hmac(sha256)`` takes the kernel's default truncation (96 bits for SHA-256,
#: a pre-RFC 4868 habit); RFC 4868 and every IKE daemon mean 128.
_AMBIGUOUS_INTEG: dict[str, str] = {
    **{
        name: "did you mean 'hmac-sha256-128' (RFC 4868) or 'hmac-sha256-96' (old Linux "
        "default)?"
        for name in ("hmac(sha256)", "hmac-sha256", "hmac-sha2-256")
    },
    **{
        name: f"did you mean 'hmac-sha{bits}-{bits // 2}' (RFC 4868)?"
        for bits in (384, 512)
        for name in (f"hmac(sha{bits})", f"hmac-sha{bits}", f"hmac-sha2-{bits}")
    },
}
_XFRM_LEN = re.compile(r"^(?P<name>\S+?)(?:\s+|/)(?P<bits>\d+)$")

# --- strongSwan proposal keywords -------------------------------------------------------------

_SWAN_ICV_BITS = {"8": 8, "64": 8, "12": 12, "96": 12, "16": 16, "128": 16, "": 16}
_SWAN_AES = re.compile(r"^aes(?P<bits>128|192|256)?(?P<mode>gcm|ccm|ctr|gmac)?(?P<icv>\d*)$")
_SWAN_ENC: dict[str, str] = {
    "3des": "3des-cbc",
    "des": "des-cbc",
    "null": "null",
    "chacha20poly1305": "chacha20-poly1305",
}
_SWAN_INTEG: dict[str, str] = {
    "md5": "hmac-md5-96",
    "sha1": "hmac-sha1-96",
    "sha": "hmac-sha1-96",
    "sha256": "hmac-sha256-128",
    "sha2_256": "hmac-sha256-128",
    "sha384": "hmac-sha384-192",
    "sha2_384": "hmac-sha384-192",
    "sha512": "hmac-sha512-256",
    "sha2_512": "hmac-sha512-256",
    "aesxcbc": "aes-xcbc-96",
    "aescmac": "aes-cmac-96",
    # strongSwan's pre-RFC 4868 interoperability keywords (its private-use AUTH_HMAC_SHA2_256_96).
    "sha256_96": "hmac-sha256-96",
    "sha2_256_96": "hmac-sha256-96",
}
_SWAN_INTEG_REFUSED = {
    "md5_128": "md5_128 (HMAC-MD5-128) is not an ESP/AH algorithm of RFC 2403",
    "sha1_160": "sha1_160 (HMAC-SHA1-160) is not an ESP/AH algorithm of RFC 2404",
}
_SWAN_GMAC_INTEG = re.compile(r"^aes(?P<bits>128|192|256)gmac$")

_IKEV2_ENCR_BY_NAME = {n.lower(): c for n, c in IKEV2_ENCR.values()}
_IKEV2_AUTH_BY_NAME = {n.lower(): (c, k) for n, c, k in IKEV2_AUTH.values()}


# --- resolution -------------------------------------------------------------------------------


def _as_ikev2_number(name: object, field: str) -> int | None:
    if isinstance(name, bool):
        raise UnknownAlgorithmError(field, "a boolean is not an algorithm")
    if isinstance(name, int):
        return name
    if not isinstance(name, str):
        raise UnknownAlgorithmError(field, f"expected a name or an IKEv2 number, got {type(name).__name__}")
    s = name.strip()
    return int(s) if s.isdigit() else None


def lookup_encryption(name: str | int) -> Resolved:
    """Resolve an encryption name/alias/number to ``Resolved(algorithm, key_size_hint)``."""
    num = _as_ikev2_number(name, ENC_FIELD)
    if num is not None:
        if num in IKEV2_ENCR:
            return Resolved(ENCRYPTION[IKEV2_ENCR[num][1]], None)
        if num in IKEV2_ENCR_UNSUPPORTED:
            raise UnknownAlgorithmError(
                ENC_FIELD, f"IKEv2 encryption transform {num} ({IKEV2_ENCR_UNSUPPORTED[num]}) "
                "is not supported")
        raise UnknownAlgorithmError(ENC_FIELD, f"unknown IKEv2 encryption transform number {num}")
    assert isinstance(name, str)
    key = name.strip().lower()
    if key in ENCRYPTION:
        return Resolved(ENCRYPTION[key], None)
    if key in _IKEV2_ENCR_BY_NAME:
        return Resolved(ENCRYPTION[_IKEV2_ENCR_BY_NAME[key]], None)
    if key in _WIN_ENC:
        canon, size = _WIN_ENC[key]
        return Resolved(ENCRYPTION[canon], size)
    # ip xfrm
    base, bits = key, None
    m = _XFRM_LEN.match(key)
    if m and "(" in m["name"]:
        base, bits = m["name"], int(m["bits"])
    if base in _XFRM_AEAD:
        table = _XFRM_AEAD[base]
        if bits not in table:
            allowed = ", ".join(str(b) for b in table if b is not None)
            raise UnknownAlgorithmError(
                ENC_FIELD, f"{base} with a {bits}-bit ICV is not defined; use one of {allowed}")
        return Resolved(ENCRYPTION[table[bits]], None)
    if base in _XFRM_ENC:
        if bits is not None:
            raise UnknownAlgorithmError(
                ENC_FIELD, f"{base} is not an AEAD algorithm and takes no ICV length")
        return Resolved(ENCRYPTION[_XFRM_ENC[base]], None)
    # strongSwan
    if key in _SWAN_ENC:
        return Resolved(ENCRYPTION[_SWAN_ENC[key]], None)
    m = _SWAN_AES.match(key)
    if m:
        size = int(m["bits"]) // 8 if m["bits"] else None
        mode, icv = m["mode"], m["icv"]
        if mode in ("gcm", "ccm") and icv in _SWAN_ICV_BITS:
            return Resolved(ENCRYPTION[f"aes-{mode}-{_SWAN_ICV_BITS[icv]}"], size)
        if not icv:
            if mode is None:
                return Resolved(ENCRYPTION["aes-cbc"], size)
            if mode == "ctr":
                return Resolved(ENCRYPTION["aes-ctr"], size)
            if mode == "gmac":
                return Resolved(ENCRYPTION["null-aes-gmac"], size)
    raise UnknownAlgorithmError(ENC_FIELD, f"unknown encryption algorithm {name!r}")


def lookup_integrity(name: str | int) -> Resolved:
    """Resolve an integrity name/alias/number to ``Resolved(algorithm, key_size_hint)``."""
    num = _as_ikev2_number(name, INTEG_FIELD)
    if num is not None:
        if num in IKEV2_AUTH:
            _, canon, size = IKEV2_AUTH[num]
            return Resolved(INTEGRITY[canon], size)
        if num in IKEV2_AUTH_UNSUPPORTED:
            raise UnknownAlgorithmError(
                INTEG_FIELD, f"IKEv2 integrity transform {num} ({IKEV2_AUTH_UNSUPPORTED[num]}) "
                "is not supported")
        raise UnknownAlgorithmError(INTEG_FIELD, f"unknown IKEv2 integrity transform number {num}")
    assert isinstance(name, str)
    key = name.strip().lower()
    if key in INTEGRITY:
        return Resolved(INTEGRITY[key], None)
    if key in _IKEV2_AUTH_BY_NAME:
        canon, size = _IKEV2_AUTH_BY_NAME[key]
        return Resolved(INTEGRITY[canon], size)
    if key in _WIN_INTEG:
        canon, size = _WIN_INTEG[key]
        return Resolved(INTEGRITY[canon], size)
    if key in _AMBIGUOUS_INTEG:
        raise AmbiguousAlgorithmError(
            INTEG_FIELD, f"{key!r} gives no ICV length and tools do not agree on one (ip xfrm's "
            f"'auth hmac(sha256)' truncates to 96 bits, RFC 4868 to 128); {_AMBIGUOUS_INTEG[key]}")
    base, bits = key, None
    m = _XFRM_LEN.match(key)
    if m and "(" in m["name"] or (m and m["name"] == "digest_null"):
        base, bits = m["name"], int(m["bits"])
    if base in _XFRM_INTEG:
        canon, rfc_bits = _XFRM_INTEG[base]
        if bits is not None and (base, bits) in _XFRM_INTEG_LEGACY:
            return Resolved(INTEGRITY[_XFRM_INTEG_LEGACY[base, bits]], None)
        if bits is not None and bits != rfc_bits:
            legacy = [f"{b} bits ({c}, legacy)" for (n, b), c in _XFRM_INTEG_LEGACY.items()
                      if n == base]
            raise UnknownAlgorithmError(
                INTEG_FIELD, f"{base} truncated to {bits} bits is not an ESP/AH algorithm we "
                f"know; supported: {' or '.join([f'{rfc_bits} bits ({canon})', *legacy])}")
        return Resolved(INTEGRITY[canon], None)
    if key in _SWAN_INTEG:
        return Resolved(INTEGRITY[_SWAN_INTEG[key]], None)
    if key in _SWAN_INTEG_REFUSED:
        raise UnknownAlgorithmError(INTEG_FIELD, _SWAN_INTEG_REFUSED[key])
    m = _SWAN_GMAC_INTEG.match(key)
    if m:
        return Resolved(INTEGRITY["aes-gmac"], int(m["bits"]) // 8)
    raise UnknownAlgorithmError(INTEG_FIELD, f"unknown integrity algorithm {name!r}")


def resolve_encryption(name: str | int) -> EncryptionAlgorithm:
    """Canonical name, IKEv2 name/number, ip xfrm name, strongSwan keyword or Windows constant.

    Integers (and digit strings) are IKEv2 Transform Type 1 numbers. Raises
    :class:`UnknownAlgorithmError` naming ``encryption.algorithm``.
    """
    alg = lookup_encryption(name).algorithm
    assert isinstance(alg, EncryptionAlgorithm)
    return alg


def resolve_integrity(name: str | int) -> IntegrityAlgorithm:
    """Like :func:`resolve_encryption` for integrity (IKEv2 Transform Type 3 numbers)."""
    alg = lookup_integrity(name).algorithm
    assert isinstance(alg, IntegrityAlgorithm)
    return alg


def _fmt_sizes(sizes: list[int]) -> str:
    words = [str(s) for s in sizes]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def accepted_key_lengths(
    alg: EncryptionAlgorithm | IntegrityAlgorithm, key_size: int | None = None
) -> list[int]:
    """Total key-material lengths (key ‖ salt) ``alg`` accepts, optionally for one cipher size."""
    sizes = alg.key_sizes if key_size is None else tuple(s for s in alg.key_sizes if s == key_size)
    return [s + alg.salt_len for s in sizes]


def check_key(
    alg: EncryptionAlgorithm | IntegrityAlgorithm,
    key: bytes,
    field: str,
    *,
    key_size: int | None = None,
) -> None:
    """Raise :class:`KeyLengthError` naming ``field`` unless ``len(key)`` suits ``alg``.

    ``key_size`` (from :func:`lookup_encryption`/:func:`lookup_integrity`) restricts the cipher
    key size to the one an alias like ``aes128`` fixed. Only lengths are reported, never bytes.
    """
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise KeyLengthError(field, f"expected bytes, got {type(key).__name__}")
    allowed = accepted_key_lengths(alg, key_size)
    if not allowed:
        raise KeyLengthError(field, f"{alg.name} has no {key_size}-byte key size")
    n = len(key)
    if n not in allowed:
        salt = " (key ‖ salt)" if alg.salt_len else ""
        raise KeyLengthError(field, f"expected {_fmt_sizes(allowed)} bytes{salt}, got {n}")


def list_algorithms() -> list[dict[str, object]]:
    """Every canonical algorithm for listings: kind, name, accepted key lengths, legacy flag."""
    out: list[dict[str, object]] = []
    for kind, table in (("encryption", ENCRYPTION), ("integrity", INTEGRITY)):
        for alg in table.values():
            out.append(
                {
                    "kind": kind,
                    "name": alg.name,
                    "key_lengths": accepted_key_lengths(alg),
                    "legacy": alg.legacy,
                    "description": _DESCRIPTIONS[alg.name] + (" [legacy]" if alg.legacy else ""),
                }
            )
    return out


__all__ = [
    "ENCRYPTION",
    "INTEGRITY",
    "EncryptionAlgorithm",
    "IntegrityAlgorithm",
    "Resolved",
    "accepted_key_lengths",
    "check_key",
    "list_algorithms",
    "lookup_encryption",
    "lookup_integrity",
    "resolve_encryption",
    "resolve_integrity",
]
