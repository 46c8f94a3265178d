"""The durable store on SQLite: one file (WAL mode), a versioned schema, optional encryption of
the columns that hold keys.

Durability (documented in docs/store.md):

* Every write the engine acknowledges is in the store's journal (:mod:`.journal`) before the
  call returns: in the operating system's page cache, it survives a crash of the process
  (SIGKILL) as a commit in SQLite's WAL with ``synchronous=NORMAL`` would. The journal is
  applied to the tables in batches, and on the next open whatever it holds beyond them.
* Sequence-number reservations are journaled and the journal fsynced, so they also survive a
  crash of the machine: losing one is the one failure that would make an SA send an (SPI,
  sequence number) twice. The journal starts over only after an apply synced into SQLite.

The file is created 0600 (and its directory 0700 when it has to be made), SQLite gives the WAL
and shared-memory files the database's permissions. A file that is not an SQLite database, fails
SQLite's quick check, belongs to another application or was written by a newer schema is refused
with :class:`StoreError` naming the file; nothing is half-loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecsa.errors import IpsecsaError
from ipsecsa.store import journal as J

#: "IPSA": marks the file as ipsecsa's (PRAGMA application_id).
APPLICATION_ID = 0x49505341
#: The schema this code writes. Older files are migrated forward on open; newer are refused.
SCHEMA_VERSION = 4
_HEADER = b"SQLite format 3\x00"
log = logging.getLogger(__name__)
_KEY_CHECK = b"ipsecsa database key check"


class StoreError(IpsecsaError):
    """The database cannot be used: corrupt, foreign, too new, or the key is wrong."""


# Version 1: everything of a context in its row. Version 2 moves the per-SA hot state
# (reserved sequence numbers, counters, replay edge) to its own table, so the frequent
# reservation and checkpoint writes touch one small row instead of rewriting the context; and
# gives filter and context rows a digest, so a damaged row is refused rather than half-read
# (SQLite checks its page structure, not the bytes of the values). Version 3 gives each filter
# row its compiled form (ipsecsa.wfp.filterrows), so that a reopen classifies with it without
# rebuilding the filter; rows without one are compiled the full way on load and written again.
# Version 4: the write-ahead journal (below).
_SCHEMA_V1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE grants(container TEXT NOT NULL, principal TEXT NOT NULL, rights INTEGER NOT NULL,
                    PRIMARY KEY(container, principal));
CREATE TABLE filters(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, lifetime TEXT NOT NULL,
                     body TEXT NOT NULL);
CREATE TABLE contexts(id INTEGER PRIMARY KEY, body TEXT NOT NULL, secret BLOB NOT NULL);
"""
_MIGRATIONS: dict[int, str] = {
    2: """
CREATE TABLE sa_state(ctx INTEGER NOT NULL, dir TEXT NOT NULL, idx INTEGER NOT NULL,
                      seq INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
                      PRIMARY KEY(ctx, dir, idx));
ALTER TABLE filters ADD COLUMN digest BLOB;
ALTER TABLE contexts ADD COLUMN digest BLOB;
""",
    3: """
ALTER TABLE filters ADD COLUMN compiled TEXT;
""",
    # Version 4 writes through the journal (ipsecsa.store.journal): no table changes, but
    # after a crash the tables alone are not the state (the journal beside them holds the
    # last writes), so a version that knows no journal must refuse the file, not half-read it.
    4: "",
}


#: The statements a journal record may name, by code (ipsecsa.store.journal): the only SQL a
#: replayed journal can run.
_PUT_FILTER = ("INSERT OR REPLACE INTO filters (id, key, lifetime, body, digest, compiled) "
               "VALUES (?, ?, ?, ?, ?, ?)")
