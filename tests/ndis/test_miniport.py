"""ipsecsa.ndis.Miniport: the NIC side of NDIS IPsec offload v1.

OID buffers are built as a Windows transport would: ``pack_add_sa`` writes every member with
``struct`` at the offsets of ``windows-layouts-x64.json (package data)`` (independent of our codec);
other tests use the codec's encoders. Packets go through ``send``/``receive`` and are compared
with the all-software data path (same keys, same ``unsafe_iv_source`` so CBC IVs match) and checked
with scapy's ``scapy.layers.ipsec`` (test-only oracle). Every refusal asserts the exact status,
that the buffer comes back unchanged, and that the miniport's tables did not change.
"""

from __future__ import annotations

import struct
import threading
import warnings

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.ipsec import AH, ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Raw

from ipsecsa import SecurityAssociation
from ipsecsa.crypto.algorithms import INTEGRITY
from ipsecsa.crypto.transforms import make_ah_integrity
from ipsecsa.data import windows_layouts
from ipsecsa.ndis import Miniport
from ipsecsa.ndis.constants import (
    CryptoStatus,
    NdisEncapsulation,
    NdisStatus,
    OffloadConf,
    OffloadIntegrity,
    OffloadOperation,
    OffloadSaFlags,
    Oid,
    UdpEncapType,
)
from ipsecsa.ndis.structs import (
    AddUdpEspSa,
    AlgoInfo,
    DeleteSa,
    DeleteUdpEspSa,
    UdpEspEncapTypeEntry,
    decode_add_sa,
    decode_ipsec_offload_v1,
    encode_add_udpesp_sa,
    encode_delete_sa,
    encode_delete_udpesp_sa,
)
from ipsecsa.ndis.structs import (
    SecurityAssociation as SecAssoc,
)
from ipsecsa.packet.ipv4 import ipv4_ah_zero_mutable

warnings.filterwarnings("ignore", message=".*TripleDES.*")

LAYOUTS = windows_layouts()  # package data: src/ipsecsa/data/README.md


def _offsets(name: str) -> dict[str, int]:
    return {f["name"]: f["offset"] for f in LAYOUTS["structs"][name]["fields"]}


ADD = _offsets("OFFLOAD_IPSEC_ADD_SA")
SECASSOC = _offsets("OFFLOAD_SECURITY_ASSOCIATION")
ALGO = _offsets("OFFLOAD_ALGO_INFO")
UDPESP = _offsets("OFFLOAD_IPSEC_ADD_UDPESP_SA")
SECASSOC_SIZE = LAYOUTS["structs"]["OFFLOAD_SECURITY_ASSOCIATION"]["size"]

LOCAL, PEER = "192.0.2.1", "198.51.100.7"
SPI_OUT, SPI_IN, SPI_AH = 0x1000, 0x2000, 0x3000
KEYS = {"des-cbc": bytes(range(1, 9)), "3des-cbc": bytes(range(10, 34)), "null": b"",
        "hmac-md5-96": bytes(range(40, 56)), "hmac-sha1-96": bytes(range(60, 80))}
CONF = {"null": OffloadConf.NONE, "des-cbc": OffloadConf.DES, "3des-cbc": OffloadConf.THREE_DES}
INTEG = {"hmac-md5-96": OffloadIntegrity.MD5, "hmac-sha1-96": OffloadIntegrity.SHA,
         "none": OffloadIntegrity.NONE}
SCAPY_CRYPT = {"des-cbc": "DES", "3des-cbc": "3DES", "null": "NULL"}
SCAPY_AUTH = {"hmac-md5-96": "HMAC-MD5-96", "hmac-sha1-96": "HMAC-SHA1-96"}
KEYLEN = {"null": 0, "des-cbc": 8, "3des-cbc": 24, "hmac-md5-96": 16, "hmac-sha1-96": 20,
          "none": 0}


def unsafe_iv_source(seq: int) -> bytes:
    return (seq * 0x0101010101).to_bytes(8, "big")


# --- building OID buffers as a Windows transport would ------------------------------------------


def ip4(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


def pack_add_sa(*, entries: list[tuple[int, int, tuple[int, int, int], tuple[int, int, int]]],
                keymat: bytes, flags: int = OffloadSaFlags.OUTBOUND_SA, num_sas: int | None = None,
                src: str = "0.0.0.0", src_mask: str = "0.0.0.0", dst: str = "0.0.0.0",
                dst_mask: str = "0.0.0.0", protocol: int = 0, sport: int = 0, dport: int = 0,
                tun_src: str = "0.0.0.0", tun_dst: str = "0.0.0.0", key_len: int | None = None,
                tail: bytes = b"") -> bytes:
    """OFFLOAD_IPSEC_ADD_SA with struct at the JSON offsets; entries: (Operation, SPI,
    (integ id, keylen, rounds), (conf id, keylen, rounds))."""
    buf = bytearray(ADD["KeyMat"] + len(keymat))
    for name, value in (("SrcAddr", src), ("SrcMask", src_mask), ("DestAddr", dst),
                        ("DestMask", dst_mask), ("SrcTunnelAddr", tun_src),
                        ("DestTunnelAddr", tun_dst)):
        buf[ADD[name]:ADD[name] + 4] = ip4(value)
    struct.pack_into("<I", buf, ADD["Protocol"], protocol)
    struct.pack_into("<HH", buf, ADD["SrcPort"], sport, dport)
    struct.pack_into("<Hh", buf, ADD["Flags"], flags, len(entries) if num_sas is None else num_sas)
    for i, (op, spi, integ, conf) in enumerate(entries):
        base = ADD["SecAssoc"] + i * SECASSOC_SIZE
        struct.pack_into("<iI", buf, base + SECASSOC["Operation"], op, spi)
        struct.pack_into("<III", buf, base + SECASSOC["IntegrityAlgo"] + ALGO["algoIdentifier"],
                         *integ)
        struct.pack_into("<III", buf, base + SECASSOC["ConfAlgo"] + ALGO["algoIdentifier"], *conf)
    struct.pack_into("<I", buf, ADD["KeyLen"], len(keymat) if key_len is None else key_len)
    buf[ADD["KeyMat"]:] = keymat
    return bytes(buf) + tail


def esp_entry(spi: int, enc: str, integ: str) -> tuple:
    return (OffloadOperation.ENCRYPT, spi, (INTEG[integ], KEYLEN[integ], 0),
            (CONF[enc], KEYLEN[enc], 0))


def ah_entry(spi: int, integ: str) -> tuple:
    return (OffloadOperation.AUTHENTICATE, spi, (INTEG[integ], KEYLEN[integ], 0), (0, 0, 0))


def esp_keymat(enc: str, integ: str) -> bytes:
    return KEYS[enc] + (KEYS[integ] if integ != "none" else b"")


def add_esp(mp: Miniport, *, inbound: bool, spi: int, enc: str = "3des-cbc",
            integ: str = "hmac-sha1-96", tunnel: bool = False, **kw) -> int:
    flags = OffloadSaFlags.INBOUND_SA if inbound else OffloadSaFlags.OUTBOUND_SA
    t = {"tun_src": PEER if inbound else LOCAL, "tun_dst": LOCAL if inbound else PEER} if tunnel \
        else {}
    if not tunnel and "dst" not in kw:
        kw.update(dst=LOCAL if inbound else PEER, dst_mask="255.255.255.255")
    buf = pack_add_sa(entries=[esp_entry(spi, enc, integ)], keymat=esp_keymat(enc, integ),
                      flags=flags, **t, **kw)
    status, out = mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, buf)
    assert status == NdisStatus.SUCCESS, hex(status)
    return int(struct.unpack_from("<Q", out, ADD["OffloadHandle"])[0])


