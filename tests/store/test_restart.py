"""Durable engine state (issue 12): everything that is not dynamic comes back after close() with
the same ids, compared field by field through the engine's own calls (keys included); sequence
numbers continue beyond what was reserved; lifetimes keep running by wall clock; bad files are
refused with a clear error naming the file; older schemas are migrated; keys can be encrypted.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest
from wfp.helpers import (
    A4,
    B4,
    add_filter,
    addr_conditions,
    ah_sa,
    bundle,
    cbc_sha1_sa,
    gcm_sa,
    ipsec_filter,
    open_engine,
    traffic,
    udp4,
)

from ipsecsa import wfp
from ipsecsa.errors import DropReason
from ipsecsa.store.sqlite import SCHEMA_VERSION, StoreError
from ipsecsa.wfp import persist


def filters(bfe: wfp.Engine, h: int, remote: str = B4, **kw: Any) -> tuple[int, int]:
    conds = addr_conditions(A4, remote)
    return (add_filter(bfe, h, ipsec_filter("inbound", conds, **kw)),
            add_filter(bfe, h, ipsec_filter("outbound", conds, **kw)))


def getspi(fin: int, remote: str = B4) -> wfp.IPSEC_GETSPI1:
    return wfp.IPSEC_GETSPI1(inboundIpsecTraffic=traffic(A4, remote, fin),
                             ipVersion=wfp.FWP_IP_VERSION_V4)


def snapshot(bfe: wfp.Engine, h: int) -> dict[str, Any]:
    """Everything observable through the API, for before/after comparison."""
    out: dict[str, Any] = {}
    _, eh = bfe.FwpmFilterCreateEnumHandle0(h, wfp.FWPM_FILTER_ENUM_TEMPLATE0(
        flags=wfp.FWP_FILTER_ENUM_FLAG_INCLUDE_BOOTTIME, actionMask=0xFFFFFFFF))
    out["filters"] = bfe.FwpmFilterEnum0(h, eh, 1000)[1]
    _, eh = bfe.IPsecSaContextCreateEnumHandle0(h, None)
    out["contexts"] = bfe.IPsecSaContextEnum1(h, eh, 1000)[1]
    return out


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ipsecsa.db"


def build(bfe: wfp.Engine, h: int) -> dict[str, int]:
    """One object of every kind and every context state."""
    ids: dict[str, int] = {}
    ids["fin"], ids["fout"] = filters(bfe, h)
    ids["persistent"] = add_filter(bfe, h, ipsec_filter(
        "outbound", addr_conditions(A4, "203.0.113.9"), flags=wfp.FWPM_FILTER_FLAG_PERSISTENT))
    ids["boottime"] = add_filter(bfe, h, ipsec_filter(
        "outbound", addr_conditions(A4, "203.0.113.10"), flags=wfp.FWPM_FILTER_FLAG_BOOTTIME))
    t = traffic(A4, B4, ids["fout"])
    for state in ("created", "spi", "inbound", "established", "expiring", "bundle"):
        st, _, cid = bfe.IPsecSaContextCreate1(h, t, None)
        assert st == 0
        ids[state] = cid
        if state == "created":
            continue
        st, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(ids["fin"]))
        assert st == 0
        if state == "spi":
            continue
        sas = (cbc_sha1_sa(spi, os.urandom(16), os.urandom(20)), ah_sa(spi, os.urandom(20))) \
            if state == "bundle" else (gcm_sa(spi, os.urandom(20)),)
        assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(*sas)) == 0
        if state == "inbound":
            continue
        out = (cbc_sha1_sa(0xC1000000 + cid, os.urandom(16), os.urandom(20)),
               ah_sa(0xC1000000 + cid, os.urandom(20))) if state == "bundle" \
            else (gcm_sa(0xC1000000 + cid, os.urandom(20)),)
        assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(
            *out, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimeSeconds=3600))) == 0
        if state == "expiring":
            assert bfe.IPsecSaContextExpire0(h, cid) == 0
    return ids


def test_every_kind_of_object_survives_close_with_the_same_ids(db: Path) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    ids = build(bfe, h)
    bfe.grant("LAB\\alice", wfp.FWPM_ACTRL_READ | wfp.FWPM_ACTRL_ENUM, "ipsec_sa_db")
    dyn = open_engine(bfe, session=wfp.FWPM_SESSION0(flags=wfp.FWPM_SESSION_FLAG_DYNAMIC))
    dynamic_id = add_filter(bfe, dyn, ipsec_filter("outbound", addr_conditions(A4, "192.0.2.99")))
    before = snapshot(bfe, h)
    assert len(before["contexts"]) == 6
    bfe.close()
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    assert oct(db.parent.stat().st_mode & 0o777) == "0o700"

    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    after = snapshot(again, h2)
    dynamic = [f for f in before["filters"] if f.filterId == dynamic_id]
    assert after["filters"] == [f for f in before["filters"] if f.filterId != dynamic_id]
    assert dynamic and again.FwpmFilterGetById0(h2, dynamic_id)[0] == wfp.FWP_E_FILTER_NOT_FOUND
    assert after["contexts"] == before["contexts"]  # keys included: the blobs compare by value
    # Each state answers the next call as before.
    assert again.IPsecSaContextGetSpi1(h2, ids["created"], getspi(ids["fin"]))[0] == 0
    assert again.IPsecSaContextExpire0(h2, ids["expiring"]) == wfp.FWP_E_INCOMPATIBLE_SA_STATE
    # Id counters continue (F.19 and the context counter).
    assert add_filter(again, h2, ipsec_filter("outbound", addr_conditions(A4, "192.0.2.7"))) \
        == dynamic_id + 1
    assert again.IPsecSaContextCreate1(h2, traffic(A4, B4, ids["fout"]), None)[2] \
        == ids["bundle"] + 1
    # Grants survive.
    alice = open_engine(again, wfp.SEC_WINNT_AUTH_IDENTITY_W(User="alice", Domain="LAB"))
    assert again.IPsecSaContextGetById1(alice, ids["established"])[0] == 0
    assert again.FwpmFilterGetById0(alice, ids["fin"])[0] == wfp.ERROR_ACCESS_DENIED
    again.close()


def _peer(local: str = B4, remote: str = A4) -> tuple[wfp.Engine, int, int, int]:
    peer = wfp.Engine()
    hp = open_engine(peer)
    conds = addr_conditions(local, remote)
    fin = add_filter(peer, hp, ipsec_filter("inbound", conds))
    fout = add_filter(peer, hp, ipsec_filter("outbound", conds))
    _, _, cid = peer.IPsecSaContextCreate1(hp, traffic(local, remote, fout), None)
    _, spi = peer.IPsecSaContextGetSpi1(hp, cid, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(local, remote, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
    return peer, hp, cid, spi


def _pair(db: Path, **outbound: Any
          ) -> tuple[wfp.Engine, int, int, wfp.Engine, int, int, bytes, bytes]:
    """A durable engine and an in-memory peer with one established context each, keyed for
    each other; ``outbound``: more of the durable side's outbound bundle (e.g. a lifetime)."""
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    fin, fout = filters(bfe, h)
    _, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    _, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
    peer, hp, pcid, pspi = _peer()
    k_in, k_out = os.urandom(20), os.urandom(20)
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, k_in))) == 0
    assert peer.IPsecSaContextAddInbound1(hp, pcid, bundle(gcm_sa(pspi, k_out))) == 0
    assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(gcm_sa(pspi, k_out), **outbound)) == 0
    assert peer.IPsecSaContextAddOutbound1(hp, pcid, bundle(gcm_sa(spi, k_in))) == 0
    return bfe, h, cid, peer, hp, pcid, k_in, k_out


