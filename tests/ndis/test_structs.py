"""NDIS IPsec v1 structures: hand-built Windows buffers, round trips, truncation, hidden keys.

Hand-built buffers are laid out with ``struct.pack_into`` at offsets read from
windows-layouts-x64.json (package data, src/ipsecsa/data/) (as a Windows transport's compiler would place them), never
with the codec under test.
"""

from __future__ import annotations

import dataclasses
import struct
from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecsa.data import windows_layouts
from ipsecsa.errors import IpsecsaError
from ipsecsa.ndis import structs
from ipsecsa.ndis.codec import FieldInfo, Scalar, StructLayout, UnionLayout
from ipsecsa.ndis.constants import (
    CryptoStatus,
    NdisEncapsulation,
    NdisStatus,
    OffloadConf,
    OffloadIntegrity,
    OffloadOperation,
    OffloadSaFlags,
    OffloadSupport,
    UdpEncapType,
    UdpEspCapability,
)
from ipsecsa.ndis.structs import (
    AddSa,
    AddUdpEspSa,
    AlgoInfo,
    DeleteSa,
    DeleteUdpEspSa,
    IpsecOffloadV1,
    IpsecOffloadV1Ah,
    IpsecOffloadV1Esp,
    IpsecOffloadV1Supported,
    NblInfo,
    NblInfoReceive,
    NblInfoTransmit,
    SecurityAssociation,
    StructError,
    UdpEspEncapTypeEntry,
)

# ESP 3DES-CBC + HMAC-SHA1, then AH HMAC-MD5 (the one two-entry combination, A.3); keys per F.1:
# per entry in array order, confidentiality key then integrity key.
ESP_SPI, AH_SPI = 0x12345678, 0xC0FFEE01
KEY_3DES = bytes(range(0xA0, 0xA0 + 24))
KEY_SHA1 = bytes(range(0x30, 0x30 + 20))
KEY_MD5 = bytes(range(0x60, 0x60 + 16))
KEYMAT = KEY_3DES + KEY_SHA1 + KEY_MD5


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return windows_layouts()  # package data: src/ipsecsa/data/README.md


def offsets(spec: dict[str, Any], name: str) -> dict[str, int]:
    return {f["name"]: f["offset"] for f in spec["structs"][name]["fields"]}


def element_size(spec: dict[str, Any], name: str, member: str) -> int:
    (f,) = [f for f in spec["structs"][name]["fields"] if f["name"] == member]
    return int(f["element_size"])


def bit_positions(members: list[dict[str, Any]]) -> dict[str, int]:
    return {m["name"]: m["bit_offset"] for m in members if "bit_offset" in m}


# --- hand-built Windows buffers ------------------------------------------------------------------


def put_sa_entries(spec: dict[str, Any], buf: bytearray, name: str) -> None:
    base = offsets(spec, name)["SecAssoc"]
    step = element_size(spec, name, "SecAssoc")
    so = offsets(spec, "OFFLOAD_SECURITY_ASSOCIATION")
    ao = offsets(spec, "OFFLOAD_ALGO_INFO")

    def algo(at: int, ident: int, keylen: int, rounds: int = 0) -> None:
        struct.pack_into("<I", buf, at + ao["algoIdentifier"], ident)
        struct.pack_into("<I", buf, at + ao["algoKeylen"], keylen)
        struct.pack_into("<I", buf, at + ao["algoRounds"], rounds)

    esp, ah = base, base + step
    struct.pack_into("<i", buf, esp + so["Operation"], 2)  # ENCRYPT
    struct.pack_into("<I", buf, esp + so["SPI"], ESP_SPI)
    algo(esp + so["IntegrityAlgo"], 2, 20)  # SHA
    algo(esp + so["ConfAlgo"], 3, 24, 0)  # 3_DES
    struct.pack_into("<i", buf, ah + so["Operation"], 1)  # AUTHENTICATE
    struct.pack_into("<I", buf, ah + so["SPI"], AH_SPI)
    algo(ah + so["IntegrityAlgo"], 1, 16)  # MD5


