"""Shared material for the command-line tests: one SA file, plain traffic, captures made once."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("scapy")

from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import Raw

from tests.cli.helpers import ether, ipsecsa, write_pcap

# Host A's view of one tunnel: A = 192.0.2.1 (net 10.1/16), B = 198.51.100.1 (net 10.2/16).
SAS = {"sas": [
    {"spi": "0xc0000101", "protocol": "esp", "mode": "tunnel", "direction": "outbound",
     "src": "192.0.2.1", "dst": "198.51.100.1",
     "encryption": {"algorithm": "aes-gcm-16", "key": "7a" * 16 + "01020304"},
     "selectors": [{"src": "10.1.0.0/16", "dst": "10.2.0.0/16"}]},
    {"spi": "0xc0000202", "protocol": "esp", "mode": "tunnel", "direction": "inbound",
     "src": "198.51.100.1", "dst": "192.0.2.1",
     "encryption": {"algorithm": "aes-cbc", "key": "5b" * 16},
     "integrity": {"algorithm": "hmac-sha256-128", "key": "3c" * 32},
     "selectors": [{"src": "10.2.0.0/16", "dst": "10.1.0.0/16"}]},
]}

ETH_IPV4, ETH_ARP = 0x0800, 0x0806
ARP_FRAME = ether(bytes(28), ETH_ARP)
T0_NS = 1_700_000_000_123_456_789  # a nanosecond timestamp a float cannot hold exactly


def plain_ip(i: int) -> bytes:
    rnd = random.Random(i)
    if i % 2 == 0:
        src, dst = f"10.1.0.{1 + i % 200}", f"10.2.0.{1 + i % 100}"
    else:
        src, dst = f"10.2.0.{1 + i % 100}", f"10.1.0.{1 + i % 200}"
    payload = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 300)))
    if i % 5 == 0:
        return bytes(IP(src=src, dst=dst, id=i) / ICMP(id=7, seq=i) / Raw(payload))
    return bytes(IP(src=src, dst=dst, id=i) / UDP(sport=1000 + i, dport=53) / Raw(payload))


UNRELATED = bytes(IP(src="172.16.0.1", dst="172.16.0.2") / UDP(sport=1, dport=2) / b"hello")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="session")
def sa_file(workdir):
    path = workdir / "host-a.json"
    path.write_text(json.dumps(SAS))
    return path


@pytest.fixture(scope="session")
def plain_vlan(workdir):
    """Nanosecond pcap, Ethernet with an 802.1Q tag: 40 tunnel packets both ways, an ARP
    frame and an unrelated packet."""
    records = []
    for i in range(40):
        records.append((T0_NS + i * 1_000_001, ether(plain_ip(i), ETH_IPV4, vlan=42)))
        if i == 10:
            records.append((T0_NS + i * 1_000_001 + 5, ARP_FRAME))
        if i == 20:
            records.append((T0_NS + i * 1_000_001 + 7, ether(UNRELATED, ETH_IPV4, vlan=42)))
    path = workdir / "plain-vlan.pcap"
    write_pcap(path, 1, records, nanosecond=True)
    return path, records


@pytest.fixture(scope="session")
def protected_vlan(workdir, sa_file, plain_vlan):
    out = workdir / "protected-vlan.pcap"
    run = ipsecsa("pcap", "protect", "--sa-file", str(sa_file), str(plain_vlan[0]), str(out),
                  "--json")
    return out, run.json()