def seq_of(wire: bytes) -> int:
    return struct.unpack_from("!I", wire, 24)[0]


def test_traffic_continues_across_a_restart_and_never_reuses_a_sequence_number(db: Path) -> None:
    bfe, _h, cid, peer, _hp, _pcid, _, _ = _pair(db)
    sent = [seq_of(bfe.outbound(udp4(A4, B4, b"%d" % i)).packet) for i in range(10)]
    for i in range(10):
        assert peer.inbound(bfe.outbound(udp4(A4, B4, b"x")).packet).drop is None
    replayable = peer.outbound(udp4(B4, A4, b"from the peer")).packet
    assert bfe.inbound(replayable).drop is None
    bfe.close()
    again = wfp.Engine(database=db)
    wire = again.outbound(udp4(A4, B4, b"after")).packet
    assert seq_of(wire) > max(sent) + 10  # continues beyond the reserved block: never reused
    assert seq_of(wire) == persist.SEQ_BLOCK + 1
    assert peer.inbound(wire).drop is None
    # The replay edge survived: the packet received before the restart is a replay now.
    assert again.inbound(replayable).drop is DropReason.REPLAY
    assert again.inbound(peer.outbound(udp4(B4, A4, b"new")).packet).drop is None
    h2 = open_engine(again)
    _, ctx = again.IPsecSaContextGetById1(h2, cid)
    assert ctx.outboundSa is not None
    again.close()
    peer.close()


