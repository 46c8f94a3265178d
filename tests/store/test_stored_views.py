"""Views and statistics of a reopened engine read SAs not built yet from their stored form
(issue 12: ``ipsecsa.wfp.stored``), and say exactly what the built SAs say; so do those of SAs
an Add left unbuilt (``contexts.AddedSas``), in memory and in a durable engine.

A differential test: contexts in every state, inbound and outbound, ESP, AH and ESP+AH, with
and without traffic before the close, soft and hard lifetimes reached or not, ESN, a replay
window, UDP encapsulation, tunnel mode over IPv6, sequence numbers used up, with and without an
encrypted-key database, are closed and reopened; the views (``sa_context_view(s)``,
``api.Engine.contexts()``) and IPsecGetStatistics1 of the reopened engine are taken while its
SAs are unbuilt (and must leave them so), then every SA is built and they are taken again: field
for field the same. The expected values are the built SAs' own (the data path's), not a second
copy of the rules.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wfp.helpers import open_engine

from ipsecsa import api
from ipsecsa.store.sqlite import SqliteStore
from ipsecsa.wfp import stored
from ipsecsa.wfp.contexts import UNBUILT
from store.test_restart import build
from tests.api.helpers import A6, A, sa, udp4, udp6

TUNNEL_B6 = "2001:db8:2::9"


class Clock:
    """A clock that stands still, so that views taken apart in time compare equal."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def remote(i: int) -> str:
    return f"198.51.100.{10 + i}"


def ah(spi: int, src: str, dst: str, **extra: Any) -> dict[str, Any]:
    d = {"spi": spi, "protocol": "ah", "src": src, "dst": dst,
         "integrity": {"algorithm": "hmac-sha256-128", "key": os.urandom(32).hex()}}
    d.update(extra)
    return d


def cbc(spi: int, src: str, dst: str, **extra: Any) -> dict[str, Any]:
    return sa(spi, src, dst, "aes-cbc", 16,
              integrity={"algorithm": "hmac-sha1-96", "key": os.urandom(20).hex()}, **extra)


#: name -> (outbound description maker, inbound description maker, packets out, packets in);
#: a maker takes (spi, src, dst). Inbound traffic comes from the peer, its mirror.
CASES: dict[str, tuple[Any, Any, int, int]] = {
    "gcm": (lambda s, a, b: sa(s, a, b, "aes-gcm-16", 20),
            lambda s, a, b: sa(s, a, b, "aes-gcm-16", 20), 3, 2),
    "idle": (lambda s, a, b: sa(s, a, b), lambda s, a, b: sa(s, a, b), 0, 0),
    "out-only-traffic": (lambda s, a, b: sa(s, a, b), lambda s, a, b: sa(s, a, b), 2, 0),
    "esp+ah": (lambda s, a, b: [cbc(s, a, b), ah(s, a, b)],
               lambda s, a, b: [cbc(s, a, b), ah(s, a, b)], 2, 3),
    "ah": (lambda s, a, b: ah(s, a, b), lambda s, a, b: ah(s, a, b), 1, 1),
    "udp": (lambda s, a, b: sa(s, a, b, encapsulation={"type": "udp", "sport": 4500,
                                                       "dport": 4500}),
            lambda s, a, b: sa(s, a, b, encapsulation={"type": "udp", "sport": 4500,
                                                       "dport": 4500}), 2, 2),
    "esn-window": (lambda s, a, b: sa(s, a, b, esn=True),
                   lambda s, a, b: sa(s, a, b, esn=True, replay_window=128), 1, 4),
    "gmac": (lambda s, a, b: sa(s, a, b, "null-aes-gmac", 20),
             lambda s, a, b: sa(s, a, b, "null-aes-gmac", 20), 2, 1),
    # Soft limits reached before the close (outbound by packets, inbound by bytes): dying.
    "soft": (lambda s, a, b: sa(s, a, b, lifetime={"soft": {"packets": 2}}),
             lambda s, a, b: sa(s, a, b, lifetime={"soft": {"bytes": 50},
                                                   "hard": {"bytes": 10_000}}), 3, 2),
    # Soft limits not reached, a hard time limit (seconds_left).
    "limits": (lambda s, a, b: sa(s, a, b, lifetime={"soft": {"packets": 100},
                                                     "hard": {"seconds": 3600}}),
               lambda s, a, b: sa(s, a, b, lifetime={"hard": {"packets": 100}}), 1, 1),
    # A hard packet limit reached: the context expires (inbound kept for the linger).
    "hard": (lambda s, a, b: sa(s, a, b, lifetime={"hard": {"packets": 3}}),
             lambda s, a, b: sa(s, a, b), 3, 1),
    # Sequence numbers used up from the start: the outbound SA is dead.
    "exhausted": (lambda s, a, b: sa(s, a, b, seq=0xFFFFFFFF), lambda s, a, b: sa(s, a, b),
                  0, 1),
}


