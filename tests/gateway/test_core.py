"""The gateway's sans-IO core, two of them back to back (no TUN, no socket, an injected clock).

scapy (a test-only reference nobody here wrote) builds the inner packets and checks the ICMP
errors the core originates: their type, code, reported MTU and checksums.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.packet import Raw, raw

from ipsecsa.config import parse_sa
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import ConfigError, DropReason
from ipsecsa.gateway import GatewayCore, InstalledSas, check_for_gateway
from ipsecsa.sad.database import SaDatabase

from .netns import SITE4, SITE6, WIRE4, WIRE6, SaPair


def make_core(sas: list[dict], local: str, **kw: object) -> GatewayCore:
    sad = SaDatabase()
    InstalledSas(sad).sync([parse_sa(s) for s in sas])
    return GatewayCore(sad, local=local, **kw)  # type: ignore[arg-type]


@pytest.fixture
def pair() -> tuple[GatewayCore, GatewayCore]:
    p = SaPair(0x1001, 0x2001)
    return make_core(p.a_side(), WIRE4[0]), make_core(p.b_side(), WIRE4[1])


def across(a: GatewayCore, b: GatewayCore, packets: list[bytes], now: float = 0.0
           ) -> tuple[list[bytes], list]:
    """Packets into A's TUN; what B writes to its TUN, and what A sent."""
    out = a.from_tun(packets, now)
    grams = [(bytes(data), (str(a.local), 4500), tos) for data, tos, _addr in out.net]
    return b.from_net(grams, now).tun, out.net