def delete(mp: Miniport, handle: int) -> int:
    return mp.oid_request(Oid.TCP_TASK_IPSEC_DELETE_SA, encode_delete_sa(DeleteSa(handle)))[0]


# --- software SAs and packets ------------------------------------------------------------------


def sw_sa(direction: str, *, protocol: str = "esp", spi: int, enc: str = "3des-cbc",
          integ: str = "hmac-sha1-96", mode: str = "transport", encap: bool = False,
          peer: bool = False) -> SecurityAssociation:
    """A software SA of ours (``peer``: of the peer, addresses swapped)."""
    src, dst = (LOCAL, PEER) if (direction == "outbound") != peer else (PEER, LOCAL)
    obj: dict = {"spi": spi, "protocol": protocol, "mode": mode, "direction": direction,
                 "src": src, "dst": dst}
    if protocol == "esp":
        obj["encryption"] = {"algorithm": enc, "key": KEYS[enc].hex()}
    if integ != "none":
        obj["integrity"] = {"algorithm": integ, "key": KEYS[integ].hex()}
    if encap:
        obj["encapsulation"] = {"type": "udp", "sport": 4500, "dport": 4500}
    return SecurityAssociation.from_dict(obj, unsafe_iv_source=unsafe_iv_source if IVLEN.get(enc) else None)


def inner(n: int, src: str = LOCAL, dst: str = PEER, *, tos: int = 0) -> bytes:
    return bytes(IP(src=src, dst=dst, tos=tos, id=n) / UDP(sport=1000 + n, dport=53)
                 / Raw(bytes((n + i) & 0xFF for i in range(7 * n + 3))))


def _trailer(payload_len: int, block: int, nh: int) -> bytes:
    pad = -(payload_len + 2) % block
    return bytes(range(1, pad + 1)) + bytes((pad, nh))


def prepare_esp(wire: bytes, esp_off: int, payload: bytes, nh: int, *, iv_len: int,
                icv_len: int, block: int) -> bytes:
    """The packet the transport hands the NIC: header as on the wire (built by the transport,
    not by the crypto), ESP header, zero IV, plaintext with trailer, zero ICV."""
    return b"".join((wire[:esp_off + 8], bytes(iv_len), payload,
                     _trailer(len(payload), block, nh), bytes(icv_len)))


ESP_CASES = [("3des-cbc", "hmac-sha1-96"), ("des-cbc", "hmac-md5-96"), ("null", "hmac-sha1-96"),
             ("3des-cbc", "hmac-md5-96"), ("des-cbc", "hmac-sha1-96")]
BLOCK = {"3des-cbc": 8, "des-cbc": 8, "null": 4}
IVLEN = {"3des-cbc": 8, "des-cbc": 8, "null": 0}


def snapshot_call(mp: Miniport, oid: int, buf: bytes) -> int:
    """Issue a request that must fail: buffer and every table unchanged."""
    before = mp.snapshot()
    status, out = mp.oid_request(oid, buf)
    assert out == buf
    assert mp.snapshot() == before
    return status


# ================================================================================ capabilities


def test_capabilities_default_advertise_everything_v1_has() -> None:
    caps = decode_ipsec_offload_v1(Miniport().capabilities())
    assert caps.Supported.Encapsulation & NdisEncapsulation.IEEE_802_3
    assert caps.Supported.AhEspCombined == 1
    assert caps.Supported.Flags == 0x30  # TPT and TUN UDP-ESP, *_OTHER
    assert (caps.IPv4AH.Md5, caps.IPv4AH.Sha_1, caps.IPv4AH.Transport, caps.IPv4AH.Tunnel,
            caps.IPv4AH.Send, caps.IPv4AH.Receive) == (1, 1, 1, 1, 1, 1)
    e = caps.IPv4ESP
    assert (e.Des, e.Reserved, e.TripleDes, e.NullEsp, e.Transport, e.Tunnel, e.Send,
            e.Receive) == (1, 0, 1, 1, 1, 1, 1, 1)


@pytest.mark.parametrize(("modes", "flags"), [
    ({}, 0x30), ({"tunnel": False}, 0x10), ({"transport": False}, 0x20),
    ({"transport": False, "tunnel": False}, 0), ({"udp_esp": False}, 0), ({"esp": False}, 0)])
def test_capabilities_udpesp_subtypes_follow_modes(modes: dict, flags: int) -> None:
    """A.9: TPT_UDPESP (0x10) only with transport mode offered, TUN_UDPESP (0x20) only with
    tunnel mode."""
    assert decode_ipsec_offload_v1(Miniport(**modes).capabilities()).Supported.Flags == flags


def test_capabilities_reflect_options() -> None:
    mp = Miniport(conf_algorithms=[OffloadConf.THREE_DES], integrity_algorithms=[
        OffloadIntegrity.SHA], ah=False, tunnel=False, udp_esp=False)
    caps = decode_ipsec_offload_v1(mp.capabilities())
    assert caps.Supported.Encapsulation == NdisEncapsulation.IEEE_802_3
    assert caps.Supported.AhEspCombined == 0 and caps.Supported.Flags == 0
    assert (caps.IPv4AH.Md5, caps.IPv4AH.Sha_1) == (0, 1)
    assert (caps.IPv4AH.Transport, caps.IPv4AH.Send) == (0, 0)
    assert (caps.IPv4ESP.Des, caps.IPv4ESP.TripleDes, caps.IPv4ESP.NullEsp) == (0, 1, 0)
    assert (caps.IPv4ESP.Transport, caps.IPv4ESP.Tunnel) == (1, 0)


# ================================================================================ ADD / handles


def test_add_sa_fills_handle_only() -> None:
    mp = Miniport()
    buf = pack_add_sa(entries=[esp_entry(SPI_OUT, "3des-cbc", "hmac-sha1-96")],
                      keymat=esp_keymat("3des-cbc", "hmac-sha1-96"), dst=PEER,
                      dst_mask="255.255.255.255", tail=b"\xee" * 5)
    status, out = mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, buf)
    assert status == NdisStatus.SUCCESS
    off = ADD["OffloadHandle"]
    assert struct.unpack_from("<Q", out, off)[0] == 1
    assert out[:off] == buf[:off] and out[off + 8:] == buf[off + 8:]
    assert decode_add_sa(out).OffloadHandle == 1  # the codec agrees with the JSON offsets


def test_handles_monotonic_never_reused_and_wrap_skips_live() -> None:
    mp = Miniport()
    hs = [add_esp(mp, inbound=False, spi=0x100 + i) for i in range(3)]
    assert hs == [1, 2, 3]
    assert delete(mp, 2) == NdisStatus.SUCCESS
    assert add_esp(mp, inbound=False, spi=0x200) == 4  # 2 is not reused
    mp._next_handle = 2**64 - 1  # near the end of the 64-bit counter
    assert add_esp(mp, inbound=False, spi=0x300) == 2**64 - 1
    assert add_esp(mp, inbound=False, spi=0x301) == 2  # wraps: skips 0 and live 1
    assert add_esp(mp, inbound=False, spi=0x302) == 5  # skips live 3 and 4


def test_delete_unknown_zero_and_twice() -> None:
    mp = Miniport()
    h = add_esp(mp, inbound=False, spi=SPI_OUT)
    for bad in (0, 99, 2**64 - 1):
        assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_DELETE_SA,
                             encode_delete_sa(DeleteSa(bad))) == NdisStatus.INVALID_DATA
    assert delete(mp, h) == NdisStatus.SUCCESS
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_DELETE_SA,
                         encode_delete_sa(DeleteSa(h))) == NdisStatus.INVALID_DATA
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_DELETE_SA, b"\x01\x00") == \
        NdisStatus.INVALID_LENGTH


