"""The SA database: inbound index, outbound classification, bundles, end to end, atomicity.

Real SAs throughout (``SecurityAssociation.from_dict``); scapy is the independent oracle for the
wire format of ESP-then-AH bundles.
"""

from __future__ import annotations

import ipaddress
import random
import struct
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import DropReason
from ipsecsa.sad import Bundle, Filter, SaDatabase, SadError, filters_for

scapy_ipsec = pytest.importorskip("scapy.layers.ipsec")
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

ScapySA = scapy_ipsec.SecurityAssociation
S_AH, S_ESP = scapy_ipsec.AH, scapy_ipsec.ESP

HOST_A, HOST_B = "192.0.2.1", "198.51.100.2"
HOST_A6, HOST_B6 = "2001:db8::a", "2001:db8::b"
TCP_P, UDP_P = 6, 17


# -- SAs ------------------------------------------------------------------------------------------

def key(spi: int, n: int, salt: int = 0) -> str:
    return random.Random(spi * 7 + n).randbytes(n + salt).hex()


def sa_dict(spi: int, *, protocol: str = "esp", direction: str = "outbound", src: str = HOST_A,
            dst: str = HOST_B, mode: str = "transport", enc: str = "aes-gcm-16",
            selectors: list | None = None, encap: tuple[int, int] | None = None) -> dict:
    d: dict = {"spi": spi, "protocol": protocol, "mode": mode, "direction": direction,
               "src": src, "dst": dst}
    if protocol == "ah":
        d["integrity"] = {"algorithm": "hmac-sha256-128", "key": key(spi, 32)}
    elif enc == "aes-cbc":
        d["encryption"] = {"algorithm": "aes-cbc", "key": key(spi, 16)}
        d["integrity"] = {"algorithm": "hmac-sha256-128", "key": key(spi, 32)}
    elif enc == "chacha20-poly1305":
        d["encryption"] = {"algorithm": enc, "key": key(spi, 32, 4)}
    else:
        d["encryption"] = {"algorithm": "aes-gcm-16", "key": key(spi, 16, 4)}
    if selectors is not None:
        d["selectors"] = selectors
    if encap is not None:
        d["encapsulation"] = {"type": "udp", "sport": encap[0], "dport": encap[1]}
    return d


def pair(spi: int, **kw) -> tuple[SecurityAssociation, SecurityAssociation]:
    """The outbound SA of one host and the matching inbound SA of its peer."""
    out = SecurityAssociation.from_dict(sa_dict(spi, direction="outbound", **kw))
    inb = SecurityAssociation.from_dict(sa_dict(spi, direction="inbound", **kw))
    return out, inb


def sa(spi: int, **kw) -> SecurityAssociation:
    return SecurityAssociation.from_dict(sa_dict(spi, **kw))


def tcp(src: str = HOST_A, dst: str = HOST_B, sport: int = 40000, dport: int = 443,
        payload: bytes = b"hello") -> bytes:
    ipc = IP if ipaddress.ip_address(src).version == 4 else IPv6
    return bytes(ipc(src=src, dst=dst) / TCP(sport=sport, dport=dport) / Raw(payload))


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


# -- inbound ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "dst", "encap"), [
    (HOST_A, HOST_B, None), (HOST_A6, HOST_B6, None),
    (HOST_A, HOST_B, (4500, 4500)), (HOST_A, HOST_B, (4600, 4601)),
], ids=["esp-v4", "esp-v6", "udp-4500", "udp-custom-port"])
def test_inbound_esp_lookup_and_delivery(src, dst, encap):
    out, inb = pair(0x1001, src=src, dst=dst, encap=encap)
    sad = SaDatabase()
    sad.add_inbound(inb)
    assert sad.lookup_inbound(0x1001, 50, packed(dst)) is inb
    assert sad.lookup_inbound(0x1001, 50, ipaddress.ip_address(dst)) is inb
    assert sad.lookup_inbound(0x1001, 51, packed(dst)) is None
    assert sad.lookup_inbound(0x1002, 50, packed(dst)) is None
    assert sad.lookup_inbound(0x1001, 50, packed(src)) is None
    for i in range(3):
        p = tcp(src, dst, payload=bytes([i]) * 50)
        wire = out.protect(p).packet
        if encap:
            assert IP(wire)[UDP].dport == encap[1]
        assert sad.inbound(wire).packet == p
    assert sad.drops == {}


@pytest.mark.parametrize(("src", "dst"), [(HOST_A, HOST_B), (HOST_A6, HOST_B6)])
def test_inbound_ah(src, dst):
    out, inb = pair(0x2001, protocol="ah", src=src, dst=dst)
    sad = SaDatabase()
    sad.add_inbound(inb)
    assert sad.lookup_inbound(0x2001, 51, packed(dst)) is inb
    assert sad.lookup_inbound(0x2001, 50, packed(dst)) is None
    p = tcp(src, dst)
    assert sad.inbound(out.protect(p).packet).packet == p


