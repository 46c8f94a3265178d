"""The batch reader of classic pcap files (``ipsecsa.io.pcapbatch``) and its C twin
(``ipsecsa._capio``).

Three properties are checked:

* the C ``scan``/``assemble`` give exactly what the Python references give, on hand-made records
  of every supported link type and on random records (hypothesis), including corrupt ones;
* ``unprotect_capture`` gives byte-identical output and identical counts whether a capture is
  read a chunk at a time (C or Python loops) or frame by frame (the path pcapng files take);
* a record that claims more than ``MAX_RECORD_BYTES`` or a truncated file is reported with the
  same offsets as the frame reader reports them.

Captures are framed here byte by byte from the pcap specification (draft-ietf-opsawg-pcap), ESP
packets are made by our data path and checked by decrypting them back; the independent checks of
the decrypted bytes (scapy-made ESP, tshark) are in tests/cli and tests/interop.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecsa import SecurityAssociation
from ipsecsa.config import parse_sa
from ipsecsa.io import pcapbatch
from ipsecsa.io.pcap import PcapError, PcapReader
from ipsecsa.packet.ipv4 import build_ipv4_header
from ipsecsa.packet.udp import build_udp
from ipsecsa.tools.pcapops import unprotect_capture

try:
    from ipsecsa import _capio
except ImportError:  # pragma: no cover - the extension is optional
    _capio = None

needs_c = pytest.mark.skipif(_capio is None, reason="ipsecsa._capio was not built (no compiler)")


def test_c_loops_are_built_where_required():
    """scripts/test.sh sets IPSECSA_REQUIRE_NATIVE=1 where it can build extensions: there a
    build that silently failed must not leave only the Python loops tested."""
    import os

    if os.environ.get("IPSECSA_REQUIRE_NATIVE") != "1":
        pytest.skip("IPSECSA_REQUIRE_NATIVE is not 1 (set by scripts/test.sh when it can build)")
    assert _capio is not None, "ipsecsa._capio failed to build or import"
    if os.environ.get("IPSECSA_PURE_PYTHON") != "1":
        assert pcapbatch.native()

SA_V4 = {"spi": "0xc0000101", "protocol": "esp", "mode": "tunnel", "src": "192.0.2.1",
         "dst": "198.51.100.1", "encryption": {"algorithm": "aes-gcm-16", "key": "5a" * 20}}
SA_V6 = {"spi": "0xc0000606", "protocol": "esp", "mode": "tunnel", "src": "2001:db8::1",
         "dst": "2001:db8::2", "encryption": {"algorithm": "aes-cbc", "key": "11" * 16},
         "integrity": {"algorithm": "hmac-sha256-128", "key": "22" * 32}}
# Tunnel mode with IPv6 outer, IPv4 inner (the link header's protocol field must follow).
SA_4IN6 = {"spi": "0xc0000464", "protocol": "esp", "mode": "tunnel", "src": "2001:db8::1",
           "dst": "2001:db8::9", "encryption": {"algorithm": "aes-gcm-16", "key": "33" * 20}}
CONFIGS = [parse_sa(d) for d in (SA_V4, SA_V6, SA_4IN6)]


def _outbound(cfg):
    return SecurityAssociation.from_config(dataclasses.replace(cfg, direction="outbound"))


def _inner4(i: int) -> bytes:
    src, dst = bytes((10, 1, 0, 1)), bytes((10, 2, 0, i & 255))
    udp = build_udp(src, dst, 1000 + i, 53, bytes(i % 50))
    return build_ipv4_header(tos=0, total_length=20 + len(udp), ident=i, flags=0,
                             frag_offset=0, ttl=64, protocol=17, src=src, dst=dst) + udp


def _inner6(i: int) -> bytes:
    payload = bytes(8 + i % 30)
    return (bytes.fromhex("60000000") + len(payload).to_bytes(2, "big") + b"\x3b\x40"
            + bytes.fromhex("20010db8000000000000000000000001") * 2 + payload)


def _eth(ip: bytes, vlans: int = 0) -> bytes:
    tags = b"".join(b"\x81\x00" + (100 + v).to_bytes(2, "big") for v in range(vlans))
    et = b"\x86\xdd" if ip[0] >> 4 == 6 else b"\x08\x00"
    return bytes.fromhex("020000000002020000000001") + tags + et + ip


def _sll(ip: bytes) -> bytes:
    et = b"\x86\xdd" if ip[0] >> 4 == 6 else b"\x08\x00"
    return b"\x00\x00\x00\x01\x00\x06" + bytes(8) + et + ip


def _sll2(ip: bytes) -> bytes:
    et = b"\x86\xdd" if ip[0] >> 4 == 6 else b"\x08\x00"
    return et + bytes(18) + ip


def _pcap(records, linktype: int, *, big: bool = False, ns: bool = False) -> bytes:
    """records: (ticks, frame) or (ticks, frame, origlen)."""
    order = ">" if big else "<"
    frac = 10**9 if ns else 10**6
    out = [struct.pack(order + "IHHiIII", 0xA1B23C4D if ns else 0xA1B2C3D4, 2, 4, 0, 0, 65535,
                       linktype)]
    for rec in records:
        ticks, frame = rec[0], rec[1]
        origlen = rec[2] if len(rec) > 2 else len(frame)
        out.append(struct.pack(order + "IIII", ticks // frac, ticks % frac, len(frame), origlen)
                   + frame)
    return b"".join(out)


def _with_options(ip: bytes) -> bytes:
    """``ip`` (IPv4, no options) with 4 bytes of options (NOP, NOP, NOP, EOL) added."""
    from ipsecsa.packet.checksum import internet_checksum

    head = bytearray(ip[:20]) + b"\x01\x01\x01\x00"
    head[0] = 0x46
    head[2:4] = (len(ip) + 4).to_bytes(2, "big")
    head[10:12] = b"\0\0"
    head[10:12] = internet_checksum(bytes(head)).to_bytes(2, "big")
    return bytes(head) + ip[20:]


def _mixed_records(wrap) -> list[tuple]:
    """A capture's worth of everything the tool meets, wrapped in one link type."""
    v4, v6, v46 = (_outbound(c) for c in CONFIGS)
    recs: list[tuple] = []
    t = 1_700_000_000_000_000
    for i in range(30):
        recs.append((t + i, wrap(v4.protect(_inner4(i)).packet)))
    bad = bytearray(v4.protect(_inner4(99)).packet)
    bad[-1] ^= 1  # ICV failure
    recs.append((t + 40, wrap(bytes(bad))))
    unknown = bytearray(v4.protect(_inner4(98)).packet)
    unknown[20:24] = b"\xde\xad\xbe\xef"  # an SPI the file does not have
    recs.append((t + 41, wrap(bytes(unknown))))
    for i in range(5):
        recs.append((t + 50 + i, wrap(v6.protect(_inner6(i)).packet)))
    recs.append((t + 60, wrap(_inner4(7))))  # plain traffic
    recs.append((t + 61, wrap(v46.protect(_inner4(3)).packet)))  # IPv6 outer, IPv4 inner
    cut = wrap(v4.protect(_inner4(5)).packet)
    recs.append((t + 62, cut[:-10], len(cut)))  # cut by the snap length
    recs.append((t + 63, wrap(_with_options(v4.protect(_inner4(6)).packet))))
    frag = bytearray(v4.protect(_inner4(8)).packet)
    frag[6] |= 0x20  # MF set: a first fragment, never fast
    recs.append((t + 64, wrap(bytes(frag))))
    for i in range(30, 40):
        recs.append((t + 70 + i, wrap(v4.protect(_inner4(i)).packet)))
    recs.append((t + 98, recs[3][1]))  # a packet captured twice (replayed, with anti-replay)
    recs.append((t + 99, wrap(v4.protect(_inner4(77)).packet)[:30]))  # a stub
    return recs