def build_add_sa(spec: dict[str, Any], keymat: bytes = KEYMAT) -> bytes:
    o = offsets(spec, "OFFLOAD_IPSEC_ADD_SA")
    buf = bytearray(o["KeyMat"] + len(keymat))
    buf[o["SrcAddr"]:o["SrcAddr"] + 4] = bytes([10, 0, 0, 1])  # network order in memory
    buf[o["SrcMask"]:o["SrcMask"] + 4] = bytes([255, 255, 255, 255])
    buf[o["DestAddr"]:o["DestAddr"] + 4] = bytes([192, 168, 7, 9])
    buf[o["DestMask"]:o["DestMask"] + 4] = bytes([255, 255, 255, 0])
    struct.pack_into("<I", buf, o["Protocol"], 6)
    struct.pack_into("<H", buf, o["SrcPort"], 49152)
    struct.pack_into("<H", buf, o["DestPort"], 443)
    buf[o["SrcTunnelAddr"]:o["SrcTunnelAddr"] + 4] = bytes([203, 0, 113, 1])
    buf[o["DestTunnelAddr"]:o["DestTunnelAddr"] + 4] = bytes([198, 51, 100, 2])
    struct.pack_into("<H", buf, o["Flags"], 2)  # OFFLOAD_OUTBOUND_SA
    struct.pack_into("<h", buf, o["NumSAs"], 2)
    put_sa_entries(spec, buf, "OFFLOAD_IPSEC_ADD_SA")
    struct.pack_into("<Q", buf, o["OffloadHandle"], 0)
    struct.pack_into("<I", buf, o["KeyLen"], len(keymat))
    buf[o["KeyMat"]:] = keymat
    return bytes(buf)


EXPECTED_SAS = (
    SecurityAssociation(
        Operation=OffloadOperation.ENCRYPT, SPI=ESP_SPI,
        IntegrityAlgo=AlgoInfo(OffloadIntegrity.SHA, 20, 0),
        ConfAlgo=AlgoInfo(OffloadConf.THREE_DES, 24, 0)),
    SecurityAssociation(
        Operation=OffloadOperation.AUTHENTICATE, SPI=AH_SPI,
        IntegrityAlgo=AlgoInfo(OffloadIntegrity.MD5, 16, 0)),
    SecurityAssociation(),
)
EXPECTED_ADD_SA = AddSa(
    SrcAddr=IPv4Address("10.0.0.1"), SrcMask=IPv4Address("255.255.255.255"),
    DestAddr=IPv4Address("192.168.7.9"), DestMask=IPv4Address("255.255.255.0"),
    Protocol=6, SrcPort=49152, DestPort=443,
    SrcTunnelAddr=IPv4Address("203.0.113.1"), DestTunnelAddr=IPv4Address("198.51.100.2"),
    Flags=OffloadSaFlags.OUTBOUND_SA, NumSAs=2, SecAssoc=EXPECTED_SAS,
    OffloadHandle=0, KeyLen=len(KEYMAT), KeyMat=KEYMAT,
)


