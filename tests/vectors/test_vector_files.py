"""Independent checks of the published ESP test-vector files in this directory.

Every vector is recomputed with raw ``cryptography`` primitives (no ipsecsa
code is imported), so a transcription typo in any key, IV, plaintext, AAD,
ciphertext, tag or packet field makes a test fail.  Packet-level fields are
cross-checked against each other (ESP header layout, IPv4 header length,
protocol and checksum, ESP trailer) as well.
"""

import json
import re
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305

HERE = Path(__file__).resolve().parent

FILES = {
    "cbc": "rfc3602_aes_cbc_esp.json",
    "gcm": "gcm_esp_draft_mcgrew.json",
    "chacha": "rfc7634_chacha20_poly1305_esp.json",
    "ctr": "rfc3686_aes_ctr_esp.json",
    "ccm": "rfc3610_aes_ccm.json",
}

HEX_FIELDS_SKIP = {"name", "kind", "description", "mode", "algorithm", "plaintext_ascii",
                   "source_address", "destination_address", "gateway_address", "peer_address",
                   "ciphertext_note"}
HEX_RE = re.compile(r"^(?:[0-9a-f]{2})*$")


def load(key):
    with open(HERE / FILES[key], encoding="utf-8") as f:
        return json.load(f)


def vectors(key, pred=lambda v: True):
    doc = load(key)
    return [pytest.param(v, id=v["name"].replace(" ", "_")) for v in doc["vectors"] if pred(v)]


def b(s):
    return bytes.fromhex(s)


# ---------------------------------------------------------------- helpers

def ipv4_checksum(header: bytes) -> int:
    total = 0
    for (word,) in struct.iter_unpack("!H", header):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def check_ipv4(packet: bytes, proto=None, src=None, dst=None):
    hdr = packet[:20]
    assert hdr[0] == 0x45, "expected IPv4 with a 20-octet header"
    assert struct.unpack("!H", hdr[2:4])[0] == len(packet), "IPv4 total length"
    assert ipv4_checksum(hdr) == 0, "IPv4 header checksum"
    if proto is not None:
        assert hdr[9] == proto
    if src is not None:
        assert ".".join(str(x) for x in hdr[12:16]) == src
    if dst is not None:
        assert ".".join(str(x) for x in hdr[16:20]) == dst


def split_trailer(plaintext: bytes):
    """Return (data, padding, pad_length, next_header) of an ESP payload."""
    next_header = plaintext[-1]
    pad_length = plaintext[-2]
    padding = plaintext[-2 - pad_length:-2]
    data = plaintext[:-2 - pad_length]
    return data, padding, pad_length, next_header


def default_padding(n):
    return bytes(range(1, n + 1))


def aes_cbc(key, iv, data, encrypt=True):
    c = Cipher(algorithms.AES(key), modes.CBC(iv))
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(data) + op.finalize()


def aes_ecb_block(key, block):
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


# ---------------------------------------------------------------- all files

@pytest.mark.parametrize("key", sorted(FILES))
def test_file_shape(key):
    doc = load(key)
    assert doc["source"] and doc["notes"]
    assert isinstance(doc["vectors"], list) and doc["vectors"]
    names = [v["name"] for v in doc["vectors"]]
    assert len(names) == len(set(names))
    for v in doc["vectors"]:
        for field, value in v.items():
            if field in HEX_FIELDS_SKIP or not isinstance(value, str):
                continue
            assert HEX_RE.match(value), f"{v['name']}.{field} is not lowercase hex"
        for field in ("spi", "seq"):
            if field in v:
                assert isinstance(v[field], int) and v[field] >= 0


# ---------------------------------------------------------------- RFC 3602 AES-CBC

@pytest.mark.parametrize("v", vectors("cbc"))
def test_rfc3602_aes_cbc(v):
    key, iv, pt, ct = b(v["key"]), b(v["iv"]), b(v["plaintext"]), b(v["ciphertext"])
    assert len(key) == 16 and len(iv) == 16
    assert len(pt) % 16 == 0 and len(ct) == len(pt)
    if "plaintext_ascii" in v:
        assert v["plaintext_ascii"].encode("ascii") == pt
    assert aes_cbc(key, iv, pt) == ct
    assert aes_cbc(key, iv, ct, encrypt=False) == pt


