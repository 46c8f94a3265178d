"""Fragmented IPv6 ESP in ``pcap unprotect``: a Fragment header after other extension headers
(RFC 8200 §4.5: the unfragmentable part — Hop-by-Hop, Routing, Destination Options before
Routing — stays in every fragment and is kept from the first one), and malformed fragment
sets (overlaps, bad offsets, too many fragments) dropped and counted under their reason.

Independent material: the ESP packets are made by scapy's ``scapy.layers.ipsec`` and cut by
scapy's ``fragment6`` (another implementation of RFC 8200's fragmentation); malformed sets are
built with scapy's header classes. The decrypted packets are compared with scapy's originals.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("scapy")

from scapy.layers.inet6 import (
    UDP,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Raw

from ipsecsa.config.files import load_sa_file
from ipsecsa.io.pcap import PcapReader
from ipsecsa.tools.pcapops import MAX_FRAGMENTS, unprotect_capture
from tests.cli.helpers import ether, ipsecsa, write_pcap

KEY = "6b" * 16 + "0a0b0c0d"
SA = {"spi": "0xc0000606", "protocol": "esp", "mode": "tunnel", "src": "2001:db8::1",
      "dst": "2001:db8::2", "encryption": {"algorithm": "aes-gcm-16", "key": KEY}}
OUTER = {"src": "2001:db8::1", "dst": "2001:db8::2"}
ETH_IPV6 = 0x86DD

UNFRAGMENTABLE = {
    "hop-by-hop": lambda: IPv6ExtHdrHopByHop(),
    "routing": lambda: IPv6ExtHdrRouting(),
    "destination-options": lambda: IPv6ExtHdrDestOpt(),
    "all-three": lambda: IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt(),
}


@pytest.fixture(scope="module")
def sa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("frag6") / "sa.json"
    path.write_text(json.dumps({"sas": [SA]}))
    return path


def _esp(inner_size: int = 3000, seq: int = 1):
    """(scapy's ESP layer of one tunnel packet, the inner packet's bytes)."""
    sa = ScapySA(ESP, spi=0xC0000606, crypt_algo="AES-GCM", crypt_key=bytes.fromhex(KEY),
                 auth_algo="NULL", tunnel_header=IPv6(**OUTER), seq_num=seq)
    inner = IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / UDP(sport=7, dport=9) / (
        b"i" * inner_size)
    return sa.encrypt(inner)[ESP], bytes(inner)


def _run(tmp_path, sa_file, packets, name="in.pcap"):
    src, out = tmp_path / name, tmp_path / f"out-{name}"
    write_pcap(src, 1, [(1_700_000_000_000_000 + i, ether(bytes(p), ETH_IPV6))
                        for i, p in enumerate(packets)])
    summary = unprotect_capture(src, out, load_sa_file(sa_file)).as_dict()
    with PcapReader(out) as reader:
        return summary, [p.ip for p in reader]


@pytest.mark.parametrize("ext", sorted(UNFRAGMENTABLE))
def test_fragment_header_after_extension_headers_is_reassembled(tmp_path, sa_file, ext):
    esp, inner = _esp()
    whole = IPv6(**OUTER) / UNFRAGMENTABLE[ext]() / IPv6ExtHdrFragment(id=0x5EED) / esp
    frags = fragment6(whole, 1280)
    assert len(frags) == 3
    # Every fragment carries the unfragmentable part: the Fragment header is not first.
    assert all(bytes(f)[6] != 44 for f in frags)
    noise = IPv6(src="2001:db8::7", dst="2001:db8::8") / UDP(sport=1, dport=2) / b"noise"
    order = [frags[2], noise, frags[0], frags[1]]
    summary, ips = _run(tmp_path, sa_file, order)
    assert summary["transformed"] == 1 and summary["drops"] == {}
    assert summary["fragments_refused"] == {} and summary["fragments_incomplete"] == 0
    assert inner in ips  # written once, in place of the last fragment
    assert bytes(noise) in ips and len(ips) == 2


def _frag(esp_bytes: bytes, offset_bytes: int, size: int, more: bool, ident: int = 0x77,
          ext=None):
    head = IPv6(**OUTER)
    if ext is not None:
        head = head / ext
    return head / IPv6ExtHdrFragment(nh=50, offset=offset_bytes // 8, m=int(more),
                                     id=ident) / Raw(
        esp_bytes[offset_bytes:offset_bytes + size])


def test_overlapping_fragments_are_dropped_and_counted(tmp_path, sa_file):
    esp, _inner = _esp(1500)
    data = bytes(esp)
    hbh = IPv6ExtHdrHopByHop()
    first = _frag(data, 0, 1024, True, ext=hbh)
    overlap = _frag(data, 1016, len(data) - 1016, False, ext=hbh)  # 8 bytes over the first
    late = _frag(data, 1024, len(data) - 1024, False, ext=hbh)  # the honest last piece
    summary, ips = _run(tmp_path, sa_file, [first, overlap, late])
    assert summary["transformed"] == 0
    assert summary["drops"] == {"FRAGMENT": 3}
    assert summary["fragments_refused"] == {"after-drop": 1, "overlap": 2}
    assert ips == [bytes(first), bytes(overlap), bytes(late)]  # written unchanged


@pytest.mark.parametrize("case", ["not-multiple-of-8", "past-65535"])
def test_bad_offsets_are_dropped_and_counted(tmp_path, sa_file, case):
    esp, _inner = _esp(1500)
    data = bytes(esp)
    ext = IPv6ExtHdrRouting()
    if case == "not-multiple-of-8":
        bad = _frag(data, 0, 1001, True, ext=ext)  # MF set but not 8-octet aligned
    else:
        bad = _frag(data, 65528 - 64, 200, True, ext=ext)  # ends past 65535
        bad[IPv6ExtHdrFragment].offset = (65528 - 64) // 8
        bad[Raw].load = data[:200]
    summary, ips = _run(tmp_path, sa_file, [bad])
    assert summary["transformed"] == 0
    assert summary["drops"] == {"FRAGMENT": 1}
    assert summary["fragments_refused"] == {"bad-offset": 1}
    assert ips == [bytes(bad)]


def test_too_many_fragments_are_dropped_and_counted(tmp_path, sa_file):
    esp, _inner = _esp(3000)
    data = bytes(esp)
    ext = IPv6ExtHdrDestOpt()
    pieces = [_frag(data, off, 16, off + 16 < len(data), ext=ext)
              for off in range(0, len(data), 16)]
    assert len(pieces) > MAX_FRAGMENTS + 10
    summary, ips = _run(tmp_path, sa_file, pieces)
    assert summary["transformed"] == 0
    assert summary["drops"] == {"FRAGMENT": len(pieces)}
    assert summary["fragments_refused"] == {
        "too-many-fragments": MAX_FRAGMENTS + 1,
        "after-drop": len(pieces) - MAX_FRAGMENTS - 1}
    assert len(ips) == len(pieces)


def test_garbage_extension_chain_is_passed_through(tmp_path, sa_file):
    """A packet whose Hop-by-Hop header runs past its payload is not a fragment we can key:
    written unchanged, no exception."""
    bad = bytearray(bytes(IPv6(**OUTER) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(nh=50)
                          / Raw(b"x" * 64)))
    bad[41] = 200  # Hop-by-Hop length: 1608 bytes, far past the packet
    summary, ips = _run(tmp_path, sa_file, [bytes(bad)])
    assert summary["transformed"] == 0 and summary["passed_through"] == 1
    assert ips == [bytes(bad)]


def test_command_reports_refused_fragments(tmp_path, sa_file):
    esp, inner = _esp(1500)
    data = bytes(esp)
    hbh = IPv6ExtHdrHopByHop()
    good = fragment6(IPv6(**OUTER) / hbh / IPv6ExtHdrFragment(id=1) / esp, 1280)
    bad = [_frag(data, 0, 1024, True, ident=2, ext=hbh),
           _frag(data, 1016, len(data) - 1016, False, ident=2, ext=hbh)]
    src = tmp_path / "mixed.pcap"
    write_pcap(src, 1, [(i, ether(bytes(p), ETH_IPV6)) for i, p in enumerate([*good, *bad])])
    out = tmp_path / "mixed-out.pcap"
    summary = ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(src), str(out),
                      "--json").json()
    assert summary["transformed"] == 1
    assert summary["drops"] == {"FRAGMENT": 2}
    assert summary["fragments_refused"] == {"overlap": 2}
    text = ipsecsa("pcap", "unprotect", "-s", str(sa_file), str(src), str(out))
    assert "dropped by reassembly (written unchanged): overlap 2" in text.stdout
    doc = ipsecsa("pcap", "inspect", "-s", str(sa_file), str(src), "--json").json()
    assert doc["fragments_refused"] == {"overlap": 2}
    assert doc["failures"] == []  # one datagram, decrypted
    with PcapReader(out) as reader:
        assert inner in [p.ip for p in reader]