def build_add_udpesp_sa(spec: dict[str, Any], keymat: bytes = KEYMAT) -> bytes:
    o = offsets(spec, "OFFLOAD_IPSEC_ADD_UDPESP_SA")
    eo = offsets(spec, "OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY")
    buf = bytearray(o["KeyMat"] + len(keymat))
    buf[o["SrcAddr"]:o["SrcAddr"] + 4] = bytes([10, 0, 0, 1])
    buf[o["SrcMask"]:o["SrcMask"] + 4] = bytes([255, 255, 255, 255])
    buf[o["DstAddr"]:o["DstAddr"] + 4] = bytes([192, 168, 7, 9])
    buf[o["DstMask"]:o["DstMask"] + 4] = bytes([255, 255, 255, 255])
    struct.pack_into("<I", buf, o["Protocol"], 17)
    struct.pack_into("<H", buf, o["SrcPort"], 4500)
    struct.pack_into("<H", buf, o["DstPort"], 4500)
    struct.pack_into("<H", buf, o["Flags"], 1)  # OFFLOAD_INBOUND_SA
    struct.pack_into("<h", buf, o["NumSAs"], 2)
    put_sa_entries(spec, buf, "OFFLOAD_IPSEC_ADD_UDPESP_SA")
    struct.pack_into("<Q", buf, o["OffloadHandle"], 0x1122334455667788)
    entry = o["EncapTypeEntry"]
    struct.pack_into("<i", buf, entry + eo["UdpEncapType"], 1)  # OTHER
    struct.pack_into("<H", buf, entry + eo["DstEncapPort"], 4500)
    struct.pack_into("<Q", buf, o["EncapTypeEntryOffldHandle"], 0xFFFF800012345678)
    struct.pack_into("<I", buf, o["KeyLen"], len(keymat))
    buf[o["KeyMat"]:] = keymat
    return bytes(buf)


EXPECTED_ADD_UDPESP_SA = AddUdpEspSa(
    SrcAddr=IPv4Address("10.0.0.1"), SrcMask=IPv4Address("255.255.255.255"),
    DstAddr=IPv4Address("192.168.7.9"), DstMask=IPv4Address("255.255.255.255"),
    Protocol=17, SrcPort=4500, DstPort=4500,
    Flags=OffloadSaFlags.INBOUND_SA, NumSAs=2, SecAssoc=EXPECTED_SAS,
    OffloadHandle=0x1122334455667788,
    EncapTypeEntry=UdpEspEncapTypeEntry(UdpEncapType.OTHER, 4500),
    EncapTypeEntryOffldHandle=0xFFFF800012345678,
    KeyLen=len(KEYMAT), KeyMat=KEYMAT,
)

ADD_CASES = [
    ("OFFLOAD_IPSEC_ADD_SA", build_add_sa, EXPECTED_ADD_SA,
     structs.decode_add_sa, structs.encode_add_sa),
    ("OFFLOAD_IPSEC_ADD_UDPESP_SA", build_add_udpesp_sa, EXPECTED_ADD_UDPESP_SA,
     structs.decode_add_udpesp_sa, structs.encode_add_udpesp_sa),
]
ADD_IDS = ["add_sa", "add_udpesp_sa"]


# --- ADD_SA / ADD_UDPESP_SA ----------------------------------------------------------------------


@pytest.mark.parametrize("name,build,expected,dec,enc", ADD_CASES, ids=ADD_IDS)
def test_handbuilt_add_request_decodes(spec, name, build, expected, dec, enc) -> None:
    buf = build(spec)
    assert len(buf) == offsets(spec, name)["KeyMat"] + len(KEYMAT)
    sa = dec(buf)
    assert sa == expected
    assert sa.KeyMat == KEYMAT and sa.KeyLen == len(KEYMAT)
    assert sa.SecAssoc[0].Operation == OffloadOperation.ENCRYPT
    assert isinstance(sa.SrcAddr, IPv4Address)


@pytest.mark.parametrize("name,build,expected,dec,enc", ADD_CASES, ids=ADD_IDS)
def test_add_request_encodes_as_a_windows_transport(spec, name, build, expected, dec, enc) -> None:
    buf = build(spec)
    assert enc(expected) == buf
    assert enc(dataclasses.replace(expected, KeyMat=b""), KEYMAT) == buf
    assert enc(dec(buf)) == buf
    assert structs.encode(dec(buf)) == buf