@pytest.mark.parametrize("v", vectors("cbc", lambda v: v["kind"] == "esp-packet"))
def test_rfc3602_esp_packet(v):
    iv, pt, ct = b(v["iv"]), b(v["plaintext"]), b(v["ciphertext"])
    packet_in, packet_out = b(v["packet_in"]), b(v["packet_out"])
    assert v["esn"] is False and v["icv_len"] == 0

    # ESP payload = inner data || padding || pad length || next header
    data, padding, pad_length, next_header = split_trailer(pt)
    assert pad_length == v["pad_length"] and next_header == v["next_header"]
    assert padding == b(v["padding"]) == default_padding(pad_length)
    assert packet_in == b(v["inner_ip_header"]) + b(v["inner_data"])
    check_ipv4(packet_in, src=v["source_address"], dst=v["destination_address"])
    if v["mode"] == "transport":
        assert data == packet_in[20:]
        assert next_header == packet_in[9]
    else:
        assert v["mode"] == "tunnel"
        assert data == packet_in
        assert next_header == 4  # IP-in-IP

    # ESP packet = outer IPv4 header || SPI || seq || IV || ciphertext
    esp_header = struct.pack("!II", v["spi"], v["seq"])
    assert b(v["esp_header"]) == esp_header
    assert packet_out == b(v["outer_ip_header"]) + esp_header + iv + ct
    check_ipv4(packet_out, proto=50, src=v["source_address"], dst=v["destination_address"])


# ---------------------------------------------------------------- draft-mcgrew-gcm-test-01

def test_gcm_file_coverage():
    vs = load("gcm")["vectors"]
    assert len(vs) >= 8
    assert any(v["esn"] for v in vs)
    assert any(v["key_bits"] == 256 for v in vs)
    assert any(v["key_bits"] == 192 for v in vs)
    assert any(v["gmac"] for v in vs)


@pytest.mark.parametrize("v", vectors("gcm"))
def test_gcm_esp(v):
    key, salt, iv = b(v["key"]), b(v["salt"]), b(v["iv"])
    pt, aad, ct = b(v["plaintext"]), b(v["aad"]), b(v["ciphertext"])
    assert len(key) * 8 == v["key_bits"] in (128, 192, 256)
    assert len(salt) == 4 and len(iv) == 8
    nonce = salt + iv
    assert b(v["nonce"]) == nonce
    assert v["icv_len"] == 16

    seq_field = struct.pack("!Q", v["seq"]) if v["esn"] else struct.pack("!I", v["seq"])
    assert v["seq"] < (1 << (64 if v["esn"] else 32))
    spi = struct.pack("!I", v["spi"])
    packet = b(v["packet_out"])
    assert v["packet_out_includes_ip_header"] is False
    wire_header = spi + struct.pack("!I", v["seq"] & 0xFFFFFFFF) + iv

    aead = AESGCM(key)
    if not v["gmac"]:
        # RFC 4106: AAD = SPI || (E)SN, plaintext is the ESP payload.
        assert aad == spi + seq_field
        assert aead.encrypt(nonce, pt, aad) == ct
        assert aead.decrypt(nonce, ct, aad) == pt
        assert len(ct) == len(pt) + 16
        assert packet == wire_header + ct
        tampered = bytearray(ct)
        tampered[-1] ^= 1
        with pytest.raises(InvalidTag):
            aead.decrypt(nonce, bytes(tampered), aad)
    else:
        # RFC 4543 ENCR_NULL_AUTH_AES_GMAC: empty plaintext, AAD covers the
        # ESP header, the IV and the cleartext payload; the output is the tag.
        assert pt == b""
        assert not v["esn"]
        assert aad.startswith(wire_header)
        assert aead.encrypt(nonce, b"", aad) == ct
        assert len(ct) == 16
        assert packet == aad + ct


@pytest.mark.parametrize("v", vectors("gcm"))
def test_gcm_esp_trailer(v):
    payload = b(v["plaintext"]) if not v["gmac"] else b(v["aad"])[16:]
    _, padding, pad_length, _ = split_trailer(payload)
    assert padding == default_padding(pad_length)
    assert len(payload) % 4 == 0


# ---------------------------------------------------------------- RFC 7634 ChaCha20-Poly1305