@pytest.mark.parametrize(("oid", "status"), [
    (0x12345678, NdisStatus.INVALID_OID),
    (Oid.TCP_OFFLOAD_PARAMETERS, NdisStatus.NOT_SUPPORTED),  # known to NDIS, not offered
    (Oid.TCP_TASK_OFFLOAD, NdisStatus.NOT_SUPPORTED),
    (Oid.TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA, NdisStatus.NOT_SUPPORTED),
    (Oid.TCP_TASK_IPSEC_OFFLOAD_V2_DELETE_SA, NdisStatus.NOT_SUPPORTED),
    (Oid.TCP_TASK_IPSEC_OFFLOAD_V2_UPDATE_SA, NdisStatus.NOT_SUPPORTED),
    (Oid.TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA_EX, NdisStatus.NOT_SUPPORTED),
])
def test_other_oids(oid: int, status: NdisStatus) -> None:
    mp = Miniport()
    add_esp(mp, inbound=False, spi=SPI_OUT)
    assert snapshot_call(mp, oid, b"\x00" * 64) == status


# --- every refusal of F.1/F.2: exact status, nothing changed --------------------------------


GOOD = {"entries": [esp_entry(SPI_OUT, "3des-cbc", "hmac-sha1-96")],
        "keymat": esp_keymat("3des-cbc", "hmac-sha1-96")}
SHA_ESP = esp_entry(SPI_OUT, "null", "hmac-sha1-96")


def _kw(**over: object) -> dict:
    return {**GOOD, **over}


INVALID = NdisStatus.INVALID_DATA
REFUSALS = {
    "num_sas_0": (_kw(num_sas=0), INVALID),
    "num_sas_3": (_kw(num_sas=3), INVALID),
    "num_sas_negative": (_kw(num_sas=-1), INVALID),
    "auth_then_encrypt": (_kw(entries=[ah_entry(SPI_AH, "hmac-sha1-96"), SHA_ESP],
                              keymat=KEYS["hmac-sha1-96"] * 2), INVALID),
    "two_encrypt": (_kw(entries=[SHA_ESP, SHA_ESP], keymat=KEYS["hmac-sha1-96"] * 2), INVALID),
    "two_authenticate": (_kw(entries=[ah_entry(1000, "hmac-md5-96"),
                                      ah_entry(1001, "hmac-md5-96")],
                             keymat=KEYS["hmac-md5-96"] * 2), INVALID),
    "operation_0": (_kw(entries=[(0, SPI_OUT, (2, 20, 0), (3, 24, 0))]), INVALID),
    "operation_3": (_kw(entries=[(3, SPI_OUT, (2, 20, 0), (3, 24, 0))]), INVALID),
    "conf_reserved": (_kw(entries=[(2, SPI_OUT, (2, 20, 0), (2, 24, 0))]), INVALID),
    "conf_max": (_kw(entries=[(2, SPI_OUT, (2, 20, 0), (4, 24, 0))]), INVALID),
    "conf_huge": (_kw(entries=[(2, SPI_OUT, (2, 20, 0), (0xFFFFFFFF, 24, 0))]), INVALID),
    "integrity_max": (_kw(entries=[(2, SPI_OUT, (3, 20, 0), (3, 24, 0))]), INVALID),
    "ah_with_conf": (_kw(entries=[(1, SPI_AH, (2, 20, 0), (3, 24, 0))]), INVALID),
    "ah_with_conf_keylen_only": (_kw(entries=[(1, SPI_AH, (2, 20, 0), (0, 8, 0))],
                                     keymat=KEYS["hmac-sha1-96"] + bytes(8)), INVALID),
    "ah_without_integrity": (_kw(entries=[(1, SPI_AH, (0, 0, 0), (0, 0, 0))], keymat=b""),
                             INVALID),
    "esp_no_authentication": (_kw(entries=[esp_entry(SPI_OUT, "3des-cbc", "none")],
                                  keymat=KEYS["3des-cbc"]), INVALID),
    "esp_null_null_with_ah": (_kw(entries=[esp_entry(SPI_OUT, "null", "none"),
                                           ah_entry(SPI_AH, "hmac-md5-96")],
                                  keymat=KEYS["hmac-md5-96"]), INVALID),
    "des_keylen_7": (_kw(entries=[(2, SPI_OUT, (2, 20, 0), (1, 7, 0))],
                         keymat=bytes(7) + KEYS["hmac-sha1-96"]), INVALID),
    "3des_keylen_16": (_kw(entries=[(2, SPI_OUT, (2, 20, 0), (3, 16, 0))],
                           keymat=bytes(16) + KEYS["hmac-sha1-96"]), INVALID),
    "md5_keylen_20": (_kw(entries=[(2, SPI_OUT, (1, 20, 0), (3, 24, 0))]), INVALID),
    "sha_keylen_16": (_kw(entries=[(2, SPI_OUT, (2, 16, 0), (3, 24, 0))],
                          keymat=KEYS["3des-cbc"] + bytes(16)), INVALID),
    "none_with_keylen": (_kw(entries=[(2, SPI_OUT, (2, 20, 0), (0, 4, 0))],
                             keymat=bytes(4) + KEYS["hmac-sha1-96"]), INVALID),
    "keylen_above_sum": (_kw(keymat=GOOD["keymat"] + bytes(4)), INVALID),
    "keylen_below_sum": (_kw(key_len=40, keymat=GOOD["keymat"][:40]), INVALID),
    "flags_none": (_kw(flags=0), INVALID),
    "flags_both": (_kw(flags=3), INVALID),
    "flags_unknown_bit": (_kw(flags=OffloadSaFlags.OUTBOUND_SA | 0x8), INVALID),
    "spi_reserved": (_kw(entries=[esp_entry(255, "3des-cbc", "hmac-sha1-96")]), INVALID),
    "one_tunnel_address": (_kw(tun_dst=PEER), INVALID),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_add_refusals(case: str) -> None:
    kw, status = REFUSALS[case]
    mp = Miniport()
    add_esp(mp, inbound=True, spi=SPI_IN)  # something in the tables to keep unchanged
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, pack_add_sa(**kw)) == status


def test_short_buffers() -> None:
    """F.1: every set buffer too short for the OID is INVALID_LENGTH, with BytesNeeded."""
    mp = Miniport()
    add_esp(mp, inbound=True, spi=SPI_IN)
    buf = pack_add_sa(**GOOD)
    fixed, full = ADD["KeyMat"], len(buf)
    for short, needed in ((buf[:fixed - 1], fixed), (b"", fixed), (buf[:-1], full)):
        assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, short) == NdisStatus.INVALID_LENGTH
        assert mp.last_request == (NdisStatus.INVALID_LENGTH, needed, mp.last_request.reason)
        assert mp.last_request.reason
    delete_size = LAYOUTS["structs"]["OFFLOAD_IPSEC_DELETE_SA"]["size"]
    for short in (b"\x01\x00\x00\x00", b""):  # a 32-bit handle is too short on x64 (A.2)
        assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_DELETE_SA, short) == \
            NdisStatus.INVALID_LENGTH
        assert mp.last_request.bytes_needed == delete_size
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_DELETE_UDPESP_SA, bytes(8)) == \
        NdisStatus.INVALID_LENGTH
    assert mp.last_request.bytes_needed == \
        LAYOUTS["structs"]["OFFLOAD_IPSEC_DELETE_UDPESP_SA"]["size"]
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA, bytes(UDPESP["KeyMat"] - 1)) == \
        NdisStatus.INVALID_LENGTH
    assert mp.last_request.bytes_needed == UDPESP["KeyMat"]