def test_counters_and_packet_lifetimes_keep_counting(db: Path) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    fin, fout = filters(bfe, h)
    _, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    _, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, bytes(20)))) == 0
    assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(
        gcm_sa(0xC2000001, bytes(20)), lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimePackets=5))) == 0
    for _ in range(3):
        assert bfe.outbound(udp4(A4, B4, b"p")).drop is None
    bfe.close()
    again = wfp.Engine(database=db)
    results = [again.outbound(udp4(A4, B4, b"p")).drop for _ in range(4)]
    assert results[:2] == [None, None]
    assert results[2] is not None  # 5 packets in all: a restart did not extend the SA's life
    again.close()


def test_lifetime_seconds_run_by_wall_clock_while_closed(db: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    fin, fout = filters(bfe, h)
    _, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    _, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, bytes(20)))) == 0
    assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(
        gcm_sa(0xC2000001, bytes(20)), lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimeSeconds=100))) == 0
    bfe.close()
    real = persist.time.time
    monkeypatch.setattr(persist.time, "time", lambda: real() + 101)  # the engine was down 101 s
    again = wfp.Engine(database=db)
    assert again.outbound(udp4(A4, B4, b"late")).drop is DropReason.NO_POLICY
    h2 = open_engine(again)
    assert again.IPsecSaContextGetById1(h2, cid)[1].outboundSa is None  # expired meanwhile
    again.close()
    monkeypatch.setattr(persist.time, "time", lambda: real() + 200)  # the linger ended too
    third = wfp.Engine(database=db)
    h3 = open_engine(third)
    assert third.IPsecSaContextGetById1(h3, cid)[0] == wfp.FWP_E_NOT_FOUND
    third.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "newer", "bitflip"])