def populate(engine: api.Engine, peer: api.Engine) -> tuple[list[str], dict[str, int]]:
    """The contexts of CASES (and one of every state, through the Windows face), with their
    traffic; returns every key in hex and the context ids by case."""
    keys: list[str] = []
    ids: dict[str, int] = {}

    def note(descs: Any) -> Any:
        for d in descs if isinstance(descs, list) else [descs]:
            for part in ("encryption", "integrity"):
                if part in d:
                    keys.append(d[part]["key"])
        return descs

    for i, (name, (out, inn, n_out, n_in)) in enumerate(CASES.items()):
        b = remote(i)
        ab, ba = note(out(0x1000 + i, A, b)), note(inn(0x2000 + i, b, A))
        ids[name] = engine.create_context(outbound=ab, inbound=ba).id
        # The peer's outbound is ours, so it shares the hard limit: drop that from its copy.
        peer_out = dict(ba) if isinstance(ba, dict) else ba
        if isinstance(peer_out, dict):
            peer_out.pop("lifetime", None)
        peer.create_context(outbound=peer_out, inbound=ab)
        for k in range(n_out):
            engine.outbound(udp4(A, b, b"out %d" % k))
        for k in range(n_in):
            wire = peer.outbound(udp4(b, A, b"in %d" % k, ident=k)).packet
            assert wire is not None and engine.inbound(wire).drop is None, name
    out6, in6 = sa(0x3001, A6, TUNNEL_B6, mode="tunnel"), sa(0x3002, TUNNEL_B6, A6, mode="tunnel")
    note(out6), note(in6)
    ids["tunnel6"] = engine.create_context(outbound=out6, inbound=in6).id
    peer.create_context(outbound=in6, inbound=out6)
    engine.outbound(udp6(A6, TUNNEL_B6))
    assert engine.inbound(peer.outbound(udp6(TUNNEL_B6, A6)).packet).drop is None
    with engine.session() as s:
        ids.update({f"wfp-{k}": v for k, v in build(engine.wfp, s.handle).items()})
    return keys, ids


def readings(engine: api.Engine, h: int) -> dict[str, Any]:
    """Everything that shows an SA's counters: each view alone and all at once (wfp face and
    api face), and the statistics."""
    bfe = engine.wfp
    status, views = bfe.sa_context_views(h)
    assert status == 0
    alone = []
    for v in views:
        status, view = bfe.sa_context_view(h, v["id"])
        assert status == 0
        alone.append(view)
    status, stats = bfe.IPsecGetStatistics1(h)
    assert status == 0
    status, stats0 = bfe.IPsecGetStatistics0(h)
    assert status == 0
    # The Windows face's readers (they never needed the SAs; here for completeness).
    windows = []
    for create, enum in ((bfe.IPsecSaContextCreateEnumHandle0, bfe.IPsecSaContextEnum0),
                         (bfe.IPsecSaContextCreateEnumHandle0, bfe.IPsecSaContextEnum1),
                         (bfe.IPsecSaCreateEnumHandle0, bfe.IPsecSaEnum0),
                         (bfe.IPsecSaCreateEnumHandle0, bfe.IPsecSaEnum1)):
        status, eh = create(h, None)
        assert status == 0
        windows.append(enum(h, eh, 1000))
    for v in views:
        windows += [bfe.IPsecSaContextGetById0(h, v["id"]), bfe.IPsecSaContextGetById1(h, v["id"])]
    return {"views": views, "alone": alone, "api": [c.to_dict() for c in engine.contexts()],
            "one": [engine.context(v["id"]).to_dict() for v in views], "stats": stats,
            "stats0": stats0, "windows": windows}


def unbuilt_sides(engine: api.Engine) -> int:
    return sum(ctx.built(f"{d}_bundle") is UNBUILT for ctx in engine.wfp._contexts.values()
               for d in ("inbound", "outbound"))


