"""``ipsecsa pcap protect`` / ``unprotect`` on real capture files, run as the real command.

Independent material: plain traffic is built with scapy; ESP made by scapy's
``scapy.layers.ipsec`` (another implementation) is decrypted by ``pcap unprotect``; captures are
framed by ``tests/cli/helpers.py`` from the pcap/pcapng specifications, not by our writer.
"""

from __future__ import annotations

import os
import stat
import struct

import pytest
from scapy.layers.inet import UDP

from ipsecsa.io.pcap import PcapReader
from tests.cli.conftest import ARP_FRAME, SAS, UNRELATED, plain_ip
from tests.cli.helpers import ether, ipsecsa, sll2, write_pcap, write_pcapng


def _frames(path):
    with PcapReader(path) as reader:
        frames = list(reader.frames())
        return frames, reader.interfaces


def _raw_records(path):
    """(header bytes, frame) of each classic pcap record, as stored."""
    with open(path, "rb") as f:
        data = f.read()
    pos, out = 24, []
    while pos < len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        out.append((data[pos:pos + 8], data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    return data[:24], out


def test_protect_covers_tunnel_traffic_only(protected_vlan, plain_vlan):
    path, summary = protected_vlan
    assert summary["frames"] == 42 and summary["transformed"] == 40
    assert summary["passed_through"] == 2 and summary["written"] == 42
    assert [s["packets"] for s in summary["sas"]] == [20, 20]
    frames, _ = _frames(path)
    esp = [f for f in frames if f.ip is not None and f.ip[9] == 50]
    assert len(esp) == 40
    spis = {int.from_bytes(f.ip[20:24], "big") for f in esp}
    assert spis == {0xC0000101, 0xC0000202}
    assert any(f.data == ARP_FRAME for f in frames)
    assert any(f.ip == UNRELATED for f in frames)
    # VLAN tag kept, link layer otherwise untouched
    assert all(f.data[12:16] == b"\x81\x00\x00\x2a" for f in esp)


def test_unprotect_restores_every_packet_and_keeps_timestamps(workdir, sa_file, plain_vlan,
                                                              protected_vlan):
    src = plain_vlan[0]
    out = workdir / "decrypted-vlan.pcap"
    run = ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(protected_vlan[0]), str(out),
                  "--json")
    summary = run.json()
    assert summary["transformed"] == 40 and summary["drops"] == {}
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    # Byte-identical to the input capture: same header (nanosecond magic, link type), same
    # record headers (timestamps as stored), same frames.
    head_in, recs_in = _raw_records(src)
    head_out, recs_out = _raw_records(out)
    assert head_out[:4] == head_in[:4] and head_out[20:24] == head_in[20:24]
    assert recs_out == recs_in


def test_only_matched_drops_everything_else(workdir, sa_file, protected_vlan):
    out = workdir / "only.pcap"
    summary = ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(protected_vlan[0]), str(out),
                      "--only-matched", "--json").json()
    assert summary["written"] == 40
    frames, _ = _frames(out)
    assert all(f.ip is not None and f.ip[9] != 50 for f in frames)


def test_text_summary_names_sas_and_drops(workdir, sa_file, protected_vlan):
    # Corrupt one ESP packet's ICV: the text summary shows it under ICV_FAILURE.
    head, recs = _raw_records(protected_vlan[0])
    bad = workdir / "one-bad.pcap"
    with open(bad, "wb") as f:
        f.write(head)
        for i, (h, frame) in enumerate(recs):
            if i == 3:
                frame = frame[:-1] + bytes([frame[-1] ^ 1])
            f.write(h + struct.pack("<II", len(frame), len(frame)) + frame)
    run = ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(bad), str(workdir / "x.pcap"))
    assert "ICV_FAILURE 1" in run.stdout
    assert "0xc0000101" in run.stdout and "0xc0000202" in run.stdout
    assert "\x1b[" not in run.stdout  # no colour when not on a terminal


def test_pcapng_two_interfaces_round_trip(workdir, sa_file):
    """Two interfaces (Ethernet with µs timestamps, Linux cooked v2 with ns): protect then
    unprotect gives back the same frames on the same interfaces with the same timestamps."""
    records = []
    for i in range(12):
        ip = plain_ip(i)
        if i % 2:
            records.append((1, 1_700_000_000_000_000_123 + i, sll2(ip, 0x0800)))
        else:
            records.append((0, 1_700_000_000_000_000 + i, ether(ip, 0x0800)))
    src = workdir / "two.pcapng"
    write_pcapng(src, [(1, None, "eth0"), (276, 9, "any")], records)
    enc, dec = workdir / "two-enc.pcapng", workdir / "two-dec.pcapng"
    assert ipsecsa("pcap", "protect", "-s", str(sa_file), str(src), str(enc),
                   "--json").json()["transformed"] == 12
    assert ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(enc), str(dec),
                   "--json").json()["transformed"] == 12
    frames, ifaces = _frames(dec)
    assert [(f.interface, f.ts_raw, f.data) for f in frames] == \
        [(i, t, d) for i, t, d in records]
    assert [(x.linktype, x.tsresol) for x in ifaces] == [(1, 6), (276, 9)]
    assert [dict(x.options).get(2) for x in ifaces] == [b"eth0", b"any"]


