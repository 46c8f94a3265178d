"""The Pythonic API, operation by operation: contexts made from SA descriptions between two
engines (two hosts), traffic both ways, views with counters and state, expire, delete, rekey,
tunnel mode, bundles, UDP encapsulation, the step-by-step path, sessions and transactions.

The first ESP packet is also opened independently with pyca/cryptography's ChaCha20Poly1305,
laid out as RFC 7634 §2-3 says (nonce = 4-byte salt from the key material || 8-byte IV; AAD =
SPI || sequence number; RFC 4303 §2 trailer), not by ipsecsa's data path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ipsecsa import api, wfp
from tests.api.helpers import A6, B6, A, B, esp_of, pair, sa, udp4, udp6


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hosts(clock: Clock) -> Iterator[tuple[api.Engine, api.Engine]]:
    with api.Engine(clock=clock) as a, api.Engine(clock=clock) as b:
        yield a, b


def connect(a: api.Engine, b: api.Engine, **kw: object) -> tuple[api.ContextInfo, api.ContextInfo]:
    ab, ba = pair(**kw)  # type: ignore[arg-type]
    return a.create_context(outbound=ab, inbound=ba), b.create_context(outbound=ba, inbound=ab)


def api_filters(engine: api.Engine) -> list[wfp.FWPM_FILTER0]:
    bfe = engine.wfp
    with engine.session() as s:
        status, enum = bfe.FwpmFilterCreateEnumHandle0(s.handle, None)
        assert status == 0
        status, filters, _ = bfe.FwpmFilterEnum0(s.handle, enum, 1000)
    return list(filters)


def test_create_context_makes_filters_and_establishes_both_sides(hosts) -> None:
    a, b = hosts
    ca, cb = connect(a, b)
    assert ca.state == cb.state == "established"
    assert (ca.local, ca.remote, ca.mode, ca.ip_version) == (A, B, "transport", 4)
    assert (ca.outbound_spi, ca.inbound_spi) == (0x1001, 0x2002)
    assert (cb.outbound_spi, cb.inbound_spi) == (0x2002, 0x1001)
    assert ca.inbound[0].encryption == "chacha20-poly1305" and ca.inbound[0].replay_window == 64
    filters = {f.filterId: f for f in api_filters(a)}
    assert set(filters) == {ca.inbound_filter, ca.outbound_filter}
    assert filters[ca.outbound_filter].action.calloutKey == \
        wfp.FWPM_CALLOUT_IPSEC_OUTBOUND_TRANSPORT_V4
    assert filters[ca.inbound_filter].action.calloutKey == \
        wfp.FWPM_CALLOUT_IPSEC_INBOUND_TRANSPORT_V4
    # The Windows face sees the same context.
    with a.session() as s:
        status, ctx = a.wfp.IPsecSaContextGetById1(s.handle, ca.id)
    assert status == 0 and ctx.inboundSa.saBundle.saList[0].spi == 0x2002


def test_traffic_both_ways_and_counters(hosts) -> None:
    a, b = hosts
    ab, ba = pair()
    ca = a.create_context(outbound=ab, inbound=ba)
    b.create_context(outbound=ba, inbound=ab)
    sent = udp4(A, B, b"to b")
    wire = a.outbound(sent)
    assert wire.drop is None and esp_of(wire.packet) == (0x1001, 1)
    # Independent decryption (RFC 7634, RFC 4303).
    keymat = bytes.fromhex(ab["encryption"]["key"])
    esp = wire.packet[20:]
    plain = ChaCha20Poly1305(keymat[:32]).decrypt(keymat[32:] + esp[8:16], esp[16:], esp[:8])
    pad, nh = plain[-2], plain[-1]
    assert nh == 17 and plain[:-2 - pad] == sent[20:]
    got = b.inbound(wire.packet)
    assert got.drop is None and got.packet == sent
    back = b.outbound(udp4(B, A, b"to a"))
    assert a.inbound(back.packet).packet == udp4(B, A, b"to a")
    # A replayed packet is dropped and counted on the SA.
    assert b.inbound(wire.packet).drop is not None
    ca = a.context(ca.id)
    assert (ca.packets_out, ca.packets_in) == (1, 1)
    assert ca.outbound[0].seq == 1 and ca.outbound[0].bytes == len(sent)
    cb = b.contexts()[0]
    assert cb.inbound[0].drops == {"replay": 1} and cb.inbound[0].dropped == 1
    assert a.statistics()["outboundTrafficStatistics"]["totalSuccessfulPackets"] == 1


def test_views_are_json(hosts) -> None:
    import json

    a, b = hosts
    ca, _ = connect(a, b)
    text = json.dumps([c.to_dict() for c in a.contexts()])
    assert json.loads(text)[0]["id"] == ca.id
    assert "key" not in text  # keys never appear in a view


def test_expire_keeps_inbound_for_the_linger_then_sweeps_filters(hosts, clock: Clock) -> None:
    a, b = hosts
    ca, _cb = connect(a, b)
    a.expire(ca.id)
    info = a.context(ca.id)
    assert info.state == "expiring" and info.outbound == () and info.seconds_left == 60.0
    assert a.outbound(udp4(A, B)).drop.value == "no_policy"
    assert a.inbound(b.outbound(udp4(B, A)).packet).drop is None  # still accepted
    clock.now += 61
    a.contexts()  # any call looks at the timers
    a.flush_events()
    assert a.contexts() == []
    assert api_filters(a) == []  # the sweep removed the filters no context names


def test_delete_removes_context_and_its_filters(hosts) -> None:
    a, b = hosts
    ca, _ = connect(a, b)
    a.delete(ca.id)
    assert a.contexts() == [] and api_filters(a) == []
    with pytest.raises(api.NotFound):
        a.context(ca.id)


def test_rekey_shares_the_filters_and_moves_traffic(hosts) -> None:
    a, b = hosts
    old_a, old_b = connect(a, b)
    new_a, _new_b = connect(a, b, spi_ab=0x3003, spi_ba=0x4004)
    assert (new_a.inbound_filter, new_a.outbound_filter) == \
        (old_a.inbound_filter, old_a.outbound_filter)
    assert esp_of(a.outbound(udp4(A, B)).packet)[0] == 0x3003  # the newest established
    a.expire(old_a.id)
    b.delete(old_b.id)
    assert len(api_filters(b)) == 2  # still named by the new context
    wire = a.outbound(udp4(A, B))
    assert esp_of(wire.packet)[0] == 0x3003 and b.inbound(wire.packet).drop is None
    a.delete(new_a.id)
    assert len(api_filters(a)) == 2  # the expiring old context still names them
    a.delete(old_a.id)
    assert api_filters(a) == []


def test_tunnel_mode_with_inner_selectors(hosts) -> None:
    a, b = hosts
    gw_a, gw_b = "203.0.113.1", "203.0.113.2"
    net_a, net_b = "10.1.0.0/16", "10.2.0.0/16"
    ab = sa(0x5005, gw_a, gw_b, mode="tunnel",
            selectors=[{"src": net_a, "dst": net_b, "protocol": 17}])
    ba = sa(0x6006, gw_b, gw_a, mode="tunnel",
            selectors=[{"src": net_b, "dst": net_a, "protocol": 17}])
    ca = a.create_context(outbound=ab, inbound=ba)
    b.create_context(outbound=ba, inbound=ab)
    assert ca.mode == "tunnel" and (ca.local, ca.remote) == (gw_a, gw_b)
    inner = udp4("10.1.0.5", "10.2.0.9", b"through the tunnel")
    wire = a.outbound(inner)
    assert wire.drop is None and wire.packet[12:20] == bytes([203, 0, 113, 1, 203, 0, 113, 2])
    assert b.inbound(wire.packet).packet == inner
    assert a.outbound(udp4("10.9.0.5", "10.2.0.9")).drop is None  # not covered: clear
    assert a.outbound(udp4("10.9.0.5", "10.2.0.9")).packet[9] == 17


def test_transport_selector_limits_the_filter_to_protocol_and_ports(hosts) -> None:
    a, _b = hosts
    ab, ba = pair()
    ab["selectors"] = [{"protocol": 17, "dport": 6000}]
    ba["selectors"] = [{"protocol": 17, "sport": 6000}]
    a.create_context(outbound=ab, inbound=ba)
    assert a.outbound(udp4(A, B, dport=6000)).packet[9] == 50
    assert a.outbound(udp4(A, B, dport=7000)).packet[9] == 17  # another port: clear


def test_esp_and_ah_bundle(hosts) -> None:
    a, b = hosts
    def ah(spi: int, src: str, dst: str) -> dict[str, object]:
        return {"spi": spi, "protocol": "ah", "src": src, "dst": dst,
                "integrity": {"algorithm": "hmac-sha512-256", "key": "11" * 64}}
    ab = [sa(0x1001, A, B, "aes-gcm-8", 20), ah(0x1001, A, B)]  # one SPI (F.5)
    ba = [sa(0x2001, B, A, "aes-gcm-8", 20), ah(0x2001, B, A)]
    ca = a.create_context(outbound=ab, inbound=ba)
    b.create_context(outbound=ba, inbound=ab)
    assert [s.protocol for s in ca.outbound] == ["esp", "ah"]
    wire = a.outbound(udp4(A, B))
    assert wire.packet[9] == 51  # AH outermost
    assert b.inbound(wire.packet).packet == udp4(A, B)


def test_udp_encapsulation_comes_from_the_inbound_description(hosts) -> None:
    a, b = hosts
    ab, ba = pair(encapsulation={"type": "udp", "sport": 4500, "dport": 4500})
    ca = a.create_context(outbound=ab, inbound=ba)
    b.create_context(outbound=ba, inbound=ab)
    assert ca.udp_encapsulation == {"local_port": 4500, "remote_port": 4500}
    wire = a.outbound(udp4(A, B))
    assert wire.packet[9] == 17 and struct.unpack_from("!HH", wire.packet, 20) == (4500, 4500)
    assert b.inbound(wire.packet).packet == udp4(A, B)


def test_ipv6_context(hosts) -> None:
    a, b = hosts
    ab, ba = pair(a=A6, b=B6, algorithm="aes-gcm-16", key_len=36)
    ca = a.create_context(outbound=ab, inbound=ba)
    b.create_context(outbound=ba, inbound=ab)
    assert ca.ip_version == 6
    sent = udp6(A6, B6)
    assert b.inbound(a.outbound(sent).packet).packet == sent


def test_step_by_step(hosts) -> None:
    a, b = hosts
    ids = {}
    for host, local, remote in ((a, A, B), (b, B, A)):
        fin = host.add_ipsec_filter("inbound", local=local, remote=remote)
        fout = host.add_ipsec_filter("outbound", local=local, remote=remote)
        ctx = host.new_context(local=local, remote=remote, outbound_filter=fout)
        assert ctx.state == "created" and ctx.inbound_spi is None
        spi = host.get_spi(ctx.id, inbound_filter=fin)
        assert 0xC0000000 <= spi <= 0xCFFFFFFF
        assert host.context(ctx.id).state == "spi_assigned"
        ids[host] = (ctx.id, spi, fin, fout)
    (ida, spi_a, *_), (idb, spi_b, *_) = ids[a], ids[b]
    into_a, into_b = sa(spi_a, B, A, "aes-ccm-16", 19), sa(spi_b, A, B, "aes-ccm-16", 19)
    assert a.add_inbound(ida, into_a).state == "inbound"
    b.add_inbound(idb, into_b)
    assert a.add_outbound(ida, into_b).state == "established"
    b.add_outbound(idb, into_a)
    assert b.inbound(a.outbound(udp4(A, B)).packet).packet == udp4(A, B)
    # delete leaves filters the caller made itself
    a.delete(ida)
    assert len(api_filters(a)) == 2
    a.delete_filter(ids[a][2])
    a.delete_filter(ids[a][3])
    assert api_filters(a) == []


def test_set_spi_step(hosts) -> None:
    a, _ = hosts
    fin = a.add_ipsec_filter("inbound", local=A, remote=B)
    fout = a.add_ipsec_filter("outbound", local=A, remote=B)
    ctx = a.new_context(local=A, remote=B, outbound_filter=fout)
    a.set_spi(ctx.id, 0x7777, inbound_filter=fin)
    assert a.context(ctx.id).inbound_spi == 0x7777


def test_sessions_users_and_grants(hosts) -> None:
    a, _ = hosts
    ab, ba = pair()
    with a.session("LAB\\keyer") as s:
        with pytest.raises(api.AccessDenied):
            s.create_context(outbound=ab, inbound=ba)
        a.grant("LAB\\keyer", wfp.FWPM_GENERIC_ALL)
        ctx = s.create_context(outbound=ab, inbound=ba)
        assert [c.id for c in s.contexts()] == [ctx.id]
    assert a.context(ctx.id).state == "established"  # contexts outlive their session


def test_transactions_commit_and_abort(hosts) -> None:
    a, _ = hosts
    with a.session() as s:
        with s.transaction():
            fid = s.add_ipsec_filter("outbound", local=A, remote=B)
        assert len(api_filters(a)) == 1
        with pytest.raises(RuntimeError), s.transaction():
            s.delete_filter(fid)
            raise RuntimeError("changed my mind")
        assert len(api_filters(a)) == 1  # the delete was undone
        with s.transaction() as txn:
            s.delete_filter(fid)
            txn.abort()
        assert len(api_filters(a)) == 1
        with s.transaction(read_only=True):
            assert s.contexts() == []


def test_open_is_engine() -> None:
    with api.open() as engine:
        assert isinstance(engine, api.Engine) and engine.contexts() == []


def test_database_reopen_through_the_api(tmp_path) -> None:
    path = str(tmp_path / "state" / "engine.db")
    ab, ba = pair()
    with api.Engine(path) as a, api.Engine() as b:
        made = a.create_context(outbound=ab, inbound=ba)
        b.create_context(outbound=ba, inbound=ab)
        first = esp_of(a.outbound(udp4(A, B)).packet)
    with api.open(database=path) as a:
        (back,) = a.contexts()
        assert (back.id, back.state, back.inbound_spi, back.outbound_spi) == \
            (made.id, "established", made.inbound_spi, made.outbound_spi)
        assert (back.inbound_filter, back.outbound_filter) == \
            (made.inbound_filter, made.outbound_filter)
        spi, seq = esp_of(a.outbound(udp4(A, B)).packet)
        assert spi == first[0] and seq > first[1]  # never a sequence number twice
        a.delete(back.id)
        assert a.contexts() == [] and api_filters(a) == []


def test_without_the_subscribe_right_filters_are_swept_at_the_next_create(tmp_path,
                                                                          clock: Clock) -> None:
    """An engine whose user may not subscribe has no sweeper: the filters of a context that
    ended by itself (the linger) go when it next creates a context."""
    db = tmp_path / "state.db"
    with api.Engine(db) as setup:
        setup.grant("LAB\\carol", wfp.FWPM_ACTRL_ADD | wfp.FWPM_ACTRL_ADD_LINK | wfp.DELETE
                    | wfp.FWPM_ACTRL_READ | wfp.FWPM_ACTRL_ENUM | wfp.FWPM_ACTRL_OPEN
                    | wfp.FWPM_ACTRL_BEGIN_READ_TXN | wfp.FWPM_ACTRL_BEGIN_WRITE_TXN)
    with api.Engine(db, clock=clock, user="LAB\\carol") as a, api.Engine(clock=clock) as b:
        assert a._sweeper is None  # no subscription for this user
        ca, _ = connect(a, b)
        a.expire(ca.id)
        clock.now += 61
        assert a.contexts() == []
        assert len(api_filters(a)) == 2  # left behind: nothing told the API
        ab, ba = pair(spi_ab=0x3001, spi_ba=0x3002, b="198.51.100.77")
        cb = a.create_context(outbound=ab, inbound=ba)
        assert {f.filterId for f in api_filters(a)} == {cb.outbound_filter, cb.inbound_filter}


def test_the_contract_call_shapes_of_issue_12(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 12's contract, called exactly as written: ``wfp.Engine(database=PATH,
    clock=None)`` brings a closed engine back; ``api.Engine(database=None)`` is in memory and
    ``api.Engine(database=PATH)`` durable, with create_context(outbound=, inbound=), contexts(),
    expire and delete."""
    path = tmp_path / "state" / "contract.db"
    out, inb = pair()
    with api.Engine(database=str(path)) as durable:
        ctx = durable.create_context(outbound=out, inbound=inb)
        assert [c.id for c in durable.contexts()] == [ctx.id]
    bfe = wfp.Engine(database=str(path), clock=None)
    h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)[1]
    st, got = bfe.IPsecSaContextGetById1(h, ctx.id)
    assert st == wfp.ERROR_SUCCESS and got.saContextId == ctx.id
    bfe.close()
    with api.Engine(database=None) as memory:
        made = memory.create_context(outbound=out, inbound=inb)
        memory.expire(made.id)
        assert memory.contexts()[0].state == "expiring"
        memory.delete(made.id)
        assert memory.contexts() == []
