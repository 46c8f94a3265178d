"""Writing a capture that mirrors the one it was read from: same format, link types, timestamps.

The offline tools (``ipsecsa pcap protect`` / ``unprotect``) read a capture, change the IP packet
inside some frames and write everything else through untouched. The output must open in Wireshark
exactly like the input: a pcap file stays pcap (same link type, same microsecond or nanosecond
resolution), a pcapng file stays pcapng with the same sections and interfaces (link type,
``if_tsresol``, ``if_tsoffset``, names), and every record keeps its timestamp *as stored* (the
raw tick count, not a float that would round nanoseconds away).

:class:`MirrorWriter` does that, fed :class:`~ipsecsa.io.pcap.Frame` records from a
:class:`~ipsecsa.io.pcap.PcapReader`; :func:`replace_ip` builds the new frame around a new IP
packet, fixing the link layer's protocol field when the IP version changes (tunnel mode 4-in-6).

The output is created with mode 0600 from its first byte (it may hold decrypted traffic) under a
temporary name in the target's directory and renamed over the target only by :meth:`commit`, so
a failed run never leaves a half-written capture behind.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from ipsecsa.io.pcap import (
    AF_INET6_VALUES,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    MAX_RECORD_BYTES,
    PCAP_FILE_HEADER,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAP_RECORD_HEADER,
    PCAP_VERSION,
    PCAPNG_BYTE_ORDER_MAGIC,
    PCAPNG_DEFAULT_TSRESOL,
    PCAPNG_EPB,
    PCAPNG_IDB,
    PCAPNG_OPT_ENDOFOPT,
    PCAPNG_OPT_IF_TSOFFSET,
    PCAPNG_OPT_IF_TSRESOL,
    PCAPNG_SHB,
    PCAPNG_SPB,
    Frame,
    Interface,
    PcapReader,
    record_time,
)
from ipsecsa.securefile import SECRET_FILE_MODE

#: Resolution byte of the pcap nanosecond magic, as :class:`Interface` reports it.
_NS_RESOL = 9
_AF_INET = 2
#: AF_INET6 written into a NULL/LOOP header when an IPv4 frame becomes IPv6 and the input gives
#: no IPv6 value to copy (Linux's; the frame's byte order is kept).
_AF_INET6_DEFAULT = 10
_WRITE_BUFFER = 1 << 20

_REC = struct.Struct("<" + PCAP_RECORD_HEADER)
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total length, if id, ts hi, ts lo, caplen, origlen


def replace_ip(frame: Frame, ip: bytes) -> bytes:
    """``frame``'s link-layer header followed by ``ip`` (a new IP packet).

    Link-layer trailers (Ethernet padding, an FCS) are dropped: they belonged to the old packet.
    When the IP version differs from the old packet's, the protocol field of the link header
    (ethertype of Ethernet/VLAN/SLL/SLL2, the address family of NULL/LOOP) is changed to match.
    """
    head = frame.data[:frame.ip_offset]
    old_version = frame.ip[0] >> 4 if frame.ip else 0
    new_version = ip[0] >> 4 if ip else 0
    if old_version == new_version or not head:
        return head + ip
    ethertype = ETHERTYPE_IPV6 if new_version == 6 else ETHERTYPE_IPV4
    lt = frame.linktype
    hdr = bytearray(head)
    if lt in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
        hdr[-2:] = ethertype.to_bytes(2, "big")  # the (innermost) ethertype precedes the IP
    elif lt == LINKTYPE_LINUX_SLL2:
        hdr[0:2] = ethertype.to_bytes(2, "big")
    elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
        big = int.from_bytes(hdr[:4], "big")
        order: str = "big" if (big == _AF_INET or big in AF_INET6_VALUES) else "little"
        family = _AF_INET if new_version == 4 else _AF_INET6_DEFAULT
        hdr[:4] = family.to_bytes(4, order)  # type: ignore[arg-type]
    return bytes(hdr) + ip


class MirrorWriter:
    """Write frames into a capture shaped like the one ``reader`` reads (module docstring).

    ``write(frame, data=None)`` appends ``frame`` as read, or with ``data`` (a whole new
    link-layer frame, see :func:`replace_ip`) in its place, keeping its timestamp, section and
    interface. Call :meth:`commit` when done (the ``with`` block does, unless it raised).
    """

    def __init__(self, path: str | os.PathLike[str], reader: PcapReader) -> None:
        self.path = Path(path)
        self._reader = reader
        self._tmp = self.path.parent / f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_CLOEXEC", 0), SECRET_FILE_MODE)
        os.fchmod(fd, SECRET_FILE_MODE)
        self._file: IO[bytes] = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        self._started = False
        self._section = -1
        self._ifaces_written = 0
        self._pcap_frac = 10**6
        self._done = False
        self._impl: Callable[[Frame, bytes | None], None] | None = None
        self.count = 0

    # ------------------------------------------------------------------ structure
    def _start_pcap(self) -> None:
        iface = self._reader.interfaces[0]
        ns = iface.tsresol == _NS_RESOL
        self._pcap_frac = 10**9 if ns else 10**6
        self._file.write(struct.pack("<" + PCAP_FILE_HEADER, PCAP_MAGIC_NS if ns else PCAP_MAGIC_US,
                                     *PCAP_VERSION, 0, 0, MAX_RECORD_BYTES,
                                     iface.linktype_field or iface.linktype))

    def _section_header(self) -> None:
        body = struct.pack("<IHHq", PCAPNG_BYTE_ORDER_MAGIC, 1, 0, -1)
        self._block(PCAPNG_SHB, body)
        self._ifaces_written = 0

    def _interface_block(self, iface: Interface) -> None:
        opts = b""
        for code, value in iface.options:
            opts += _option(code, value)
        if iface.tsresol != PCAPNG_DEFAULT_TSRESOL:
            opts += _option(PCAPNG_OPT_IF_TSRESOL, bytes((iface.tsresol,)))
        if iface.ts_offset:
            opts += _option(PCAPNG_OPT_IF_TSOFFSET, struct.pack("<q", iface.ts_offset))
        if opts:
            opts += _option(PCAPNG_OPT_ENDOFOPT, b"")
        self._block(PCAPNG_IDB, struct.pack("<HHI", iface.linktype, 0, 0) + opts)

    def _block(self, block_type: int, body: bytes) -> None:
        body += bytes(-len(body) & 3)
        total = len(body) + 12
        self._file.write(struct.pack("<II", block_type, total) + body
                         + total.to_bytes(4, "little"))

    # ------------------------------------------------------------------ records
    def write(self, frame: Frame, data: bytes | None = None) -> None:
        """Append ``frame`` (or ``data`` in its place) with its original timestamp.

        The first call picks the format's writer and binds it in place of this method, so
        later calls through the instance go straight to it (a reference to this method taken
        earlier keeps working: it forwards)."""
        impl = self._impl
        if impl is None:
            if self._reader.format == "pcap":
                self._started = True
                self._start_pcap()
                impl = self._write_pcap
            else:
                impl = self._write_pcapng
            self._impl = impl
            self.write = impl  # type: ignore[method-assign]
        impl(frame, data)

    def write_records(self, data: bytes, count: int) -> None:
        """Append ``count`` whole classic pcap records already encoded (little-endian, this
        file's timestamp resolution), as :func:`ipsecsa.io.pcapbatch.assemble` makes them."""
        if self._reader.format != "pcap":
            raise ValueError("write_records is for classic pcap output only")
        if self._impl is None:
            self._started = True
            self._start_pcap()
            self._impl = self._write_pcap
            self.write = self._write_pcap  # type: ignore[method-assign]
        self._file.write(data)
        self.count += count

    def _write_pcap(self, frame: Frame, data: bytes | None = None) -> None:
        if data is None:
            data, origlen = frame.data, frame.origlen
        else:
            if len(data) > MAX_RECORD_BYTES:
                data = data[:MAX_RECORD_BYTES]
            origlen = len(data)
        self.count += 1
        sec, frac = record_time(frame.ts_raw or 0, self._pcap_frac)
        self._file.write(_REC.pack(sec, frac, len(data), origlen) + data)

    def _write_pcapng(self, frame: Frame, data: bytes | None = None) -> None:
        if data is None:
            data, origlen = frame.data, frame.origlen
        else:
            if len(data) > MAX_RECORD_BYTES:
                data = data[:MAX_RECORD_BYTES]
            origlen = len(data)
        self.count += 1
        if frame.section != self._section:
            self._section = frame.section
            self._section_header()
        interfaces = self._reader.interfaces
        while self._ifaces_written <= frame.interface:
            self._interface_block(interfaces[self._ifaces_written])
            self._ifaces_written += 1
        if frame.ts_raw is None:
            self._block(PCAPNG_SPB, struct.pack("<I", origlen) + data)
            return
        pad = -len(data) & 3
        total = 32 + len(data) + pad
        raw = frame.ts_raw
        self._file.write(_EPB_HEAD.pack(PCAPNG_EPB, total, frame.interface, raw >> 32,
                                        raw & 0xFFFFFFFF, len(data), origlen)
                         + data + bytes(pad) + total.to_bytes(4, "little"))

    # ------------------------------------------------------------------ end
    def commit(self) -> None:
        """Flush, fsync and move the finished capture over the target path."""
        if self._done:
            return
        self._done = True
        if not self._started and self._reader.format == "pcap" and self._reader.interfaces:
            self._started = True
            self._start_pcap()  # an input with a header and no records: same empty capture
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Throw the partial output away (the target is left as it was)."""
        if self._done:
            return
        self._done = True
        self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) & 3)


__all__ = ["MirrorWriter", "replace_ip"]