_PUT_CONTEXT = "INSERT OR REPLACE INTO contexts VALUES (?, ?, ?, ?)"
_STATEMENTS = (
    "INSERT OR REPLACE INTO meta VALUES (?, ?)",  # 0
    "DELETE FROM grants",  # 1
    "INSERT INTO grants VALUES (?, ?, ?)",  # 2
    _PUT_FILTER,  # 3
    "DELETE FROM filters WHERE id = ?",  # 4
    _PUT_CONTEXT,  # 5
    "INSERT OR REPLACE INTO sa_state VALUES (?, ?, ?, ?, ?, ?)",  # 6
    "DELETE FROM contexts WHERE id = ?",  # 7
    "DELETE FROM sa_state WHERE ctx = ?",  # 8
    # 9 and 10: a filter row and a context row journaled without their digest, which the
    # apply computes (_bound): the digest protects the row in the table, the journal's CRC
    # the record, and a row written and deleted again within one batch (a short-lived context
    # and its filters) never needs one. Journals of the previous release hold 3 and 5 (digest
    # included); both apply.
    _PUT_FILTER,  # 9
    _PUT_CONTEXT,  # 10
)
_META, _NO_GRANTS, _GRANT, _FILTER, _NO_FILTER, _CONTEXT, _SA_STATE, _NO_CONTEXT, \
    _NO_SA_STATE, _FILTER_UNDIGESTED, _CONTEXT_UNDIGESTED = range(len(_STATEMENTS))
#: Applied to SQLite once this many operations, or this many journal bytes, are pending.
APPLY_OPS = 1024
APPLY_BYTES = 4 << 20
#: The journal starts over (after an apply synced into SQLite) once it is this long.
JOURNAL_RESTART_BYTES = 16 << 20
#: meta key: the LSN of the last journal record applied to the tables.
_APPLIED = "journal_applied"


@dataclass
class Snapshot:
    """Everything a reopened engine needs, as stored."""

    meta: dict[str, str] = field(default_factory=dict)
    grants: dict[str, dict[str, int]] = field(default_factory=dict)
    #: id, key, lifetime, body, compiled form (None in rows written before version 3)
    filters: list[tuple[int, str, str, str, str | None]] = field(default_factory=list)
    contexts: list[tuple[int, str, bytes]] = field(default_factory=list)  # id, body, secret


def key_from_environment() -> bytes | None:
    """``IPSECSA_DB_KEY`` (64 hex digits) or ``IPSECSA_DB_KEY_FILE`` (a file holding them)."""
    text = os.environ.get("IPSECSA_DB_KEY")
    source = "IPSECSA_DB_KEY"
    if not text and os.environ.get("IPSECSA_DB_KEY_FILE"):
        source = os.environ["IPSECSA_DB_KEY_FILE"]
        try:
            text = Path(source).read_text(encoding="ascii").strip()
        except OSError as exc:
            raise StoreError(f"{source}: cannot read the database key: {exc.strerror}") from exc
    if not text:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise StoreError(f"{source}: the database key must be 64 hex digits") from None
    if len(key) != 32:
        raise StoreError(f"{source}: the database key must be 32 bytes (64 hex digits)")
    return key


