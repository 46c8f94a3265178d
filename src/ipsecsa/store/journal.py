"""The store's write-ahead journal: every acknowledged write, appended to one file before the
call returns, applied to SQLite in batches (ipsecsa's design; docs/store.md, "The journal").

Why: a commit of one row through Python's ``sqlite3`` costs 17–28 µs (its WAL frames written,
its checkpoints amortised), and an SA context's life is nine such commits. An append of the same
row to a file is one ``write`` (~5 µs with its framing), and once in the operating system's page
cache it survives a crash of the process exactly as a commit in SQLite's WAL does with
``synchronous=NORMAL`` (the level the store always had). The rows are then applied to SQLite a
batch per transaction, where a statement costs ~6 µs.

Format: an 8-byte magic (``IPSAJ1`` and two zero bytes) and the 16-byte id of the database it
belongs to (its ``meta`` row ``store_id``: a journal left beside a database made anew is
refused, never applied to it), then records::

    length  u32  bytes after the crc field
    crc     u32  CRC-32 of those bytes
    lsn     u64  the record's sequence number: the previous record's + 1
    count   u32  operations in the record (applied in one SQLite transaction: a record is the
                 unit of atomicity, e.g. a context row with its SA-state rows, or the counters
                 of every context written at close: 200,000 rows for 100,000 contexts)
    then per operation: code u8 (an index into the store's fixed statements: a journal can
    never make the store run any other SQL), nparams u8, and per parameter a tag and value:
    ``n`` None, ``i`` i64, ``s`` u32 length + UTF-8, ``b`` u32 length + bytes.

Torn tails: a process killed inside ``write`` can leave a partial last record, and a machine
that crashed can leave zeros where unsynced data was. A record that is incomplete at the end
of the file, or a bad record followed only by zero bytes, is such a tail: it was never
acknowledged (a synced record is preceded by complete records: ``fsync`` writes the whole
file), and it is cut off. A bad record anywhere else is damage, and the store refuses the file.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAGIC = b"IPSAJ1\x00\x00"
#: Bytes of a database id in the header, after the magic.
ID_SIZE = 16
_HEAD = struct.Struct("<II")  # length, crc
_LSN_COUNT = struct.Struct("<QI")
_OP = struct.Struct("<BB")
_I64 = struct.Struct("<q")
_LEN = struct.Struct("<I")
_pack_head = _HEAD.pack
_pack_lsn = _LSN_COUNT.pack
_pack_op = _OP.pack
_pack_i64 = _I64.pack
_pack_len = _LEN.pack

_journal_body: Any
try:  # optional speed-up: the package's C extension (setup.py), absent where it cannot build
    from ipsecsa._storejson import journal_body as _journal_body
except ImportError:  # pragma: no cover - exercised by the fallback test
    _journal_body = None
if os.environ.get("IPSECSA_PURE_PYTHON") == "1":  # as for the other extensions
    _journal_body = None

#: (statement code, parameters): one write of the store, as journaled and applied.
Op = tuple[int, Sequence[Any]]


class JournalError(ValueError):
    """The journal holds damage that is not a torn tail."""


def encode(lsn: int, ops: Sequence[Op]) -> bytes:
    """One framed record: its body written by the C writer where it is built (a durable
    engine writes a record per call; ``_storejson.journal_body`` writes the same bytes as
    :func:`encode_py`, tests/store/test_journal.py compares them), else by :func:`encode_py`,
    which also takes what the C writer hands back (anything it would refuse)."""
    if _journal_body is not None:
        body = _journal_body(lsn, ops)
        if body is not None:
            return _pack_head(len(body), zlib.crc32(body)) + body
    return encode_py(lsn, ops)


def encode_py(lsn: int, ops: Sequence[Op]) -> bytes:
    """:func:`encode` in Python: the reference."""
    parts = [_pack_lsn(lsn, len(ops))]
    add = parts.append
    for code, params in ops:
        add(_pack_op(code, len(params)))
        for p in params:
            t = type(p)
            if t is str:
                data = p.encode()
                add(b"s" + _pack_len(len(data)))
                add(data)
            elif t is int:
                add(b"i" + _pack_i64(p))
            elif t is bytes:
                add(b"b" + _pack_len(len(p)))
                add(p)
            elif p is None:
                add(b"n")
            else:
                raise TypeError(f"the journal cannot hold a {t.__name__}")
    body = b"".join(parts)
    return _pack_head(len(body), zlib.crc32(body)) + body


def _decode_body(body: bytes) -> tuple[int, list[Op]]:
    lsn, count = _LSN_COUNT.unpack_from(body, 0)
    pos = _LSN_COUNT.size
    ops: list[Op] = []
    for _ in range(count):
        code, n = _OP.unpack_from(body, pos)
        pos += _OP.size
        params: list[Any] = []
        for _ in range(n):
            tag = body[pos:pos + 1]
            pos += 1
            if tag == b"i":
                params.append(_I64.unpack_from(body, pos)[0])
                pos += 8
            elif tag == b"n":
                params.append(None)
            elif tag in (b"s", b"b"):
                size = _LEN.unpack_from(body, pos)[0]
                pos += 4
                data = body[pos:pos + size]
                if len(data) != size:
                    raise JournalError("a value runs past its record")
                params.append(data.decode() if tag == b"s" else bytes(data))
                pos += size
            else:
                raise JournalError(f"unknown value tag {tag!r}")
        ops.append((code, tuple(params)))
    if pos != len(body):
        raise JournalError("bytes left over after the record's operations")
    return lsn, ops


def header(owner: bytes) -> bytes:
    """The start of a journal of the database whose id is ``owner``."""
    return MAGIC + owner


def read(path: Path, owner: bytes) -> tuple[list[tuple[int, list[Op]]], int]:
    """The records of the journal at ``path`` (none if it does not exist) and the length of
    its valid part (where a torn tail, if any, begins). :class:`JournalError` on damage, or
    when it is not the journal of the database whose id is ``owner``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    head = header(owner)
    if len(data) < len(head) and head.startswith(data):
        return [], 0  # created, header torn: nothing was ever acknowledged
    if not data.startswith(MAGIC):
        raise JournalError("not an ipsecsa journal (bad magic)")
    if data[len(MAGIC):len(head)] != owner:
        raise JournalError("the journal of another database (its id differs); if that "
                           "database is gone, remove the journal")
    records: list[tuple[int, list[Op]]] = []
    pos = len(head)
    end = len(data)
    while pos < end:
        start = pos
        problem = None
        if end - pos < _HEAD.size:
            problem = "torn"
        else:
            length, crc = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size:pos + _HEAD.size + length]
            if len(body) < length:
                problem = "torn"
            elif zlib.crc32(body) != crc or length < _LSN_COUNT.size:
                problem = "damaged"
            else:
                try:
                    lsn, ops = _decode_body(body)
                except (JournalError, struct.error, UnicodeDecodeError):
                    problem = "damaged"
                else:
                    if records and lsn != records[-1][0] + 1:
                        raise JournalError(f"record at offset {start}: sequence number {lsn} "
                                           f"after {records[-1][0]}")
                    records.append((lsn, ops))
                    pos += _HEAD.size + length
                    continue
        if problem == "torn" or _only_zeros_after(data, start):
            return records, start
        raise JournalError(f"damaged record at offset {start} of {end} bytes")
    return records, pos