def test_last_request_reports_every_outcome() -> None:
    mp = Miniport()
    assert mp.last_request is None
    h = add_esp(mp, inbound=False, spi=SPI_OUT)
    assert mp.last_request == (NdisStatus.SUCCESS, 0, "")
    bad = pack_add_sa(**_kw(num_sas=3))
    assert mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, bad)[0] == NdisStatus.INVALID_DATA
    assert mp.last_request.status == NdisStatus.INVALID_DATA
    assert mp.last_request.bytes_needed == 0 and "NumSAs" in mp.last_request.reason
    assert mp.oid_request(0x12345678, b"")[0] == NdisStatus.INVALID_OID
    assert "0x12345678" in mp.last_request.reason
    assert mp.oid_request(Oid.TCP_TASK_OFFLOAD, b"")[0] == NdisStatus.NOT_SUPPORTED
    assert "TCP_TASK_OFFLOAD" in mp.last_request.reason
    assert delete(mp, h) == NdisStatus.SUCCESS and mp.last_request == (0, 0, "")
    assert KEYS["3des-cbc"].hex() not in repr(mp.last_request)


@pytest.mark.parametrize(("options", "kw"), [
    ({"conf_algorithms": [OffloadConf.THREE_DES, OffloadConf.NONE]},
     {"entries": [esp_entry(SPI_OUT, "des-cbc", "hmac-md5-96")],
      "keymat": esp_keymat("des-cbc", "hmac-md5-96")}),
    ({"conf_algorithms": [OffloadConf.THREE_DES]}, {"entries": [SHA_ESP],
                                                     "keymat": KEYS["hmac-sha1-96"]}),
    ({"integrity_algorithms": [OffloadIntegrity.SHA]},
     {"entries": [esp_entry(SPI_OUT, "3des-cbc", "hmac-md5-96")],
      "keymat": esp_keymat("3des-cbc", "hmac-md5-96")}),
    ({"ah": False}, {"entries": [ah_entry(SPI_AH, "hmac-sha1-96")],
                     "keymat": KEYS["hmac-sha1-96"]}),
    ({"esp": False}, GOOD),
    ({"tunnel": False}, {**GOOD, "tun_src": LOCAL, "tun_dst": PEER}),
    ({"transport": False}, GOOD),
    ({"ah_esp_combined": False},
     {"entries": [esp_entry(SPI_OUT, "3des-cbc", "none"), ah_entry(SPI_AH, "hmac-sha1-96")],
      "keymat": KEYS["3des-cbc"] + KEYS["hmac-sha1-96"]}),
], ids=["des", "null-esp", "md5", "ah", "esp", "tunnel", "transport", "combined"])
def test_not_advertised_is_not_supported(options: dict, kw: dict) -> None:
    mp = Miniport(**options)
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, pack_add_sa(**kw)) == \
        NdisStatus.NOT_SUPPORTED


def test_validation_before_capabilities() -> None:
    # invalid key length on an algorithm that is also not advertised: INVALID_DATA wins
    mp = Miniport(conf_algorithms=[OffloadConf.THREE_DES])
    kw = {"entries": [(2, SPI_OUT, (2, 20, 0), (1, 7, 0))], "keymat": bytes(27)}
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, pack_add_sa(**kw)) == INVALID


def test_capacity_resources() -> None:
    mp = Miniport(capacity=2)
    add_esp(mp, inbound=False, spi=SPI_OUT)
    add_esp(mp, inbound=True, spi=SPI_IN)
    buf = pack_add_sa(**_kw(entries=[esp_entry(0x4444, "3des-cbc", "hmac-sha1-96")]))
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, buf) == NdisStatus.RESOURCES


def test_duplicates() -> None:
    mp = Miniport()
    add_esp(mp, inbound=True, spi=SPI_IN)
    dup = pack_add_sa(entries=[esp_entry(SPI_IN, "des-cbc", "hmac-md5-96")],
                      keymat=esp_keymat("des-cbc", "hmac-md5-96"),
                      flags=OffloadSaFlags.INBOUND_SA, dst=LOCAL, dst_mask="255.255.255.255")
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, dup) == INVALID
    # same SPI: other direction, other destination, other protocol are not duplicates
    add_esp(mp, inbound=False, spi=SPI_IN)
    add_esp(mp, inbound=True, spi=SPI_IN, dst="10.9.9.9", dst_mask="255.255.255.255")
    ah = pack_add_sa(entries=[ah_entry(SPI_IN, "hmac-md5-96")], keymat=KEYS["hmac-md5-96"],
                     flags=OffloadSaFlags.INBOUND_SA, dst=LOCAL, dst_mask="255.255.255.255")
    assert mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, ah)[0] == NdisStatus.SUCCESS
    # a bundle whose AH entry clashes with a live AH SA is a duplicate as a whole
    bundle = pack_add_sa(entries=[esp_entry(0x7777, "3des-cbc", "none"),
                                  ah_entry(SPI_IN, "hmac-md5-96")],
                         keymat=KEYS["3des-cbc"] + KEYS["hmac-md5-96"],
                         flags=OffloadSaFlags.INBOUND_SA, dst=LOCAL, dst_mask="255.255.255.255")
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, bundle) == INVALID


# ================================================================================ data path


def _check_scapy_esp(wire: bytes, enc: str, integ: str, spi: int, expect_payload: bytes) -> None:
    sa = ScapySA(ESP, spi=spi, crypt_algo=SCAPY_CRYPT[enc], crypt_key=KEYS[enc] or None,
                 auth_algo=SCAPY_AUTH[integ], auth_key=KEYS[integ])
    out = sa.decrypt(IP(wire))
    assert bytes(out.payload) == expect_payload


@pytest.mark.parametrize(("enc", "integ"), ESP_CASES)
@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_esp_send_receive_match_software(enc: str, integ: str, mode: str) -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    tunnel = mode == "tunnel"
    h_out = add_esp(mp, inbound=False, spi=SPI_OUT, enc=enc, integ=integ, tunnel=tunnel)
    add_esp(mp, inbound=True, spi=SPI_IN, enc=enc, integ=integ, tunnel=tunnel)
    s_out = sw_sa("outbound", spi=SPI_OUT, enc=enc, integ=integ, mode=mode)
    s_in = sw_sa("inbound", spi=SPI_IN, enc=enc, integ=integ, mode=mode)
    icv = INTEGRITY[integ].icv_len
    for n in range(1, 12):
        pkt = inner(n)
        wire = s_out.protect(pkt).packet
        assert wire is not None
        payload, nh = (pkt, 4) if tunnel else (pkt[20:], 17)
        prepared = prepare_esp(wire, 20, payload, nh, iv_len=IVLEN[enc], icv_len=icv,
                               block=BLOCK[enc])
        assert len(prepared) == len(wire)
        assert mp.send(prepared, h_out) == wire
        if not tunnel:
            _check_scapy_esp(wire, enc, integ, SPI_OUT, pkt[20:])
        else:
            _check_scapy_esp(wire, enc, integ, SPI_OUT, pkt)
        # receive: a packet the peer sent to us, decrypted in place
        rx = sw_sa("outbound", spi=SPI_IN, enc=enc, integ=integ, mode=mode, peer=True)
        rx._seq = n - 1
        incoming = _from_peer(rx, n)
        out, info = mp.receive(incoming)
        assert (info.CryptoDone, info.NextCryptoDone, info.SaDeleteReq) == (1, 0, 0)
        assert info.CryptoStatus == CryptoStatus.SUCCESS
        assert len(out) == len(incoming)
        ct_off = 20 + 8 + IVLEN[enc]
        assert out[:ct_off] == incoming[:ct_off] and out[len(out) - icv:] == incoming[len(out) - icv:]
        body = out[ct_off:len(out) - icv]
        exp = inner(n, PEER, LOCAL)
        assert s_in.unprotect(incoming).packet == exp  # the software path agrees
        assert body.startswith(exp if tunnel else exp[20:])
    assert mp.stats.sent == 11 and mp.stats.received == 11 and mp.stats.send_errors == 0


