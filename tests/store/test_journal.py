"""The store's write-ahead journal (ipsecsa.store.journal; issue 12, durable state): what an
engine acknowledged is in the journal before the call returns and comes back from it after a
crash; a torn last record (a write the crash interrupted, never acknowledged) is cut off; any
other damage refuses the database, naming the journal; the journal never runs SQL of its own,
holds keys only as sealed as the tables do, and is 0600.

A "crash" here is a copy of the database's files taken while the engine is open (what a kill
would leave on disk: every acknowledged write is in the files, in the page cache), then damaged
as a crash or a bad disk would; test_crash.py kills real processes.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest
from wfp.helpers import (
    A4,
    B4,
    add_filter,
    addr_conditions,
    bundle,
    gcm_sa,
    ipsec_filter,
    open_engine,
    traffic,
)

from ipsecsa import wfp
from ipsecsa.store import journal as J
from ipsecsa.store import sqlite as S
from ipsecsa.store.sqlite import StoreError


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "live" / "ipsecsa.db"


def crash_copy(db: Path, to: Path) -> Path:
    """The database's files as a crash of the engine's process would leave them now."""
    to.mkdir()
    for p in db.parent.iterdir():
        shutil.copy2(p, to / p.name)
    return to / db.name


def journal_of(db: Path) -> Path:
    return db.with_name(db.name + "-ipsalog")


def store_id(db: Path) -> bytes:
    with sqlite3.connect(db) as conn:
        return bytes.fromhex(conn.execute(
            "SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0])


def last_record(db: Path) -> tuple[Path, bytes, int]:
    """The journal of ``db``, its bytes, and the length of its last record."""
    log = journal_of(db)
    records, _ = J.read(log, store_id(db))
    return log, log.read_bytes(), len(J.encode(records[-1][0], records[-1][1]))


def context(bfe: wfp.Engine, h: int, key: bytes, remote: str = B4) -> int:
    conds = addr_conditions(A4, remote)
    fin = add_filter(bfe, h, ipsec_filter("inbound", conds))
    fout = add_filter(bfe, h, ipsec_filter("outbound", conds))
    st, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, remote, fout), None)
    assert st == 0
    st, spi = bfe.IPsecSaContextGetSpi1(h, cid, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(A4, remote, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
    assert st == 0
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, key))) == 0
    return cid


def test_acknowledged_writes_come_back_from_the_journal_alone(db: Path, tmp_path: Path) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    cid = context(bfe, h, bytes(20))
    spi = bfe._contexts[cid].spi
    with sqlite3.connect(db) as conn:  # not in the tables yet: only in the journal
        assert conn.execute("SELECT count(*) FROM contexts").fetchone()[0] == 0
    copy = crash_copy(db, tmp_path / "crash")
    bfe.close()
    again = wfp.Engine(database=copy)
    try:
        ctx = again._contexts[cid]
        assert (ctx.state.value, ctx.spi) == ("inbound", spi)
        with sqlite3.connect(copy) as conn:  # applied (and the journal started over) at open
            assert conn.execute("SELECT count(*) FROM contexts").fetchone()[0] == 1
        assert journal_of(copy).read_bytes() == J.header(again._store.store_id)
    finally:
        again.close()


@pytest.mark.parametrize("cut", [1, 5, 20, "half"])
def test_a_torn_last_record_is_cut_off(db: Path, tmp_path: Path, cut: object) -> None:
    """A kill inside ``write`` leaves part of the last record: that call never returned, so
    the reopen has everything before it and nothing of it."""
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    first = context(bfe, h, bytes(20))
    size = journal_of(db).stat().st_size
    second = context(bfe, h, bytes(20), remote="198.51.100.7")
    copy = crash_copy(db, tmp_path / "crash")
    bfe.close()
    log, data, last_len = last_record(copy)
    keep = len(data) - last_len + (last_len // 2 if cut == "half" else int(str(cut)))
    log.write_bytes(data[:keep])
    again = wfp.Engine(database=copy)
    try:
        assert first in again._contexts and second in again._contexts
        # The second context's AddInbound was the torn call: it is as GetSpi left it.
        assert again._contexts[first].state.value == "inbound"
        assert again._contexts[second].state.value == "spi_assigned"
        assert size < keep
    finally:
        again.close()


def test_zeros_where_a_machine_crash_lost_the_tail_are_cut_off(db: Path, tmp_path: Path) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    cid = context(bfe, h, bytes(20))
    copy = crash_copy(db, tmp_path / "crash")
    bfe.close()
    log, data, last_len = last_record(copy)
    log.write_bytes(data[:-last_len] + bytes(last_len + 4096))
    again = wfp.Engine(database=copy)
    try:
        assert again._contexts[cid].state.value == "spi_assigned"
    finally:
        again.close()


def test_damage_before_the_last_record_refuses_the_database(db: Path, tmp_path: Path) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    context(bfe, h, bytes(20))
    copy = crash_copy(db, tmp_path / "crash")
    bfe.close()
    log = journal_of(copy)
    data = bytearray(log.read_bytes())
    data[len(J.header(store_id(copy))) + 12] ^= 0x40  # inside the first record's body
    log.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="ipsalog: corrupt journal"):
        wfp.Engine(database=copy)
    log.write_bytes(b"NOTAJRNL" + bytes(data[8:]))
    with pytest.raises(StoreError, match="bad magic"):
        wfp.Engine(database=copy)


def test_the_journal_names_statements_never_sql(db: Path, tmp_path: Path) -> None:
    """A record naming a statement the store does not have is refused, not run."""
    bfe = wfp.Engine(database=db)
    open_engine(bfe)
    bfe.close()
    log = journal_of(db)
    log.write_bytes(J.header(store_id(db)) + J.encode(1, [(99, ("x",))]))
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'journal_applied'")
    with pytest.raises(StoreError, match="does not apply"):
        wfp.Engine(database=db)


def test_keys_in_the_journal_are_sealed_as_in_the_tables(db: Path) -> None:
    secret = bytes(range(100, 120))
    bfe = wfp.Engine(database=db, database_key=os.urandom(32))
    h = open_engine(bfe)
    context(bfe, h, secret)
    raw = journal_of(db).read_bytes()
    assert len(raw) > 1000
    assert secret not in raw and secret.hex().encode() not in raw
    assert journal_of(db).stat().st_mode & 0o777 == 0o600
    bfe.close()
    plain = wfp.Engine(database=db.with_name("plain.db"))
    context(plain, open_engine(plain), secret)
    assert secret.hex().encode() in journal_of(db.with_name("plain.db")).read_bytes()
    plain.close()


def test_the_tables_catch_up_in_batches_and_the_journal_starts_over(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "APPLY_OPS", 8)
    monkeypatch.setattr(S, "JOURNAL_RESTART_BYTES", 20000)
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    sizes = []
    for i in range(12):
        context(bfe, h, bytes(20), remote=f"198.51.100.{10 + i}")
        sizes.append(journal_of(db).stat().st_size)
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT count(*) FROM contexts").fetchone()[0]
    assert 8 <= stored <= 12  # applied in batches, without a flush
    assert any(b < a for a, b in itertools.pairwise(sizes))  # started over
    assert max(sizes) < 20000 + 8 * 4000
    bfe.close()
    again = wfp.Engine(database=db)
    assert len(again._contexts) == 12
    again.close()


def test_a_synced_write_is_fsynced(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reservations are the writes that must survive a crash of the machine: the journal is
    fsynced before the write returns (the others only reach the page cache)."""
    bfe = wfp.Engine(database=db)
    open_engine(bfe)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(J.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    bfe._store.put_meta("plain", "1")
    assert synced == []
    bfe._store.put_sa_state([(1, "out", 0, 4097, 0, 0)], sync=True)
    assert len(synced) == 1
    monkeypatch.undo()
    bfe.close()


def test_record_framing_round_trips_every_value_kind() -> None:
    ops = [(5, (1, "text é", b"\x00\xffbytes", None, -(2 ** 63), 2 ** 63 - 1)), (1, ())]
    rec = J.encode(7, ops)
    length, _crc = struct.unpack_from("<II", rec)
    assert length == len(rec) - 8
    assert J._decode_body(rec[8:]) == (7, [(5, ops[0][1]), (1, ())])
    with pytest.raises(TypeError):
        J.encode(1, [(0, (1.5,))])


def test_coalescing_a_batch_ends_with_the_same_tables(tmp_path: Path) -> None:
    """Applying a batch without the operations a later one makes moot leaves every table as
    applying all of them does: random batches over few keys (so that they collide), on tables
    that already hold rows."""
    import random

    rng = random.Random(1207)

    def random_op() -> J.Op:
        code = rng.choice(range(len(S._STATEMENTS)))
        c, i = rng.randrange(4), rng.randrange(3)
        d = rng.choice(("in", "out"))
        return (code, {
            S._META: (f"k{c}", str(rng.random())),
            S._NO_GRANTS: (),
            S._GRANT: (rng.choice(("engine", "ipsec_sa_db")), f"p{rng.randrange(1000)}", c),
            S._FILTER: (c, f"key{c}", "static", str(rng.random()), b"d", None),
            S._NO_FILTER: (c,),
            S._CONTEXT: (c, str(rng.random()), b"s", b"d"),
            S._SA_STATE: (c, d, i, rng.randrange(99), 0, 0),
            S._NO_CONTEXT: (c,),
            S._NO_SA_STATE: (c,),
            S._FILTER_UNDIGESTED: (c, f"key{c}", "static", str(rng.random()), None),
            S._CONTEXT_UNDIGESTED: (c, str(rng.random()), b"s"),
        }[code])

    def tables(store: S.SqliteStore) -> list[object]:
        own = ("store_id", "journal_applied")  # each database's own
        return [sorted(r for r in store._db.execute(f"SELECT * FROM {t}").fetchall()
                       if t != "meta" or r[0] not in own)
                for t in ("meta", "grants", "filters", "contexts", "sa_state")]

    for run in range(200):
        stores = [S.SqliteStore(tmp_path / f"{run}-{n}.db") for n in range(2)]
        stores.append(S.SqliteStore(tmp_path / f"{run}-top.db"))
        setup = [random_op() for _ in range(10)]
        for store in stores:
            with store._txn():
                for code, params in setup:
                    store._db.execute(*S._bound(code, params))
        # A row above the highest id in the tables can only have been made within the batch:
        # the store drops the deletes of those.
        top = {t: stores[2]._db.execute(f"SELECT coalesce(max(id), 0) FROM {t}").fetchone()[0]
               for t in ("filters", "contexts")}
        batch = [random_op() for _ in range(rng.randrange(1, 40))]
        for store, ops in zip(stores, (batch, S._coalesced(batch), S._coalesced(batch, top)),
                              strict=True):
            with store._txn():
                for code, params in ops:
                    store._db.execute(*S._bound(code, params))
        assert tables(stores[0]) == tables(stores[1]) == tables(stores[2]), (run, batch)
        assert len(S._coalesced(batch, top)) <= len(S._coalesced(batch)) <= len(batch)
        for store in stores:
            store.close()


def test_a_whole_life_in_one_batch_applies_as_its_deletes() -> None:
    life = [(S._FILTER, (1, "k1", "static", "{}", b"d", None)),
            (S._FILTER, (2, "k2", "static", "{}", b"d", None)),
            *[(S._CONTEXT, (7, f"step {n}", b"s", b"d")) for n in range(4)],
            (S._NO_CONTEXT, (7,)), (S._NO_FILTER, (2,)), (S._NO_FILTER, (1,))]
    assert S._coalesced(life) == life[-3:]
    grants = [(S._NO_GRANTS, ()), (S._GRANT, ("engine", "a", 1)), (S._NO_GRANTS, ()),
              (S._GRANT, ("engine", "b", 2))]
    assert S._coalesced(grants) == grants[2:]


def test_a_journal_beside_a_database_made_anew_is_refused(db: Path, tmp_path: Path) -> None:
    """Deleting a database but not its journal, then opening the path again, must not apply
    the old database's writes to the new one."""
    bfe = wfp.Engine(database=db)
    context(bfe, open_engine(bfe), bytes(20))
    copy = crash_copy(db, tmp_path / "crash")
    bfe.close()
    for p in copy.parent.iterdir():
        if p != journal_of(copy):
            p.unlink()
    with pytest.raises(StoreError, match="ipsalog: corrupt journal .*another database"):
        wfp.Engine(database=copy)


def test_a_journal_that_does_not_continue_the_tables_is_refused(db: Path) -> None:
    bfe = wfp.Engine(database=db)
    open_engine(bfe)
    bfe.close()
    journal_of(db).write_bytes(J.header(store_id(db)) + J.encode(5, [(S._META, ("k", "v"))]))
    with pytest.raises(StoreError, match="starts at record 5"):
        wfp.Engine(database=db)


def test_a_record_of_many_operations(db: Path) -> None:
    """close() writes the counters of every context as one record: 100,000 contexts make
    200,000 SA-state rows (found by the reopen benchmark: the count was 16 bits)."""
    store = S.SqliteStore(db)
    rows = [(c, "out", 0, c + 1, c, 0) for c in range(70_000)]
    store.put_sa_state(rows)
    copy = crash_copy(db, db.parent.parent / "crash")
    store.close()
    again = S.SqliteStore(copy)
    assert again.sa_state(69_999, "out") == {0: (70_000, 69_999, 0)}
    assert len(again.sa_states()) == 70_000
    again.close()


def test_rows_get_their_digest_when_applied_and_a_short_life_never_does(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filter and context rows are journaled without their digest; the apply computes it
    (the load checks it), and rows written and deleted within one batch are never digested."""
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    kept = context(bfe, h, bytes(20))
    digests: list[object] = []
    real = S._digest
    monkeypatch.setattr(S, "_digest", lambda *parts: digests.append(parts) or real(*parts))
    gone = context(bfe, h, bytes(20), remote="198.51.100.77")
    assert bfe.IPsecSaContextDeleteById0(h, gone) == 0
    assert digests == []  # nothing applied yet: the journal holds the writes
    applied: list[tuple[int, object]] = []
    bound = S._bound
    monkeypatch.setattr(S, "_bound", lambda code, p: applied.append((code, p[:1])) or bound(code, p))
    bfe._store.flush()
    # Nor is it deleted: its id is above every id in the table, so no row of it is there.
    assert (S._NO_CONTEXT, (gone,)) not in applied
    assert (S._CONTEXT_UNDIGESTED, (kept,)) in applied
    # Context rows' digests begin with the id (filter rows' with the key): the kept context's
    # only; the other one, written and deleted in the batch, coalesced to its delete.
    assert [p[0] for p in digests if str(p[0]).isdigit()] == [str(kept)]
    assert len(digests) == 1 + 4  # and the four filters (the contexts' helper keeps them)
    bfe.close()
    again = wfp.Engine(database=db)  # every row passes its digest at load
    try:
        assert set(again._contexts) == {kept}
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM contexts WHERE digest IS NULL"
                                ).fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM filters WHERE digest IS NULL"
                                ).fetchone()[0] == 0
    finally:
        again.close()


def test_a_journal_of_the_previous_release_with_digests_applies(db: Path) -> None:
    """Before the digest moved to the apply, rows were journaled with it (codes 3 and 5): a
    database left with such a journal opens, and a wrong digest in it is still refused."""
    store = S.SqliteStore(db)
    sid = store.store_id
    store.close()
    body = '{"state": "x"}'
    good = S._digest("7", body, b"P1{}")
    journal_of(db).write_bytes(J.header(sid) + J.encode(1, [
        (S._FILTER, (3, "k3", "static", "{}", S._filter_digest("k3", "static", "{}", None),
                     None)),
        (S._CONTEXT, (7, body, b"P1{}", good))]))
    again = S.SqliteStore(db)
    snap = again.load()
    assert [f[0] for f in snap.filters] == [3]
    assert [c[0] for c in snap.contexts] == [7]
    again.close()
    journal_of(db).write_bytes(J.header(sid) + J.encode(2, [(S._CONTEXT, (7, body, b"P1{}",
                                                                          bytes(16)))]))
    again = S.SqliteStore(db)
    with pytest.raises(StoreError, match="SA context 7 fails its digest"):
        again.load()
    again.close()


_C_WRITER = pytest.mark.skipif(J._journal_body is None,
                               reason="ipsecsa._storejson was not built (or IPSECSA_PURE_PYTHON)")


@_C_WRITER
def test_the_c_record_writer_writes_the_references_bytes() -> None:
    """``_storejson.journal_body`` against :func:`journal.encode_py` (the reference) on random
    records of every value kind: equal bytes, and what the reference refuses is refused the
    same way (the C writer hands it back)."""
    import random

    rng = random.Random(1208)
    texts = ["", "a", "é", "日本", "\x00", "x" * 5000, '{"$":"FWPM_FILTER0"}', "\U0001f600"]

    def value() -> object:
        kind = rng.randrange(5)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([0, 1, -1, 2 ** 63 - 1, -(2 ** 63), rng.randrange(-2 ** 40, 2 ** 40)])
        if kind == 2:
            return rng.choice(texts) + str(rng.random())
        if kind == 3:
            return os.urandom(rng.randrange(0, 300))
        return "".join(rng.choice(texts) for _ in range(rng.randrange(4)))

    for _ in range(3000):
        ops = [(rng.randrange(256), tuple(value() for _ in range(rng.randrange(8))))
               for _ in range(rng.randrange(6))]
        lsn = rng.choice([0, 1, 2 ** 64 - 1, rng.randrange(2 ** 64)])
        assert J.encode(lsn, ops) == J.encode_py(lsn, ops)
        assert J._journal_body(lsn, ops) is not None
    for odd in ([(1, (True,))], [(1, (1.5,))], [(1, (2 ** 63,))], [(1, ("\ud800",))],
                [(256, ())], [(1, tuple(range(256)))], [(1, [1])], [[1, (1,)]],
                [(1, (bytearray(b"x"),))], [(1, (memoryview(b"x"),))], iter([(1, ())])):
        assert J._journal_body(1, odd) is None, odd  # handed back: the reference decides
        assert _outcome(J.encode, odd) == _outcome(J.encode_py, odd), odd
    assert J._journal_body(-1, []) is None and J._journal_body(2 ** 64, []) is None


def _outcome(encode: object, ops: list[object]) -> object:
    """The record ``encode`` writes of ``ops``, or the type of what it raises."""
    try:
        return encode(1, ops)  # type: ignore[operator]
    except (TypeError, struct.error, UnicodeEncodeError) as exc:
        return type(exc)