def test_inbound_drop_reasons_are_counted_by_the_database():
    _out, inb = pair(0x1001, encap=(4500, 4500))
    sad = SaDatabase()
    sad.add_inbound(inb)
    other_out, _ = pair(0x1999)  # never installed on the receiver
    cases = [
        (other_out.protect(tcp()).packet, DropReason.BAD_SPI),
        (tcp(), DropReason.WRONG_PROTOCOL),
        (udp(HOST_A, HOST_B, 5000, 53, b"query"), DropReason.WRONG_PROTOCOL),
        (udp(HOST_A, HOST_B, 4500, 4500, b"\xff"), DropReason.NATT_KEEPALIVE),
        (udp(HOST_A, HOST_B, 4500, 4500, bytes(4) + b"IKE message"), DropReason.NON_ESP_MARKER),
        (b"\x45\x00", DropReason.TRUNCATED),
        (b"\x75" + bytes(40), DropReason.MALFORMED),
    ]
    for packet, reason in cases:
        res = sad.inbound(packet)
        assert res.drop is reason, (packet, res)
    assert sad.drops == {
        DropReason.BAD_SPI: 1, DropReason.WRONG_PROTOCOL: 2, DropReason.NATT_KEEPALIVE: 1,
        DropReason.NON_ESP_MARKER: 1, DropReason.TRUNCATED: 1, DropReason.MALFORMED: 1}
    assert inb.counters.drops == {}  # the SA never saw any of them


def test_custom_encap_port_is_recognised_only_while_an_sa_uses_it():
    _out, inb = pair(0x1001, encap=(4501, 4501))
    sad = SaDatabase()
    keepalive = udp(HOST_A, HOST_B, 4501, 4501, b"\xff")
    assert sad.inbound(keepalive).drop is DropReason.WRONG_PROTOCOL
    h = sad.add_inbound(inb)
    assert sad.inbound(keepalive).drop is DropReason.NATT_KEEPALIVE
    sad.delete(h)
    assert sad.inbound(keepalive).drop is DropReason.WRONG_PROTOCOL


def test_duplicate_inbound_key_is_refused_and_nothing_changes():
    sad = SaDatabase()
    first = sa(0x1001, direction="inbound")
    sad.add_inbound(first)
    dup = sa(0x1001, direction="inbound", enc="aes-cbc")
    esp2, ah2 = sa(0x3001, direction="inbound"), sa(0x1001, direction="inbound")
    with pytest.raises(SadError, match="already installed"):
        sad.add_inbound(dup)
    # A bundle whose outer SA is new but whose inner SA clashes: refused as a whole.
    ah_new = sa(0x3002, protocol="ah", direction="inbound")
    with pytest.raises(SadError):
        sad.add_inbound([sa(0x1001, direction="inbound"), ah_new])
    assert sad.lookup_inbound(0x3002, 51, packed(HOST_B)) is None
    assert sad.lookup_inbound(0x1001, 50, packed(HOST_B)) is first
    assert len(sad) == 1
    del esp2, ah2
    # The same SPI for another destination or another protocol is a different SA.
    other_dst = sa(0x1001, direction="inbound", src=HOST_B, dst=HOST_A)
    other_proto = sa(0x1001, protocol="ah", direction="inbound")
    other_v6 = sa(0x1001, direction="inbound", src=HOST_A6, dst=HOST_B6)
    for s in (other_dst, other_proto, other_v6):
        sad.add_inbound(s)
    assert sad.lookup_inbound(0x1001, 50, packed(HOST_A)) is other_dst
    assert sad.lookup_inbound(0x1001, 51, packed(HOST_B)) is other_proto
    assert sad.lookup_inbound(0x1001, 50, packed(HOST_B6)) is other_v6
    assert sad.lookup_inbound(0x1001, 50, packed(HOST_B)) is first
    assert len(sad) == 4


def test_direction_checks():
    sad = SaDatabase()
    with pytest.raises(SadError, match="direction"):
        sad.add_inbound(sa(0x1001, direction="outbound"))
    with pytest.raises(SadError, match="direction"):
        sad.add_outbound(sa(0x1001, direction="inbound"))
    h = sad.add_inbound(sa(0x1001, direction="inbound"))
    with pytest.raises(SadError, match="direction"):
        sad.replace(h, sa(0x1002, direction="outbound"))
    with pytest.raises(SadError, match="handle"):
        sad.delete(h + 100)


# -- outbound ---------------------------------------------------------------------------------

