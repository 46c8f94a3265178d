"""ipsecsa.io.pcap: round trips, files written by scapy, hand-built edge cases, corrupt files.

scapy (a dev dependency) is the independent oracle for the formats: it writes the classic pcap
and pcapng files we read, and reads the files we write. The byte-swapped, nanosecond, simple-packet
and multi-section files scapy cannot produce are built byte by byte here from the format specs
(pcap-savefile(5), draft-ietf-opsawg-pcapng).
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipsecsa
from ipsecsa.config import parse_sa
from ipsecsa.errors import ConfigError, IpsecsaError
from ipsecsa.io import pcap, wireshark
from ipsecsa.io.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    MAX_RECORD_BYTES,
    Packet,
    PcapError,
    PcapReader,
    PcapWriter,
    read_packets,
)

scapy_all = pytest.importorskip("scapy.all")
from scapy.all import (
    ARP,
    IP,
    UDP,
    CookedLinux,
    Dot1AD,
    Dot1Q,
    Ether,
    IPv6,
    Loopback,
    Padding,
    Raw,
    raw,
    rdpcap,
    wrpcap,
)
from scapy.utils import PcapNgWriter

try:  # scapy >= 2.5
    from scapy.all import CookedLinuxV2
except ImportError:  # pragma: no cover - old scapy
    CookedLinuxV2 = None

P4 = raw(IP(src="192.0.2.1", dst="198.51.100.7", id=7) / UDP(sport=4000, dport=5000)
         / Raw(b"ipv4 payload"))
P6 = raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=6000, dport=7000)
         / Raw(b"ipv6 payload!"))
ESP4 = bytes.fromhex("4500002c0001000040320000c0000201c6336407") + bytes(24)  # proto 50, any body


def _read(path_or_file, **kw) -> tuple[list[Packet], Counter]:
    skipped: Counter = Counter()
    return list(read_packets(path_or_file, skipped=skipped, **kw)), skipped


# ================================================================ writer -> reader round trips
@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_ETHERNET])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_round_trip(tmp_path, linktype, nanosecond):
    path = tmp_path / "rt.pcap"
    stamps = [0.0, 1.5, 1700000000.123456, 1700000000.999999]
    packets = [P4, P6, ESP4, P4]
    with PcapWriter(path, linktype=linktype, nanosecond=nanosecond) as w:
        for pkt, ts in zip(packets, stamps, strict=True):
            w.write(pkt, ts=ts)
    assert w.count == 4
    out, skipped = _read(path)
    assert not skipped
    assert [p.ip for p in out] == packets
    assert all(p.linktype == linktype for p in out)
    for p, ts in zip(out, stamps, strict=True):
        assert p.ts == pytest.approx(ts, abs=1e-6)
    if linktype == LINKTYPE_ETHERNET:
        assert out[0].data[:14] == bytes.fromhex("020000000002" "020000000001" "0800")
        assert out[1].data[12:14] == b"\x86\xdd"
    else:
        assert [p.data for p in out] == packets


def test_written_files_are_read_by_scapy(tmp_path):
    """scapy as the oracle for our writer (RAW and ETHERNET)."""
    for linktype in (LINKTYPE_RAW, LINKTYPE_ETHERNET):
        path = tmp_path / f"w{linktype}.pcap"
        with PcapWriter(path, linktype=linktype) as w:
            w.write(P4, ts=10.25)
            w.write(P6, ts=11.5)
        got = rdpcap(str(path))
        assert len(got) == 2
        assert float(got[0].time) == pytest.approx(10.25)
        if linktype == LINKTYPE_RAW:
            assert raw(got[0]) == P4 and raw(got[1]) == P6
        else:
            assert raw(got[0][IP]) == P4 and raw(got[1][IPv6]) == P6


def test_writer_to_file_object_stays_open():
    buf = io.BytesIO()
    with PcapWriter(buf) as w:
        w.write(P4, ts=1.0)
    assert not buf.closed
    buf.seek(0)
    assert [p.ip for p in read_packets(buf)] == [P4]


def test_writer_header_is_classic_pcap_2_4_little_endian(tmp_path):
    buf = io.BytesIO()
    PcapWriter(buf).close()
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack("<IHHiIII",
                                                                          buf.getvalue())
    assert (magic, major, minor, zone, sigfigs, linktype) == (0xA1B2C3D4, 2, 4, 0, 0, 101)
    assert snaplen == MAX_RECORD_BYTES


def test_writer_timestamp_rounding_carries_into_seconds():
    buf = io.BytesIO()
    with PcapWriter(buf) as w:
        w.write(P4, ts=5.9999996)
    sec, usec = struct.unpack_from("<II", buf.getvalue(), 24)
    assert (sec, usec) == (6, 0)


def test_writer_refuses_bad_arguments(tmp_path):
    with pytest.raises(ConfigError) as exc:
        PcapWriter(io.BytesIO(), linktype=113)
    assert exc.value.field == "linktype"
    with PcapWriter(io.BytesIO()) as w:
        with pytest.raises(ConfigError, match="not an IPv4 or IPv6 packet"):
            w.write(b"\x00" * 30)
        with pytest.raises(ConfigError, match="ts"):
            w.write(P4, ts=-1.0)
        with pytest.raises(ConfigError, match="ts"):
            w.write(P4, ts=float("nan"))
    with (PcapWriter(io.BytesIO(), snaplen=len(P4) - 1) as w,
          pytest.raises(ConfigError, match="snap length")):
        w.write(P4)
    with pytest.raises(ValueError, match="closed"):
        w.write(P4)


# ================================================================ files written by scapy
def test_scapy_pcap_ethernet_vlan_qinq_padding_and_non_ip(tmp_path):
    path = tmp_path / "eth.pcap"
    frames = [
        Ether() / IP(P4),
        Ether() / Dot1Q(vlan=10) / IPv6(P6),
        Ether() / Dot1AD(vlan=20) / Dot1Q(vlan=30) / IP(P4),
        Ether() / ARP(),
        Ether() / IP(P4) / Padding(b"\x00" * 20),  # Ethernet padding after the IP packet
    ]
    wrpcap(str(path), frames)
    out, skipped = _read(path)
    assert [p.ip for p in out] == [P4, P6, P4, P4]
    assert [p.data for p in out] == [raw(f) for i, f in enumerate(frames) if i != 3]
    assert all(p.linktype == LINKTYPE_ETHERNET for p in out)
    assert skipped == {"non_ip": 1}


def test_scapy_pcap_raw(tmp_path):
    path = tmp_path / "raw.pcap"
    wrpcap(str(path), [IP(P4), IPv6(P6)], linktype=LINKTYPE_RAW)
    out, skipped = _read(path)
    assert [p.ip for p in out] == [P4, P6] and not skipped
    assert {p.linktype for p in out} == {LINKTYPE_RAW}


def test_scapy_pcap_linux_sll(tmp_path):
    path = tmp_path / "sll.pcap"
    wrpcap(str(path), [CookedLinux(proto=0x0800) / IP(P4), CookedLinux(proto=0x86DD) / IPv6(P6),
                       CookedLinux(proto=0x0806) / ARP()])
    out, skipped = _read(path)
    assert [p.ip for p in out] == [P4, P6]
    assert {p.linktype for p in out} == {pcap.LINKTYPE_LINUX_SLL}
    assert skipped == {"non_ip": 1}


@pytest.mark.skipif(CookedLinuxV2 is None, reason="this scapy has no SLL2 layer")
def test_scapy_pcap_linux_sll2(tmp_path):
    path = tmp_path / "sll2.pcap"
    wrpcap(str(path), [CookedLinuxV2(proto=0x0800) / IP(P4), CookedLinuxV2(proto=0x86DD)
                       / IPv6(P6)])
    out, _ = _read(path)
    assert [p.ip for p in out] == [P4, P6]
    assert {p.linktype for p in out} == {pcap.LINKTYPE_LINUX_SLL2}


def test_scapy_pcap_null_loopback(tmp_path):
    path = tmp_path / "null.pcap"
    wrpcap(str(path), [Loopback(type=2) / IP(P4), Loopback(type=30) / IPv6(P6)])
    out, skipped = _read(path)
    assert [p.ip for p in out] == [P4, P6] and not skipped
    assert {p.linktype for p in out} == {pcap.LINKTYPE_NULL}


def test_scapy_pcap_unknown_linktype_is_skipped_and_counted(tmp_path):
    path = tmp_path / "user0.pcap"
    wrpcap(str(path), [Raw(P4), Raw(P6)], linktype=147)  # LINKTYPE_USER0
    with PcapReader(path) as reader:
        assert list(reader) == []
    assert reader.skipped == {"unsupported_linktype": 2}
    assert reader.skipped_linktypes == {147: 2}


def test_scapy_pcapng_several_interfaces(tmp_path):
    path = tmp_path / "multi.pcapng"
    frames = [Ether() / IP(P4), CookedLinux(proto=0x86DD) / IPv6(P6),
              Ether() / Dot1Q(vlan=5) / IPv6(P6), Ether() / ARP()]
    frames[0].sniffed_on = "eth0"
    frames[1].sniffed_on = "any"
    frames[2].sniffed_on = "eth0"
    frames[3].sniffed_on = "eth0"
    for i, f in enumerate(frames):
        f.time = 1700000000 + i + 0.25
    w = PcapNgWriter(str(path))
    for f in frames:
        w.write(f)
    w.close()
    with PcapReader(path) as reader:
        out = list(reader)
    assert reader.format == "pcapng"
    assert [p.ip for p in out] == [P4, P6, P6]
    assert [p.linktype for p in out] == [LINKTYPE_ETHERNET, pcap.LINKTYPE_LINUX_SLL,
                                         LINKTYPE_ETHERNET]
    assert [p.ts for p in out] == pytest.approx([1700000000.25, 1700000001.25, 1700000002.25])
    assert reader.skipped == {"non_ip": 1}


# ================================================================ hand-built files
def _pcap_file(order: str, magic: int, linktype: int, records: list[tuple[int, int, bytes]],
               origlen_extra: int = 0) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data) + origlen_extra) + data
    return out


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize(("magic", "frac", "expected"), [
    (0xA1B2C3D4, 250000, 100.25),      # microseconds
    (0xA1B23C4D, 250000001, 100.250000001),  # nanoseconds
])
def test_classic_pcap_byte_orders_and_resolutions(order, magic, frac, expected):
    data = _pcap_file(order, magic, LINKTYPE_RAW, [(100, frac, P4), (101, 0, P6)])
    out, _ = _read(io.BytesIO(data))
    assert [p.ip for p in out] == [P4, P6]
    assert out[0].ts == pytest.approx(expected, abs=1e-9)
    assert out[1].ts == 101.0


def test_classic_pcap_fcs_bits_in_linktype_field_are_ignored():
    data = _pcap_file("<", 0xA1B2C3D4, 0x10000000 | LINKTYPE_RAW, [(1, 0, P4)])
    assert [p.ip for p in read_packets(io.BytesIO(data))] == [P4]


def test_snapped_records_are_skipped_as_truncated_capture():
    data = _pcap_file("<", 0xA1B2C3D4, LINKTYPE_RAW, [(1, 0, P4)], origlen_extra=100)
    with PcapReader(io.BytesIO(data)) as reader:
        assert list(reader) == []
    assert reader.skipped == {"truncated_capture": 1}


def _block(order: str, block_type: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack(order + "II", block_type, total) + body + struct.pack(order + "I", total)


def _shb(order: str) -> bytes:
    return _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def _idb(order: str, linktype: int, tsresol: int | None = None, tsoffset: int = 0) -> bytes:
    body = struct.pack(order + "HHI", linktype, 0, 0)
    if tsresol is not None:
        body += _option(order, 9, bytes([tsresol]))
    if tsoffset:
        body += _option(order, 14, struct.pack(order + "q", tsoffset))
    if tsresol is not None or tsoffset:
        body += _option(order, 0, b"")
    return _block(order, 1, body)


def _epb(order: str, if_id: int, ticks: int, data: bytes, origlen: int | None = None) -> bytes:
    return _block(order, 6, struct.pack(order + "IIIII", if_id, ticks >> 32, ticks & 0xFFFFFFFF,
                                        len(data), len(data) if origlen is None else origlen)
                  + data)


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_byte_orders_resolutions_spb_opb_and_sections(order):
    other = ">" if order == "<" else "<"
    nrb = _block(order, 4, _option(order, 0, b""))  # name resolution block: skipped
    data = (
        _shb(order)
        + _idb(order, LINKTYPE_RAW, tsresol=9)  # nanoseconds
        + _idb(order, LINKTYPE_ETHERNET, tsresol=0x80 | 20, tsoffset=1000)  # 2^-20 s
        + nrb
        + _epb(order, 0, 1_500_000_000_250_000_000, P4)
        + _epb(order, 1, 3 << 20, bytes(12) + b"\x86\xdd" + P6)
        + _block(order, 3, struct.pack(order + "I", len(P6)) + P6)  # SPB: interface 0
        + _block(order, 2, struct.pack(order + "HHIIII", 0, 0, 0, 2_000_000, len(P4), len(P4))
                 + P4)  # obsolete packet block on interface 0 (nanosecond ticks)
        # A second section in the other byte order resets the interfaces.
        + _shb(other)
        + _idb(other, pcap.LINKTYPE_IPV6)
        + _epb(other, 0, 7_000_000, P6)
    )
    with PcapReader(io.BytesIO(data)) as reader:
        out = list(reader)
    assert reader.format == "pcapng"
    assert [p.ip for p in out] == [P4, P6, P6, P4, P6]
    assert [p.linktype for p in out] == [LINKTYPE_RAW, LINKTYPE_ETHERNET, LINKTYPE_RAW,
                                         LINKTYPE_RAW, pcap.LINKTYPE_IPV6]
    assert out[0].ts == pytest.approx(1_500_000_000.25)
    assert out[1].ts == pytest.approx(1003.0)
    assert out[2].ts is None  # simple packet blocks have no timestamp
    assert out[3].ts == pytest.approx(0.002)  # interface 0 ticks in nanoseconds
    assert out[4].ts == pytest.approx(7.0)  # default resolution: microseconds


def test_pcapng_snapped_epb_is_skipped():
    data = _shb("<") + _idb("<", LINKTYPE_RAW) + _epb("<", 0, 0, P4, origlen=len(P4) + 8)
    with PcapReader(io.BytesIO(data)) as reader:
        assert list(reader) == []
    assert reader.skipped == {"truncated_capture": 1}


def test_ip_length_trims_trailing_bytes_in_raw_frames():
    data = _pcap_file("<", 0xA1B2C3D4, LINKTYPE_RAW, [(1, 0, P4 + b"\xee" * 6)])
    (pkt,) = read_packets(io.BytesIO(data))
    assert pkt.ip == P4 and pkt.data == P4 + b"\xee" * 6


# ================================================================ corrupt and truncated files
def _error(data: bytes) -> PcapError:
    with pytest.raises(PcapError) as exc:
        list(read_packets(io.BytesIO(data)))
    assert isinstance(exc.value, IpsecsaError)
    assert f"at offset {exc.value.offset}" in str(exc.value)
    return exc.value


def test_empty_and_foreign_files():
    assert _error(b"").offset == 0
    err = _error(b"GIF89a" + bytes(40))
    assert err.offset == 0 and "not a pcap" in str(err)


def test_truncated_classic_pcap_names_the_offset():
    good = _pcap_file("<", 0xA1B2C3D4, LINKTYPE_RAW, [(1, 0, P4), (2, 0, P6)])
    second = 24 + 16 + len(P4)
    assert _error(good[:10]).offset == 0  # inside the file header
    assert _error(good[:second + 5]).offset == second  # inside a record header
    err = _error(good[:second + 16 + 3])  # inside the record's data
    assert err.offset == second and "truncated packet record" in str(err)
    # Cut exactly between records is a clean end of file.
    assert [p.ip for p in read_packets(io.BytesIO(good[:second]))] == [P4]


def test_absurd_record_length_is_refused_before_reading():
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    data += struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 0x7FFFFFFF)
    err = _error(data)
    assert err.offset == 24 and "limit" in str(err)


def test_bad_pcap_version():
    assert "version" in str(_error(struct.pack("<IHHiIII", 0xA1B2C3D4, 9, 0, 0, 0, 0, 1)))


def test_truncated_and_corrupt_pcapng_names_the_offset():
    head = _shb("<") + _idb("<", LINKTYPE_RAW)
    epb = _epb("<", 0, 0, P4)
    start = len(head)
    assert _error(head + epb[:-3]).offset == start
    assert _error(head + epb[:6]).offset == start
    bad_trailer = epb[:-4] + struct.pack("<I", len(epb) + 4)
    assert "trailing length" in str(_error(head + bad_trailer))
    huge = struct.pack("<II", 6, 0x7FFFFFF0)
    err = _error(head + huge)
    assert err.offset == start and "limit" in str(err)
    unaligned = struct.pack("<II", 6, 30)
    assert "invalid length" in str(_error(head + unaligned))
    err = _error(head + _epb("<", 3, 0, P4))
    assert err.offset == start and "interface 3" in str(err)
    lying = _block("<", 6, struct.pack("<IIIII", 0, 0, 0, 500, 500) + P4)
    assert "claims 500" in str(_error(head + lying))
    bad_bom = struct.pack("<II", 0x0A0D0D0A, 28) + b"\x00" * 20
    assert "byte-order magic" in str(_error(bad_bom))
    assert _error(_shb("<")[:10]).offset == 0


_VALID_PREFIXES = [
    b"",
    struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1),
    struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101),
    _shb("<"),
    _shb(">") + _idb(">", LINKTYPE_ETHERNET),
]


@settings(max_examples=400, deadline=None)
@given(prefix=st.sampled_from(_VALID_PREFIXES), tail=st.binary(max_size=300))
def test_random_bytes_raise_nothing_but_pcap_error(prefix, tail):
    skipped: Counter = Counter()
    try:
        for pkt in read_packets(io.BytesIO(prefix + tail), skipped=skipped):
            assert pkt.ip[0] >> 4 in (4, 6)
    except PcapError as exc:
        assert 0 <= exc.offset <= len(prefix + tail)


# ================================================================ ipsecsa.io.wireshark (no tshark)
# The end-to-end proof that tshark decrypts with these entries is tests/interop/test_tshark.py;
# these pin the exact strings, the refusals and the file handling where tshark is absent.
ENC_KEY = "00112233445566778899aabbccddeeff"
AUTH_KEY = "ab" * 32


def _desc(**over) -> dict:
    d = {"spi": "0x00001234", "protocol": "esp", "mode": "tunnel", "src": "192.0.2.1",
         "dst": "198.51.100.1", "encryption": {"algorithm": "aes-cbc", "key": ENC_KEY},
         "integrity": {"algorithm": "hmac-sha256-128", "key": AUTH_KEY}}
    d.update(over)
    return d


def test_esp_sa_line_exact_form():
    (line,) = wireshark.esp_sa_lines([_desc()])
    assert line == ('"IPv4","192.0.2.1","198.51.100.1","0x00001234","AES-CBC [RFC3602]",'
                    f'"0x{ENC_KEY}","HMAC-SHA-256-128 [RFC4868]","0x{AUTH_KEY}"')


def test_esp_sa_gcm_key_includes_salt_and_auth_is_null_ipv6_exploded():
    key = ENC_KEY + "cafebabe"
    desc = _desc(src="2001:db8::1", dst="2001:db8::2",
                 encryption={"algorithm": "aes-gcm-12", "key": key}, integrity=None)
    del desc["integrity"]
    (line,) = wireshark.esp_sa_lines([parse_sa(desc)])
    assert line == ('"IPv6","2001:0db8:0000:0000:0000:0000:0000:0001",'
                    '"2001:0db8:0000:0000:0000:0000:0000:0002","0x00001234",'
                    f'"AES-GCM with 12 octet ICV [RFC4106]","0x{key}","NULL",""')


@pytest.mark.parametrize(("enc", "integ", "auth_string"), [
    ("3des-cbc", "hmac-sha1-96", "HMAC-SHA-1-96 [RFC2404]"),
    ("des-cbc", "hmac-md5-96", "HMAC-MD5-96 [RFC2403]"),
    ("aes-ctr", "hmac-sha384-192", "HMAC-SHA-384-192 [RFC4868]"),
    ("null", "hmac-sha512-256", "HMAC-SHA-512-256 [RFC4868]"),
])
def test_esp_sa_algorithm_strings(enc, integ, auth_string):
    klen = {"3des-cbc": 24, "des-cbc": 8, "aes-ctr": 20, "null": 0}[enc]
    ilen = {"hmac-sha1-96": 20, "hmac-md5-96": 16, "hmac-sha384-192": 48,
            "hmac-sha512-256": 64}[integ]
    desc = _desc(encryption={"algorithm": enc, "key": "11" * klen},
                 integrity={"algorithm": integ, "key": "22" * ilen})
    sa = ipsecsa.SecurityAssociation.from_dict(desc)
    fields = wireshark.esp_sa_lines([sa])[0].split(",")
    assert fields[4] == f'"{wireshark.ENCRYPTION_STRINGS[enc]}"'
    assert fields[5] == (f'"0x{"11" * klen}"' if klen else '""')
    assert fields[6] == f'"{auth_string}"'


@pytest.mark.parametrize(("over", "field", "name"), [
    ({"encryption": {"algorithm": "aes-ccm-16", "key": ENC_KEY + "aabbcc"}, "integrity": None},
     "sas[1].encryption.algorithm", "aes-ccm-16"),
    ({"encryption": {"algorithm": "null-aes-gmac", "key": ENC_KEY + "aabbccdd"},
      "integrity": None}, "sas[1].encryption.algorithm", "null-aes-gmac"),
    ({"encryption": {"algorithm": "chacha20-poly1305", "key": "33" * 36}, "integrity": None},
     "sas[1].encryption.algorithm", "chacha20-poly1305"),
    ({"integrity": {"algorithm": "aes-xcbc-96", "key": ENC_KEY}}, "sas[1].integrity.algorithm",
     "aes-xcbc-96"),
    ({"integrity": {"algorithm": "aes-cmac-96", "key": ENC_KEY}}, "sas[1].integrity.algorithm",
     "aes-cmac-96"),
    ({"protocol": "ah", "encryption": None}, "sas[1].protocol", "AH"),
])
def test_unsupported_is_refused_or_skipped(caplog, over, field, name):
    bad = _desc(**over)
    for key in [k for k, v in over.items() if v is None]:
        del bad[key]
    with pytest.raises(ConfigError) as exc:
        wireshark.esp_sa_lines([_desc(), bad])
    assert exc.value.field == field and name in str(exc.value)
    assert ENC_KEY not in str(exc.value) and AUTH_KEY not in str(exc.value)
    with caplog.at_level("WARNING", logger="ipsecsa.io.wireshark"):
        lines = wireshark.esp_sa_lines([_desc(), bad], skip_unsupported=True)
    assert len(lines) == 1
    assert "left out" in caplog.text and ENC_KEY not in caplog.text


def test_esn_warns_for_wireshark_4_0_and_newer_profile_has_sn_fields(caplog):
    desc = _desc(esn=True, seq=(5 << 32) + 9)
    with caplog.at_level("WARNING", logger="ipsecsa.io.wireshark"):
        (line,) = wireshark.esp_sa_lines([desc])
    assert "extended sequence numbers" in caplog.text and len(line.split(",")) == 8
    (line,) = wireshark.esp_sa_lines([desc], wireshark_version=(4, 2, 0))
    assert line.split(",")[8:] == ['"64-bit"', '"5"']
    chacha = _desc(encryption={"algorithm": "chacha20-poly1305", "key": "33" * 36})
    del chacha["integrity"]
    (line,) = wireshark.esp_sa_lines([chacha], wireshark_version=(4, 2))
    assert line.split(",")[4:] == ['"ChaCha20 with Poly1305 [RFC7634]"', f'"0x{"33" * 36}"',
                                   '"NULL"', '""', '"32-bit"', '"0"']


def test_write_esp_sa_file_is_0600_atomic_and_complete(tmp_path):
    path = tmp_path / "esp_sa"
    path.write_text("old, world-readable\n")
    os.chmod(path, 0o644)
    old_umask = os.umask(0)
    try:
        assert wireshark.write_esp_sa_file(path, [_desc(), _desc(spi=0x5678)]) == 2
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = [x for x in path.read_text().splitlines() if x and not x.startswith("#")]
    assert lines == wireshark.esp_sa_lines([_desc(), _desc(spi=0x5678)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esp_sa"]  # no temporary left over
    ah = _desc(protocol="ah")
    del ah["encryption"]
    with pytest.raises(ConfigError, match="AH"):
        wireshark.write_esp_sa_file(path, [ah])
    assert len(path.read_text().splitlines()) == 4  # a refused write leaves the old file


def test_installed_wireshark_version_of_missing_binary_is_none():
    assert wireshark.installed_wireshark_version("/nonexistent/tshark") is None


def test_linktype_field_with_fcs_bits_is_read_as_its_low_16_bits(tmp_path):
    """pcap-savefile(5): the upper bits of the link-type field say whether frames carry an FCS
    (the P bit 0x04000000 and the FCS length); the link type is the low 16 bits."""
    ip = bytes.fromhex("4500001c0001000040110000c0000201c0000202") + bytes(8)
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0x04000000 | 101)
    record = struct.pack("<IIII", 1, 0, len(ip), len(ip)) + ip
    path = tmp_path / "fcs.pcap"
    path.write_bytes(header + record)
    packets = list(ipsecsa.io.pcap.read_packets(path))
    assert len(packets) == 1 and packets[0].ip == ip


def test_pcap_writer_creates_captures_0600_like_key_files(tmp_path):
    """A capture may hold decrypted traffic: 0600 whatever the umask, and an existing
    world-readable file is narrowed when it is rewritten (issue 10)."""
    fresh, old = tmp_path / "fresh.pcap", tmp_path / "old.pcap"
    old.write_bytes(b"stale")
    os.chmod(old, 0o644)
    old_umask = os.umask(0)
    try:
        for path in (fresh, old):
            with PcapWriter(path) as w:
                w.write(P4)
    finally:
        os.umask(old_umask)
    for path in (fresh, old):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        out, skipped = _read(path)
        assert [p.data for p in out] == [P4] and not skipped