def test_back_to_back_v4_and_v6_inner(pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, b = pair
    p4 = raw(IP(src=SITE4[0], dst=SITE4[1], tos=0x02) / UDP(sport=1, dport=2) / Raw(b"x" * 100))
    p6 = raw(IPv6(src=SITE6[0], dst=SITE6[1]) / UDP(sport=1, dport=2) / Raw(b"y" * 50))
    got, sent = across(a, b, [p4, p6])
    assert got == [p4, p6]
    assert [addr for _d, _t, addr in sent] == [(WIRE4[1], 4500)] * 2
    assert sent[0][1] == 0x02  # ECT(0) copied to the outer header (RFC 6040), sent as IP_TOS
    assert b.counters.tun_tx == 2 and a.counters.tun_rx == 2


def test_outer_ce_marks_the_inner_packet(pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, b = pair
    p = raw(IP(src=SITE4[0], dst=SITE4[1], tos=0x02) / UDP(sport=1, dport=2))
    out = a.from_tun([p], 0.0)
    data, _tos, _addr = out.net[0]
    got = b.from_net([(bytes(data), (WIRE4[0], 4500), 0x03)], 0.0).tun  # CE on the wire
    assert IP(got[0]).tos & 3 == 3


def test_keepalive_and_ike_are_recognised_not_errors(pair: tuple[GatewayCore, GatewayCore]
                                                     ) -> None:
    _a, b = pair
    out = b.from_net([(b"\xff", (WIRE4[0], 4500), 0),
                      (bytes(4) + b"IKE message", (WIRE4[0], 4500), 0)], 0.0)
    assert out.tun == []
    assert (b.counters.keepalive_rx, b.counters.ike_rx) == (1, 1)
    assert b.stats()["drops"] == {}


def test_tampered_and_replayed_datagrams_are_dropped_per_sa(
        pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, b = pair
    p = raw(IP(src=SITE4[0], dst=SITE4[1]) / UDP(sport=1, dport=2) / Raw(b"z" * 64))
    data = bytes(a.from_tun([p], 0.0).net[0][0])
    bad = bytearray(data)
    bad[-1] ^= 1
    src = (WIRE4[0], 4500)
    assert b.from_net([(bytes(bad), src, 0), (data, src, 0), (data, src, 0)], 0.0).tun == [p]
    inbound = next(s for s in b.stats()["sas"] if s["direction"] == "inbound")
    assert inbound["drops"] == {"icv_failure": 1, "replay": 1}


def test_traffic_no_sa_covers_is_dropped_and_counted(pair: tuple[GatewayCore, GatewayCore]
                                                     ) -> None:
    a, _b = pair
    p = raw(IP(src=SITE4[0], dst="192.0.2.99") / UDP(sport=1, dport=2))
    out = a.from_tun([p, b"\x45garbage"], 0.0)
    assert out.net == [] and out.tun == []
    assert a.drops[DropReason.NO_POLICY] == 1
    assert sum(a.drops.values()) == 2


def test_df_too_big_answered_with_icmp_frag_needed(pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, _b = pair
    limit = a.route_of(next(iter(a.sad))[2].sas[0]).limit
    assert limit == 1438  # 1500 - 20 - 8 - 8 (ESP) - 8 (IV) - 16 (ICV) - 2, 4-aligned
    fits = raw(IP(src=SITE4[0], dst=SITE4[1], flags="DF") / UDP(sport=1, dport=2)
               / Raw(bytes(limit - 28)))
    big = raw(IP(src=SITE4[0], dst=SITE4[1], flags="DF") / UDP(sport=1, dport=2)
              / Raw(bytes(limit - 27)))
    out = a.from_tun([fits, big], 0.0)
    assert len(out.net) == 1 and len(out.net[0][0]) + 28 == 1500  # exactly the path MTU
    (icmp,) = out.tun
    reply = IP(icmp)
    assert reply.src == SITE4[1] and reply.dst == SITE4[0]
    assert reply[ICMP].type == 3 and reply[ICMP].code == 4 and reply[ICMP].nexthopmtu == limit
    assert reply[IPerror].dst == SITE4[1]  # the offending header is quoted
    again = IP(raw(reply))
    del again.chksum, again[ICMP].chksum
    assert IP(raw(again)).chksum == reply.chksum
    assert IP(raw(again))[ICMP].chksum == reply[ICMP].chksum
    # Without DF the packet is protected; the kernel fragments the outer datagram.
    nodf = raw(IP(src=SITE4[0], dst=SITE4[1]) / UDP(sport=1, dport=2) / Raw(bytes(2000)))
    assert len(a.from_tun([nodf], 0.0).net) == 1
    assert a.drops[DropReason.TOO_BIG] == 1 and a.counters.icmp_tx == 1


def test_ipv6_too_big_answered_with_packet_too_big(pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, _b = pair
    big = raw(IPv6(src=SITE6[0], dst=SITE6[1]) / UDP(sport=1, dport=2) / Raw(bytes(1500)))
    small = raw(IPv6(src=SITE6[0], dst=SITE6[1]) / UDP(sport=1, dport=2) / Raw(bytes(1000)))
    a.set_path_mtu(1100)  # a 1048-byte packet no longer fits, but is under IPv6's 1280
    out = a.from_tun([big, small], 0.0)
    assert len(out.net) == 1  # the small one: sent, fragmented on the wire
    reply = IPv6(out.tun[0])
    assert reply.src == SITE6[1] and reply.dst == SITE6[0]
    ptb = reply[ICMPv6PacketTooBig]
    assert ptb.mtu == 1280  # never below the IPv6 minimum MTU
    check = IPv6(raw(reply))
    del check[ICMPv6PacketTooBig].cksum
    assert IPv6(raw(check))[ICMPv6PacketTooBig].cksum == ptb.cksum
    assert len(out.tun[0]) <= 1280


def test_no_icmp_about_icmp_errors(pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, _b = pair
    err = raw(IP(src=SITE4[0], dst=SITE4[1], flags="DF") / ICMP(type=3, code=1)
              / Raw(bytes(1500)))
    out = a.from_tun([err], 0.0)
    assert out.tun == [] and out.net == []


def test_keepalives_only_when_idle(pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, _b = pair
    assert a.handle_timer(100.0).net == []  # the peer is learnt; idle from now
    p = raw(IP(src=SITE4[0], dst=SITE4[1]) / UDP(sport=1, dport=2))
    a.from_tun([p], 110.0)
    assert a.handle_timer(125.0).net == []  # traffic 15 s ago
    assert a.handle_timer(130.5).net == [(b"\xff", 0, (WIRE4[1], 4500))]
    assert a.handle_timer(131.0).net == []
    assert a.next_timer() == pytest.approx(131.5)  # housekeeping; the keepalive at 150.5
    a.from_tun([p], 145.0)  # traffic moves the keepalive to 165 without a peer being read
    assert a.handle_timer(150.5).net == []  # woken early, nothing to send
    assert a.handle_timer(164.9).net == []
    assert a.handle_timer(165.0).net == [(b"\xff", 0, (WIRE4[1], 4500))]
    assert a.counters.keepalive_tx == 2


def test_ipv6_outer_back_to_back() -> None:
    p = SaPair(0x3001, 0x4001, outer6=True, suite="chacha20-poly1305")
    a, b = make_core(p.a_side(), WIRE6[0]), make_core(p.b_side(), WIRE6[1])
    pkt = raw(IP(src=SITE4[0], dst=SITE4[1]) / UDP(sport=1, dport=2) / Raw(b"q" * 333))
    out = a.from_tun([pkt], 0.0)
    assert out.net[0][2] == (WIRE6[1], 4500, 0, 0)
    grams = [(bytes(d), (WIRE6[0], 4500, 0, 0), t) for d, t, _ in out.net]
    assert b.from_net(grams, 0.0).tun == [pkt]


def test_peer_overrides_the_sa_destination() -> None:
    p = SaPair(0x1001, 0x2001)
    a = make_core(p.a_side(), WIRE4[0], peer="192.0.2.77")
    pkt = raw(IP(src=SITE4[0], dst=SITE4[1]) / UDP(sport=1, dport=2))
    assert a.from_tun([pkt], 0.0).net[0][2] == ("192.0.2.77", 4500)


def test_sync_keeps_live_sas_and_swaps_the_rest() -> None:
    old, new = SaPair(0x1001, 0x2001), SaPair(0x1002, 0x2002)
    sad = SaDatabase()
    retired: list[SecurityAssociation] = []
    inst = InstalledSas(sad, on_retire=retired.append)
    inst.sync([parse_sa(s) for s in old.a_side()])
    out_sa = inst.outbound()[0]
    pkt = raw(IP(src=SITE4[0], dst=SITE4[1]) / UDP(sport=1, dport=2))
    for _ in range(5):
        sad.outbound(pkt)
    # Step 1 of a rekey: the new inbound SA joins; the old ones stay with their state.
    assert inst.sync([parse_sa(s) for s in old.a_side() + new.a_side(outbound=False)]) == (1, 2, 0)
    assert inst.outbound()[0] is out_sa and out_sa.seq == 5
    # Step 2: outbound switches; step 3: old inbound goes.
    assert inst.sync([parse_sa(s) for s in new.a_side() + old.a_side(outbound=False)]) == (1, 2, 1)
    assert sad.classify(pkt).sas[0].spi == 0x1002  # type: ignore[union-attr]
    assert inst.sync([parse_sa(s) for s in new.a_side()]) == (0, 2, 1)
    assert sorted(s.spi for s in retired) == [0x1001, 0x2001]
    assert all(s.state.value == "dead" for s in retired)


def test_sync_that_fails_changes_nothing() -> None:
    p = SaPair(0x1001, 0x2001)
    sad = SaDatabase()
    inst = InstalledSas(sad)
    inst.sync([parse_sa(s) for s in p.a_side()])
    extra_in = dict(p.a_side()[1], spi=0x3001)  # installed first (inbound goes first) ...
    # ... then an outbound SA the database refuses: transport mode, no selector covers its hosts.
    bad_out = dict(p.a_side()[0], spi=0x3002, mode="transport",
                   selectors=[{"src": "10.0.0.0/8"}])
    del bad_out["encapsulation"]
    with pytest.raises(ConfigError, match="selector"):
        inst.sync([parse_sa(s) for s in [*p.a_side(), extra_in, bad_out]])
    assert sorted(sa.spi for _h, _d, b in sad for sa in b.sas) == [0x1001, 0x2001]
    with pytest.raises(ConfigError, match="twice"):
        inst.sync([parse_sa(s) for s in [*p.a_side(), extra_in, dict(extra_in, seq=3)]])


@pytest.mark.parametrize(("change", "field"), [
    ({"mode": "transport", "selectors": []}, "sas[0].mode"),
    ({"protocol": "ah", "encryption": None, "encapsulation": None, "integrity": {"algorithm": "hmac-sha256-128",
                                                          "key": "00" * 32}}, "sas[0].protocol"),
    ({"encapsulation": None}, "sas[0].encapsulation"),
    ({"encapsulation": {"sport": 4501, "dport": 4500}}, "sas[0].encapsulation.sport"),
    ({"direction": None}, "sas[0].direction"),
])
def test_gateway_refuses_sas_it_cannot_carry(change: dict, field: str) -> None:
    obj = SaPair(0x1001, 0x2001).a_side()[0]
    obj.update(change)
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        check_for_gateway([parse_sa(obj)], local=ipaddress.ip_address(WIRE4[0]), port=4500,
                          transport="udp")
    assert info.value.field == field


def test_inbound_sa_must_be_for_the_local_address() -> None:
    cfgs = [parse_sa(s) for s in SaPair(0x1001, 0x2001).a_side()]
    with pytest.raises(ConfigError, match="local address"):
        check_for_gateway(cfgs, local=ipaddress.ip_address("192.0.2.9"), port=4500,
                          transport="udp")


# --- NAT roaming ---------------------------------------------------------------------------
def _to_b(a: GatewayCore, n: int = 1, now: float = 0.0) -> list[bytes]:
    """ESP-in-UDP payloads A sends B (n packets)."""
    ps = [raw(IP(src=SITE4[0], dst=SITE4[1]) / UDP(sport=1, dport=2) / Raw(b"r" * 32))] * n
    return [bytes(d) for d, _t, _a in a.from_tun(ps, now).net]


def _b_sends_to(b: GatewayCore) -> tuple:
    p = raw(IP(src=SITE4[1], dst=SITE4[0]) / UDP(sport=2, dport=1))
    return b.from_tun([p], 0.0).net[0][2]


def test_peer_followed_after_authenticated_packet_beyond_the_window_edge(
        pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, b = pair
    first, second, third = _to_b(a, 3)
    assert b.from_net([(first, (WIRE4[0], 4500), 0)], 0.0).tun  # from where the SAs say
    assert _b_sends_to(b) == (WIRE4[0], 4500)
    # A NAT rebinds A's mapping: the next (newer) packet arrives from elsewhere.
    moved = ("192.0.2.77", 40123)
    assert b.from_net([(third, moved, 0)], 0.0).tun
    assert _b_sends_to(b) == moved
    assert b.counters.peer_moved == 1
    assert b.stats()["gateway"]["peer_moved"] == 1
    # An older packet (inside the window, not a replay) from the old address authenticates
    # but does not move the peer back: only a packet beyond the edge does.
    assert b.from_net([(second, (WIRE4[0], 4500), 0)], 0.0).tun
    assert _b_sends_to(b) == moved
    assert b.counters.peer_moved == 1


def test_forged_or_replayed_packets_do_not_move_the_peer(
        pair: tuple[GatewayCore, GatewayCore]) -> None:
    a, b = pair
    first, second = _to_b(a, 2)
    assert b.from_net([(first, (WIRE4[0], 4500), 0)], 0.0).tun
    forged = bytearray(second)
    forged[-1] ^= 1  # the ICV no longer matches
    assert b.from_net([(bytes(forged), ("198.18.0.9", 4500), 0)], 0.0).tun == []
    # The captured first packet replayed from an attacker's address: a replay, dropped.
    assert b.from_net([(first, ("198.18.0.9", 4500), 0)], 0.0).tun == []
    # A packet of an unknown SPI from elsewhere.
    assert b.from_net([(b"\x00\x00\x99\x99" + bytes(4) + b"x" * 40, ("198.18.0.9", 4500), 0)],
                      0.0).tun == []
    assert _b_sends_to(b) == (WIRE4[0], 4500)
    assert b.counters.peer_moved == 0
    # The genuine next packet from the genuine address still goes through.
    assert b.from_net([(second, (WIRE4[0], 4500), 0)], 0.0).tun


def test_peer_port_change_alone_is_followed_ipv6() -> None:
    p = SaPair(0x3001, 0x4001, outer6=True)
    a, b = make_core(p.a_side(), WIRE6[0]), make_core(p.b_side(), WIRE6[1])
    first, second = _to_b(a, 2)
    assert b.from_net([(first, (WIRE6[0], 4500, 0, 0), 0)], 0.0).tun
    assert b.from_net([(second, (WIRE6[0], 61000, 0, 0), 0)], 0.0).tun
    assert _b_sends_to(b) == (WIRE6[0], 61000, 0, 0)
