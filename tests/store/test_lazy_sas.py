"""SAs of a reopened durable engine are built at their first use (issue 12: reopening 100,000
contexts fast). A reopened context keeps its stored SA descriptions; the first packet each way,
or the first control call that needs the SA objects, builds them, and everything that survives
a restart must be as if they had been built at the reopen: sequence numbers continue after the
reserved block, the replay edge and the counters hold, lifetimes run by wall clock, and a crash
before an SA was ever built loses nothing. The peer is a second engine holding the mirror SAs
(its packets and ours must be accepted by the other side)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from wfp.helpers import A4, B4, open_engine, udp4

from ipsecsa import wfp
from ipsecsa.errors import DropReason
from ipsecsa.wfp import persist
from ipsecsa.wfp.contexts import UNBUILT
from store.test_restart import _pair, seq_of


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "lazy.db"


def unbuilt(ctx: Any, direction: str) -> bool:
    return ctx.built(f"{direction}_bundle") is UNBUILT


def traffic_then_close(db: Path) -> tuple[int, wfp.Engine, bytes, list[int]]:
    """An established context that sent 5 packets and received one (``old``), closed."""
    bfe, _h, cid, peer, _hp, _pcid, _, _ = _pair(db)
    sent = [seq_of(bfe.outbound(udp4(A4, B4, b"%d" % i)).packet) for i in range(5)]
    old = peer.outbound(udp4(B4, A4, b"before the restart")).packet
    assert bfe.inbound(old).drop is None
    bfe.close()
    return cid, peer, old, sent


@pytest.mark.parametrize("first", ["outbound", "inbound"])
def test_the_first_packet_each_way_builds_that_side(db: Path, first: str) -> None:
    cid, peer, old, sent = traffic_then_close(db)
    again = wfp.Engine(database=db)
    ctx = again._contexts[cid]
    assert unbuilt(ctx, "inbound") and unbuilt(ctx, "outbound")

    def send() -> None:
        wire = again.outbound(udp4(A4, B4, b"after")).packet
        assert seq_of(wire) == persist.SEQ_BLOCK + 1 > max(sent)  # after the reserved block
        assert peer.inbound(wire).drop is None

    def receive() -> None:
        assert again.inbound(old).drop is DropReason.REPLAY  # the stored replay edge
        assert again.inbound(peer.outbound(udp4(B4, A4, b"new")).packet).drop is None

    if first == "outbound":
        send()
        assert not unbuilt(ctx, "outbound") and unbuilt(ctx, "inbound")
        receive()
    else:
        receive()
        assert unbuilt(ctx, "outbound") and not unbuilt(ctx, "inbound")
        send()
    assert not unbuilt(ctx, "inbound") and not unbuilt(ctx, "outbound")
    again.close()
    peer.close()


def test_get_by_id_enumerations_views_and_statistics_build_nothing(
        db: Path) -> None:
    bfe, h, cid, peer, _hp, _pcid, _, _ = _pair(db)
    for i in range(5):
        assert bfe.outbound(udp4(A4, B4, b"%d" % i)).drop is None
    assert bfe.inbound(peer.outbound(udp4(B4, A4, b"in")).packet).drop is None
    _, ctx_before = bfe.IPsecSaContextGetById1(h, cid)
    _, eh = bfe.IPsecSaCreateEnumHandle0(h, None)
    _, sas_before, _ = bfe.IPsecSaEnum1(h, eh, 10)
    _, stats_before = bfe.IPsecGetStatistics1(h)
    view_before = bfe.sa_context_view(h, cid)[1]
    bfe.close()

    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    ctx = again._contexts[cid]
    assert again.IPsecSaContextGetById1(h2, cid)[1] == ctx_before  # keys included
    _, eh = again.IPsecSaCreateEnumHandle0(h2, None)
    assert again.IPsecSaEnum1(h2, eh, 10)[1] == sas_before
    assert unbuilt(ctx, "inbound") and unbuilt(ctx, "outbound")
    # The view and the statistics read the stored counts without building the SAs
    # (tests/store/test_stored_views.py holds them equal to the built SAs').
    view = again.sa_context_view(h2, cid)[1]
    assert unbuilt(ctx, "inbound") and unbuilt(ctx, "outbound")
    for side in ("inbound", "outbound"):
        assert [(s["packets"], s["bytes"]) for s in view[side]] == \
            [(s["packets"], s["bytes"]) for s in view_before[side]]
    assert view["outbound"][0]["packets"] == 5
    assert view["outbound"][0]["seq"] == persist.SEQ_BLOCK  # continues after the reservation
    assert view["inbound"][0]["seq"] == view_before["inbound"][0]["seq"] == 1
    _, stats = again.IPsecGetStatistics1(h2)
    assert stats.inboundTrafficStatistics == stats_before.inboundTrafficStatistics
    assert stats.outboundTrafficStatistics == stats_before.outboundTrafficStatistics
    assert stats.aggregateSaStatistics.activeSas == 2
    assert unbuilt(ctx, "inbound") and unbuilt(ctx, "outbound")
    again.close()
    peer.close()


def test_expire_and_delete_before_any_packet(db: Path) -> None:
    cid, peer, old, _ = traffic_then_close(db)
    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    ctx = again._contexts[cid]
    assert again.IPsecSaContextExpire0(h2, cid) == 0
    assert unbuilt(ctx, "inbound")  # Expire needs only the outbound SA (to stop it)
    assert again.IPsecSaContextGetById1(h2, cid)[1].outboundSa is None
    assert again.outbound(udp4(A4, B4, b"x")).drop is DropReason.NO_POLICY
    late = peer.outbound(udp4(B4, A4, b"in flight")).packet
    assert again.inbound(late).drop is None  # the linger: the inbound SA still accepts
    assert again.inbound(old).drop is DropReason.REPLAY
    again.close()

    third = wfp.Engine(database=db)
    h3 = open_engine(third)
    ctx = third._contexts[cid]
    assert ctx.state.value == "expiring" and ctx.built("outbound_bundle") is None
    assert unbuilt(ctx, "inbound")
    assert third.IPsecSaContextDeleteById0(h3, cid) == 0
    assert len(third._sad) == 0
    assert third.inbound(late).drop is DropReason.BAD_SPI
    third.close()
    fourth = wfp.Engine(database=db)
    assert cid not in fourth._contexts and len(fourth._sad) == 0
    fourth.close()
    peer.close()


def test_a_lifetime_that_ran_out_while_down(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bfe, _h, cid, peer, _hp, _pcid, _, _ = _pair(
        db, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimeSeconds=100))
    bfe.close()
    real = persist.time.time
    monkeypatch.setattr(persist.time, "time", lambda: real() + 101)  # down for 101 s
    again = wfp.Engine(database=db)
    ctx = again._contexts[cid]
    assert again.outbound(udp4(A4, B4, b"late")).drop is DropReason.NO_POLICY
    assert ctx.state.value == "expiring" and unbuilt(ctx, "inbound")
    assert again.inbound(peer.outbound(udp4(B4, A4, b"lingering")).packet).drop is None
    again.close()
    peer.close()


CHILD = r"""
import sys, time
from ipsecsa import wfp
from ipsecsa.wfp.contexts import UNBUILT
bfe = wfp.Engine(database=sys.argv[1])
cid = int(sys.argv[2])
_, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
st, ctx = bfe.IPsecSaContextGetById1(h, cid)
assert st == 0
assert bfe.IPsecSaContextUpdate0(h, 0, ctx) == 0  # the context's rows written again
assert bfe._contexts[cid].built("outbound_bundle") is UNBUILT
print("ready", flush=True)
time.sleep(60)
"""


def test_a_crash_before_the_sa_was_built_keeps_its_reservation(db: Path) -> None:
    cid, peer, _old, sent = traffic_then_close(db)
    # A reopened engine that rewrites the context and is killed before building its SAs.
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(cid)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    # And one closed cleanly without building them.
    wfp.Engine(database=db).close()
    again = wfp.Engine(database=db)
    wire = again.outbound(udp4(A4, B4, b"after two restarts")).packet
    assert seq_of(wire) == persist.SEQ_BLOCK + 1 > max(sent)  # the reservation never went back
    assert peer.inbound(wire).drop is None
    again.close()
    peer.close()


def test_concurrent_first_packets_build_once_and_never_share_a_number(db: Path) -> None:
    cid, peer, _old, _ = traffic_then_close(db)
    again = wfp.Engine(database=db)
    built: list[str] = []
    real = again._bundle_of
    again._bundle_of = lambda ctx, d: built.append(d) or real(ctx, d)  # type: ignore[method-assign]
    incoming = [peer.outbound(udp4(B4, A4, b"%d" % i)).packet for i in range(64)]
    seqs: list[int] = []
    drops: list[Any] = []
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        start.wait()
        for i in range(8):
            r = again.outbound(udp4(A4, B4, b"%d-%d" % (k, i)))
            drops.append(r.drop)
            if r.packet is not None:
                seqs.append(seq_of(r.packet))
            drops.append(again.inbound(incoming[k * 8 + i]).drop)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(built) == ["inbound", "outbound"]
    assert drops == [None] * 128
    assert sorted(seqs) == list(range(persist.SEQ_BLOCK + 1, persist.SEQ_BLOCK + 65))
    assert again._contexts[cid].built("outbound_bundle").sas[0].packets == 5 + 64
    again.close()
    peer.close()


def test_rows_written_before_in_sas_and_out_sas_reopen_alike(db: Path) -> None:
    """Context rows from before the body was split in two lines and named its SAs' protocols:
    the reopen reads the protocols from the secret column instead, and everything else is as
    with today's rows (the SAs built at first use)."""
    import json
    import sqlite3

    from ipsecsa.store.sqlite import _digest

    cid, peer, old, _ = traffic_then_close(db)
    first = wfp.Engine(database=db)
    before = first.IPsecSaContextGetById1(open_engine(first), cid)[1]
    first.close()
    con = sqlite3.connect(db)
    for rid, body, secret in con.execute("SELECT id, body, secret FROM contexts").fetchall():
        head, lazy = body.split("\n")
        b = json.loads(head) | json.loads(lazy)  # one JSON object, as older rows were
        del b["in_sas"], b["out_sas"]
        body = json.dumps(b, separators=(",", ":"))
        con.execute("UPDATE contexts SET body = ?, digest = ? WHERE id = ?",
                    (body, _digest(str(rid), body, secret), rid))
    con.commit()
    con.close()
    again = wfp.Engine(database=db)
    ctx = again._contexts[cid]
    assert unbuilt(ctx, "inbound") and unbuilt(ctx, "outbound")
    assert again.IPsecSaContextGetById1(open_engine(again), cid)[1] == before
    assert again.inbound(old).drop is DropReason.REPLAY
    wire = again.outbound(udp4(A4, B4, b"after")).packet
    assert seq_of(wire) == persist.SEQ_BLOCK + 1 and peer.inbound(wire).drop is None
    again.close()
    peer.close()