def _from_peer(sa_out: SecurityAssociation, n: int) -> bytes:
    wire = sa_out.protect(inner(n, PEER, LOCAL)).packet
    assert wire is not None
    return wire


def _resign_ah(pkt: bytes, integ: str, ihl: int = 20) -> bytes:
    """Recompute the AH ICV of ``pkt`` (after tampering something under it)."""
    a = make_ah_integrity(INTEGRITY[integ], KEYS[integ], esn=False)
    buf = bytearray(pkt)
    buf[ihl + 12:ihl + 24] = bytes(12)
    covered = ipv4_ah_zero_mutable(bytes(buf))
    seq = struct.unpack_from("!I", pkt, ihl + 8)[0]
    buf[ihl + 12:ihl + 24] = a.compute(covered, seq)
    return bytes(buf)


def _add_ah(mp: Miniport, *, inbound: bool, spi: int, integ: str, tunnel: bool = False) -> int:
    flags = OffloadSaFlags.INBOUND_SA if inbound else OffloadSaFlags.OUTBOUND_SA
    kw = ({"tun_src": PEER if inbound else LOCAL, "tun_dst": LOCAL if inbound else PEER}
          if tunnel else {"dst": LOCAL if inbound else PEER, "dst_mask": "255.255.255.255"})
    status, out = mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, pack_add_sa(
        entries=[ah_entry(spi, integ)], keymat=KEYS[integ], flags=flags, **kw))
    assert status == NdisStatus.SUCCESS
    return int(struct.unpack_from("<Q", out, ADD["OffloadHandle"])[0])


@pytest.mark.parametrize("integ", ["hmac-sha1-96", "hmac-md5-96"])
@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_ah_send_receive_match_software(integ: str, mode: str) -> None:
    mp = Miniport()
    tunnel = mode == "tunnel"
    h_out = _add_ah(mp, inbound=False, spi=SPI_AH, integ=integ, tunnel=tunnel)
    _add_ah(mp, inbound=True, spi=SPI_AH + 1, integ=integ, tunnel=tunnel)
    s_out = sw_sa("outbound", protocol="ah", spi=SPI_AH, integ=integ, mode=mode)
    peer = sw_sa("outbound", protocol="ah", spi=SPI_AH + 1, integ=integ, mode=mode, peer=True)
    for n in range(1, 8):
        wire = s_out.protect(inner(n, tos=0x10)).packet
        assert wire is not None
        prepared = wire[:32] + bytes(12) + wire[44:]
        assert mp.send(prepared, h_out) == wire
        sc = ScapySA(AH, spi=SPI_AH, auth_algo=SCAPY_AUTH[integ], auth_key=KEYS[integ])
        sc.decrypt(IP(wire))  # raises on a bad ICV
        incoming = _from_peer(peer, n)
        out, info = mp.receive(incoming)
        assert out == incoming and (info.CryptoDone, info.CryptoStatus) == (1, 0)
        bad = bytearray(incoming)
        bad[-1] ^= 1
        out, info = mp.receive(bytes(bad))
        assert out == bytes(bad) and info.CryptoDone == 1
        assert info.CryptoStatus == (CryptoStatus.TUNNEL_AH_AUTH_FAILED if tunnel
                                     else CryptoStatus.TRANSPORT_AH_AUTH_FAILED)
        # mutable fields (TTL, TOS) are not covered: changing them keeps the ICV valid
        ttl = bytearray(incoming)
        ttl[8] -= 1
        ttl[1] = 0x20
        assert mp.receive(bytes(ttl))[1].CryptoStatus == CryptoStatus.SUCCESS


@pytest.mark.parametrize(("ah_integ", "esp_enc", "esp_integ"), [
    ("hmac-md5-96", "3des-cbc", "hmac-md5-96"), ("hmac-sha1-96", "des-cbc", "hmac-sha1-96"),
    ("hmac-md5-96", "3des-cbc", "hmac-sha1-96"), ("hmac-sha1-96", "3des-cbc", "hmac-md5-96"),
    ("hmac-md5-96", "null", "hmac-md5-96"), ("hmac-sha1-96", "3des-cbc", "none"),
])
def test_esp_ah_bundle(ah_integ: str, esp_enc: str, esp_integ: str) -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    entries = [esp_entry(SPI_OUT, esp_enc, esp_integ), ah_entry(SPI_AH, ah_integ)]
    keymat = esp_keymat(esp_enc, esp_integ) + KEYS[ah_integ]
    res = {}
    for inbound in (False, True):
        flags = OffloadSaFlags.INBOUND_SA if inbound else OffloadSaFlags.OUTBOUND_SA
        st, out = mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, pack_add_sa(
            entries=entries, keymat=keymat, flags=flags, dst=LOCAL if inbound else PEER,
            dst_mask="255.255.255.255"))
        assert st == NdisStatus.SUCCESS
        res[inbound] = struct.unpack_from("<Q", out, ADD["OffloadHandle"])[0]
    esp_sw = sw_sa("outbound", spi=SPI_OUT, enc=esp_enc, integ=esp_integ)
    ah_sw = sw_sa("outbound", protocol="ah", spi=SPI_AH, integ=ah_integ)
    icv = INTEGRITY[esp_integ].icv_len if esp_integ != "none" else 0
    for n in range(1, 6):
        pkt = inner(n)
        esp_wire = esp_sw.protect(pkt).packet
        wire = ah_sw.protect(esp_wire).packet  # [IP][AH][ESP]...
        assert wire is not None and wire[9] == 51 and wire[20] == 50
        prepared = (wire[:32] + bytes(12)
                    + prepare_esp(wire[44:], 0, pkt[20:], 17, iv_len=IVLEN[esp_enc],
                                  icv_len=icv, block=BLOCK[esp_enc]))
        assert len(prepared) == len(wire)
        assert mp.send(prepared, res[False]) == wire
        # receive on the inbound bundle (same keys/SPIs, addresses swapped)
        e_in = sw_sa("outbound", spi=SPI_OUT, enc=esp_enc, integ=esp_integ, peer=True)
        e_in._seq = n - 1
        a_in = sw_sa("outbound", protocol="ah", spi=SPI_AH, integ=ah_integ, peer=True)
        a_in._seq = n - 1
        p2 = inner(n, PEER, LOCAL)
        incoming = a_in.protect(e_in.protect(p2).packet).packet
        out, info = mp.receive(incoming)
        assert (info.CryptoDone, info.CryptoStatus) == (1, CryptoStatus.SUCCESS)
        ct_off = 44 + 8 + IVLEN[esp_enc]
        assert out[ct_off:ct_off + len(p2) - 20] == p2[20:]
        # ESP tampered under a valid AH: ESP failure; AH tampered: AH failure
        bad = bytearray(incoming)
        bad[-1] ^= 1
        if esp_integ != "none":
            resigned = _resign_ah(bytes(bad), ah_integ)
            out, info = mp.receive(resigned)
            assert (out, info.CryptoStatus) == (resigned, CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)
        out, info = mp.receive(bytes(bad))
        assert (out, info.CryptoStatus) == (bytes(bad), CryptoStatus.TRANSPORT_AH_AUTH_FAILED)
        # only ESP where the SA says AH+ESP: invalid protocol
        esp_only = e_in.protect(p2).packet
        assert mp.receive(esp_only)[1].CryptoStatus == CryptoStatus.INVALID_PROTOCOL