def test_byte_order_in_memory(spec) -> None:
    """F.12: addresses in network order; SPI and ports host-order numbers (little-endian)."""
    buf = structs.encode_add_sa(EXPECTED_ADD_SA)
    o = offsets(spec, "OFFLOAD_IPSEC_ADD_SA")
    spi_at = o["SecAssoc"] + offsets(spec, "OFFLOAD_SECURITY_ASSOCIATION")["SPI"]
    assert buf[spi_at:spi_at + 4] == bytes.fromhex("78563412")
    assert buf[o["DestPort"]:o["DestPort"] + 2] == bytes.fromhex("bb01")  # 443
    assert buf[o["SrcAddr"]:o["SrcAddr"] + 4] == bytes.fromhex("0a000001")
    # 4 raw bytes (network order) are accepted as well as IPv4Address
    raw = dataclasses.replace(EXPECTED_ADD_SA, SrcAddr=b"\x0a\x00\x00\x01")
    assert structs.encode_add_sa(raw) == buf


@pytest.mark.parametrize("name,build,expected,dec,enc", ADD_CASES, ids=ADD_IDS)
def test_every_truncation_raises_struct_error(spec, name, build, expected, dec, enc) -> None:
    buf = build(spec)
    fixed = offsets(spec, name)["KeyMat"]
    for n in range(len(buf)):
        with pytest.raises(StructError) as info:
            dec(buf[:n])
        err = info.value
        if n < fixed:
            assert err.status == NdisStatus.BUFFER_TOO_SHORT
            assert err.bytes_needed == fixed
        else:
            assert err.status == NdisStatus.INVALID_LENGTH
            assert err.field == "KeyLen"
            assert err.bytes_needed == len(buf)
        assert isinstance(err, IpsecsaError)


@pytest.mark.parametrize("name,build,expected,dec,enc", ADD_CASES, ids=ADD_IDS)
def test_keylen_beyond_buffer_refused(spec, name, build, expected, dec, enc) -> None:
    o = offsets(spec, name)
    for keylen in (len(KEYMAT) + 1, 0x7FFFFFFF, 0xFFFFFFFF):
        buf = bytearray(build(spec))
        struct.pack_into("<I", buf, o["KeyLen"], keylen)
        with pytest.raises(StructError) as info:
            dec(bytes(buf))
        assert info.value.status == NdisStatus.INVALID_LENGTH
        assert info.value.bytes_needed == o["KeyMat"] + keylen


@pytest.mark.parametrize("name,build,expected,dec,enc", ADD_CASES, ids=ADD_IDS)
def test_minimum_length_and_trailing_bytes(spec, name, build, expected, dec, enc) -> None:
    fixed = offsets(spec, name)["KeyMat"]
    size = spec["structs"][name]["size"]
    # KeyLen 0: offsetof(KeyMat) bytes suffice; sizeof (placeholder + padding) is also accepted
    empty = build(spec, b"")
    assert len(empty) == fixed < size
    assert dec(empty).KeyMat == b""
    assert dec(empty + bytes(size - fixed)).KeyMat == b""
    assert enc(dec(empty)) == empty
    # bytes after KeyMat are ignored
    buf = build(spec)
    assert dec(buf + b"\xee" * 9) == dec(buf)


@pytest.mark.parametrize("name,build,expected,dec,enc", ADD_CASES, ids=ADD_IDS)
def test_buffer_types_and_offsets(spec, name, build, expected, dec, enc) -> None:
    buf = build(spec)
    assert dec(bytearray(buf)) == expected
    assert dec(memoryview(buf)) == expected
    cls = type(expected)
    assert structs.decode(cls, b"\x99" * 5 + buf, 5) == expected
    out = bytearray(5 + len(buf) + 3)
    structs.encode_into(out, 5, expected)
    assert bytes(out[5:5 + len(buf)]) == buf and out[:5] == bytes(5) and out[-3:] == bytes(3)