def tunnel_sa(spi: int, sel_dst: str | None, direction: str = "outbound", **kw):
    sel = {"dst": sel_dst} if sel_dst else {}
    return sa(spi, mode="tunnel", direction=direction, selectors=[sel], **kw)


def test_outbound_most_specific_wins_and_ties_go_to_the_oldest():
    sad = SaDatabase()
    wide = tunnel_sa(0x100, None)
    mid = tunnel_sa(0x200, "10.2.0.0/16")
    narrow = tunnel_sa(0x300, "10.2.3.0/24")
    narrow_later = tunnel_sa(0x301, "10.2.3.0/24")
    for s in (wide, narrow, mid, narrow_later):
        sad.add_outbound(s)

    def spi_for(dst: str) -> int | None:
        b = sad.classify(tcp("10.1.0.5", dst))
        return None if b is None else b.sas[0].spi

    assert spi_for("10.2.3.4") == 0x300  # /24 over /16 over wildcard; tie: added first
    assert spi_for("10.2.9.9") == 0x200
    assert spi_for("172.16.0.1") == 0x100
    assert sad.classify(tcp(HOST_A6, HOST_B6)).sas[0].spi == 0x100  # no prefix: both families


def test_outbound_protects_and_counts_no_policy():
    sad = SaDatabase()
    out, inb = pair(0x1001, selectors=[{"protocol": 6, "dport": 443}])
    sad.add_outbound(out)
    p = tcp()
    wire = sad.outbound(p)
    assert wire.ok and IP(wire.packet).haslayer(S_ESP)
    assert inb.unprotect(wire.packet).packet == p
    assert sad.outbound(tcp(dport=80)).drop is DropReason.NO_POLICY
    assert sad.outbound(tcp(dst="203.0.113.9")).drop is DropReason.NO_POLICY
    assert sad.outbound(b"\x45\x00").drop is DropReason.TRUNCATED
    assert sad.drops == {DropReason.NO_POLICY: 2, DropReason.TRUNCATED: 1}


def test_zero_fields_are_wildcards_in_explicit_filters():
    sad = SaDatabase()
    any_tcp = sa(0x100)
    to_b = sa(0x200)
    sad.add_outbound(any_tcp, [Filter(4, 0, 0xFFFFFFFF, 0, 0, TCP_P, 0, 0)])  # src 0: any
    sad.add_outbound(to_b, [Filter.v4(None, HOST_B, TCP_P, 0, 22)])
    assert sad.classify(tcp(dport=22)).sas[0] is to_b
    assert sad.classify(tcp(dport=80)).sas[0] is any_tcp
    assert sad.classify(tcp("10.9.9.9", "10.8.8.8", dport=1)).sas[0] is any_tcp
    assert sad.classify(udp(HOST_A, HOST_B, 1, 22, b"x")) is None
    with pytest.raises(SadError):
        sad.add_outbound(sa(0x300), [])


def test_filters_for_transport_and_tunnel():
    ones = 0xFFFFFFFF
    a, b = int(ipaddress.ip_address(HOST_A)), int(ipaddress.ip_address(HOST_B))
    # Transport, no selectors: the two hosts, any protocol.
    assert filters_for(Bundle.of(sa(0x100))) == [Filter(4, a, ones, b, ones)]
    # Transport with selectors: still between the hosts; protocol and ports from the selector;
    # a selector that leaves out a host cannot match this SA's packets and is skipped.
    t = sa(0x101, selectors=[{"protocol": 6, "dport": 443}, {"dst": "10.0.0.0/8"},
                             {"dst": "198.51.100.0/24", "protocol": 17}])
    assert filters_for(Bundle.of(t)) == [Filter(4, a, ones, b, ones, 6, 0, 443),
                                         Filter(4, a, ones, b, ones, 17)]
    with pytest.raises(SadError, match="covers"):
        filters_for(Bundle.of(sa(0x102, selectors=[{"dst": "10.0.0.0/8"}])))
    # Tunnel: the selectors' inner prefixes; a selector without prefixes covers both families.
    tun = sa(0x103, mode="tunnel", selectors=[{"src": "10.1.0.0/16", "dst": "10.2.0.0/24"},
                                               {"protocol": 6}])
    assert filters_for(Bundle.of(tun)) == [
        Filter.v4("10.1.0.0/16", "10.2.0.0/24"), Filter.v4(None, None, 6),
        Filter.v6(None, None, 6)]
    assert filters_for(Bundle.of(sa(0x104, mode="tunnel"))) == [Filter.v4(), Filter.v6()]
    # A transport SA's filter does not send traffic for other hosts into it.
    sad = SaDatabase()
    sad.add_outbound(sa(0x105, selectors=[{"protocol": 6}]))
    assert [s.spi for s in sad.classify(tcp()).sas] == [0x105]
    assert sad.classify(tcp(dst="203.0.113.9")) is None