def _only_zeros_after(data: bytes, start: int) -> bool:
    """A bad record whose declared extent is followed by nothing but zeros (a machine crash
    left the tail of the file unwritten)."""
    if len(data) - start < _HEAD.size:
        return True
    length = _HEAD.unpack_from(data, start)[0]
    return not any(data[start + _HEAD.size + length:])


class Journal:
    """The append side. Not thread-safe: the store calls it under its lock."""

    def __init__(self, path: Path, owner: bytes, valid: int, next_lsn: int) -> None:
        self.path = path
        self._head = header(owner)
        new = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(self._fd, 0o600)
        if new or valid < len(self._head):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, self._head, 0)
            valid = len(self._head)
            if new:
                _sync_dir(path.parent)
        else:
            os.ftruncate(self._fd, valid)  # cut a torn tail off
        self.size = valid
        self.next_lsn = next_lsn

    def append(self, ops: Sequence[Op], sync: bool) -> int:
        """Write one record; with ``sync``, fsync the file before returning. Returns its LSN."""
        lsn = self.next_lsn
        record = encode(lsn, ops)
        written = os.pwrite(self._fd, record, self.size)
        if written != len(record):  # a short write to a regular file: the disk is full
            raise OSError(f"{self.path}: short write ({written} of {len(record)} bytes)")
        self.size += written
        self.next_lsn = lsn + 1
        if sync:
            os.fsync(self._fd)
        return lsn

    def restart(self) -> None:
        """Every record is applied (and synced into SQLite): start the file over."""
        os.ftruncate(self._fd, len(self._head))
        self.size = len(self._head)

    def close(self) -> None:
        os.close(self._fd)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