@pytest.mark.parametrize("name,build,expected,dec,enc", ADD_CASES, ids=ADD_IDS)
def test_repr_and_errors_hide_key_material(spec, name, build, expected, dec, enc) -> None:
    sa = dec(build(spec))
    shown = [repr(sa), str(sa)]
    with pytest.raises(StructError) as info:
        dec(build(spec)[:-1])
    shown += [str(info.value), repr(info.value)]
    with pytest.raises(StructError) as info2:
        enc(dataclasses.replace(sa, KeyLen=1))
    shown += [str(info2.value)]
    for text in shown:
        assert "KeyMat=" not in text
        for key in (KEY_3DES, KEY_SHA1, KEY_MD5):
            assert key.hex() not in text and repr(key) not in text
            assert key[:8].hex() not in text and repr(key[:8])[2:-1] not in text


def test_encode_add_sa_rejects_keylen_mismatch() -> None:
    with pytest.raises(StructError) as info:
        structs.encode_add_sa(dataclasses.replace(EXPECTED_ADD_SA, KeyLen=len(KEYMAT) - 1))
    assert info.value.status == NdisStatus.INVALID_DATA and info.value.field == "KeyLen"
    with pytest.raises(StructError):
        structs.encode_add_sa(EXPECTED_ADD_SA, KEYMAT + b"x")