def test_esp_tampered_and_bad_lengths() -> None:
    mp = Miniport()
    add_esp(mp, inbound=True, spi=SPI_IN)
    add_esp(mp, inbound=True, spi=SPI_IN + 1, tunnel=True)
    peer = sw_sa("outbound", spi=SPI_IN, peer=True)
    good = _from_peer(peer, 3)
    for pos in (-1, -13, 30, len(good) - 20):
        bad = bytearray(good)
        bad[pos] ^= 0x40
        out, info = mp.receive(bytes(bad))
        assert out == bytes(bad)
        assert (info.CryptoDone, info.CryptoStatus) == (1, CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)
    tpeer = sw_sa("outbound", spi=SPI_IN + 1, mode="tunnel", peer=True)
    tbad = bytearray(_from_peer(tpeer, 4))
    tbad[-2] ^= 1
    assert mp.receive(bytes(tbad))[1].CryptoStatus == CryptoStatus.TUNNEL_ESP_AUTH_FAILED
    # ciphertext not block aligned (IP total length fixed up), and total length beyond buffer
    short = bytearray(good[:-1])
    struct.pack_into("!H", short, 2, len(short))
    out, info = mp.receive(bytes(short))
    assert (out, info.CryptoStatus) == (bytes(short), CryptoStatus.INVALID_PACKET_SYNTAX)
    longer = bytearray(good)
    struct.pack_into("!H", longer, 2, len(good) + 8)
    assert mp.receive(bytes(longer))[1].CryptoStatus == CryptoStatus.INVALID_PACKET_SYNTAX
    assert mp.stats.receive_failures == 7


def test_not_for_the_nic_is_passed_up_untouched() -> None:
    mp = Miniport()
    add_esp(mp, inbound=True, spi=SPI_IN)
    add_esp(mp, inbound=False, spi=SPI_OUT)
    peer = sw_sa("outbound", spi=SPI_IN, peer=True)
    good = _from_peer(peer, 2)
    other_spi = bytearray(good)
    other_spi[20:24] = (0xABCDEF).to_bytes(4, "big")
    frag = bytearray(good)
    frag[6] |= 0x20  # MF
    other_dst = bytearray(good)
    other_dst[16:20] = ip4("10.1.1.1")
    own_out = _from_peer(sw_sa("outbound", spi=SPI_OUT), 1)  # outbound SA's SPI: not inbound
    cases = [bytes(other_spi), bytes(frag), bytes(other_dst), own_out,
             bytes(IP(src=PEER, dst=LOCAL) / TCP()), b"\x60" + bytes(50), b"\x45\x00"]
    for pkt in cases:
        out, info = mp.receive(pkt)
        assert out == pkt
        assert (info.CryptoDone, info.NextCryptoDone, info.SaDeleteReq, info.CryptoStatus) == \
            (0, 0, 0, CryptoStatus.SUCCESS)
    assert mp.stats.passed_up == len(cases)


def test_wildcard_destination_filter() -> None:
    mp = Miniport()
    add_esp(mp, inbound=True, spi=SPI_IN, dst="192.0.2.0", dst_mask="255.255.255.0")
    good = _from_peer(sw_sa("outbound", spi=SPI_IN, peer=True), 1)
    assert mp.receive(good)[1].CryptoDone == 1
    other = bytearray(good)
    other[16:20] = ip4("10.0.0.1")
    assert mp.receive(bytes(other))[1].CryptoDone == 0


def _esp_to(dst: str, spi: int) -> bytes:
    """A syntactically fine ESP packet (garbage ciphertext) to ``dst``: the NIC finds the SA
    (CryptoDone 1, an ICV failure) or passes it up (CryptoDone 0)."""
    body = struct.pack("!II", spi, 1) + bytes(8) + bytes(16) + bytes(12)
    return bytes(IP(src=PEER, dst=dst, proto=50) / Raw(body))


def test_destination_zero_is_any_whatever_the_mask() -> None:
    """A.3: DestAddr 0 is a wildcard, also with DestMask 255.255.255.255."""
    mp = Miniport()
    h = add_esp(mp, inbound=True, spi=SPI_IN, dst="0.0.0.0", dst_mask="255.255.255.255")
    assert mp.sa(h).lookup_dst == bytes(4) and mp.sa(h).dst_match_mask == bytes(4)
    for dst in (LOCAL, "10.0.0.1", "203.0.113.9"):
        _, info = mp.receive(_esp_to(dst, SPI_IN))
        assert info.CryptoDone == 1, dst
    # DestAddr 0 with mask 0 is the same wildcard: a duplicate
    dup = pack_add_sa(entries=[esp_entry(SPI_IN, "3des-cbc", "hmac-sha1-96")],
                      keymat=esp_keymat("3des-cbc", "hmac-sha1-96"),
                      flags=OffloadSaFlags.INBOUND_SA, dst="0.0.0.0", dst_mask="0.0.0.0")
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, dup) == INVALID


def test_destination_with_mask_zero_is_a_host() -> None:
    """ipsecsa's choice, as the SAD classifier's: a non-zero DestAddr with DestMask 0 is a
    host match, found in the exact-destination bucket."""
    mp = Miniport()
    h = add_esp(mp, inbound=True, spi=SPI_IN, dst="10.0.0.1", dst_mask="0.0.0.0")
    assert mp.sa(h).lookup_dst == ip4("10.0.0.1")
    assert mp.receive(_esp_to("10.0.0.1", SPI_IN))[1].CryptoDone == 1
    for dst in ("203.0.113.9", "10.0.0.2", LOCAL):
        assert mp.receive(_esp_to(dst, SPI_IN))[1].CryptoDone == 0, dst
    # the same host with mask /32 is a duplicate; another host is not
    dup = pack_add_sa(entries=[esp_entry(SPI_IN, "3des-cbc", "hmac-sha1-96")],
                      keymat=esp_keymat("3des-cbc", "hmac-sha1-96"),
                      flags=OffloadSaFlags.INBOUND_SA, dst="10.0.0.1",
                      dst_mask="255.255.255.255")
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_SA, dup) == INVALID
    add_esp(mp, inbound=True, spi=SPI_IN, dst="10.0.0.2", dst_mask="0.0.0.0")
    assert mp.receive(_esp_to("10.0.0.2", SPI_IN))[1].CryptoDone == 1


def test_delete_stops_traffic() -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    h_out = add_esp(mp, inbound=False, spi=SPI_OUT)
    h_in = add_esp(mp, inbound=True, spi=SPI_IN)
    s_out = sw_sa("outbound", spi=SPI_OUT)
    pkt = inner(5)
    wire = s_out.protect(pkt).packet
    prepared = prepare_esp(wire, 20, pkt[20:], 17, iv_len=8, icv_len=12, block=8)
    incoming = _from_peer(sw_sa("outbound", spi=SPI_IN, peer=True), 5)
    assert mp.send(prepared, h_out) == wire
    assert mp.receive(incoming)[1].CryptoDone == 1
    assert mp.send(prepared, h_in) == prepared  # an inbound SA's handle: not for sending
    assert (mp.stats.send_errors, mp.stats.send_unknown_handle) == (1, 1)
    assert delete(mp, h_out) == NdisStatus.SUCCESS and delete(mp, h_in) == NdisStatus.SUCCESS
    assert mp.send(prepared, h_out) == prepared
    assert (mp.stats.send_errors, mp.stats.send_unknown_handle) == (2, 2)
    out, info = mp.receive(incoming)
    assert out == incoming and info.CryptoDone == 0
    assert mp.sa_handles() == ()