def test_bad_files_are_refused_naming_the_file(db: Path, damage: str) -> None:
    bfe = wfp.Engine(database=db)
    build(bfe, open_engine(bfe))
    bfe.close()
    raw = db.read_bytes()
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    elif damage == "truncated":
        db.write_bytes(raw[: len(raw) // 2])
    elif damage == "foreign":
        db.unlink()
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE t(x)")
        con.execute("PRAGMA application_id = 42")
        con.commit()
        con.close()
    elif damage == "newer":
        con = sqlite3.connect(db)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        con.commit()
        con.close()
    else:  # one byte of a stored SA context changed: SQLite's page checks cannot see it
        data = bytearray(raw)
        at = data.index(b'"tunnel":false')
        data[at + 10] ^= 0x01  # false -> galse
        db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        wfp.Engine(database=db)
    assert str(db) in str(info.value)


def test_a_version_1_database_is_migrated(db: Path) -> None:
    from ipsecsa.store import sqlite as store_sqlite

    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    ids = build(bfe, h)
    before = snapshot(bfe, h)
    bfe.close()
    # Turn it into exactly what version 1 wrote: no sa_state table (per-SA state only in the
    # rows) and no digests (SQLite >= 3.35 drops columns).
    con = sqlite3.connect(db)
    con.execute("DROP TABLE sa_state")
    con.execute("ALTER TABLE filters DROP COLUMN compiled")
    con.execute("ALTER TABLE filters DROP COLUMN digest")
    con.execute("ALTER TABLE contexts DROP COLUMN digest")
    assert [r[1] for r in con.execute("PRAGMA table_info(contexts)")] == ["id", "body", "secret"]
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    assert store_sqlite.SCHEMA_VERSION == 4
    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    assert snapshot(again, h2)["contexts"] == before["contexts"]
    assert again.outbound(udp4(A4, B4, b"migrated")).drop is None
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    again.close()
    assert ids


def test_a_version_2_database_gets_compiled_filters(db: Path) -> None:
    """Version 2 stored filters without their compiled form: the reopen validates and
    compiles them the full way, and writes the compiled form, so the next reopen is fast."""
    from ipsecsa.store.sqlite import _digest

    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    build(bfe, h)
    before = snapshot(bfe, h)
    bfe.close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE filters DROP COLUMN compiled")
    for fid, key, lifetime, body in con.execute(
            "SELECT id, key, lifetime, body FROM filters").fetchall():
        con.execute("UPDATE filters SET digest = ? WHERE id = ?",
                    (_digest(key, lifetime, body), fid))  # what version 2 wrote
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    for _ in range(2):
        again = wfp.Engine(database=db)
        h2 = open_engine(again)
        assert snapshot(again, h2) == before
        assert again.outbound(udp4(A4, B4, b"migrated")).drop is None
        again.close()
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("SELECT count(*) FROM filters WHERE compiled IS NULL").fetchone() \
            == (0,)
        con.close()


def test_a_version_3_database_gets_a_journal(db: Path) -> None:
    """Version 3 wrote its rows straight to the tables, with no journal and no database id:
    it opens as it was, gets its id, and writes through a journal from then on."""
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    build(bfe, h)
    before = snapshot(bfe, h)
    bfe.close()
    db.with_name(db.name + "-ipsalog").unlink()
    con = sqlite3.connect(db)
    con.execute("DELETE FROM meta WHERE key IN ('store_id', 'journal_applied')")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    assert snapshot(again, h2) == before
    fin, fout = filters(again, h2, remote="198.51.100.77")
    assert db.with_name(db.name + "-ipsalog").stat().st_size > 100  # written through it
    again.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert con.execute("SELECT count(*) FROM meta WHERE key = 'store_id'").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM filters WHERE id IN (?, ?)",
                       (fin, fout)).fetchone() == (2,)
    con.close()


def test_keys_at_rest_can_be_encrypted(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    bfe = wfp.Engine(database=db, database_key=key)
    h = open_engine(bfe)
    fin, fout = filters(bfe, h)
    _, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    _, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
    secret = bytes(range(100, 120))
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, secret))) == 0
    before = snapshot(bfe, h)
    bfe.close()
    raw = b"".join(p.read_bytes() for p in db.parent.iterdir())
    assert secret not in raw and secret.hex().encode() not in raw
    with pytest.raises(StoreError, match="encrypted"):
        wfp.Engine(database=db)
    with pytest.raises(StoreError, match="wrong database key"):
        wfp.Engine(database=db, database_key=os.urandom(32))
    monkeypatch.setenv("IPSECSA_DB_KEY", key.hex())
    again = wfp.Engine(database=db)
    assert snapshot(again, open_engine(again))["contexts"] == before["contexts"]
    again.close()


def test_without_a_key_the_keys_are_in_the_file_and_it_is_0600(db: Path) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    fin, fout = filters(bfe, h)
    _, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    _, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, bytes(20)))) == 0
    bfe.close()
    for p in db.parent.iterdir():
        assert p.stat().st_mode & 0o077 == 0, p


