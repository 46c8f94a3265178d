"""IPSEC_SA_BUNDLE0/1 → the SA descriptions of ``docs/sa-format.md`` → data-path SAs.

The WFP structures say *which* transform and *which* key; everything else an SA needs comes
from the context (its traffic: addresses, mode; GetSpi's UDP encapsulation). The transform and
key-blob rules are reference C.5, F.5 and F.6; the SA itself is then built by the same parser
and validator every other front end uses (``ipsecsa.config.parse_sa``), so no rule is written
twice. It is built at first need, not at the Add (:class:`.contexts.AddedSas`), and the Add does
not parse the descriptions either: what :func:`check_bundle` and the engine's context checks
admit is exactly what ``parse_sa`` and ``Bundle`` accept (the transforms, key sizes, SPIs and
ports are the table's and the checks'; addresses, mode and limits the context's), which
``tests/wfp/test_deferred_sas.py`` proves by comparing both verdicts over random bundles of every
transform, cipher, key size, lifetime, UDP encapsulation, IP version and mode. The format's
warnings (a legacy algorithm, encryption without integrity) are logged at the Add all the same
(:func:`log_format_warnings`).

**ipsecsa's choices** (Windows says nothing):

* Sequence numbers are 32-bit (no bundle flag asks for ESN) and the inbound replay window is
  the format's default of 64 packets.
* GCM key blobs are key ‖ 4-byte salt (F.6), so they map onto ``aes-gcm-16`` unchanged; an auth
  GCM id in AH or ESP_AUTH is AES-GMAC (RFC 4543): ``aes-gmac`` in AH, ``null-aes-gmac`` in ESP.
* ``IPSEC_TRANSFORM_ESP_AUTH_FW`` (send the first packet twice, then clear text) is not
  implemented: ERROR_NOT_SUPPORTED.
* Bundle lifetimes: kilobytes and packets become the SAs' hard limits (the data path enforces
  them per packet); seconds and idle time are timed by the engine's clock (:mod:`.contexts`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from ipsecsa.config import parse_sa
from ipsecsa.config.model import log_warnings
from ipsecsa.wfp import constants as C
from ipsecsa.wfp.status import Fail
from ipsecsa.wfp.types import CountMismatchError, effective_count

# (cipherType, cipherConfig) -> (canonical algorithm, key bytes without salt, salt bytes).
_CIPHERS: dict[tuple[int, int], tuple[str, int, int]] = {
    (C.IPSEC_CIPHER_TYPE_DES, C.IPSEC_CIPHER_CONFIG_CBC_DES): ("des-cbc", 8, 0),
    (C.IPSEC_CIPHER_TYPE_3DES, C.IPSEC_CIPHER_CONFIG_CBC_3DES): ("3des-cbc", 24, 0),
    (C.IPSEC_CIPHER_TYPE_AES_128, C.IPSEC_CIPHER_CONFIG_CBC_AES_128): ("aes-cbc", 16, 0),
    (C.IPSEC_CIPHER_TYPE_AES_192, C.IPSEC_CIPHER_CONFIG_CBC_AES_192): ("aes-cbc", 24, 0),
    (C.IPSEC_CIPHER_TYPE_AES_256, C.IPSEC_CIPHER_CONFIG_CBC_AES_256): ("aes-cbc", 32, 0),
    (C.IPSEC_CIPHER_TYPE_AES_128, C.IPSEC_CIPHER_CONFIG_GCM_AES_128): ("aes-gcm-16", 16, 4),
    (C.IPSEC_CIPHER_TYPE_AES_192, C.IPSEC_CIPHER_CONFIG_GCM_AES_192): ("aes-gcm-16", 24, 4),
    (C.IPSEC_CIPHER_TYPE_AES_256, C.IPSEC_CIPHER_CONFIG_GCM_AES_256): ("aes-gcm-16", 32, 4),
}
# (authType, authConfig) -> (canonical integrity algorithm or "gmac", key bytes, salt bytes).
_AUTHS: dict[tuple[int, int], tuple[str, int, int]] = {
    (C.IPSEC_AUTH_MD5, C.IPSEC_AUTH_CONFIG_HMAC_MD5_96): ("hmac-md5-96", 16, 0),
    (C.IPSEC_AUTH_SHA_1, C.IPSEC_AUTH_CONFIG_HMAC_SHA_1_96): ("hmac-sha1-96", 20, 0),
    (C.IPSEC_AUTH_SHA_256, C.IPSEC_AUTH_CONFIG_HMAC_SHA_256_128): ("hmac-sha256-128", 32, 0),
    (C.IPSEC_AUTH_AES_128, C.IPSEC_AUTH_CONFIG_GCM_AES_128): ("gmac", 16, 4),
    (C.IPSEC_AUTH_AES_192, C.IPSEC_AUTH_CONFIG_GCM_AES_192): ("gmac", 24, 4),
    (C.IPSEC_AUTH_AES_256, C.IPSEC_AUTH_CONFIG_GCM_AES_256): ("gmac", 32, 4),
}

#: C.4's documented bundle flags; anything else is FWP_E_INVALID_FLAGS (F.11). SA_OFFLOADED and
#: the other newer bits are the engine's to set, not the caller's.
BUNDLE_FLAGS_VALID = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x200 | 0x400 | 0x800 \
    | 0x1000 | 0x2000 | 0x4000


def _uint(value: object, bits: int, name: str) -> int:
    if type(value) is int and 0 <= value < 1 << bits:  # the common case, checked at once
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise Fail(C.FWP_E_INVALID_PARAMETER, f"{name} must be an integer")
    if not 0 <= value < 1 << bits:
        raise Fail(C.FWP_E_OUT_OF_BOUNDS, f"{name} out of range")
    return value


def _blob(blob: Any, name: str, bad: int) -> bytes:
    if blob is None:
        raise Fail(C.FWP_E_NULL_POINTER, f"{name} is NULL")
    data = getattr(blob, "data", None)
    if data is None:
        data = b""
    if not isinstance(data, (bytes, bytearray)):
        raise Fail(C.FWP_E_INVALID_PARAMETER, f"{name}.data must be bytes")
    try:
        effective_count(blob, "data")
    except CountMismatchError as exc:
        raise Fail(bad, f"{name}.size disagrees with its data") from exc
    return bytes(data)


def _cipher(info: Any) -> tuple[str, bytes]:
    if info is None:
        raise Fail(C.FWP_E_NULL_POINTER, "cipher information is NULL")
    t = info.cipherTransform
    if t is None:
        raise Fail(C.FWP_E_NULL_POINTER, "cipherTransform is NULL")
    if t.cryptoModuleId is not None:
        raise Fail(C.FWP_E_RESERVED, "cipherTransform.cryptoModuleId must be NULL")
    tid = t.cipherTransformId
    ctype = _uint(getattr(tid, "cipherType", None), 32, "cipherType")
    if not 1 <= ctype < C.IPSEC_CIPHER_TYPE_MAX:
        raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"cipherType {ctype}")
    spec = _CIPHERS.get((ctype, getattr(tid, "cipherConfig", None)))  # type: ignore[arg-type]
    if spec is None:
        raise Fail(C.FWP_E_INVALID_CIPHER_TRANSFORM, "unknown cipher transform id")
    key = _blob(info.cipherKey, "cipherKey", C.FWP_E_INVALID_CIPHER_TRANSFORM)
    if len(key) != spec[1] + spec[2]:
        raise Fail(C.FWP_E_INVALID_CIPHER_TRANSFORM,
                   f"{spec[0]} takes a {spec[1] + spec[2]}-byte key blob, not {len(key)}")
    return spec[0], key


def _auth(info: Any) -> tuple[str, bytes, int]:
    """(algorithm or "gmac", key, key size without salt)."""
    if info is None:
        raise Fail(C.FWP_E_NULL_POINTER, "auth information is NULL")
    t = info.authTransform
    if t is None:
        raise Fail(C.FWP_E_NULL_POINTER, "authTransform is NULL")
    if t.cryptoModuleId is not None:
        raise Fail(C.FWP_E_RESERVED, "authTransform.cryptoModuleId must be NULL")
    tid = t.authTransformId
    atype = _uint(getattr(tid, "authType", None), 32, "authType")
    if atype >= C.IPSEC_AUTH_MAX:
        raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"authType {atype}")
    spec = _AUTHS.get((atype, getattr(tid, "authConfig", None)))  # type: ignore[arg-type]
    if spec is None:
        raise Fail(C.FWP_E_INVALID_AUTH_TRANSFORM, "unknown auth transform id")
    key = _blob(info.authKey, "authKey", C.FWP_E_INVALID_AUTH_TRANSFORM)
    return spec[0], key, spec[1]


def _auth_key_ok(alg: str, key: bytes, size: int) -> None:
    want = size + (4 if alg == "gmac" else 0)
    if len(key) != want:
        raise Fail(C.FWP_E_INVALID_AUTH_TRANSFORM,
                   f"{alg} takes a {want}-byte key blob, not {len(key)}")


def sa_algorithms(sa: Any) -> dict[str, Any]:
    """The protocol, encryption and integrity of one IPSEC_SA0, as sa-format keys."""
    if sa is None:
        raise Fail(C.FWP_E_NULL_POINTER, "saList entry is NULL")
    ttype = _uint(sa.saTransformType, 32, "saTransformType")
    if not 1 <= ttype < C.IPSEC_TRANSFORM_TYPE_MAX:
        raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"saTransformType {ttype}")
    if ttype == C.IPSEC_TRANSFORM_AH:
        alg, key, size = _auth(sa.ahInformation)
        _auth_key_ok(alg, key, size)
        return {"protocol": "ah",
                "integrity": {"algorithm": "aes-gmac" if alg == "gmac" else alg,
                              "key": key.hex()}}
    if ttype == C.IPSEC_TRANSFORM_ESP_AUTH:
        alg, key, size = _auth(sa.espAuthInformation)
        _auth_key_ok(alg, key, size)
        if alg == "gmac":
            return {"protocol": "esp", "encryption": {"algorithm": "null-aes-gmac",
                                                      "key": key.hex()}}
        return {"protocol": "esp", "encryption": {"algorithm": "null", "key": ""},
                "integrity": {"algorithm": alg, "key": key.hex()}}
    if ttype == C.IPSEC_TRANSFORM_ESP_CIPHER:
        calg, ckey = _cipher(sa.espCipherInformation)
        if calg.startswith("aes-gcm"):
            raise Fail(C.FWP_E_INVALID_TRANSFORM_COMBINATION,
                       "GCM ciphers need ESP_AUTH_AND_CIPHER with the GCM auth id (F.6)")
        return {"protocol": "esp", "encryption": {"algorithm": calg, "key": ckey.hex()}}
    if ttype == C.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER:
        both = sa.espAuthAndCipherInformation
        if both is None:
            raise Fail(C.FWP_E_NULL_POINTER, "espAuthAndCipherInformation is NULL")
        calg, ckey = _cipher(both.saCipherInformation)
        aalg, akey, asize = _auth(both.saAuthInformation)
        if calg.startswith("aes-gcm"):
            if aalg != "gmac" or asize + 4 != len(ckey) or akey not in (b"", ckey):
                raise Fail(C.FWP_E_INVALID_TRANSFORM_COMBINATION,
                           "a GCM cipher needs the GCM auth id of the same key size, with an "
                           "empty or identical auth key blob (F.6)")
            return {"protocol": "esp", "encryption": {"algorithm": calg, "key": ckey.hex()}}
        if aalg == "gmac":
            raise Fail(C.FWP_E_INVALID_TRANSFORM_COMBINATION,
                       "a GCM auth id with a non-GCM cipher")
        _auth_key_ok(aalg, akey, asize)
        return {"protocol": "esp", "encryption": {"algorithm": calg, "key": ckey.hex()},
                "integrity": {"algorithm": aalg, "key": akey.hex()}}
    raise Fail(C.ERROR_NOT_SUPPORTED, "IPSEC_TRANSFORM_ESP_AUTH_FW is not implemented")


class BundleSpec(NamedTuple):
    """A validated bundle: its SAs' algorithm parts (ESP first) and the limits it sets (a
    named tuple: made at every Add, where a frozen dataclass costs ~3 µs more)."""

    sas: tuple[dict[str, Any], ...]
    spis: tuple[int, ...]
    lifetime_seconds: int
    kilobytes: int
    packets: int
    idle_seconds: int
    flags: int


def check_bundle(bundle: Any, version1: bool) -> BundleSpec:
    """F.5/F.6/F.11 checks of an IPSEC_SA_BUNDLE0/1 (not the SPI-against-state rules)."""
    flags = _uint(bundle.flags, 32, "flags")
    if flags & ~BUNDLE_FLAGS_VALID:
        raise Fail(C.FWP_E_INVALID_FLAGS, f"bundle flags 0x{flags:x}")
    lt = bundle.lifetime
    seconds = kb = packets = 0
    if lt is not None:
        seconds = _uint(lt.lifetimeSeconds, 32, "lifetimeSeconds")
        kb = _uint(lt.lifetimeKilobytes, 32, "lifetimeKilobytes")
        packets = _uint(lt.lifetimePackets, 32, "lifetimePackets")
    idle = _uint(bundle.idleTimeoutSeconds, 32, "idleTimeoutSeconds")
    if bundle.numSAs and bundle.saList is None:
        raise Fail(C.FWP_E_NULL_POINTER, "saList is NULL")
    try:
        n = effective_count(bundle, "saList")
    except CountMismatchError as exc:
        raise Fail(C.FWP_E_INVALID_PARAMETER, str(exc)) from exc
    if n not in (1, 2):
        raise Fail(C.FWP_E_INVALID_TRANSFORM_COMBINATION, f"numSAs {n}: 1 or 2 only")
    parts = tuple(sa_algorithms(sa) for sa in bundle.saList)
    if n == 2 and (parts[0]["protocol"], parts[1]["protocol"]) != ("esp", "ah"):
        raise Fail(C.FWP_E_INVALID_TRANSFORM_COMBINATION, "two SAs must be ESP (0) then AH (1)")
    spis = tuple(_uint(sa.spi, 32, "spi") for sa in bundle.saList)
    for spi in spis:
        if spi < 256:
            raise Fail(C.FWP_E_INVALID_PARAMETER, f"SPI {spi} is reserved (RFC 4303)")
    return BundleSpec(parts, spis, seconds, kb, packets, idle, flags)


def describe(part: dict[str, Any], spi: int, direction: str, mode: str, local: str,
             remote: str, encap: tuple[int, int] | None, spec: BundleSpec) -> dict[str, Any]:
    """One complete SA description for the data path (sa-format keys)."""
    obj: dict[str, Any] = dict(part)
    obj.update(spi=spi, mode=mode, direction=direction,
               src=local if direction == "outbound" else remote,
               dst=remote if direction == "outbound" else local)
    if mode == "tunnel" and obj["protocol"] == "ah":
        obj["mode"] = "transport"  # AH of an ESP+AH bundle covers the packet ESP built
    hard: dict[str, int] = {}
    if spec.kilobytes:
        hard["bytes"] = spec.kilobytes * 1024
    if spec.packets:
        hard["packets"] = spec.packets
    if hard:
        obj["lifetime"] = {"hard": hard}
    if encap is not None and obj["protocol"] == "esp":
        local_port, remote_port = encap
        sport, dport = (local_port, remote_port) if direction == "outbound" \
            else (remote_port, local_port)
        obj["encapsulation"] = {"type": "udp", "sport": sport, "dport": dport}
    return obj


class Shape:
    """What :func:`ipsecsa.sad.bundle_problem` reads of an SA, from its description: a bundle
    of descriptions is refused at the Add for what would refuse it at the build."""

    __slots__ = ("direction", "dst", "encapsulation", "mode", "protocol", "src")

    def __init__(self, description: dict[str, Any]) -> None:
        d = description
        self.protocol, self.direction, self.mode = d["protocol"], d["direction"], d["mode"]
        self.src, self.dst, self.encapsulation = d["src"], d["dst"], d.get("encapsulation")


#: ``parse_sa``'s warnings of an SA by (protocol, encryption, integrity): they depend on nothing
#: else (``SaConfig``'s rules), and the combinations a Windows bundle can make are few.
_WARNINGS: dict[tuple[str, str | None, str | None], tuple[str, ...]] = {}


def log_format_warnings(descriptions: Iterable[dict[str, Any]]) -> None:
    """Log what ``parse_sa`` warns of these descriptions, as it logs it: the first SA of each
    algorithm combination is parsed (which logs), the next ones logged from what it said."""
    for d in descriptions:
        enc, integ = d.get("encryption"), d.get("integrity")
        key = (d["protocol"], enc and enc["algorithm"], integ and integ["algorithm"])
        texts = _WARNINGS.get(key)
        if texts is None:
            _WARNINGS[key] = tuple(parse_sa(d).warnings)
        elif texts:
            log_warnings(d["spi"], d["protocol"], texts)