LINKS = {
    "ethernet": (1, _eth),
    "ethernet-qinq": (1, lambda ip: _eth(ip, vlans=2)),
    "sll": (113, _sll),
    "sll2": (276, _sll2),
    "raw": (101, lambda ip: ip),
}


def _scan_all(fn, data: bytes, big: bool, linktype: int):
    return fn(data, 24, big, linktype)


@needs_c
@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("big", [False, True])
def test_c_scan_and_assemble_equal_python(link, big):
    linktype, wrap = LINKS[link]
    data = _pcap(_mixed_records(wrap), linktype, big=big)
    c = _capio.scan(data, 24, big, linktype)
    py = pcapbatch.scan_py(data, 24, big, linktype)
    assert c == py
    end, status, meta, ips, runs = c
    assert end == len(data) and status == 0
    assert sum(r[1] for r in runs) == len(meta) // 8
    fast_runs = [r for r in runs if r[2] is not None]
    assert fast_runs, "the capture has fast records"
    for first, count, _key, ip_first in fast_runs:
        results = [(ips[ip_first + k][::-1] if k % 3 else None, None) for k in range(count)]
        for only in (False, True):
            for res in (results, None):
                assert (_capio.assemble(data, meta, first, count, res, only, big, 10**6,
                                        linktype)
                        == pcapbatch.assemble_py(data, meta, first, count, res, only, big,
                                                 10**6, linktype))