def test_a_reopened_engine_offloads_its_established_contexts_again(db: Path) -> None:
    from ipsecsa.ndis import Miniport

    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    fin, fout = filters(bfe, h)
    _, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    _, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
    sa_in = cbc_sha1_sa(spi, os.urandom(16), os.urandom(20),
                        cipher=wfp.IPSEC_CIPHER_TRANSFORM_ID_CBC_3DES)
    sa_in.espAuthAndCipherInformation.saCipherInformation.cipherKey = wfp.FWP_BYTE_BLOB(
        data=os.urandom(24))
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(sa_in)) == 0
    sa_out = cbc_sha1_sa(0xC3000001, os.urandom(24), os.urandom(20),
                         cipher=wfp.IPSEC_CIPHER_TRANSFORM_ID_CBC_3DES)
    assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(sa_out)) == 0
    bfe.close()
    nic = Miniport()
    again = wfp.Engine(database=db, offload=nic)
    h2 = open_engine(again)
    _, ctx = again.IPsecSaContextGetById1(h2, cid)
    assert ctx.outboundSa.saBundle.flags & wfp.IPSEC_SA_BUNDLE_FLAG_SA_OFFLOADED
    _, st = again.IPsecGetStatistics1(h2)
    assert st.aggregateSaStatistics.offloadedSas == 2
    assert again.outbound(udp4(A4, B4, b"via the NIC")).drop is None
    again.close()


def test_a_reopened_context_is_written_again_without_rebuilding_its_structures(db: Path) -> None:
    """A reopened context keeps the caller's traffic and bundles in stored form until read
    (that is what makes a large database reopen fast); a change of state written before
    anything read them must still store them whole: a third engine sees them as the first."""
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    ids = build(bfe, h)
    before = snapshot(bfe, h)
    bfe.close()

    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    ctx = again._contexts[ids["established"]]
    assert set(ctx.lazy) >= {"traffic", "inbound_given", "outbound_given"}
    assert again.IPsecSaContextExpire0(h2, ids["established"]) == 0  # persisted, never read
    assert "inbound_given" in ctx.lazy
    again.close()

    third = wfp.Engine(database=db)
    h3 = open_engine(third)
    after = snapshot(third, h3)
    was = {c.saContextId: c for c in before["contexts"]}
    now = {c.saContextId: c for c in after["contexts"]}
    assert now.keys() == was.keys()
    for cid, c in was.items():
        if cid != ids["established"]:
            assert now[cid] == c
    e0, e1 = was[ids["established"]], now[ids["established"]]
    assert e1.inboundSa == e0.inboundSa and e0.outboundSa is not None  # keys included
    assert e1.outboundSa is None  # Expire removed the outbound SA, as it does
    third.close()


def test_ids_are_never_given_twice_even_after_a_crash(db: Path) -> None:
    """The id counters are stored a block ahead (one write per block, not per id): an engine
    that dies without close() comes back with counters beyond every id it gave out; a clean
    close stores them exactly, so a normal restart skips nothing."""
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    _fin, fout = filters(bfe, h)
    cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)[2]
    # A crash: nothing more is written by this engine (its store stays open, as a killed
    # process's file would be left); a second engine opens the same file.
    crashed = wfp.Engine(database=db)
    hc = open_engine(crashed)
    f2 = add_filter(crashed, hc, ipsec_filter("outbound", addr_conditions(A4, "192.0.2.7")))
    c2 = crashed.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)[2]
    assert f2 > fout and c2 > cid
    crashed.close()
    bfe._store = None  # the first engine is gone: it must not write its counters now
    bfe.close()

    clean = wfp.Engine(database=db)
    hn = open_engine(clean)
    f3 = add_filter(clean, hn, ipsec_filter("outbound", addr_conditions(A4, "192.0.2.8")))
    assert f3 == f2 + 1
    clean.close()


