"""Known-answer tests for ipsecsa.crypto, loaded from tests/vectors/*.json.

Sources (each file names its RFC section in its top-level "source"):
* rfc2202_hmac_md5_sha1.json - RFC 2202 §2/§3, truncated per RFC 2403 / RFC 2404;
* rfc4868_hmac_sha2.json     - RFC 4868 §2.7.2;
* rfc3566_aes_xcbc.json      - RFC 3566 §4.6;
* rfc4494_aes_cmac.json      - RFC 4494 §4 (= RFC 4493 §4 values, truncated);
* rfc3686_aes_ctr.json       - RFC 3686 §6;
* gcm_esp_draft_mcgrew.json  - draft-mcgrew-gcm-test-01 §4 (ESP GCM/GMAC packets, read here to
  check the transforms end to end, including ESN AAD).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipsecsa.crypto import make_ah_integrity, make_esp_transform, resolve_encryption
from ipsecsa.crypto.algorithms import INTEGRITY
from ipsecsa.crypto.transforms import _make_mac
from ipsecsa.crypto.xcbc import AesXcbcMac

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _load(name: str) -> list[dict]:
    data = json.loads((VECTORS / name).read_text())
    assert data["source"].startswith(("RFC", "draft"))
    return data["vectors"]


def _ids(vs: list[dict]) -> list[str]:
    return [v["name"] for v in vs]


RFC2202 = _load("rfc2202_hmac_md5_sha1.json")
RFC4868 = _load("rfc4868_hmac_sha2.json")
RFC3566 = _load("rfc3566_aes_xcbc.json")
RFC4494 = _load("rfc4494_aes_cmac.json")
RFC3686 = _load("rfc3686_aes_ctr.json")


@pytest.mark.parametrize("v", RFC2202, ids=_ids(RFC2202))
def test_rfc2202_hmac_96(v: dict) -> None:
    alg = INTEGRITY[v["algorithm"]]
    key, data = bytes.fromhex(v["key"]), bytes.fromhex(v["data"])
    assert _make_mac(alg, key).digest(data) == bytes.fromhex(v["icv_96"])
    if len(key) in alg.key_sizes:  # a valid ESP/AH key: also through the public AH object
        ah = make_ah_integrity(alg, key, esn=False)
        assert ah.compute(data, 1) == bytes.fromhex(v["icv_96"])
        assert ah.verify(data, 1, bytes.fromhex(v["icv_96"]))


@pytest.mark.parametrize("v", RFC4868, ids=_ids(RFC4868))
def test_rfc4868_hmac_sha2(v: dict) -> None:
    alg = INTEGRITY[v["algorithm"]]
    key, data, icv = bytes.fromhex(v["key"]), bytes.fromhex(v["data"]), bytes.fromhex(v["icv"])
    assert len(icv) == alg.icv_len
    ah = make_ah_integrity(alg, key, esn=False)
    assert ah.compute(data, 0) == icv
    assert ah.verify(data, 0, icv)
    assert not ah.verify(data + b"\x00", 0, icv)


SHA256_VECTORS = [v for v in RFC4868 if v["algorithm"] == "hmac-sha256-128"]


@pytest.mark.parametrize("v", SHA256_VECTORS, ids=_ids(SHA256_VECTORS))
def test_legacy_hmac_sha256_96_is_the_rfc4868_value_truncated_to_96_bits(v: dict) -> None:
    """hmac-sha256-96 (non-standard, old Linux default) keeps the leftmost 96 bits of the same
    HMAC-SHA-256 whose leftmost 128 bits RFC 4868 §2.7.2 lists (truncation as in RFC 2104 §5)."""
    key, data = bytes.fromhex(v["key"]), bytes.fromhex(v["data"])
    icv96 = bytes.fromhex(v["icv"])[:12]
    ah = make_ah_integrity(INTEGRITY["hmac-sha256-96"], key, esn=False)
    assert ah.icv_len == 12
    assert ah.compute(data, 0) == icv96
    assert ah.verify(data, 0, icv96)
    assert not ah.verify(data, 0, bytes.fromhex(v["icv"]))  # the 128-bit ICV is another one


@pytest.mark.parametrize("v", RFC3566, ids=_ids(RFC3566))
def test_rfc3566_aes_xcbc(v: dict) -> None:
    key, data = bytes.fromhex(v["key"]), bytes.fromhex(v["data"])
    assert AesXcbcMac(key).mac(data) == bytes.fromhex(v["mac"])
    ah = make_ah_integrity(INTEGRITY["aes-xcbc-96"], key, esn=False)
    assert ah.compute(data, 0) == bytes.fromhex(v["icv_96"])


@pytest.mark.parametrize("v", RFC4494, ids=_ids(RFC4494))
def test_rfc4494_aes_cmac_96(v: dict) -> None:
    key, data = bytes.fromhex(v["key"]), bytes.fromhex(v["data"])
    ah = make_ah_integrity(INTEGRITY["aes-cmac-96"], key, esn=False)
    assert ah.compute(data, 0) == bytes.fromhex(v["icv_96"])
    assert ah.verify(data, 0, bytes.fromhex(v["mac"])[:12])


@pytest.mark.parametrize("v", RFC3686, ids=_ids(RFC3686))
def test_rfc3686_aes_ctr(v: dict) -> None:
    iv = bytes.fromhex(v["iv"])
    t = make_esp_transform(
        resolve_encryption("aes-ctr"),
        bytes.fromhex(v["key"] + v["nonce"]),
        None,
        None,
        esn=False,
        unsafe_iv_source=lambda seq: iv,
    )
    hdr = bytes(8)
    got_iv, ct = t.seal(hdr, 1, bytes.fromhex(v["plaintext"]))
    assert got_iv == iv
    assert ct == bytes.fromhex(v["ciphertext"])
    assert t.open(hdr, 1, iv, ct) == bytes.fromhex(v["plaintext"])


GCM = json.loads((VECTORS / "gcm_esp_draft_mcgrew.json").read_text())["vectors"]
assert GCM, "gcm_esp_draft_mcgrew.json holds no vectors"


@pytest.mark.parametrize("v", GCM, ids=_ids(GCM))
def test_draft_mcgrew_gcm_gmac_esp(v: dict) -> None:
    name = "null-aes-gmac" if v["gmac"] else f"aes-gcm-{v['icv_len']}"
    iv = bytes.fromhex(v["iv"])
    seq = v["seq"]
    t = make_esp_transform(
        resolve_encryption(name),
        bytes.fromhex(v["key"] + v["salt"]),
        None,
        None,
        esn=v["esn"],
        unsafe_iv_source=lambda s: iv,
    )
    hdr = v["spi"].to_bytes(4, "big") + (seq & 0xFFFFFFFF).to_bytes(4, "big")
    packet = bytes.fromhex(v["packet_out"])
    body = packet[16:]
    if v["gmac"]:
        plaintext = bytes.fromhex(v["aad"])[16:]
    else:
        plaintext = bytes.fromhex(v["plaintext"])
    got_iv, out = t.seal(hdr, seq, plaintext)
    assert hdr + got_iv + out == packet
    assert t.open(hdr, seq, iv, body) == plaintext
    if v["esn"]:  # a wrong seq-high (not on the wire) must fail the ICV
        assert t.open(hdr, seq ^ (1 << 40), iv, body) is None
    assert t.open(bytes([hdr[0] ^ 1]) + hdr[1:], seq, iv, body) is None  # SPI is in the AAD
    if not v["esn"]:  # without ESN the wire seq-low is the AAD's sequence number
        assert t.open(hdr[:7] + bytes([hdr[7] ^ 1]), seq, iv, body) is None