def test_scapy_made_esp_is_decrypted(workdir, sa_file):
    """ESP built by scapy (an independent implementation) on both SAs, Linux cooked v1."""
    from scapy.layers.inet import IP as SIP
    from scapy.layers.ipsec import ESP
    from scapy.layers.ipsec import SecurityAssociation as ScapySA

    out_sa = ScapySA(ESP, spi=0xC0000101, crypt_algo="AES-GCM",
                     crypt_key=bytes.fromhex(SAS["sas"][0]["encryption"]["key"]),
                     auth_algo="NULL", tunnel_header=SIP(src="192.0.2.1", dst="198.51.100.1"))
    in_sa = ScapySA(ESP, spi=0xC0000202, crypt_algo="AES-CBC",
                    crypt_key=bytes.fromhex(SAS["sas"][1]["encryption"]["key"]),
                    auth_algo="SHA2-256-128",
                    auth_key=bytes.fromhex(SAS["sas"][1]["integrity"]["key"]),
                    tunnel_header=SIP(src="198.51.100.1", dst="192.0.2.1"))
    plain, recs = [], []
    for i in range(10):
        ip = plain_ip(i)
        plain.append(ip)
        sa = out_sa if i % 2 == 0 else in_sa
        esp = bytes(sa.encrypt(SIP(ip)))
        sll = struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0800)
        recs.append((1_700_000_000_000_000 + i, sll + esp))
    src, dec = workdir / "scapy.pcap", workdir / "scapy-dec.pcap"
    write_pcap(src, 113, recs)
    summary = ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(src), str(dec),
                      "--json").json()
    assert summary["transformed"] == 10, summary
    frames, _ = _frames(dec)
    assert [f.ip for f in frames] == plain
    assert all(f.data[:16] == recs[0][1][:16] for f in frames)  # SLL header kept


def _udp_encap_sas(workdir):
    sas = {"sas": [{"spi": "0x00001001", "protocol": "esp", "mode": "transport",
                    "src": "2001:db8::1", "dst": "2001:db8::2",
                    "encryption": {"algorithm": "aes-gcm-16", "key": "11" * 20},
                    "encapsulation": {"sport": 4500, "dport": 4500}},
                   {"spi": "0x00001002", "protocol": "esp", "mode": "tunnel",
                    "src": "192.0.2.1", "dst": "198.51.100.1",
                    "encryption": {"algorithm": "aes-gcm-16", "key": "22" * 20},
                    "encapsulation": {"sport": 4500, "dport": 4500}}]}
    path = workdir / "udp.json"
    path.write_text(__import__("json").dumps(sas))
    return path


def test_partial_udp_checksums_are_accepted_unless_verified(workdir):
    """A sending host's capture: IPv6 ESP-in-UDP whose UDP checksum was left for the NIC (here
    the pseudo-header sum only, as Linux leaves it for CHECKSUM_PARTIAL), and IPv4 ESP-in-UDP
    with a wrong non-zero checksum."""
    from scapy.layers.inet6 import IPv6

    from ipsecsa import SecurityAssociation
    from ipsecsa.config.files import load_sa_file
    from ipsecsa.packet.checksum import pseudo_header_sum

    sa_path = _udp_encap_sas(workdir)
    cfgs = load_sa_file(sa_path)
    import dataclasses

    v6 = SecurityAssociation.from_config(dataclasses.replace(cfgs[0], direction="outbound"))
    v4 = SecurityAssociation.from_config(dataclasses.replace(cfgs[1], direction="outbound"))
    inner6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5, dport=6) / (b"x" * 50))
    inner4 = plain_ip(2)
    recs, originals = [], []
    for i in range(4):
        p6 = bytearray(v6.protect(inner6).packet)
        ulen = len(p6) - 40
        p6[46:48] = pseudo_header_sum(bytes(p6[8:24]), bytes(p6[24:40]), 17,
                                      ulen).to_bytes(2, "big")
        p4 = bytearray(v4.protect(inner4).packet)
        p4[26:28] = b"\x12\x34"
        recs += [(i * 2, ether(bytes(p6), 0x86DD)), (i * 2 + 1, ether(bytes(p4), 0x0800))]
        originals += [inner6, inner4]
    src = workdir / "partial.pcap"
    write_pcap(src, 1, recs)
    ok = ipsecsa("pcap", "unprotect", "-s", str(sa_path), str(src), str(workdir / "p1.pcap"),
                 "--json").json()
    assert ok["transformed"] == 8 and ok["drops"] == {}
    frames, _ = _frames(workdir / "p1.pcap")
    assert [f.ip for f in frames] == originals
    strict = ipsecsa("pcap", "unprotect", "-s", str(sa_path), str(src),
                     str(workdir / "p2.pcap"), "--verify-checksums", "--json").json()
    assert strict["transformed"] == 0 and strict["drops"] == {"BAD_UDP": 8}