def test_a_reopened_engine_knows_which_filters_its_contexts_name(db: Path) -> None:
    """F.16 after a reopen: a filter named by a stored context (outbound by Create, inbound
    by GetSpi) is still in use, and free again once the context is deleted (the engine keeps
    an index of filter users instead of scanning every context; after a reopen it is built
    from the loaded contexts)."""
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    fin, fout = filters(bfe, h)
    other_in, other_out = filters(bfe, h, remote="203.0.113.7")
    st, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    assert st == 0
    assert bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))[0] == 0
    bfe.close()
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    try:
        assert bfe.FwpmFilterDeleteById0(h, fout) == wfp.FWP_E_IN_USE
        assert bfe.FwpmFilterDeleteById0(h, fin) == wfp.FWP_E_IN_USE
        assert bfe.FwpmFilterDeleteById0(h, other_out) == 0  # named by nothing
        st, _, second = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
        assert st == 0
        assert bfe.IPsecSaContextDeleteById0(h, cid) == 0
        assert bfe.FwpmFilterDeleteById0(h, fout) == wfp.FWP_E_IN_USE  # the second one
        assert bfe.FwpmFilterDeleteById0(h, fin) == 0  # only the first had named it
        assert bfe.IPsecSaContextDeleteById0(h, second) == 0
        assert bfe.FwpmFilterDeleteById0(h, fout) == 0
        assert bfe.FwpmFilterDeleteById0(h, other_in) == 0
    finally:
        bfe.close()


def _state_rows(db: Path, live: wfp.Engine | None = None) -> list[tuple[Any, ...]]:
    """The SA-state rows in the file; with ``live`` (an open engine on it), after it applied
    its journal to the tables (it is the journal that makes a write durable; the tables get
    it in batches)."""
    if live is not None:
        live._store.flush()
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT ctx, dir, idx FROM sa_state ORDER BY ctx, dir").fetchall()


def test_sa_state_rows_are_written_when_they_say_something(db: Path) -> None:
    """AddInbound/AddOutbound write no SA-state row (the stored descriptions say the same:
    their sequence numbers, no counters, nothing reserved); the first reservation and the
    counters at close do; a context deleted with rows takes them along. A reopen reads a
    context without rows as freshly added, and one with rows from them."""
    bfe, h, cid, peer, _hp, _pcid, _, _ = _pair(db)
    assert _state_rows(db, bfe) == []
    wire = bfe.outbound(udp4(A4, B4, b"first")).packet  # reserves the first block (synced)
    assert seq_of(wire) == 1
    assert _state_rows(db, bfe) == [(cid, "out", 0)]
    assert bfe.inbound(peer.outbound(udp4(B4, A4, b"back")).packet).drop is None
    st, _, quiet = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, bfe._contexts[cid].outbound_filter),
                                             None)
    assert st == 0
    bfe.close()
    assert _state_rows(db) == [(cid, "in", 0), (cid, "out", 0)]  # counters at close
    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    assert seq_of(again.outbound(udp4(A4, B4, b"after")).packet) == persist.SEQ_BLOCK + 1
    assert again.IPsecSaContextDeleteById0(h2, quiet) == 0  # never had rows
    assert again.IPsecSaContextDeleteById0(h2, cid) == 0
    assert _state_rows(db, again) == []
    again.close()
    peer.close()


def test_a_deleted_durable_context_is_freed_without_the_cyclic_collector(db: Path) -> None:
    """Its outbound SAs' reservation hook refers back to the context: deleting it cuts that
    loop, so the context goes at once (reference counting), as on an in-memory engine."""
    import gc
    import weakref

    bfe, h, cid, peer, _hp, _pcid, _, _ = _pair(db)
    assert bfe.outbound(udp4(A4, B4, b"x")).drop is None  # a reservation made and used
    gone = weakref.ref(bfe._contexts[cid])
    gc.disable()
    try:
        assert bfe.IPsecSaContextDeleteById0(h, cid) == 0
        bfe._flows.clear()  # the flow cache may hold the last decision's context
        assert gone() is None
    finally:
        gc.enable()
        bfe.close()
        peer.close()
