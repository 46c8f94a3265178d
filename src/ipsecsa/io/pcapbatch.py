"""Classic pcap records a chunk at a time, for tools that rewrite million-packet captures.

Reading a capture frame by frame costs a Python object and a few calls per record; for
``ipsecsa pcap unprotect`` on the native data path that is more than decrypting the packet.
:meth:`ipsecsa.io.pcap.PcapReader.batches` therefore hands classic pcap files over as
:class:`RecordBatch` objects, one per read chunk (about a megabyte):

* :func:`scan` splits the chunk into records, and picks out the *fast* ones: a whole
  (unfragmented) IPv4 or IPv6 packet whose first protocol is ESP, on a link type unwrapped here
  (Ethernet with VLAN tags, Linux SLL/SLL2, RAW, IPv4, IPv6), not cut by the snap length. Their
  IP packets come as a list ready for an SA's ``unprotect_batch``, grouped in *runs* of
  consecutive records with the same SPI and destination. Every other record is left to the
  frame-by-frame code (:meth:`RecordBatch.frame` builds its :class:`~ipsecsa.io.pcap.Frame`).
* :func:`assemble` writes the output records of a run in one go: each record's link header
  followed by the packet its ``Result`` holds, or the record as it was.

Both functions exist twice: in C (``ipsecsa._capio``, used when it was built and
``IPSECSA_PURE_PYTHON`` is not ``1``) and here in Python, the reference; tests hold the two equal
on the same chunks. Neither decides anything about a packet beyond where its bytes are.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ipsecsa.datapath.native import PURE_PYTHON_ENV
from ipsecsa.io.pcap import record_time

if TYPE_CHECKING:
    from ipsecsa.io.pcap import Frame, PcapReader

#: Link types whose frames :func:`scan` unwraps (the others go frame by frame).
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_VLAN = (0x8100, 0x88A8, 0x9100)
_ESP = 50
#: ``meta`` marker of a record that is not fast.
NOT_FAST = 0xFFFFFFFF
#: Must equal :data:`ipsecsa.io.pcap.MAX_RECORD_BYTES` (the C module has its own copy).
MAX_RECORD = 262144

Run = tuple[int, int, bytes | None, int]
ScanResult = tuple[int, int, bytes, list[bytes], list[Run]]

_LE_REC = struct.Struct("<IIII")
_REC = {False: _LE_REC, True: struct.Struct(">IIII")}
_META = struct.Struct("=II")
assert array("I").itemsize == 4  # meta is uint32 pairs in both implementations


def _ip_offset(linktype: int, frame: bytes, start: int, length: int) -> int:
    """Offset of the IP packet in the frame at ``frame[start:start + length]``, or -1."""
    end = start + length
    if linktype == LINKTYPE_ETHERNET:
        if length < 14:
            return -1
        et = frame[start + 12] << 8 | frame[start + 13]
        off = 14
        while et in _VLAN:
            if length < off + 4:
                return -1
            et = frame[start + off + 2] << 8 | frame[start + off + 3]
            off += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        if length < 16:
            return -1
        et, off = frame[start + 14] << 8 | frame[start + 15], 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if length < 20:
            return -1
        et, off = frame[start] << 8 | frame[start + 1], 20
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if length < 1:
            return -1
        version = frame[start] >> 4
        ok = {LINKTYPE_RAW: (4, 6), LINKTYPE_IPV4: (4,), LINKTYPE_IPV6: (6,)}[linktype]
        return 0 if version in ok else -1
    else:
        return -1
    if start + off >= end:
        return -1
    version = frame[start + off] >> 4
    if (et == 0x0800 and version == 4) or (et == 0x86DD and version == 6):
        return off
    return -1


def _classify(linktype: int, buf: bytes, start: int, caplen: int,
              origlen: int) -> tuple[int, int, bytes] | None:
    """(IP offset in the frame, IP length, key) of a fast record, else None."""
    if caplen < origlen:
        return None
    off = _ip_offset(linktype, buf, start, caplen)
    if off < 0:
        return None
    ip = start + off
    avail = caplen - off
    if buf[ip] >> 4 == 4:
        if avail < 20:
            return None
        total = buf[ip + 2] << 8 | buf[ip + 3]
        ihl = (buf[ip] & 15) * 4
        if not 0 < total <= avail:
            total = avail
        if (ihl < 20 or buf[ip + 9] != _ESP or buf[ip + 6] & 0x3F or buf[ip + 7]
                or total < ihl + 8):
            return None
        return off, total, buf[ip + ihl:ip + ihl + 4] + buf[ip + 16:ip + 20]
    if avail < 40:
        return None
    payload = buf[ip + 4] << 8 | buf[ip + 5]
    total = 40 + payload if payload else avail
    if not 0 < total <= avail:
        total = avail
    if buf[ip + 6] != _ESP or total < 48:
        return None
    return off, total, buf[ip + 40:ip + 44] + buf[ip + 24:ip + 40]


def scan_py(buf: bytes, pos: int, big_endian: bool, linktype: int) -> ScanResult:
    """The Python reference of ``_capio.scan`` (module docstring; the C file's header)."""
    unpack = _REC[bool(big_endian)].unpack_from
    n = len(buf)
    meta: list[int] = []
    add = meta.append
    ips: list[bytes] = []
    runs: list[Run] = []
    status = 0
    run_first = run_ip = 0
    run_key: bytes | None = None
    started = False
    nrec = 0
    ether = linktype == LINKTYPE_ETHERNET
    while n - pos >= 16:
        _s, _f, caplen, origlen = unpack(buf, pos)
        if caplen > MAX_RECORD:
            status = 1
            break
        frame = pos + 16
        if n - frame < caplen:
            break
        # The common case inline: Ethernet, IPv4 without options, whole, ESP.
        if (ether and caplen >= 42 and caplen >= origlen and buf[frame + 12] == 8
                and buf[frame + 13] == 0 and buf[frame + 14] == 0x45 and buf[frame + 23] == _ESP
                and not (buf[frame + 20] & 0x3F or buf[frame + 21])):
            total = buf[frame + 16] << 8 | buf[frame + 17]
            if not 28 <= total <= caplen - 14:
                total = caplen - 14 if not 0 < total <= caplen - 14 else total
            fast: tuple[int, int, bytes] | None = (
                (14, total, buf[frame + 34:frame + 38] + buf[frame + 30:frame + 34])
                if total >= 28 else None)
        else:
            fast = _classify(linktype, buf, frame, caplen, origlen)
        key = None if fast is None else fast[2]
        if not started or key != run_key:
            if started:
                runs.append((run_first, nrec - run_first, run_key, run_ip))
            started = True
            run_first, run_key, run_ip = nrec, key, len(ips)
        add(pos)
        if fast is None:
            add(NOT_FAST)
        else:
            add(fast[0])
            ip = frame + fast[0]
            ips.append(buf[ip:ip + fast[1]])
        nrec += 1
        pos = frame + caplen
    if started:
        runs.append((run_first, nrec - run_first, run_key, run_ip))
    return pos, status, array("I", meta).tobytes(), ips, runs


def assemble_py(buf: bytes, meta: bytes, first: int, count: int,
                results: Sequence[Sequence[Any]] | None, only_matched: bool,
                big_endian: bool, frac: int, linktype: int) -> tuple[bytes, int, int, int]:
    """The Python reference of ``_capio.assemble`` (module docstring; the C file's header)."""
    unpack = _REC[bool(big_endian)].unpack_from
    pack = _LE_REC.pack
    m = memoryview(meta).cast("I")
    if first < 0 or count < 0 or 2 * (first + count) > len(m) or frac <= 0:
        raise ValueError("record range outside meta, or frac 0")
    if results is not None and len(results) != count:
        raise ValueError("one result per record is needed")
    parts: list[bytes] = []
    add = parts.append
    written = ok = ok_bytes = 0
    for i in range(count):
        r = 2 * (first + i)
        start, ip_off = m[r], m[r + 1]
        if start + 16 > len(buf):
            raise ValueError("record start outside the buffer")
        sec, fr, caplen, origlen = unpack(buf, start)
        if ip_off == NOT_FAST or ip_off >= caplen or start + 16 + caplen > len(buf):
            raise ValueError("record is not a fast record of this buffer")
        if fr >= frac:  # stored as the frame writer stores the tick count
            sec, fr = record_time(sec * frac + fr, frac)
        pkt = None if results is None else results[i][0]
        frame = start + 16
        if pkt is not None:
            head = buf[frame:frame + ip_off]
            new_v = pkt[0] >> 4 if pkt else 0
            if ip_off and buf[frame + ip_off] >> 4 != new_v:
                et = b"\x86\xdd" if new_v == 6 else b"\x08\x00"
                if linktype in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
                    head = head[:-2] + et
                elif linktype == LINKTYPE_LINUX_SLL2:
                    head = et + head[2:]
            size = ip_off + len(pkt)
            if size > MAX_RECORD:
                size = MAX_RECORD
                pkt = pkt[:MAX_RECORD - ip_off]
            add(pack(sec, fr, size, size))
            add(head)
            add(pkt)
            ok += 1
            ok_bytes += len(results[i][0])  # type: ignore[index]
            written += 1
        elif not only_matched:
            add(pack(sec, fr, caplen, origlen))
            add(buf[frame:frame + caplen])
            written += 1
    return b"".join(parts), written, ok, ok_bytes


def _load_native() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        return None
    try:
        from ipsecsa import _capio
    except ImportError:
        return None
    return _capio


_native = _load_native()
#: The functions in use: C when built and allowed, else the Python references.
scan = _native.scan if _native is not None else scan_py
assemble = _native.assemble if _native is not None else assemble_py


def native() -> bool:
    """Whether the C record loops are in use."""
    return _native is not None


class RecordBatch:
    """The records of one chunk of a classic pcap file (module docstring).

    ``buf`` holds the chunk, ``meta``/``ips``/``runs`` are what :func:`scan` found, ``first``
    the frame number of the first record. :meth:`frame` builds the
    :class:`~ipsecsa.io.pcap.Frame` of one record (for the frame-by-frame code);
    :meth:`assemble` the output records of a run of fast ones.
    """

    __slots__ = ("big_endian", "buf", "first", "frac", "ips", "linktype", "meta", "reader",
                 "runs", "tick")

    def __init__(self, reader: PcapReader, buf: bytes, meta: bytes, ips: list[bytes],
                 runs: list[Run], first: int, big_endian: bool, linktype: int, frac: int,
                 tick: float) -> None:
        self.reader = reader
        self.buf = buf
        self.meta = meta
        self.ips = ips
        self.runs = runs
        self.first = first
        self.big_endian = big_endian
        self.linktype = linktype
        self.frac = frac
        self.tick = tick

    def __len__(self) -> int:
        return len(self.meta) // 8

    def frame(self, record: int) -> Frame:
        """The :class:`Frame` of record ``record`` (0-based in this batch)."""
        start, _ = _META.unpack_from(self.meta, record * 8)
        sec, fr, caplen, origlen = _REC[self.big_endian].unpack_from(self.buf, start)
        reader = self.reader
        reader._index = self.first + record
        return reader._frame(reader.interfaces[0], sec + fr * self.tick,
                             self.buf[start + 16:start + 16 + caplen], origlen, 0,
                             sec * self.frac + fr)

    def assemble(self, first: int, count: int, results: Sequence[Sequence[Any]] | None,
                 only_matched: bool) -> tuple[bytes, int, int, int]:
        """(output records, records written, packets replaced, bytes of those packets)."""
        return assemble(self.buf, self.meta, first, count, results, only_matched,
                        self.big_endian, self.frac, self.linktype)


__all__ = ["NOT_FAST", "RecordBatch", "assemble", "assemble_py", "native", "scan", "scan_py"]