def test_outbound_replace_keeps_filters_and_delete_removes_them():
    sad = SaDatabase()
    old, new = tunnel_sa(0x100, "10.2.0.0/16"), tunnel_sa(0x101, "10.2.0.0/16")
    h = sad.add_outbound(old)
    p = tcp("10.1.0.1", "10.2.0.1")
    assert sad.replace(h, new).sas[0] is old
    assert sad.classify(p).sas[0] is new
    assert sad.delete(h).sas[0] is new
    assert sad.classify(p) is None and len(sad) == 0


# -- bundles ----------------------------------------------------------------------------------

def bundle_pair(esp_spi: int, ah_spi: int, mode: str = "transport", src: str = HOST_A,
                dst: str = HOST_B, selectors: list | None = None):
    esp_o, esp_i = pair(esp_spi, enc="aes-cbc", mode=mode, src=src, dst=dst,
                        selectors=selectors)
    ah_o, ah_i = pair(ah_spi, protocol="ah", src=src, dst=dst)
    return (esp_o, ah_o), (esp_i, ah_i)


def scapy_peel(wire: bytes, esp_spi: int, ah_spi: int, tunnel: bool = False):
    """Verify the AH and decrypt the ESP of an [IP][AH][ESP] packet with scapy."""
    pkt = IP(wire)
    assert pkt.proto == 51 and pkt[S_AH].spi == ah_spi and pkt[S_AH].nh == 50
    assert bytes(pkt[S_AH].payload)[:4] == esp_spi.to_bytes(4, "big")  # ESP right after AH
    ah = ScapySA(S_AH, spi=ah_spi, auth_algo="SHA2-256-128",
                 auth_key=bytes.fromhex(key(ah_spi, 32)))
    inner = ah.decrypt(pkt)  # raises IPSecIntegrityError on a bad ICV
    inner = IP(bytes(inner))
    assert inner.proto == 50 and inner[S_ESP].spi == esp_spi
    esp = ScapySA(S_ESP, spi=esp_spi, crypt_algo="AES-CBC",
                  crypt_key=bytes.fromhex(key(esp_spi, 16)), auth_algo="SHA2-256-128",
                  auth_key=bytes.fromhex(key(esp_spi, 32)),
                  tunnel_header=IP(src=HOST_A, dst=HOST_B) if tunnel else None)
    return esp.decrypt(IP(bytes(inner)))


def test_bundle_outbound_is_ip_ah_esp_and_scapy_verifies_it():
    outs, ins = bundle_pair(0x5001, 0x5002)
    sad_a, sad_b = SaDatabase(), SaDatabase()
    sad_a.add_outbound(outs)
    sad_b.add_inbound(ins)
    for i in range(4):
        p = tcp(payload=bytes([i]) * (10 + i * 30))
        wire = sad_a.outbound(p).packet
        assert bytes(scapy_peel(wire, 0x5001, 0x5002)) == p
        assert sad_b.inbound(wire).packet == p
    assert sad_b.lookup_bundle(0x5002, 51, packed(HOST_B))[1] == 1
    assert sad_b.lookup_bundle(0x5001, 50, packed(HOST_B))[1] == 0
    assert sad_b.drops == {}


def test_inner_esp_of_a_bundle_alone_is_refused():
    (esp_o, _ah_o), ins = bundle_pair(0x5001, 0x5002)
    sad = SaDatabase()
    sad.add_inbound(ins)
    res = sad.inbound(esp_o.protect(tcp()).packet)  # ESP only: the AH the policy wants is missing
    assert res.drop is DropReason.SELECTOR_MISMATCH
    assert sad.drops == {DropReason.SELECTOR_MISMATCH: 1}
    assert ins[0].counters.packets == 0


def test_bundle_with_a_foreign_inner_spi_is_refused():
    outs, ins = bundle_pair(0x5001, 0x5002)
    stranger_out, _ = pair(0x7777, enc="aes-cbc")
    sad = SaDatabase()
    sad.add_inbound(ins)
    # AH of the bundle around the ESP of another SA: the inner SA refuses the SPI.
    wire = outs[1].protect(stranger_out.protect(tcp()).packet).packet
    assert sad.inbound(wire).drop is DropReason.BAD_SPI
    assert ins[0].counters.drops == {DropReason.BAD_SPI: 1}


