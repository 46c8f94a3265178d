"""Independent cross-check of ESP bodies against scapy's scapy.layers.ipsec (test-only oracle).

scapy builds the ESP packet (padding, IV, AAD/ICV, ESN) with its own code; our transform must
produce the same bytes for the same IV, and open scapy's output.
"""

from __future__ import annotations

import os

import pytest

ipsec = pytest.importorskip("scapy.layers.ipsec")
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from ipsecsa.crypto import make_esp_transform, resolve_encryption, resolve_integrity

CASES = [
    # (scapy crypt, scapy auth, our enc, our integ, cipher key bytes, salt bytes, integ key bytes)
    ("AES-GCM", "NULL", "aes-gcm-16", "none", 16, 4, 0),
    ("AES-GCM", "NULL", "aes-gcm-16", "none", 32, 4, 0),
    ("CHACHA20-POLY1305", "NULL", "chacha20-poly1305", "none", 32, 4, 0),
    ("AES-CBC", "HMAC-SHA1-96", "aes-cbc", "hmac-sha1-96", 16, 0, 20),
    ("AES-CBC", "SHA2-256-128", "aes-cbc", "hmac-sha256-128", 32, 0, 32),
    ("AES-CTR", "SHA2-256-128", "aes-ctr", "hmac-sha256-128", 16, 4, 32),
    ("AES-NULL-GMAC", "NULL", "null-aes-gmac", "none", 16, 4, 0),
]


@pytest.mark.parametrize("esn", [False, True], ids=["32bit", "esn"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[2]}+{c[3]}" for c in CASES])
def test_matches_scapy(case: tuple, esn: bool) -> None:
    s_crypt, s_auth, enc, integ, klen, slen, ilen = case
    ek = os.urandom(klen + slen)
    ik = os.urandom(ilen) if ilen else None
    seq_hi, seq_lo, spi = (7 if esn else 0), 0x1234, 0xC0FFEE
    seq = (seq_hi << 32) | seq_lo
    e = resolve_encryption(enc)
    iv = os.urandom(e.iv_len)
    sa = ipsec.SecurityAssociation(
        ipsec.ESP, spi=spi, crypt_algo=s_crypt, crypt_key=ek, auth_algo=s_auth, auth_key=ik,
        esn_en=esn, esn=seq_hi,
    )
    pkt = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2) / Raw(os.urandom(41))
    out = sa.encrypt(pkt, seq_num=seq_lo, iv=iv)
    esp = out[ipsec.ESP]
    body = bytes(esp.data)
    assert body[: e.iv_len] == iv
    hdr = spi.to_bytes(4, "big") + seq_lo.to_bytes(4, "big")
    t = make_esp_transform(
        e, ek, resolve_integrity(integ), ik, esn=esn, unsafe_iv_source=lambda s: iv
    )
    plaintext = t.open(hdr, seq, iv, body[e.iv_len :])
    assert plaintext is not None, "our open() rejected scapy's packet"
    assert plaintext[-1] == 17  # next header: UDP (transport mode)
    got_iv, got = t.seal(hdr, seq, plaintext)
    assert got_iv + got == body  # byte-identical to scapy's ESP body