def test_send_refuses_packets_not_shaped_like_the_sa() -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    h = add_esp(mp, inbound=False, spi=SPI_OUT)
    pkt = inner(2)
    wire = sw_sa("outbound", spi=SPI_OUT).protect(pkt).packet
    prepared = prepare_esp(wire, 20, pkt[20:], 17, iv_len=8, icv_len=12, block=8)
    wrong_spi = bytearray(prepared)
    wrong_spi[20] ^= 1
    frag = bytearray(prepared)
    frag[6] |= 0x20
    unaligned = bytearray(prepared + b"\x00")
    struct.pack_into("!H", unaligned, 2, len(unaligned))
    for bad in (bytes(wrong_spi), bytes(frag), bytes(unaligned), prepared[:10], pkt):
        assert mp.send(bad, h) == bad
    assert mp.stats.send_errors == 5 and mp.stats.send_unknown_handle == 0


def test_tunnel_addresses_written_by_the_nic() -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    h = add_esp(mp, inbound=False, spi=SPI_OUT, tunnel=True)
    s_out = sw_sa("outbound", spi=SPI_OUT, mode="tunnel")
    pkt = inner(3)
    wire = s_out.protect(pkt).packet
    prepared = bytearray(prepare_esp(wire, 20, pkt, 4, iv_len=8, icv_len=12, block=8))
    prepared[12:16] = ip4("203.0.113.9")  # a wrong outer source
    assert mp.send(bytes(prepared), h) == wire  # rewritten, checksum fixed


def test_keymat_integrity_first_flag() -> None:
    enc, integ = "3des-cbc", "hmac-sha1-96"
    swapped = KEYS[integ] + KEYS[enc]
    s_out = sw_sa("outbound", spi=SPI_OUT, enc=enc, integ=integ)
    pkt = inner(4)
    wire = s_out.protect(pkt).packet
    prepared = prepare_esp(wire, 20, pkt[20:], 17, iv_len=8, icv_len=12, block=8)
    buf = pack_add_sa(entries=[esp_entry(SPI_OUT, enc, integ)], keymat=swapped)
    good = Miniport(keymat_order="integrity-first", unsafe_iv_source=unsafe_iv_source)
    st, out = good.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, buf)
    assert st == NdisStatus.SUCCESS
    assert good.send(prepared, struct.unpack_from("<Q", out, ADD["OffloadHandle"])[0]) == wire
    wrong = Miniport(unsafe_iv_source=unsafe_iv_source)  # conf-first reads the keys the other way round
    st, out = wrong.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, buf)
    assert st == NdisStatus.SUCCESS
    assert wrong.send(prepared, struct.unpack_from("<Q", out, ADD["OffloadHandle"])[0]) != wire


# ================================================================================ UDP-ESP


def udpesp_buf(*, inbound: bool, spi: int, entry_handle: int = 0, port: int = 4500,
               encap_type: int = UdpEncapType.OTHER, tunnel: bool = False,
               entries: tuple | None = None, keymat: bytes | None = None) -> bytes:
    from ipaddress import IPv4Address as A
    flags = OffloadSaFlags.INBOUND_SA if inbound else OffloadSaFlags.OUTBOUND_SA
    km = esp_keymat("3des-cbc", "hmac-sha1-96") if keymat is None else keymat
    if entries is None:
        entries = (SecAssoc(OffloadOperation.ENCRYPT, spi, AlgoInfo(OffloadIntegrity.SHA, 20),
                            AlgoInfo(OffloadConf.THREE_DES, 24)), SecAssoc(), SecAssoc())
    t = {}
    if tunnel:
        t = {"SrcTunnelAddr": A(PEER if inbound else LOCAL),
             "DstTunnelAddr": A(LOCAL if inbound else PEER)}
    return encode_add_udpesp_sa(AddUdpEspSa(
        DstAddr=A(LOCAL if inbound else PEER), DstMask=A("255.255.255.255"), Protocol=0,
        Flags=int(flags), NumSAs=sum(1 for e in entries if e.Operation), SecAssoc=entries,
        EncapTypeEntry=UdpEspEncapTypeEntry(encap_type, port),
        EncapTypeEntryOffldHandle=entry_handle, KeyLen=len(km), KeyMat=km, **t))


def add_udp(mp: Miniport, **kw: object) -> tuple[int, int]:
    status, out = mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA, udpesp_buf(**kw))
    assert status == NdisStatus.SUCCESS, hex(status)
    return (int(struct.unpack_from("<Q", out, UDPESP["OffloadHandle"])[0]),
            int(struct.unpack_from("<Q", out, UDPESP["EncapTypeEntryOffldHandle"])[0]))


def del_udp(mp: Miniport, handle: int, entry: int) -> int:
    return mp.oid_request(Oid.TCP_TASK_IPSEC_DELETE_UDPESP_SA,
                          encode_delete_udpesp_sa(DeleteUdpEspSa(handle, entry)))[0]


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_udpesp_send_receive_and_ike_passthrough(mode: str) -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    tunnel = mode == "tunnel"
    h_out, e_out = add_udp(mp, inbound=False, spi=SPI_OUT, tunnel=tunnel)
    assert e_out == 0  # outbound: the entry handle is left as it was (NULL)
    h_in, entry = add_udp(mp, inbound=True, spi=SPI_IN, tunnel=tunnel)
    assert entry != 0 and entry != h_in
    assert [(e.handle, e.encap_type, e.port) for e in mp.parser_entries()] == \
        [(entry, UdpEncapType.OTHER, 4500)]
    s_out = sw_sa("outbound", spi=SPI_OUT, mode=mode, encap=True)
    peer = sw_sa("outbound", spi=SPI_IN, mode=mode, encap=True, peer=True)
    s_in = sw_sa("inbound", spi=SPI_IN, mode=mode, encap=True)
    for n in range(1, 6):
        pkt = inner(n)
        wire = s_out.protect(pkt).packet
        assert wire[9] == 17
        payload, nh = (pkt, 4) if tunnel else (pkt[20:], 17)
        prepared = prepare_esp(wire, 28, payload, nh, iv_len=8, icv_len=12, block=8)
        assert mp.send(prepared, h_out) == wire
        esp_only = bytes(IP(src=LOCAL, dst=PEER, proto=50) / Raw(wire[28:]))
        _check_scapy_esp(esp_only, "3des-cbc", "hmac-sha1-96", SPI_OUT, payload)
        incoming = _from_peer(peer, n)
        out, info = mp.receive(incoming)
        assert (info.CryptoDone, info.CryptoStatus) == (1, CryptoStatus.SUCCESS)
        assert s_in.unprotect(incoming).packet == inner(n, PEER, LOCAL)
    ike = bytes(IP(src=PEER, dst=LOCAL) / UDP(sport=4500, dport=4500) / Raw(bytes(4) + b"ike"))
    keepalive = bytes(IP(src=PEER, dst=LOCAL) / UDP(sport=4500, dport=4500) / Raw(b"\xff"))
    other_port = bytes(IP(src=PEER, dst=LOCAL) / UDP(sport=4500, dport=4501)
                       / Raw(incoming[28:]))
    for pkt in (ike, keepalive, other_port):
        out, info = mp.receive(pkt)
        assert out == pkt and info.CryptoDone == 0
    # plain ESP carrying the UDP-ESP SA's SPI: protocols differ
    plain = bytes(IP(src=PEER, dst=LOCAL, proto=50) / Raw(incoming[28:]))
    assert mp.receive(plain)[1].CryptoStatus == CryptoStatus.INVALID_PROTOCOL
    bad = bytearray(incoming)
    bad[-1] ^= 1
    assert mp.receive(bytes(bad))[1].CryptoStatus == (
        CryptoStatus.TUNNEL_ESP_AUTH_FAILED if tunnel else CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)