def test_tunnel_bundle_outer_addresses_are_the_endpoints():
    sel = [{"src": "10.1.0.0/16", "dst": "10.2.0.0/16"}]
    outs, ins = bundle_pair(0x6001, 0x6002, mode="tunnel", selectors=sel)
    sad_a, sad_b = SaDatabase(), SaDatabase()
    sad_a.add_outbound(outs)
    sad_b.add_inbound(ins)
    p = tcp("10.1.2.3", "10.2.3.4")
    wire = sad_a.outbound(p).packet
    outer = IP(wire)
    assert (outer.src, outer.dst) == (HOST_A, HOST_B)
    assert bytes(scapy_peel(wire, 0x6001, 0x6002, tunnel=True)) == p
    assert sad_b.inbound(wire).packet == p


def test_bundle_validation():
    esp, ah = sa(0x1001), sa(0x1002, protocol="ah")
    with pytest.raises(SadError, match="ESP then AH"):
        Bundle((ah, esp))
    with pytest.raises(SadError, match="1 or 2"):
        Bundle((esp, ah, esp))
    with pytest.raises(SadError, match="same addresses"):
        Bundle((esp, sa(0x1003, protocol="ah", dst="203.0.113.1")))
    with pytest.raises(SadError, match="transport"):
        Bundle((sa(0x1004, mode="tunnel"), sa(0x1005, protocol="ah", mode="tunnel")))
    with pytest.raises(SadError, match="encapsulation"):
        Bundle((sa(0x1006, encap=(4500, 4500)), sa(0x1007, protocol="ah")))
    with pytest.raises(SadError, match="same direction"):
        Bundle((esp, sa(0x1008, protocol="ah", direction="inbound")))
    # ESP and AH may share an SPI: their keys differ by protocol.
    sad = SaDatabase()
    sad.add_inbound([sa(0x1009, direction="inbound"),
                     sa(0x1009, direction="inbound", protocol="ah")])
    assert sad.lookup_bundle(0x1009, 51, packed(HOST_B))[1] == 1


def test_index_updates_are_ordered_for_lock_free_readers():
    """Writes to the inbound index, recorded: a bundle is published inner first and withdrawn
    outer first, and a replace publishes the new SAs before withdrawing the old ones."""
    log: list[tuple[str, int]] = []

    class Recording(dict):
        def __setitem__(self, k, v):
            log.append(("set", k & 0xFFFFFFFF))
            super().__setitem__(k, v)

        def __delitem__(self, k):
            log.append(("del", k & 0xFFFFFFFF))
            super().__delitem__(k)

    sad = SaDatabase()
    sad._inbound = Recording()
    _, ins = bundle_pair(0x1010, 0x1011)
    _, ins2 = bundle_pair(0x1020, 0x1021)
    h = sad.add_inbound(ins)
    assert log == [("set", 0x1010), ("set", 0x1011)]
    log.clear()
    sad.replace(h, ins2)
    assert log == [("set", 0x1020), ("set", 0x1021), ("del", 0x1011), ("del", 0x1010)]
    log.clear()
    sad.delete(h)
    assert log == [("del", 0x1021), ("del", 0x1020)]


def test_inbound_replace_moves_encap_ports():
    sad = SaDatabase()
    h = sad.add_inbound(sa(0x100, direction="inbound", encap=(4600, 4600)))
    keepalive = udp(HOST_A, HOST_B, 4600, 4600, b"\xff")
    assert sad.inbound(keepalive).drop is DropReason.NATT_KEEPALIVE
    sad.replace(h, sa(0x101, direction="inbound", encap=(4700, 4700)))
    assert sad.inbound(keepalive).drop is DropReason.WRONG_PROTOCOL
    assert sad.inbound(udp(HOST_A, HOST_B, 4700, 4700, b"\xff")).drop is \
        DropReason.NATT_KEEPALIVE
    assert sad.lookup_inbound(0x100, 50, packed(HOST_B)) is None
    with pytest.raises(SadError, match="already installed"):
        other = sad.add_inbound(sa(0x102, direction="inbound"))
        sad.replace(other, sa(0x101, direction="inbound"))
    assert sad.lookup_inbound(0x102, 50, packed(HOST_B)) is sad.lookup_bundle(
        0x102, 50, packed(HOST_B))[0].sas[0]  # still the SA installed before the refusal
    assert sad.lookup_inbound(0x102, 50, packed(HOST_B)).spi == 0x102


# -- end to end -------------------------------------------------------------------------------

GW_A, GW_B = "192.0.2.1", "198.51.100.1"