def test_scan_runs_follow_spi_and_destination():
    data = _pcap(_mixed_records(_eth), 1)
    _end, _status, _meta, ips, runs = pcapbatch.scan(data, 24, False, 1)
    keys = [r[2] for r in runs]
    v4_key = bytes.fromhex("c0000101") + bytes((198, 51, 100, 1))
    v6_key = bytes.fromhex("c0000606") + bytes.fromhex("20010db8000000000000000000000002")
    # 30 good + the bad-ICV one share a run; the unknown SPI is its own run.
    assert runs[0] == (0, 31, v4_key, 0)
    assert keys[1] == bytes.fromhex("deadbeef") + bytes((198, 51, 100, 1))
    assert runs[2][1:3] == (5, v6_key)
    assert None in keys  # plain traffic, the cut record, the fragment, the stub
    assert len(ips) == sum(r[1] for r in runs if r[2] is not None)


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=80), st.integers(0, 3)), max_size=12),
       st.sampled_from([0, 1, 101, 113, 228, 229, 276]), st.booleans(), st.integers(0, 40))
def test_c_scan_equals_python_on_random_records(frames, linktype, big, cut):
    """Random frames (many start like IP: the version nibble and protocol 50 are forced often),
    a file cut anywhere: both implementations agree, neither raises."""
    recs = []
    for raw, kind in frames:
        b = bytearray(raw)
        if kind and len(b) > 10:
            b[0] = 0x45 if kind == 1 else 0x60
            b[9 if kind == 1 else 6] = 50
        recs.append((0, bytes(b), len(b) + (kind == 3)))
    data = _pcap(recs, linktype, big=big)
    data = data[:len(data) - cut] if cut < len(data) - 24 else data
    c = _capio.scan(data, 24, big, linktype)
    assert c == pcapbatch.scan_py(data, 24, big, linktype)
    _end, _status, meta, ips, runs = c
    for first, count, key, ip_first in runs:
        if key is None:
            continue
        res = [(ips[ip_first + k][:5], None) for k in range(count)]
        assert (_capio.assemble(data, meta, first, count, res, False, big, 10**9, linktype)
                == pcapbatch.assemble_py(data, meta, first, count, res, False, big, 10**9,
                                         linktype))


@needs_c
def test_assemble_refuses_records_it_was_not_given():
    data = _pcap(_mixed_records(_eth), 1)
    _end, _status, meta, _ips, runs = _capio.scan(data, 24, False, 1)
    other = next(r for r in runs if r[2] is None)
    for fn in (_capio.assemble, pcapbatch.assemble_py):
        with pytest.raises(ValueError):
            fn(data, meta, other[0], other[1], None, False, False, 10**6, 1)  # not fast
        with pytest.raises(ValueError):
            fn(data, meta, 0, len(meta), None, False, False, 10**6, 1)  # past meta
        with pytest.raises(ValueError):
            fn(data[:100], meta, 0, 1, None, False, False, 10**6, 1)  # buffer too short


def test_nanosecond_overflowing_fraction_is_normalised_like_the_writer():
    """A record whose fraction field is >= 1 s (a broken writer) comes out as the frame writer
    stores it: (ticks // 10**9, ticks % 10**9)."""
    v4 = _outbound(CONFIGS[0])
    frame = _eth(v4.protect(_inner4(1)).packet)
    data = (struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
            + struct.pack("<IIII", 5, 2_500_000_000, len(frame), len(frame)) + frame)
    _end, _status, meta, _ips, _runs = pcapbatch.scan(data, 24, False, 1)
    for fn in [pcapbatch.assemble_py] + ([_capio.assemble] if _capio else []):
        out, written, _ok, _n = fn(data, meta, 0, 1, None, False, False, 10**9, 1)
        assert written == 1 and struct.unpack_from("<II", out) == (7, 500_000_000)