def test_udpesp_parser_entries_life_cycle() -> None:
    mp = Miniport()
    h1, entry = add_udp(mp, inbound=True, spi=0x501)
    h2, again = add_udp(mp, inbound=True, spi=0x502)  # NULL again: find, not create
    assert again == entry
    h3, same = add_udp(mp, inbound=True, spi=0x503, entry_handle=entry)
    assert same == entry  # non-NULL: left as given
    h4, other = add_udp(mp, inbound=True, spi=0x504, port=4501)
    assert other not in (0, entry)
    assert len(mp.parser_entries()) == 2
    # entry still used by h2/h3: refused, nothing deleted
    before = mp.snapshot()
    assert del_udp(mp, h1, entry) == NdisStatus.INVALID_DATA
    assert mp.snapshot() == before
    assert del_udp(mp, h1, 0) == NdisStatus.SUCCESS  # only the SA
    assert del_udp(mp, h2, 0) == NdisStatus.SUCCESS
    assert del_udp(mp, h3, 999) == NdisStatus.INVALID_DATA  # unknown entry handle
    assert del_udp(mp, h3, entry) == NdisStatus.SUCCESS  # last user: SA and entry
    assert [e.handle for e in mp.parser_entries()] == [other]
    assert del_udp(mp, h3, 0) == NdisStatus.INVALID_DATA  # SA already gone
    # DELETE_SA also removes a UDP-ESP SA (not its entry)
    assert delete(mp, h4) == NdisStatus.SUCCESS
    assert [e.handle for e in mp.parser_entries()] == [other]


@pytest.mark.parametrize("case", ["ike_type", "bad_type", "port_zero", "unknown_entry",
                                  "two_entries", "ah_entry", "not_supported", "resources",
                                  "duplicate", "too_short"])
def test_udpesp_refusals(case: str) -> None:
    mp = Miniport(capacity=3, udp_esp=case != "not_supported")
    status = NdisStatus.INVALID_DATA
    if case != "not_supported":
        add_udp(mp, inbound=True, spi=0x600, port=5000)
    esp = SecAssoc(OffloadOperation.ENCRYPT, 0x601, AlgoInfo(OffloadIntegrity.SHA, 20),
                   AlgoInfo(OffloadConf.THREE_DES, 24))
    ah = SecAssoc(OffloadOperation.AUTHENTICATE, 0x602, AlgoInfo(OffloadIntegrity.MD5, 16))
    buf = udpesp_buf(inbound=True, spi=0x601)
    if case == "ike_type":
        buf = udpesp_buf(inbound=True, spi=0x601, encap_type=UdpEncapType.IKE)
    elif case == "bad_type":
        buf = udpesp_buf(inbound=True, spi=0x601, encap_type=7)
    elif case == "port_zero":
        buf = udpesp_buf(inbound=True, spi=0x601, port=0)
    elif case == "unknown_entry":
        buf = udpesp_buf(inbound=True, spi=0x601, entry_handle=12345)
    elif case == "two_entries":
        buf = udpesp_buf(inbound=True, spi=0x601, entries=(esp, ah, SecAssoc()),
                         keymat=esp_keymat("3des-cbc", "hmac-sha1-96") + KEYS["hmac-md5-96"])
    elif case == "ah_entry":
        buf = udpesp_buf(inbound=True, spi=0x601, entries=(ah, SecAssoc(), SecAssoc()),
                         keymat=KEYS["hmac-md5-96"])
    elif case == "not_supported":
        status = NdisStatus.NOT_SUPPORTED
        assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_DELETE_UDPESP_SA,
                             encode_delete_udpesp_sa(DeleteUdpEspSa(1, 0))) == status
    elif case == "resources":
        add_esp(mp, inbound=False, spi=0x700)
        add_esp(mp, inbound=False, spi=0x701)
        status = NdisStatus.RESOURCES
    elif case == "duplicate":
        buf = udpesp_buf(inbound=True, spi=0x600, port=4500)  # same SPI/dst, new port
    elif case == "too_short":
        buf = buf[:UDPESP["KeyMat"] - 1]
        status = NdisStatus.INVALID_LENGTH
    assert snapshot_call(mp, Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA, buf) == status
    # a failed ADD left no parser entry for port 4500
    assert all(e.port != 4500 for e in mp.parser_entries())


# ================================================================================ SaDeleteReq


def test_sa_delete_req_after_resources_once_per_sa() -> None:
    mp = Miniport(capacity=3)
    add_esp(mp, inbound=False, spi=SPI_OUT)
    h_in = add_esp(mp, inbound=True, spi=SPI_IN)
    h_in2 = add_esp(mp, inbound=True, spi=SPI_IN + 1)
    peer, peer2 = sw_sa("outbound", spi=SPI_IN, peer=True), sw_sa("outbound", spi=SPI_IN + 1, peer=True)
    assert mp.receive(_from_peer(peer, 1))[1].SaDeleteReq == 0  # full, but nobody asked yet
    buf = pack_add_sa(**_kw(entries=[esp_entry(0x999, "3des-cbc", "hmac-sha1-96")]))
    assert mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, buf)[0] == NdisStatus.RESOURCES
    first = mp.receive(_from_peer(peer, 2))[1]
    assert (first.SaDeleteReq, first.CryptoDone, first.CryptoStatus) == (1, 1, 0)
    assert mp.receive(_from_peer(peer, 3))[1].SaDeleteReq == 0  # one request per refusal
    assert mp.receive(_from_peer(peer2, 1))[1].SaDeleteReq == 0
    assert mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, buf)[0] == NdisStatus.RESOURCES
    assert mp.receive(_from_peer(peer, 4))[1].SaDeleteReq == 0  # at most once per SA
    bad = bytearray(_from_peer(peer2, 2))
    bad[-1] ^= 1
    info = mp.receive(bytes(bad))[1]  # independent of CryptoStatus
    assert (info.SaDeleteReq, info.CryptoStatus) == (1, CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)
    assert mp.stats.delete_requests == 2
    assert set(mp.sa_handles()) >= {h_in, h_in2}  # nothing dropped on the NIC's own
    assert delete(mp, h_in) == NdisStatus.SUCCESS
    assert mp.oid_request(Oid.TCP_TASK_IPSEC_ADD_SA, buf)[0] == NdisStatus.SUCCESS


# ================================================================================ threads


def test_oid_requests_serialised_against_traffic() -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    h_out = add_esp(mp, inbound=False, spi=SPI_OUT)
    pkt = inner(6)
    wire = sw_sa("outbound", spi=SPI_OUT).protect(pkt).packet
    prepared = prepare_esp(wire, 20, pkt[20:], 17, iv_len=8, icv_len=12, block=8)
    errors: list[Exception] = []

    def churn(base: int) -> None:
        try:
            for i in range(60):
                h = add_esp(mp, inbound=True, spi=base + i)
                assert delete(mp, h) == NdisStatus.SUCCESS
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def traffic() -> None:
        try:
            for _ in range(200):
                assert mp.send(prepared, h_out) == wire
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(0x10000 * (k + 1),)) for k in range(3)]
    threads += [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert mp.sa_handles() == (h_out,)
    assert mp.stats.sent == 400