class SqliteStore:
    """The engine's state in one SQLite file. Thread-safe (one connection, one lock)."""

    def __init__(self, path: str | os.PathLike[str], key: bytes | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._aead = AESGCM(key) if key is not None else None
        #: Ids of contexts that have (or may have) SA-state rows: deleting any other context
        #: is one statement instead of a transaction of two.
        self._stated: set[int] = set()
        if key is not None and len(key) != 32:
            raise StoreError("the database key must be 32 bytes")
        self._check_file()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=5.0)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from exc
        #: Writes journaled but not yet applied to the tables, and the LSN of the last of them.
        self._pending: list[J.Op] = []
        self._pending_lsn = 0
        #: Operations and journal length at the last apply (the next is due after
        #: APPLY_OPS more, or APPLY_BYTES more).
        self._since_apply = 0
        self._applied_size = 0
        #: Inside transaction(): the operations gathered for its one record, and whether the
        #: record must be synced.
        self._group: list[J.Op] | None = None
        self._group_sync = False
        #: The journal (ipsecsa.store.journal). Not "-journal": SQLite takes a file of that
        #: name beside the database for its own rollback journal, and deletes it.
        self.journal_path = self.path.with_name(self.path.name + "-ipsalog")
        #: The highest filter and context id in the tables (see _coalesced).
        self._top: dict[str, int] = {}
        try:
            self._open()
            self._top = {t: self._db.execute(f"SELECT coalesce(max(id), 0) FROM {t}"
                                             ).fetchone()[0] for t in ("filters", "contexts")}
            self._replay()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path}: not a usable ipsecsa database ({exc})") from exc
        except StoreError:
            self._db.close()
            raise

    # ---------------------------------------------------------------- opening
    def _check_file(self) -> None:
        p = self.path
        if not p.exists():
            if not p.parent.exists():
                p.parent.mkdir(parents=True, mode=0o700)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
            return
        size = p.stat().st_size
        if size == 0:
            return
        with open(p, "rb") as fh:
            header = fh.read(100)
        if len(header) < 100 or not header.startswith(_HEADER):
            raise StoreError(f"{p}: not an SQLite database (or truncated): refused")
        page = int.from_bytes(header[16:18], "big") or 65536
        if page == 1:
            page = 65536
        pages = int.from_bytes(header[28:32], "big")
        wal = p.with_name(p.name + "-wal")
        if pages and size < pages * page and not (wal.exists() and wal.stat().st_size):
            raise StoreError(f"{p}: truncated ({size} bytes, the header says "
                             f"{pages * page}): refused")

    def _open(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 5000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: cannot use WAL mode ({mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"{self.path}: corrupt ({check}): refused")
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app == 0 and version == 0 and tables == 0:
            with self._txn():
                for stmt in _statements(_SCHEMA_V1):
                    db.execute(stmt)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute("PRAGMA user_version = 1")
            version = 1
        elif app != APPLICATION_ID:
            raise StoreError(f"{self.path}: not an ipsecsa database (application id "
                             f"0x{app:08x}): refused")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer ipsecsa (schema {version}, this "
                             f"version reads up to {SCHEMA_VERSION}): refused")
        while version < SCHEMA_VERSION:
            version += 1
            with self._txn():
                for stmt in _statements(_MIGRATIONS[version]):
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version = {version}")
        self._check_key()

    def _check_key(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        if row is None:
            # No key check yet: a database made without a key. Given one now, it becomes an
            # encrypted database (clear rows are sealed as they are rewritten).
            if self._aead is not None:
                nonce = os.urandom(12)
                blob = nonce + self._aead.encrypt(nonce, _KEY_CHECK, None)
                with self._txn():
                    self._db.execute("INSERT INTO meta VALUES ('key_check', ?)", (blob.hex(),))
            return
        if self._aead is None:
            raise StoreError(f"{self.path}: the database's keys are encrypted; give the "
                             "database key (IPSECSA_DB_KEY or IPSECSA_DB_KEY_FILE)")
        blob = bytes.fromhex(row[0])
        try:
            self._aead.decrypt(blob[:12], blob[12:], None)
        except InvalidTag:
            raise StoreError(f"{self.path}: wrong database key") from None

    # ---------------------------------------------------------------- secrets
    def seal(self, what: str, plain: bytes) -> bytes:
        """The stored form of a column holding keys: ``E1`` nonce ‖ AES-256-GCM, or ``P1`` and
        the plain bytes when no database key is configured. ``what`` binds it to its row."""
        if self._aead is None:
            return b"P1" + plain
        nonce = os.urandom(12)
        return b"E1" + nonce + self._aead.encrypt(nonce, plain, what.encode())

    def open_secret(self, what: str, stored: bytes) -> bytes:
        if stored[:2] == b"P1":
            return bytes(stored[2:])
        if stored[:2] != b"E1":
            raise StoreError(f"{self.path}: unknown secret format in {what}")
        if self._aead is None:
            raise StoreError(f"{self.path}: {what} is encrypted; give the database key")
        try:
            return self._aead.decrypt(bytes(stored[2:14]), bytes(stored[14:]), what.encode())
        except InvalidTag:
            raise StoreError(f"{self.path}: {what} does not decrypt (wrong key, or the row "
                             "was tampered with)") from None

    # ---------------------------------------------------------------- journal
    def _replay(self) -> None:
        """Apply what the journal holds beyond the tables (the writes acknowledged since the
        last apply: the process stopped before applying them), synced, then start the journal
        over. Damage that is not a torn tail refuses the database: nothing is half-loaded."""
        self.store_id = owner = self._store_id()
        try:
            records, valid = J.read(self.journal_path, owner)
        except J.JournalError as exc:
            raise StoreError(f"{self.journal_path}: corrupt journal ({exc}): refused") from None
        except OSError as exc:
            raise StoreError(f"{self.journal_path}: cannot read the journal: "
                             f"{exc.strerror}") from exc
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (_APPLIED,)).fetchone()
        applied = int(row[0]) if row else 0
        todo = [(lsn, ops) for lsn, ops in records if lsn > applied]
        if todo and todo[0][0] != applied + 1:
            raise StoreError(f"{self.journal_path}: the journal starts at record {todo[0][0]}, "
                             f"the database has applied up to {applied}: refused")
        last = max([applied] + [lsn for lsn, _ in records])
        self._journal = J.Journal(self.journal_path, owner, valid, last + 1)  # torn tail cut
        if todo:
            self._pending = [op for _, ops in todo for op in ops]
            self._pending_lsn = todo[-1][0]
            try:
                self._apply_pending(sync=True)
            except (sqlite3.Error, IndexError, TypeError, ValueError) as exc:
                self._journal.close()
                raise StoreError(f"{self.journal_path}: the journal does not apply ({exc}): "
                                 "refused") from exc
        self._restart_journal()

    def _store_id(self) -> bytes:
        """This database's id (made at its first open by a version with the journal), which
        its journal carries: a journal is applied only to the database it belongs to."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        if row is not None:
            return bytes.fromhex(row[0])
        made = os.urandom(J.ID_SIZE)
        with self._txn(sync=True):
            self._db.execute("INSERT INTO meta VALUES ('store_id', ?)", (made.hex(),))
        return made

    def _write(self, ops: list[J.Op], sync: bool = False) -> None:
        """Journal ``ops`` as one record (synced with ``sync``) before returning; they reach
        the tables with the next apply. Inside :meth:`transaction`, gathered for its record."""
        with self._lock:
            if self._group is not None:
                self._group += ops
                self._group_sync = self._group_sync or sync
                return
            try:
                self._pending_lsn = self._journal.append(ops, sync)
            except OSError as exc:
                raise StoreError(f"{self.journal_path}: cannot write the journal: {exc}") \
                    from exc
            self._pending += ops
            self._since_apply += len(ops)
            if self._since_apply >= APPLY_OPS \
                    or self._journal.size - self._applied_size >= APPLY_BYTES:
                self._apply()

    def _apply(self) -> None:
        """Apply the pending writes in one SQLite transaction; start the journal over when it
        has grown long (that apply is synced first: the journal is then the only copy of
        nothing). A failure leaves everything in the journal, to be applied later."""
        restart = self._journal.size >= JOURNAL_RESTART_BYTES
        # Counted from here whether or not it works: a failing apply is retried after as much
        # again, not at every write.
        self._since_apply, self._applied_size = 0, self._journal.size
        try:
            self._apply_pending(sync=restart)
        except sqlite3.Error as exc:
            # The writes are safe in the journal: the next apply, or the next open, retries.
            log.warning("%s: applying the journal failed (%s); kept in the journal",
                        self.path, exc)
            return
        if restart:
            self._restart_journal()

    def _restart_journal(self) -> None:
        self._journal.restart()
        self._applied_size = self._journal.size

    def _apply_pending(self, sync: bool) -> None:
        ops = self._pending
        if not ops:
            return
        db = self._db
        with self._txn(sync):
            execute = db.execute
            for code, params in _coalesced(ops, self._top):
                execute(*_bound(code, params))
            execute(_STATEMENTS[_META], (_APPLIED, str(self._pending_lsn)))
        for code, params in ops:
            table = _PUT_TABLE.get(code)
            if table is not None and params[0] > self._top[table]:
                self._top[table] = params[0]
        self._pending = []
        self._since_apply, self._applied_size = 0, self._journal.size

    def flush(self) -> None:
        """Apply every journaled write to the tables, synced, and start the journal over."""
        with self._lock:
            self._apply_pending(sync=True)
            self._restart_journal()

    # ---------------------------------------------------------------- writes
    @contextlib.contextmanager
    def _txn(self, sync: bool = False) -> Iterator[sqlite3.Connection]:
        """A transaction on the tables themselves (schema, key check, applying the journal)."""
        with self._lock:
            if sync:
                self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                if sync:
                    self._db.execute("PRAGMA synchronous = NORMAL")

    @contextlib.contextmanager
    def _gather(self, sync: bool) -> Iterator[None]:
        with self._lock:
            if self._group is not None:  # nested: part of the enclosing record
                self._group_sync = self._group_sync or sync
                yield
                return
            self._group, self._group_sync = [], sync
            try:
                yield
            except BaseException:
                self._group = None
                raise
            ops, sync = self._group, self._group_sync
            self._group = None
            if ops:
                self._write(ops, sync)

    def transaction(self, sync: bool = False) -> contextlib.AbstractContextManager[Any]:
        """Group writes into one journal record: all of them survive a crash, or none
        (``sync``: fsynced before the ``with`` block ends)."""
        return self._gather(sync)

    def put_meta(self, key: str, value: str) -> None:
        self._write([(_META, (key, value))])

    def put_grants(self, entries: dict[str, dict[str, int]]) -> None:
        self._write([(_NO_GRANTS, ())] + [(_GRANT, (c, p, r)) for c, t in entries.items()
                                          for p, r in t.items()])

    def put_filter(self, fid: int, key: str, lifetime: str, body: str,
                   compiled: str | None = None) -> None:
        self._write([(_FILTER_UNDIGESTED, (fid, key, lifetime, body, compiled))])

    def delete_filter(self, fid: int) -> None:
        self._write([(_NO_FILTER, (fid,))])

    def put_context(self, cid: int, body: str, secret: bytes,
                    state: list[tuple[int, str, int, int, int, int]] | None = None,
                    sync: bool = False) -> None:
        """A context's row, and with ``state`` its SA-state rows, in one record."""
        sealed = self.seal(f"context {cid}", secret)
        ops: list[J.Op] = [(_CONTEXT_UNDIGESTED, (cid, body, sealed))]
        if state:
            with self._lock:
                self._stated.add(cid)
            ops += [(_SA_STATE, r) for r in state]
        self._write(ops, sync)

    def delete_context(self, cid: int) -> None:
        """The context's row and its SA-state rows (the latter only when it may have any)."""
        with self._lock:
            if cid not in self._stated:
                self._write([(_NO_CONTEXT, (cid,))])
                return
            self._write([(_NO_CONTEXT, (cid,)), (_NO_SA_STATE, (cid,))])
            self._stated.discard(cid)

    def put_sa_state(self, rows: list[tuple[int, str, int, int, int, int]],
                     sync: bool = False) -> None:
        with self._lock:
            self._stated.update(r[0] for r in rows)
            self._write([(_SA_STATE, r) for r in rows], sync)

    # ---------------------------------------------------------------- reading
    def load(self) -> Snapshot:
        """Everything stored, checked row by row; any damage is a StoreError naming the file
        (nothing is half-loaded: the engine builds nothing until this returns)."""
        with self._lock:
            try:
                self._apply_pending(sync=False)
                return self._load()
            except (sqlite3.Error, UnicodeDecodeError, ValueError) as exc:
                raise StoreError(f"{self.path}: corrupt ({exc}): refused") from exc

    def _load(self) -> Snapshot:
        db = self._db
        db.text_factory = bytes  # decode ourselves: a damaged value must not escape as garbage
        try:
            snap = Snapshot()
            snap.meta = {k.decode(): v.decode() for k, v in db.execute(
                "SELECT key, value FROM meta")}
            for c, p, r in db.execute("SELECT container, principal, rights FROM grants"):
                snap.grants.setdefault(c.decode(), {})[p.decode()] = r
            # One query per table, rows fetched in large batches; each row's digest is checked
            # on the bytes as stored, before anything is decoded.
            filters = snap.filters
            cur = db.execute("SELECT id, key, lifetime, body, digest, compiled FROM filters "
                             "ORDER BY id")
            while rows := cur.fetchmany(4096):
                for fid, key, lifetime, body, digest, compiled in rows:
                    if digest is not None and digest != _filter_digest(key, lifetime, body,
                                                                       compiled):
                        raise StoreError(f"{self.path}: corrupt: filter {fid} fails its digest")
                    filters.append((fid, key.decode(), lifetime.decode(), body.decode(),
                                    None if compiled is None else compiled.decode()))
            contexts = snap.contexts
            # Contexts that may have SA-state rows (read lazily, per context): all stored ones.
            self._stated.update(r[0] for r in db.execute("SELECT DISTINCT ctx FROM sa_state"))
            cur = db.execute("SELECT id, body, secret, digest FROM contexts ORDER BY id")
            while rows := cur.fetchmany(4096):
                for cid, body, secret, digest in rows:
                    if digest is not None and digest != _digest(str(cid), body, secret):
                        raise StoreError(f"{self.path}: corrupt: SA context {cid} fails its "
                                         "digest")
                    contexts.append((cid, body.decode(),
                                     self.open_secret(f"context {cid}", secret)))
            return snap
        finally:
            db.text_factory = str

    def sa_state(self, ctx: int, direction: str) -> dict[int, tuple[int, int, int]]:
        """The stored per-SA state of one direction ("in"/"out") of a context, by index in its
        bundle: (sequence number edge or reservation, packets, bytes). Read when a reopened
        engine builds the SAs (not at load: most are built later, or never)."""
        with self._lock:
            try:
                self._apply_pending(sync=False)  # the rows asked for may be among them
                return {i: (s, p, b) for i, s, p, b in self._db.execute(
                    "SELECT idx, seq, packets, bytes FROM sa_state WHERE ctx = ? AND dir = ?",
                    (ctx, direction))}
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot read the state of SA context {ctx} "
                                 f"({exc})") from exc

    def sa_states(self) -> dict[tuple[int, str], dict[int, tuple[int, int, int]]]:
        """Every stored SA-state row, by (context id, direction): as :meth:`sa_state` reads
        one context's, in one query (a listing or the statistics of a reopened engine read
        the rows of every context whose SAs are not built yet)."""
        out: dict[tuple[int, str], dict[int, tuple[int, int, int]]] = {}
        with self._lock:
            try:
                self._apply_pending(sync=False)  # as sa_state: journaled rows first
                for c, d, i, s, p, b in self._db.execute(
                        "SELECT ctx, dir, idx, seq, packets, bytes FROM sa_state"):
                    rows = out.get((c, d))
                    if rows is None:
                        rows = out[(c, d)] = {}
                    rows[i] = (s, p, b)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot read the SA state ({exc})") from exc
        return out

    def close(self) -> None:
        """Apply the journal (synced) and close. Were the apply to fail, the journal keeps the
        writes, and the next open applies them."""
        with self._lock:
            try:
                self.flush()
            except sqlite3.Error as exc:
                log.warning(
                    "%s: applying the journal at close failed (%s); the next open applies it",
                    self.path, exc)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._journal.close()
            self._db.close()


def _coalesced(ops: list[J.Op], top: dict[str, int] | None = None) -> list[J.Op]:
    """``ops`` without those a later one makes moot, in order: the tables end the same.

    A row written or deleted by key (a context, a filter, a meta value, one SA-state row) ends
    as its last write says; deleting a context's SA-state rows undoes every earlier write of
    them; replacing the grants, every earlier grant. A batch holds many such: a context is
    written at each step of its life and often deleted within the same batch.

    ``top``: the highest filter and context id in the tables before this batch. Ids are never
    given out twice, so a row with a higher id was made within the batch, and its delete
    (the last op on it) has nothing to delete: dropped too."""
    kept: list[J.Op] = []
    seen: set[tuple[Any, ...]] = set()
    cleared: set[int] = set()  # contexts whose SA-state rows a later op deletes
    grants_cleared = False
    for op in reversed(ops):
        code, p = op
        key: tuple[Any, ...]
        if code in _BY_KEY:
            key = (_BY_KEY[code], p[0])
        elif code == _SA_STATE:
            if p[0] in cleared:
                continue
            key = (_SA_STATE, p[0], p[1], p[2])
        elif code == _NO_SA_STATE:
            if p[0] in cleared:
                continue
            cleared.add(p[0])
            kept.append(op)
            continue
        else:  # the grants: replaced whole
            if grants_cleared:
                continue
            grants_cleared = code == _NO_GRANTS
            kept.append(op)
            continue
        if key not in seen:
            seen.add(key)
            if top is not None and code in _DELETE_TABLE and p[0] > top[_DELETE_TABLE[code]]:
                continue
            kept.append(op)
    kept.reverse()
    return kept


#: Statements that write or delete one row by its key (the first parameter), by table.
_BY_KEY = {_META: "meta", _FILTER: "filters", _NO_FILTER: "filters", _CONTEXT: "contexts",
           _NO_CONTEXT: "contexts", _FILTER_UNDIGESTED: "filters",
           _CONTEXT_UNDIGESTED: "contexts"}


#: Statements that write a filter or context row, and those that delete one, by table.
_PUT_TABLE = {_FILTER: "filters", _FILTER_UNDIGESTED: "filters", _CONTEXT: "contexts",
              _CONTEXT_UNDIGESTED: "contexts"}
_DELETE_TABLE = {_NO_FILTER: "filters", _NO_CONTEXT: "contexts"}


def _bound(code: int, p: Sequence[Any]) -> tuple[str, Sequence[Any]]:
    """The statement of a journaled operation and its parameters: as journaled, or with the
    digest that codes 9 and 10 leave to the apply."""
    if code == _CONTEXT_UNDIGESTED:
        cid, body, sealed = p
        return _STATEMENTS[code], (cid, body, sealed, _digest(str(cid), body, sealed))
    if code == _FILTER_UNDIGESTED:
        fid, key, lifetime, body, compiled = p
        return _STATEMENTS[code], (fid, key, lifetime, body,
                                   _filter_digest(key, lifetime, body, compiled), compiled)
    return _STATEMENTS[code], p

_LENGTH = struct.Struct(">Q").pack


def _digest(*parts: str | bytes) -> bytes:
    """SHA-256 (truncated to 16 bytes) over the parts, each preceded by its length (8 bytes,
    big-endian); str parts as UTF-8."""
    n = _LENGTH
    chunks: list[bytes] = []
    for part in parts:
        data = part if type(part) is bytes else part.encode()  # type: ignore[union-attr]
        chunks += (n(len(data)), data)
    return hashlib.sha256(b"".join(chunks)).digest()[:16]


def _filter_digest(key: str | bytes, lifetime: str | bytes, body: str | bytes,
                   compiled: str | bytes | None) -> bytes:
    """A filter row's digest: over its compiled form too when it has one (a version-2 row,
    without, keeps its digest)."""
    if compiled is None:
        return _digest(key, lifetime, body)
    return _digest(key, lifetime, body, compiled)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


Opener = Callable[[str, "bytes | None"], SqliteStore]


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)