def gateways():
    """Gateway A (10.1.0.0/16 behind it) protects traffic to four subnets behind gateway B,
    each with a different kind of SA; B has the matching inbound SAs."""
    sad_a, sad_b = SaDatabase(), SaDatabase()
    kinds = [
        {"enc": "aes-gcm-16"},
        {"enc": "chacha20-poly1305", "encap": (4500, 4500)},
        {"enc": "aes-cbc", "encap": (4500, 4700)},
        None,  # ESP (aes-cbc) + AH bundle
    ]
    subnets = []
    for i, kind in enumerate(kinds):
        net = f"10.2.{i}.0/24"
        sel = [{"src": "10.1.0.0/16", "dst": net}]
        common = {"mode": "tunnel", "src": GW_A, "dst": GW_B, "selectors": sel}
        if kind is None:
            outs, ins = bundle_pair(0x9000 + i, 0x9100 + i, **common)
            sad_a.add_outbound(outs)
            sad_b.add_inbound(ins)
        else:
            out, inb = pair(0x9000 + i, **common, **kind)
            sad_a.add_outbound(out)
            sad_b.add_inbound(inb)
        subnets.append(i)
    # An IPv6 subnet over the same IPv4 tunnel (6-in-4).
    sel6 = [{"src": "2001:db8:1::/48", "dst": "2001:db8:2::/48"}]
    out6, in6 = pair(0x9200, mode="tunnel", src=GW_A, dst=GW_B, selectors=sel6)
    sad_a.add_outbound(out6)
    sad_b.add_inbound(in6)
    return sad_a, sad_b, subnets


def test_gateway_to_gateway_every_packet_delivered_intact():
    sad_a, sad_b, subnets = gateways()
    rnd = random.Random(7)
    sent = 0
    for n in range(120):
        size = rnd.randrange(0, 1200)
        if n % 5 == 4:
            p = bytes(IPv6(src="2001:db8:1::5", dst=f"2001:db8:2::{n}") / TCP(dport=443)
                      / Raw(rnd.randbytes(size)))
        else:
            i = rnd.choice(subnets)
            p = tcp(f"10.1.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
                    f"10.2.{i}.{rnd.randrange(1, 255)}", rnd.randrange(1024, 65536),
                    rnd.choice([22, 80, 443]), rnd.randbytes(size))
        wire = sad_a.outbound(p)
        assert wire.ok, wire
        got = sad_b.inbound(wire.packet)
        assert got.packet == p, (n, got)
        sent += 1
    assert sent == 120 and sad_a.drops == {} and sad_b.drops == {}
    assert sad_a.outbound(tcp("10.1.0.1", "10.3.0.1")).drop is DropReason.NO_POLICY


def test_fragments_of_protected_packets_are_reassembled():
    sad_a, sad_b, _ = gateways()
    rnd = random.Random(3)
    for n in range(12):
        p = tcp("10.1.0.7", f"10.2.{n % 4}.9", payload=rnd.randbytes(1300 + n))
        wire = sad_a.outbound(p).packet
        frags = [bytes(f) for f in fragment(IP(wire), fragsize=400)]
        assert len(frags) >= 3
        if n % 2:
            rnd.shuffle(frags)
        results = [sad_b.inbound(f) for f in frags]
        assert all(r.packet is None and r.drop is None for r in results[:-1])
        assert results[-1].packet == p
    assert sad_b.drops == {}


# -- property: classify is a linear scan over the installed bundles' filters --------------------

SUBNETS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16", None]


@st.composite
def selectors(draw):
    sel = {"src": draw(st.sampled_from(SUBNETS)), "dst": draw(st.sampled_from(SUBNETS)),
           "protocol": draw(st.sampled_from([0, 6, 17])),
           "dport": draw(st.sampled_from([0, 0, 443, 53]))}
    return {k: v for k, v in sel.items() if v is not None}


def scan(installed: list[tuple[int, Bundle, list[Filter]]], flow) -> Bundle | None:
    """Most specific filter, ties to the earliest added: a plain scan, written from §A.3."""
    version, src, dst, proto, sport, dport = flow
    best = None
    for order, bundle, flts in installed:
        for f in flts:
            if f.version != version:
                continue
            ok = True
            for a, m, v in ((f.src, f.src_mask, src), (f.dst, f.dst_mask, dst)):
                if a and v & (m or (1 << 32) - 1) != a & (m or (1 << 32) - 1):
                    ok = False
            ok = ok and f.protocol in (0, proto) and f.sport in (0, sport) \
                and f.dport in (0, dport)
            if ok:
                rank = (f.specificity, -order)
                if best is None or rank > best[0]:
                    best = (rank, bundle)
    return None if best is None else best[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(selectors(), min_size=1, max_size=3), min_size=1, max_size=12),
       st.lists(st.integers(0, 30), max_size=6), st.randoms(use_true_random=False))