@pytest.fixture(params=[None, "encrypted"])
def database_key(request: pytest.FixtureRequest) -> bytes | None:
    return None if request.param is None else os.urandom(32)


def read_unbuilt_then_built(engine: api.Engine, h: int, sides: int
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every reading of ``engine`` while ``sides`` SA sides are unbuilt (reading builds none of
    them), then again once every context's SAs are built."""
    before = readings(engine, h)
    assert unbuilt_sides(engine) == sides  # nothing was built to read them
    for ctx in engine.wfp._contexts.values():
        ctx.inbound_bundle, ctx.outbound_bundle  # noqa: B018 - builds them
    assert unbuilt_sides(engine) == 0
    return before, readings(engine, h)


@pytest.fixture
def peer() -> Iterator[api.Engine]:
    with api.Engine() as p:
        yield p


def test_views_and_statistics_of_unbuilt_sas_equal_the_built_ones(
        tmp_path: Path, database_key: bytes | None, peer: api.Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "views.db"
    clock = Clock()
    engine = api.Engine(database=db, clock=clock, database_key=database_key)
    keys, ids = populate(engine, peer)
    states = {c.state for c in engine.contexts()}
    assert states == {"created", "spi_assigned", "inbound", "established", "expiring"}
    engine.close()

    # The second round reopens what a reopened engine wrote, and reads the SA-state rows of
    # every context in one query (the first: one query per context).
    for bulk in (False, True):
        monkeypatch.setattr(stored, "BULK_READ", 1 if bulk else 1 << 30)
        engine = api.Engine(database=db, clock=clock, database_key=database_key)
        h = open_engine(engine.wfp)
        sides = unbuilt_sides(engine)
        assert sides >= 2 * len(CASES)
        before, after = read_unbuilt_then_built(engine, h, sides)
        assert before["views"] == after["views"]
        assert before["alone"] == after["alone"] == after["views"]
        assert before["api"] == after["api"] and before["one"] == after["one"]
        assert before["stats"] == after["stats"] and before["stats0"] == after["stats0"]
        assert before["windows"] == after["windows"]
        text = json.dumps(before["views"]) + json.dumps(before["api"])
        assert not [k for k in keys if k in text]  # keys never appear in a view
        by_id = {v["id"]: v for v in before["views"]}
        # The cases say what they were made to say (so the comparison above covers them).
        assert [s["state"] for s in by_id[ids["soft"]]["outbound"]] == ["dying"]
        assert [s["state"] for s in by_id[ids["soft"]]["inbound"]] == ["dying"]
        assert by_id[ids["hard"]]["state"] == "expiring" and not by_id[ids["hard"]]["outbound"]
        assert by_id[ids["exhausted"]]["outbound"][0]["state"] == "dead"
        assert [s["protocol"] for s in by_id[ids["esp+ah"]]["inbound"]] == ["esp", "ah"]
        assert by_id[ids["esn-window"]]["inbound"][0]["replay_window"] == 128
        assert by_id[ids["udp"]]["outbound"][0]["encapsulation"] == \
            {"type": "udp", "sport": 4500, "dport": 4500}
        assert by_id[ids["gcm"]]["inbound"][0]["packets"] == 2
        assert by_id[ids["limits"]]["seconds_left"] == pytest.approx(3600, abs=5)
        engine.close()


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_views_and_statistics_of_sas_added_unbuilt_equal_the_built_ones(
        tmp_path: Path, durable: bool, peer: api.Engine) -> None:
    """The same differential as above without a reopen: the contexts of CASES as made (an Add
    builds nothing; their traffic built the SAs it went through, the others stay unbuilt)."""
    clock = Clock()
    engine = api.Engine(database=tmp_path / "fresh.db" if durable else None, clock=clock)
    keys, ids = populate(engine, peer)
    h = open_engine(engine.wfp)
    sides = unbuilt_sides(engine)
    # idle both ways, the inbound of out-only-traffic, the exhausted outbound, the Windows
    # face's contexts (two SAs in each of 5, the expiring one's inbound):
    assert sides >= 2 + 1 + 1 + 5
    before, after = read_unbuilt_then_built(engine, h, sides)
    assert before == after
    assert before["alone"] == before["views"]
    text = json.dumps(before["views"]) + json.dumps(before["api"])
    assert not [k for k in keys if k in text]
    by_id = {v["id"]: v for v in before["views"]}
    assert by_id[ids["exhausted"]]["outbound"][0]["state"] == "dead"
    assert [s["protocol"] for s in by_id[ids["wfp-bundle"]]["inbound"]] == ["esp", "ah"]
    assert by_id[ids["limits"]]["seconds_left"] == pytest.approx(3600, abs=5)
    engine.close()


def test_statistics_totals_stay_exact_across_close_reopen_build_and_delete(
        tmp_path: Path, peer: api.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "stats.db"
    engine = api.Engine(database=db)
    made = []
    for i in range(40):  # more than stored.BULK_READ: the rows are read in one query
        b = remote(i)
        ab, ba = sa(0x1000 + i, A, b), sa(0x2000 + i, b, A)
        made.append(engine.create_context(outbound=ab, inbound=ba).id)
        peer.create_context(outbound=ba, inbound=ab)
        for k in range(i % 3):
            engine.outbound(udp4(A, b, b"x" * k))
            assert engine.inbound(peer.outbound(udp4(b, A, ident=k)).packet).drop is None
    totals = engine.statistics()
    engine.close()

    engine = api.Engine(database=db)
    bfe = engine.wfp
    first = engine.statistics()
    traffic = ("inboundTrafficStatistics", "outboundTrafficStatistics")
    for part in traffic:
        assert first[part] == totals[part]
    assert first["aggregateSaStatistics"]["activeSas"] == 80
    assert unbuilt_sides(engine) == 80
    # Read once: the second call parses nothing and reads no row.
    calls: list[Any] = []
    real = stored.parse_sas
    monkeypatch.setattr(stored, "parse_sas", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(bfe._store, "sa_state", lambda *a: calls.append(a))
    monkeypatch.setattr(bfe._store, "sa_states", lambda *a: calls.append(a))
    assert engine.statistics() == first
    assert engine.contexts() == engine.contexts()
    assert calls == []
    monkeypatch.undo()
    # Some SAs built by traffic: the totals move by exactly that traffic.
    b = remote(1)
    engine.outbound(udp4(A, b, b"after"))
    ctx = bfe._contexts[made[1]]
    assert ctx.built("outbound_bundle") is not UNBUILT
    assert ctx.stored_sas is not None and list(ctx.stored_sas) == ["inbound_sas"]
    moved = engine.statistics()["outboundTrafficStatistics"]
    assert moved["totalSuccessfulPackets"] == totals[traffic[1]]["totalSuccessfulPackets"] + 1
    assert engine.context(made[1]).outbound[0].packets == 2  # live counters since the build
    # A context deleted while its SAs are unbuilt keeps its traffic in the totals, and its
    # SAs are not built to count it.
    before = engine.statistics()
    builds: list[Any] = []
    real_build = bfe._bundle_of
    monkeypatch.setattr(bfe, "_bundle_of", lambda *a: builds.append(a) or real_build(*a))
    engine.delete(made[2])
    engine.expire(made[4])
    assert builds == []
    monkeypatch.undo()
    after = engine.statistics()
    for part in traffic:
        assert after[part] == before[part]
    assert after["aggregateSaStatistics"]["activeSas"] == 77  # 2 deleted, 1 stopped
    # Expire stops the outbound SAs (not built to stop them: their stored counts retire); the
    # inbound ones linger, still read as stored.
    ctx = bfe._contexts[made[4]]
    assert ctx.built("inbound_bundle") is UNBUILT and ctx.built("outbound_bundle") is None
    info = engine.context(made[4])
    assert info.state == "expiring" and info.outbound == () and info.inbound[0].packets == 1
    expired = engine.statistics()
    for part in traffic:
        assert expired[part] == before[part]
    assert expired["aggregateSaStatistics"]["activeSas"] == 77
    engine.close()


def test_repr_of_a_reopened_context_builds_nothing(tmp_path: Path, peer: api.Engine) -> None:
    db = tmp_path / "repr.db"
    engine = api.Engine(database=db)
    ab, ba = sa(0x1001, A, remote(0)), sa(0x2002, remote(0), A)
    cid = engine.create_context(outbound=ab, inbound=ba).id
    engine.close()
    engine = api.Engine(database=db)
    ctx = engine.wfp._contexts[cid]
    text = repr(ctx)
    assert ctx.built("inbound_bundle") is UNBUILT and ctx.built("outbound_bundle") is UNBUILT
    assert "traffic" in ctx.lazy and "inbound_given" in ctx.lazy  # no structure rebuilt
    assert "not built" in text and "0x00002002" in text
    assert ab["encryption"]["key"] not in text and ba["encryption"]["key"] not in text
    ctx.outbound_bundle  # noqa: B018
    assert "outbound=[esp 0x00001001]" in repr(ctx)
    engine.close()


def test_stored_descriptions_are_read_from_the_tail_or_whole() -> None:
    """parse_sas reads the members after the bundles as given when it can, and the whole text
    otherwise (another member order, a member of that name nested in a structure before, an
    integer wider than 64 bits): always the same descriptions, integers exact."""
    inbound = [{"spi": 0x100, "protocol": "esp", "lifetime": {"hard": {"bytes": 2 ** 70}}}]
    outbound = [{"spi": 0x200, "protocol": "ah", "seq": 2 ** 64 - 1}]
    rows = [
        {"inbound_given": {"s": 'a,"inbound_sas":[]}'}, "outbound_given": None,
         "inbound_sas": inbound, "outbound_sas": outbound},
        {"inbound_given": None, "inbound_sas": inbound, "outbound_given": {"inbound_sas": 1},
         "outbound_sas": outbound},  # sorted, with a nested member of the same name after
        {"inbound_sas": inbound, "outbound_sas": outbound},  # first: no comma before it
    ]
    for row in rows:
        text = json.dumps(row, separators=(",", ":"))
        got_in, got_out = stored.parse_sas(text, "inbound_sas"), stored.parse_sas(
            text, "outbound_sas")
        assert got_in == inbound and got_out == outbound
        assert type(got_in[0]["lifetime"]["hard"]["bytes"]) is int
    small = [{"spi": 0x100, "protocol": "esp"}]
    assert stored.parse_sas(json.dumps({"inbound_given": None, "inbound_sas": small,
                                        "outbound_sas": None}, separators=(",", ":")),
                            "inbound_sas") == small


def test_listings_while_packets_build_the_sas(tmp_path: Path, peer: api.Engine) -> None:
    """Packets build SAs (and reserve sequence numbers) on their own thread while listings and
    statistics read the same contexts: each read sees an SA either as stored or as built,
    never a mix that loses or invents a count, and the totals end exact."""
    db = tmp_path / "race.db"
    engine = api.Engine(database=db)
    n = 48
    for i in range(n):
        b = remote(i)
        ab, ba = sa(0x1000 + i, A, b), sa(0x2000 + i, b, A)
        engine.create_context(outbound=ab, inbound=ba)
        peer.create_context(outbound=ba, inbound=ab)
        engine.outbound(udp4(A, b))
    engine.close()
    engine = api.Engine(database=db)
    packets_before = engine.statistics()["outboundTrafficStatistics"]["totalSuccessfulPackets"]
    assert packets_before == n
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for i in range(n):
                assert engine.outbound(udp4(A, remote(i))).drop is None
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    seen = []
    while sender.is_alive() or not seen:
        infos = engine.contexts()
        total = engine.statistics()["outboundTrafficStatistics"]["totalSuccessfulPackets"]
        assert all(c.outbound[0].packets in (1, 2) for c in infos)
        assert n <= total <= 2 * n
        seen.append(total)
    sender.join()
    assert not errors
    assert [c.outbound[0].packets for c in engine.contexts()] == [2] * n
    assert engine.statistics()["outboundTrafficStatistics"]["totalSuccessfulPackets"] == 2 * n
    assert seen == sorted(seen)  # counts never go back
    engine.close()


def test_all_sa_state_rows_in_one_query_include_journaled_ones(tmp_path: Path) -> None:
    """SqliteStore.sa_states answers as sa_state does, rows still in the journal included."""
    store = SqliteStore(tmp_path / "rows.db")
    store.put_sa_state([(7, "out", 0, 4096, 3, 300), (7, "in", 0, 5, 2, 100),
                        (8, "in", 1, 9, 1, 50)])
    store.put_sa_state([(7, "out", 0, 8192, 4, 400)])
    assert store.sa_states() == {(7, "out"): {0: (8192, 4, 400)}, (7, "in"): {0: (5, 2, 100)},
                                 (8, "in"): {1: (9, 1, 50)}}
    assert store.sa_state(7, "out") == {0: (8192, 4, 400)}
    store.close()