@pytest.mark.parametrize("bad,field", [
    ({"SrcPort": 0x10000}, "SrcPort"),
    ({"NumSAs": -0x8001}, "NumSAs"),
    ({"Protocol": -1}, "Protocol"),
    ({"OffloadHandle": 1 << 64}, "OffloadHandle"),
    ({"SrcAddr": "10.0.0.1"}, "SrcAddr"),
    ({"DestMask": b"\xff\xff\xff"}, "DestMask"),
    ({"SecAssoc": EXPECTED_SAS[:2]}, "SecAssoc"),
    ({"SecAssoc": (EXPECTED_SAS[0], dataclasses.replace(EXPECTED_SAS[1], SPI=1 << 32),
                   EXPECTED_SAS[2])}, "SecAssoc[1].SPI"),
    ({"SecAssoc": (EXPECTED_SAS[0], EXPECTED_SAS[1],
                   dataclasses.replace(EXPECTED_SAS[2], ConfAlgo=AlgoInfo(algoKeylen=-1)))},
     "SecAssoc[2].ConfAlgo.algoKeylen"),
    ({"SecAssoc": (EXPECTED_SAS[0], EXPECTED_SAS[1], None)}, "SecAssoc[2]"),
])
def test_encode_names_the_field_that_does_not_fit(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(StructError) as info:
        structs.encode_add_sa(dataclasses.replace(EXPECTED_ADD_SA, **bad))
    assert info.value.status == NdisStatus.INVALID_DATA
    assert info.value.field == field


def test_encode_into_short_buffer() -> None:
    need = structs.ADD_SA_KEYMAT_OFFSET + len(KEYMAT)
    with pytest.raises(StructError) as info:
        structs.encode_into(bytearray(need - 1), 0, EXPECTED_ADD_SA)
    assert info.value.status == NdisStatus.BUFFER_TOO_SHORT and info.value.bytes_needed == need
    with pytest.raises(StructError):
        structs.encode_into(bytearray(8), 1, DeleteSa(5))


def test_unknown_class_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        structs.encode(object())
    with pytest.raises(TypeError):
        structs.decode(int, b"")


# --- DELETE requests -----------------------------------------------------------------------------


def test_delete_sa(spec) -> None:
    o = offsets(spec, "OFFLOAD_IPSEC_DELETE_SA")
    buf = bytearray(spec["structs"]["OFFLOAD_IPSEC_DELETE_SA"]["size"])
    struct.pack_into("<Q", buf, o["OffloadHandle"], 0xDEADBEEF00000007)
    assert structs.decode_delete_sa(buf) == DeleteSa(0xDEADBEEF00000007)
    assert structs.encode_delete_sa(DeleteSa(0xDEADBEEF00000007)) == buf
    for n in range(len(buf)):
        with pytest.raises(StructError) as info:
            structs.decode_delete_sa(buf[:n])
        assert info.value.status == NdisStatus.BUFFER_TOO_SHORT
        assert info.value.bytes_needed == len(buf)


def test_delete_udpesp_sa(spec) -> None:
    o = offsets(spec, "OFFLOAD_IPSEC_DELETE_UDPESP_SA")
    buf = bytearray(spec["structs"]["OFFLOAD_IPSEC_DELETE_UDPESP_SA"]["size"])
    struct.pack_into("<Q", buf, o["OffloadHandle"], 42)
    struct.pack_into("<Q", buf, o["EncapTypeEntryOffldHandle"], 7)
    assert structs.decode_delete_udpesp_sa(buf) == DeleteUdpEspSa(42, 7)
    assert structs.encode_delete_udpesp_sa(DeleteUdpEspSa(42, 7)) == buf
    for n in range(len(buf)):
        with pytest.raises(StructError):
            structs.decode_delete_udpesp_sa(buf[:n])


# --- NDIS_IPSEC_OFFLOAD_V1 -----------------------------------------------------------------------


def test_ipsec_offload_v1_capabilities(spec) -> None:
    jfields = {f["name"]: f for f in spec["structs"]["NDIS_IPSEC_OFFLOAD_V1"]["fields"]}
    sup = {m["name"]: m["offset"] for m in jfields["Supported"]["members"]}
    ah_bits = bit_positions(jfields["IPv4AH"]["members"])
    esp_bits = bit_positions(jfields["IPv4ESP"]["members"])
    buf = bytearray(spec["structs"]["NDIS_IPSEC_OFFLOAD_V1"]["size"])
    base = jfields["Supported"]["offset"]
    struct.pack_into("<I", buf, base + sup["Encapsulation"], 0x2)  # IEEE_802_3
    struct.pack_into("<I", buf, base + sup["AhEspCombined"], 1)
    struct.pack_into("<I", buf, base + sup["IPv4Options"], 1)
    struct.pack_into("<I", buf, base + sup["Flags"], 0x10 | 0x20)
    ah = {"Md5": 1, "Sha_1": 1, "Transport": 1, "Tunnel": 0, "Send": 1, "Receive": 1}
    esp = {"Des": 0, "Reserved": 0, "TripleDes": 1, "NullEsp": 1, "Transport": 1, "Tunnel": 1,
           "Send": 1, "Receive": 1}
    struct.pack_into("<I", buf, jfields["IPv4AH"]["offset"],
                     sum(v << ah_bits[k] for k, v in ah.items()))
    struct.pack_into("<I", buf, jfields["IPv4ESP"]["offset"],
                     sum(v << esp_bits[k] for k, v in esp.items()))
    caps = structs.decode_ipsec_offload_v1(buf)
    assert caps == IpsecOffloadV1(
        Supported=IpsecOffloadV1Supported(
            Encapsulation=NdisEncapsulation.IEEE_802_3, AhEspCombined=1, IPv4Options=1,
            Flags=UdpEspCapability.TPT_UDPESP_ENCAPTYPE_OTHER
            | UdpEspCapability.TUN_UDPESP_ENCAPTYPE_OTHER),
        IPv4AH=IpsecOffloadV1Ah(**ah),
        IPv4ESP=IpsecOffloadV1Esp(**esp),
    )
    assert caps.IPv4ESP.TripleDes == OffloadSupport.SUPPORTED
    assert structs.encode_ipsec_offload_v1(caps) == buf
    with pytest.raises(StructError) as info:
        structs.encode_ipsec_offload_v1(dataclasses.replace(caps, IPv4AH=IpsecOffloadV1Ah(Md5=4)))
    assert info.value.field == "IPv4AH.Md5"


def test_ipsec_offload_v1_bitfield_values_use_both_bits(spec) -> None:
    caps = IpsecOffloadV1(IPv4ESP=IpsecOffloadV1Esp(Receive=3))
    buf = structs.encode_ipsec_offload_v1(caps)
    jfields = {f["name"]: f for f in spec["structs"]["NDIS_IPSEC_OFFLOAD_V1"]["fields"]}
    at = jfields["IPv4ESP"]["offset"]
    bit = bit_positions(jfields["IPv4ESP"]["members"])["Receive"]
    assert struct.unpack_from("<I", buf, at)[0] == 3 << bit


# --- NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO --------------------------------------------------


def nbl_members(spec) -> dict[str, dict[str, Any]]:
    (union,) = spec["structs"]["NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO"]["fields"]
    return {m["name"]: m for m in union["members"]}


def test_nbl_info_receive_view(spec) -> None:
    recv = nbl_members(spec)["Receive"]
    bits = bit_positions(recv["members"])
    status_at = {m["name"]: m["offset"] for m in recv["members"]}["CryptoStatus"]
    buf = bytearray(spec["structs"]["NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO"]["size"])
    struct.pack_into("<H", buf, 0, (1 << bits["SaDeleteReq"]) | (1 << bits["CryptoDone"]))
    struct.pack_into("<H", buf, status_at, CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)
    info = structs.decode_nbl_info(buf)
    assert info.Receive == NblInfoReceive(SaDeleteReq=1, CryptoDone=1, NextCryptoDone=0, Pad=0,
                                          CryptoStatus=CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)
    expected_view = NblInfoReceive(SaDeleteReq=1, CryptoDone=1,
                                   CryptoStatus=CryptoStatus.TRANSPORT_ESP_AUTH_FAILED)
    assert structs.encode_nbl_info(expected_view) == buf
    assert structs.encode_nbl_info(info) == buf


def test_nbl_info_transmit_view(spec) -> None:
    tx = nbl_members(spec)["Transmit"]
    buf = bytearray(spec["structs"]["NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO"]["size"])
    struct.pack_into("<Q", buf, tx["members"][0]["offset"], 0xFFFFA00012345678)
    info = structs.decode_nbl_info(buf)
    assert info.Transmit == NblInfoTransmit(0xFFFFA00012345678)
    assert structs.encode_nbl_info(NblInfoTransmit(0xFFFFA00012345678)) == buf
    assert structs.encode_nbl_info(info) == buf


def test_nbl_info_contradicting_views_refused() -> None:
    info = NblInfo(Transmit=NblInfoTransmit(0), Receive=NblInfoReceive(CryptoDone=1))
    with pytest.raises(StructError) as err:
        structs.encode_nbl_info(info)
    assert err.value.field == "Receive" and err.value.status == NdisStatus.INVALID_DATA
    assert structs.encode_nbl_info(NblInfo()) == bytes(8)
    with pytest.raises(StructError):
        structs.encode_nbl_info(NblInfoReceive(Pad=1 << 13))


# --- generic properties --------------------------------------------------------------------------


def data_mask(layout: StructLayout) -> bytes:
    """Bits that carry data (not padding), derived from the layout's field table."""
    mask = bytearray(layout.fixed_size)

    def mark(fields: list[FieldInfo], base: int) -> None:
        for f in fields:
            at = base + f.offset
            if f.kind == "flexible":
                continue
            if f.kind == "bits":
                assert f.bit_offset is not None and f.bit_size is not None
                bits = ((1 << f.bit_size) - 1) << f.bit_offset
                for i in range(f.size):
                    mask[at + i] |= (bits >> (8 * i)) & 0xFF
            elif f.kind in ("struct", "union"):
                assert f.layout is not None
                mark(f.layout.fields, at)
            elif f.kind == "array" and f.layout is not None:
                for k in range(f.count):
                    mark(f.layout.fields, at + k * f.element_size)
            else:
                mask[at:at + f.size] = b"\xff" * f.size

    mark(layout.fields, 0)
    return bytes(mask)


def strategy_for(layout: StructLayout) -> st.SearchStrategy[Any]:
    """Instances of ``layout.cls`` with every field in range, derived from the field table."""

    def scalar(s: Scalar) -> st.SearchStrategy[Any]:
        if s.c_type in ("IPAddr", "IPMask"):
            return st.integers(0, 2**32 - 1).map(IPv4Address)
        return st.integers(s.lo, s.hi)

    def of(typ: Any) -> st.SearchStrategy[Any]:
        return scalar(typ) if isinstance(typ, Scalar) else strategy_for(typ)

    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for step in layout._steps:
        kind, name, typ = step[0], step[1], step[2]
        if kind in ("scalar", "struct"):
            kwargs[name] = of(typ)
        elif kind == "array":
            kwargs[name] = st.tuples(*[of(typ)] * step[3])
        elif kind == "bits":
            for member, _bit, width in typ.members:
                kwargs[member] = st.integers(0, (1 << width) - 1)
        else:  # union: one view set, the others None
            assert isinstance(typ, UnionLayout)
            return st.one_of(*[
                strategy_for(view).map(lambda v, n=n: layout.cls(**{n: v}))
                for n, view in typ.members])
    if layout.flexible is not None:  # KeyLen follows the drawn KeyMat
        fixed = {k: v for k, v in kwargs.items() if k != "KeyLen"}
        return st.binary(max_size=96).flatmap(
            lambda km: st.builds(layout.cls, **fixed, KeyLen=st.just(len(km)),
                                 KeyMat=st.just(km)))
    return st.builds(layout.cls, **kwargs)


ALL_LAYOUTS = sorted(structs.LAYOUTS)


@pytest.mark.parametrize("name", ALL_LAYOUTS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_instance_round_trip(name: str, data: st.DataObject) -> None:
    layout = structs.LAYOUTS[name]
    value = data.draw(strategy_for(layout))
    encoded = structs.encode(value)
    decoded = structs.decode(layout.cls, encoded)
    if layout.cls is NblInfo:  # a decoded union fills every view
        given_views = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        assert {k: dataclasses.asdict(decoded)[k] for k in given_views} == given_views
    else:
        assert decoded == value
    assert structs.encode(decoded) == encoded


@pytest.mark.parametrize("name", ALL_LAYOUTS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bytes_round_trip(name: str, data: st.DataObject) -> None:
    """Any bytes decode; encoding gives them back with pad bytes/bits zeroed (Windows zero-fills)."""
    layout = structs.LAYOUTS[name]
    raw = bytearray(data.draw(st.binary(min_size=layout.fixed_size, max_size=layout.fixed_size)))
    keymat = b""
    if layout.flexible is not None:
        keymat = data.draw(st.binary(max_size=64))
        struct.pack_into("<I", raw, layout.fixed_size - 4, len(keymat))  # KeyLen precedes KeyMat
    mask = data_mask(layout)
    canonical = bytes(b & m for b, m in zip(raw, mask, strict=True)) + keymat
    value = structs.decode(layout.cls, bytes(raw) + keymat)
    assert structs.encode(value) == canonical
    assert structs.decode(layout.cls, canonical) == value


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=260))
def test_decoders_raise_only_struct_error(blob: bytes) -> None:
    for cls in [layout.cls for layout in structs.LAYOUTS.values()]:
        try:
            structs.decode(cls, blob)
        except StructError as err:
            assert err.status in (NdisStatus.BUFFER_TOO_SHORT, NdisStatus.INVALID_LENGTH)


def test_mask_sanity() -> None:
    """Padding exists where x64 puts it: EncapTypeEntry's 2 tail bytes, v1 bitfield spare bits."""
    entry = data_mask(structs.LAYOUTS["OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY"])
    assert entry == b"\xff" * 6 + b"\x00\x00"
    v1 = data_mask(structs.LAYOUTS["NDIS_IPSEC_OFFLOAD_V1"])
    assert v1[20:24] == bytes([0xFF, 0x0F, 0, 0]) and v1[24:28] == bytes([0xFF, 0xFF, 0, 0])
    assert data_mask(structs.LAYOUTS["NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO"]) == b"\xff" * 8