def test_classify_equals_linear_scan(sel_lists, deletions, rnd):
    sad = SaDatabase()
    installed: list[tuple[int, Bundle, list[Filter]]] = []
    handles = []
    for i, sels in enumerate(sel_lists):
        s = sa(0x1000 + i, mode="tunnel", selectors=sels)
        flts = filters_for(Bundle.of(s))
        h = sad.add_outbound(s)
        handles.append(h)
        installed.append((i, next(b for hh, _, b in sad if hh == h), flts))
    for d in deletions:
        if d < len(handles) and handles[d] is not None:
            sad.delete(handles[d])
            installed = [x for x in installed if x[0] != d]
            handles[d] = None
    probes = ["10.1.2.3", "10.1.2.9", "10.1.7.7", "10.9.9.9", "192.168.1.1", "172.16.0.1"]
    for _ in range(60):
        src, dst = rnd.choice(probes), rnd.choice(probes)
        proto = rnd.choice([6, 17])
        dport = rnd.choice([443, 53, 80])
        p = (tcp(src, dst, dport=dport) if proto == 6 else udp(src, dst, 1000, dport, b"x"))
        flow = (4, int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), proto,
                40000 if proto == 6 else 1000, dport)
        assert sad.classify(p) is scan(installed, flow)


# -- concurrency --------------------------------------------------------------------------------