@pytest.mark.parametrize("v", vectors("chacha"))
def test_rfc7634_esp(v):
    keymat = b(v["keymat"])
    key, salt, iv = b(v["key"]), b(v["salt"]), b(v["iv"])
    assert len(keymat) == 36 and keymat[:32] == key and keymat[32:] == salt
    nonce = salt + iv
    assert b(v["nonce"]) == nonce
    pt, aad = b(v["plaintext"]), b(v["aad"])
    ct_only, tag, ct = b(v["ciphertext_only"]), b(v["tag"]), b(v["ciphertext"])
    assert ct == ct_only + tag and v["icv_len"] == len(tag) == 16
    assert not v["esn"] and aad == struct.pack("!II", v["spi"], v["seq"])

    # AEAD as a whole.
    aead = ChaCha20Poly1305(key)
    assert aead.encrypt(nonce, pt, aad) == ct
    assert aead.decrypt(nonce, ct, aad) == pt

    # Block 0 gives the one-time Poly1305 key; encryption starts at block 1
    # (cryptography's ChaCha20 takes a 16-octet LE counter || 12-octet nonce).
    block0 = Cipher(algorithms.ChaCha20(key, struct.pack("<I", 0) + nonce), None).encryptor()
    assert block0.update(bytes(32)) == b(v["poly1305_key"])
    stream = Cipher(algorithms.ChaCha20(key, struct.pack("<I", 1) + nonce), None).encryptor()
    assert stream.update(pt) == ct_only

    def pad16(x):
        return bytes(-len(x) % 16)

    mac_input = aad + pad16(aad) + ct_only + pad16(ct_only) + struct.pack("<QQ", len(aad), len(ct_only))
    assert mac_input == b(v["poly1305_input"])
    assert Poly1305.generate_tag(b(v["poly1305_key"]), mac_input) == tag

    # Tunnel mode: payload = inner packet || padding || pad length || next header (4).
    packet_in, packet_out = b(v["packet_in"]), b(v["packet_out"])
    data, padding, pad_length, next_header = split_trailer(pt)
    assert data == packet_in and padding == default_padding(pad_length) and next_header == 4
    check_ipv4(packet_in, src=v["source_address"], dst=v["destination_address"])
    assert v["packet_out_includes_ip_header"] is True
    assert packet_out[20:] == struct.pack("!II", v["spi"], v["seq"]) + iv + ct
    check_ipv4(packet_out, proto=50, src=v["gateway_address"], dst=v["peer_address"])


# ---------------------------------------------------------------- RFC 3686 AES-CTR

@pytest.mark.parametrize("v", vectors("ctr"))
def test_rfc3686_aes_ctr(v):
    key, salt, iv = b(v["key"]), b(v["salt"]), b(v["iv"])
    pt, ct = b(v["plaintext"]), b(v["ciphertext"])
    assert len(key) in (16, 24, 32) and len(salt) == 4 and len(iv) == 8
    assert len(ct) == len(pt)
    if "plaintext_ascii" in v:
        assert v["plaintext_ascii"].encode("ascii") == pt

    blocks = [b(x) for x in v["counter_blocks"]]
    streams = [b(x) for x in v["key_stream"]]
    assert len(blocks) == len(streams) == (len(pt) + 15) // 16
    for i, (block, ks) in enumerate(zip(blocks, streams), start=1):
        assert block == salt + iv + struct.pack("!I", i)  # nonce || IV || counter
        assert aes_ecb_block(key, block) == ks
    keystream = b"".join(streams)
    assert bytes(p ^ k for p, k in zip(pt, keystream)) == ct

    enc = Cipher(algorithms.AES(key), modes.CTR(salt + iv + struct.pack("!I", 1))).encryptor()
    assert enc.update(pt) + enc.finalize() == ct


# ---------------------------------------------------------------- RFC 3610 AES-CCM (raw)

@pytest.mark.parametrize("v", vectors("ccm"))
def test_rfc3610_aes_ccm(v):
    key, nonce = b(v["key"]), b(v["nonce"])
    aad, pt, ct = b(v["aad"]), b(v["plaintext"]), b(v["ciphertext"])
    assert 15 - len(nonce) == v["length_field_octets"]
    assert v["tag_len"] == v["icv_len"] == len(ct) - len(pt)
    assert b(v["packet_in"]) == aad + pt
    assert b(v["packet_out"]) == aad + ct
    aead = AESCCM(key, tag_length=v["tag_len"])
    assert aead.encrypt(nonce, pt, aad) == ct
    assert aead.decrypt(nonce, ct, aad) == pt