def _fragment_v4(packet: bytes, size: int) -> list[bytes]:
    """Fragment an IPv4 packet (no options) into pieces of ``size`` payload bytes."""
    from ipsecsa.packet.checksum import internet_checksum

    head, payload = bytearray(packet[:20]), packet[20:]
    out = []
    for off in range(0, len(payload), size):
        chunk = payload[off:off + size]
        h = bytearray(head)
        more = off + size < len(payload)
        h[2:4] = (20 + len(chunk)).to_bytes(2, "big")
        h[6:8] = ((0x2000 if more else 0) | off // 8).to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = internet_checksum(bytes(h)).to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    return out


def test_fragmented_esp_is_reassembled(workdir, sa_file):
    from scapy.layers.inet import IP as SIP
    from scapy.layers.ipsec import ESP
    from scapy.layers.ipsec import SecurityAssociation as ScapySA

    sa = ScapySA(ESP, spi=0xC0000101, crypt_algo="AES-GCM",
                 crypt_key=bytes.fromhex(SAS["sas"][0]["encryption"]["key"]), auth_algo="NULL",
                 tunnel_header=SIP(src="192.0.2.1", dst="198.51.100.1", id=777))
    big = bytes(SIP(src="10.1.0.9", dst="10.2.0.9") / UDP(sport=9, dport=9) / (b"z" * 1400))
    frags = _fragment_v4(bytes(sa.encrypt(SIP(big))), 512)
    other = _fragment_v4(bytes(SIP(src="172.16.0.1", dst="172.16.0.2", id=5, proto=17)
                               / (b"q" * 700)), 256)
    order = [frags[2], other[0], frags[0], other[1], frags[1], other[2]]
    src, dec = workdir / "frag.pcap", workdir / "frag-dec.pcap"
    write_pcap(src, 101, [(i, p) for i, p in enumerate(order)])
    summary = ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(src), str(dec),
                      "--json").json()
    assert summary["transformed"] == 1
    frames, _ = _frames(dec)
    ips = [f.ip for f in frames]
    assert big in ips
    assert sorted(p for p in ips if p != big) == sorted(other)  # not ours: passed through


@pytest.mark.parametrize("bad", ["not-a-capture", "truncated"])
def test_bad_capture_is_one_line(workdir, sa_file, protected_vlan, bad):
    path = workdir / f"{bad}.pcap"
    if bad == "not-a-capture":
        path.write_text("hello, this is text\n")
    else:
        path.write_bytes(protected_vlan[0].read_bytes()[:200])
    run = ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(path), str(workdir / "o.pcap"),
                  check=False)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipsecsa: error: ")
    assert str(path) in lines[0] and "Traceback" not in run.stderr
    assert not os.path.exists(workdir / "o.pcap")  # no half-written output


@pytest.mark.parametrize("linktype", [0, 108, 101])
def test_loopback_and_raw_link_types_with_a_family_change(tmp_path, linktype):
    """6-in-4 tunnel on BSD/OpenBSD loopback (NULL, LOOP) and raw IP captures: protecting an
    IPv6 packet into an IPv4 tunnel changes the IP version, so the loopback header's address
    family must follow (and come back on unprotect). Library calls (the CLI is covered above)."""
    import json as _json

    from scapy.layers.inet6 import IPv6

    from ipsecsa.config.files import load_sa_file
    from ipsecsa.tools.pcapops import protect_capture, unprotect_capture

    sas = tmp_path / "6in4.json"
    sas.write_text(_json.dumps({"sas": [{
        "spi": "0x3001", "protocol": "esp", "mode": "tunnel", "src": "192.0.2.1",
        "dst": "192.0.2.2", "encryption": {"algorithm": "chacha20-poly1305", "key": "77" * 36},
        "selectors": [{"src": "2001:db8:1::/48", "dst": "2001:db8:2::/48"}]}]}))
    cfgs = load_sa_file(sas)
    inner = [bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / UDP(sport=7, dport=i)
                   / (b"v" * i)) for i in range(1, 6)]

    def frame(ip: bytes) -> bytes:
        if linktype == 101:
            return ip
        family = 24 if ip[0] >> 4 == 6 else 2
        return family.to_bytes(4, "little" if linktype == 0 else "big") + ip

    src, enc, dec = tmp_path / "in.pcap", tmp_path / "enc.pcap", tmp_path / "dec.pcap"
    write_pcap(src, linktype, [(i, frame(p)) for i, p in enumerate(inner)])
    assert protect_capture(src, enc, cfgs).transformed == 5
    frames, _ = _frames(enc)
    assert all(f.ip[0] >> 4 == 4 for f in frames)
    if linktype != 101:
        order = "little" if linktype == 0 else "big"
        assert all(int.from_bytes(f.data[:4], order) == 2 for f in frames)
    assert unprotect_capture(enc, dec, cfgs).transformed == 5
    frames, _ = _frames(dec)
    assert [f.ip for f in frames] == inner
    if linktype != 101:
        assert all(int.from_bytes(f.data[:4], order) in (10, 24) for f in frames)