@pytest.fixture
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(writer, readers, seconds=1.0, until=None, patience=60.0):
    """Run ``writer`` and ``readers`` for ``seconds``, and then, if ``until`` is given, on until
    it holds (at most ``patience`` seconds in all): on a loaded machine a reader may need longer
    than a second to catch the writer at the moment it checks."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def guard(fn):
        try:
            fn(stop)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guard, args=(f,)) for f in [writer, *readers]]
    for t in threads:
        t.start()
    stop.wait(seconds)
    deadline = time.monotonic() + patience - seconds
    while until is not None and not until() and not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.05)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_concurrent_rekey_never_loses_both_spis(fast_switching):
    """A writer rekeys one inbound SA through SPIs 0x10000, 0x10001, ... with ``replace``.
    ``starting`` is the target of the replace in progress (set before it), ``done`` the last one
    finished. A reader that misses SPI ``d`` must see that a replace away from ``d`` began, and
    then finds ``d+1`` unless a replace away from it began too."""
    dst = packed(HOST_B)
    base = 0x10000
    sads = SaDatabase()
    h = sads.add_inbound(sa(base, direction="inbound"))
    starting, done = [0], [0]
    pool = [sa(base + i, direction="inbound") for i in range(1, 3000)]
    checks = [0]

    def writer(stop):
        for i, new in enumerate(pool, 1):
            if stop.is_set():
                return
            starting[0] = i
            sads.replace(h, new)
            done[0] = i

    def reader(stop):
        while not stop.is_set():
            d = done[0]
            if sads.lookup_inbound(base + d, 50, dst) is None:
                assert starting[0] > d, "the SA vanished before a rekey began"
                if sads.lookup_inbound(base + d + 1, 50, dst) is None:
                    assert starting[0] > d + 1, "neither the old nor the new SA was found"
            checks[0] += 1

    run_threads(writer, [reader, reader], until=lambda: checks[0] > 100)
    assert checks[0] > 100


def test_concurrent_bundles_are_never_seen_half_installed(fast_switching):
    """A writer adds, replaces and deletes ESP+AH bundles; readers that find an outer (AH) SA
    must find its inner ESP SA unless that bundle's withdrawal began, and the bundle an outer SPI
    leads to is always the one it belongs to. Outbound classification, meanwhile, always finds a
    bundle for a packet that some filter covers at every instant."""
    dst = packed(HOST_B)
    sadb = SaDatabase()
    live, withdrawing = [-1], [-1]
    N = 200
    gens = [bundle_pair(0x20000 + 2 * g, 0x20001 + 2 * g)[1] for g in range(N)]
    out_sas = [tunnel_sa(0x30000 + g, "10.2.0.0/16" if g % 2 else "10.2.3.0/24")
               for g in range(N)]
    first_out = sadb.add_outbound(tunnel_sa(0x2FFFF, "10.2.3.0/24"))
    p = tcp("10.1.0.1", "10.2.3.4")
    checks = [0, 0]

    def writer(stop):
        out_handle = first_out
        g = 0
        while not stop.is_set():  # generations cycle through the prebuilt SAs
            live[0] = g  # announced before its keys go live
            h = sadb.add_inbound(gens[g % N])
            # Rekey the whole bundle to generation g+1 (published inside replace, then g is
            # withdrawn), then withdraw g+1.
            withdrawing[0] = g
            live[0] = g + 1
            sadb.replace(h, gens[(g + 1) % N])
            withdrawing[0] = g + 1
            sadb.delete(h)
            # Outbound: add the next before deleting the previous, replace in between.
            new_out = sadb.add_outbound(out_sas[g % N])
            sadb.replace(new_out, out_sas[(g + 1) % N])
            sadb.delete(out_handle)
            out_handle = new_out
            g += 2

    def in_reader(stop):
        while not stop.is_set():
            g = live[0]
            if g < 0:
                continue
            ah_spi, esp_spi = 0x20001 + 2 * (g % N), 0x20000 + 2 * (g % N)
            outer = sadb.lookup_inbound(ah_spi, 51, dst)
            if outer is not None:
                found = sadb.lookup_bundle(ah_spi, 51, dst)
                if found is not None:
                    assert found[0].sas[1] is outer and found[0].sas[0].spi == esp_spi
                if sadb.lookup_inbound(esp_spi, 50, dst) is None:
                    assert withdrawing[0] >= g, "outer SA without its inner SA"
                checks[0] += 1

    def out_reader(stop):
        while not stop.is_set():
            b = sadb.classify(p)
            assert b is not None, "a packet covered throughout found no bundle"
            checks[1] += 1

    run_threads(writer, [in_reader, out_reader], until=lambda: checks[0] > 0 and checks[1] > 0)
    assert checks[0] > 0 and checks[1] > 0


def test_concurrent_drops_are_counted_exactly_once(fast_switching):
    """Threads push packets through ``inbound`` (each thread on its own SAs, so per-SA state is
    not shared) while a writer installs and removes unrelated SAs. Every packet ends up either
    delivered or counted under exactly one drop reason, in the database or in an SA."""
    sadb = SaDatabase()
    n_threads, per_thread = 3, 1500
    work = []
    for t in range(n_threads):
        out, inb = pair(0x40000 + t, encap=(4500, 4500))
        sadb.add_inbound(inb)
        stranger, _ = pair(0x48000 + t)
        rnd = random.Random(t)
        pkts = []
        for i in range(per_thread):
            kind = rnd.randrange(8)
            if kind in (0, 6, 7):
                pkts.append(stranger.protect(tcp()).packet)  # BAD_SPI
            elif kind == 1:
                pkts.append(tcp())  # WRONG_PROTOCOL
            elif kind == 2:
                pkts.append(udp(HOST_A, HOST_B, 4500, 4500, b"\xff"))
            elif kind == 3:
                pkts.append(udp(HOST_A, HOST_B, 4500, 4500, bytes(8)))
            else:
                pkts.append(out.protect(tcp(payload=bytes([i % 256]) * 20)).packet)
        work.append((inb, pkts))
    delivered = [0] * n_threads
    done = threading.Event()
    churn = [sa(0x50000 + i, direction="inbound") for i in range(200)]

    def writer(stop):
        hs = []
        for s in churn:
            if done.is_set():
                break
            hs.append(sadb.add_inbound(s))
            if len(hs) > 5:
                sadb.delete(hs.pop(0))

    def make_reader(t):
        def reader():
            for pkt in work[t][1]:
                if sadb.inbound(pkt).ok:
                    delivered[t] += 1
        return reader

    threads = [threading.Thread(target=make_reader(t)) for t in range(n_threads)]
    w = threading.Thread(target=writer, args=(None,))
    w.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    done.set()
    w.join()
    total = n_threads * per_thread
    sad_drops = sum(sadb.drops.values())
    sa_drops = sum(inb.counters.dropped for inb, _ in work)
    assert sad_drops + sa_drops + sum(delivered) == total
    assert sa_drops == 0
    assert sum(inb.counters.packets for inb, _ in work) == sum(delivered)


def test_classifier_refuses_none_values():
    from ipsecsa.errors import ConfigError
    from ipsecsa.sad import Classifier

    c: Classifier[object] = Classifier()
    with pytest.raises(ConfigError):
        c.add(Filter.v4(), None)
    h = c.add(Filter.v4(), 1)
    with pytest.raises(ConfigError):
        c.replace(h, None)


def test_classify_ipv4_fast_path_agrees_with_flow_of():
    """classify parses plain IPv4 itself; options, fragments and short packets go through
    flow_of: both give the same answers."""
    sad = SaDatabase()
    b443 = sa(0x100)
    any_ = sa(0x101)
    sad.add_outbound(b443, [Filter.v4(None, HOST_B, TCP_P, 0, 443)])
    sad.add_outbound(any_, [Filter.v4(None, HOST_B)])
    plain = tcp()
    with_options = bytes(IP(src=HOST_A, dst=HOST_B, options=[b"\x01" * 4]) / TCP(dport=443))
    later_frag = bytearray(plain)
    later_frag[6:8] = struct.pack("!H", 10)  # offset 80 bytes: no ports
    assert sad.classify(plain).sas[0] is b443
    assert sad.classify(with_options).sas[0] is b443
    assert sad.classify(bytes(later_frag)).sas[0] is any_
    assert sad.outbound(plain[:22]).drop is DropReason.TRUNCATED