def test_a_fraction_that_would_carry_the_seconds_past_32_bits_keeps_its_ticks():
    """A broken record with seconds near 2^32 and a fraction field >= 1 s: normalising would
    need a 33-bit seconds field. Both loops (and the frame writer, io/pcap.record_time) cap
    the seconds at 2^32 - 1 and put the rest of the ticks in the fraction, instead of failing
    (the Python loop raised struct.error) or wrapping the seconds (the C loop wrapped to 0;
    found by scripts/fuzz_capio.py)."""
    from ipsecsa.io.pcap import record_time

    v4 = _outbound(CONFIGS[0])
    frame = _eth(v4.protect(_inner4(1)).packet)
    sec, fr = 0xFFFFFFFF - 1, 0xFFFFFFFF
    data = (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
            + struct.pack("<IIII", sec, fr, len(frame), len(frame)) + frame)
    _end, _status, meta, _ips, _runs = pcapbatch.scan(data, 24, False, 1)
    raw = sec * 10**6 + fr
    want = record_time(raw, 10**6)
    assert want == (0xFFFFFFFF, raw - 0xFFFFFFFF * 10**6)
    for fn in [pcapbatch.assemble_py] + ([_capio.assemble] if _capio else []):
        out, written, _ok, _n = fn(data, meta, 0, 1, None, False, False, 10**6, 1)
        assert written == 1 and struct.unpack_from("<II", out) == want
    assert record_time(5 * 10**9 + 7, 10**9) == (5, 7)


# ------------------------------------------------------------------ the tool, both ways
def _sa_file(tmp_path):
    import json

    path = tmp_path / "sas.json"
    path.write_text(json.dumps({"sas": [SA_V4, SA_V6, SA_4IN6]}))
    return path


def _frame_by_frame(monkeypatch):
    monkeypatch.setattr(PcapReader, "batches", PcapReader.frames)


@pytest.mark.parametrize("impl", ["c", "python"])
@pytest.mark.parametrize("link", ["ethernet-qinq", "sll2", "raw"])
@pytest.mark.parametrize(("only_matched", "anti_replay"), [(False, False), (True, False),
                                                         (False, True)])
def test_unprotect_in_batches_equals_frame_by_frame(tmp_path, monkeypatch, impl, link,
                                                    only_matched, anti_replay):
    if impl == "c" and _capio is None:
        pytest.skip("ipsecsa._capio was not built (no compiler)")
    linktype, wrap = LINKS[link]
    src = tmp_path / "in.pcap"
    # Read in small chunks so that records straddle chunk boundaries.
    monkeypatch.setattr("ipsecsa.io.pcap.READ_CHUNK", 700)
    src.write_bytes(_pcap(_mixed_records(wrap), linktype, big=True, ns=True))
    configs = CONFIGS
    if impl == "python":
        monkeypatch.setattr(pcapbatch, "scan", pcapbatch.scan_py)
        monkeypatch.setattr(pcapbatch, "assemble", pcapbatch.assemble_py)
    batched = unprotect_capture(src, tmp_path / "b.pcap", configs, only_matched=only_matched,
                                anti_replay=anti_replay)
    with monkeypatch.context() as m:
        _frame_by_frame(m)
        framed = unprotect_capture(src, tmp_path / "f.pcap", configs, only_matched=only_matched,
                                   anti_replay=anti_replay)
    assert (tmp_path / "b.pcap").read_bytes() == (tmp_path / "f.pcap").read_bytes()
    b, f = batched.as_dict(), framed.as_dict()
    b.pop("output"), f.pop("output")
    assert b == f
    # 40 + 5 IPv6 + 4-in-6 + the one with IPv4 options, + the copy without anti-replay
    assert b["transformed"] == 30 + 10 + 5 + 1 + 1 + (not anti_replay)
    assert b["drops"]["ICV_FAILURE"] == 1  # (RAW: the stub is a MALFORMED one)
    assert b["drops"].get("REPLAY", 0) == anti_replay
    assert b["unknown_spis"][0]["spi"] == "0xdeadbeef"
    # Decrypted packets are the originals.
    with PcapReader(tmp_path / "b.pcap") as r:
        ips = [p.ip for p in r]
    assert _inner4(0) in ips and _inner4(39) in ips and _inner6(4) in ips


def test_oversized_record_and_truncation_are_reported_as_by_the_frame_reader(tmp_path):
    v4 = _outbound(CONFIGS[0])
    frame = _eth(v4.protect(_inner4(1)).packet)
    good = _pcap([(1, frame), (2, frame)], 1)
    huge = good + struct.pack("<IIII", 0, 0, 300_000, 300_000) + bytes(64)
    for data in (huge, good[:-7], good + b"\x01\x02"):
        errors = []
        for method in ("frames", "batches"):
            path = tmp_path / f"{method}.pcap"
            path.write_bytes(data)
            with PcapReader(path) as r, pytest.raises(PcapError) as exc:
                for _ in getattr(r, method)():
                    pass
            errors.append((exc.value.offset, exc.value.reason))
        assert errors[0] == errors[1]
