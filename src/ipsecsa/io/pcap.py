"""Reading and writing capture files: classic pcap and pcapng, with no dependencies.

This is an edge module (``shared/ARCHITECTURE.md``): the sans-IO core takes and returns IP
packets as ``bytes``, and this module turns capture files into those packets and back.

* :class:`PcapWriter` writes classic pcap (magic ``0xa1b2c3d4``, version 2.4, or the
  nanosecond magic ``0xa1b23c4d`` on request) with link type RAW (101: every record starts at the
  IP header) by default, or ETHERNET (1) with one fixed, locally administered synthetic Ethernet
  header, for tools that want a MAC layer.
* :func:`read_packets` / :class:`PcapReader` read classic pcap (both byte orders, microsecond and
  nanosecond magic) and pcapng (section header, interface description, enhanced, simple and the
  obsolete packet block; several interfaces and sections, both byte orders), and yield the IP
  packet of every frame: Ethernet (with any stack of 802.1Q / 802.1ad VLAN tags), Linux cooked
  SLL and SLL2, RAW, IPv4/IPv6 link types, and NULL/LOOP loopback are unwrapped.

Frames that carry no IP packet (ARP, an unknown link type, a capture truncated by the snap length)
are not errors: they are skipped and counted in :attr:`PcapReader.skipped` under a reason, and a
summary is logged. A file that is not a capture, or is truncated or corrupt, raises
:class:`PcapError` naming the byte offset of the bad record. Every length read from the file is
bounded before anything is allocated from it, so a hostile file cannot make the reader allocate
more than :data:`MAX_RECORD_BYTES` / :data:`MAX_BLOCK_BYTES` at a time.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections import Counter
from collections.abc import Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO, NamedTuple, Self

from ipsecsa.errors import ConfigError, IpsecsaError
from ipsecsa.securefile import SECRET_FILE_MODE

if TYPE_CHECKING:
    from ipsecsa.io.pcapbatch import RecordBatch

log = logging.getLogger("ipsecsa.io.pcap")

# --- Specification constants -------------------------------------------------------------------
# Classic pcap: https://www.tcpdump.org/manpages/pcap-savefile.5.html, draft-ietf-opsawg-pcap.
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_VERSION = (2, 4)
PCAP_FILE_HEADER = "IHHiIII"  # magic, major, minor, thiszone, sigfigs, snaplen, linktype
PCAP_RECORD_HEADER = "IIII"  # ts_sec, ts_frac (us or ns), caplen, origlen

# pcapng: draft-ietf-opsawg-pcapng.
PCAPNG_SHB = 0x0A0D0D0A  # section header block (a palindrome: the same in both byte orders)
PCAPNG_IDB = 0x00000001  # interface description block
PCAPNG_OPB = 0x00000002  # packet block (obsolete, still written by old tools)
PCAPNG_SPB = 0x00000003  # simple packet block
PCAPNG_EPB = 0x00000006  # enhanced packet block
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_OPT_ENDOFOPT = 0
PCAPNG_OPT_IF_TSRESOL = 9
PCAPNG_OPT_IF_TSOFFSET = 14
#: Interface options whose value is text (if_name, if_description, if_os, if_hardware): kept
#: verbatim when a capture is rewritten; if_tsresol/if_tsoffset are rewritten from their values.
PCAPNG_TEXT_OPTIONS = frozenset({2, 3, 12, 15})
#: Default timestamp resolution of a pcapng interface without ``if_tsresol``: microseconds.
PCAPNG_DEFAULT_TSRESOL = 6

# Link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the *capturing host's* byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # starts at the IP header (v4 or v6 by the version nibble)
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
#: 802.1Q C-tag, 802.1ad S-tag, and the pre-standard 0x9100 Q-in-Q tag.
ETHERTYPE_VLAN_TAGS = frozenset({0x8100, 0x88A8, 0x9100})
#: Ethernet II type values start at 0x0600; smaller values are 802.3 lengths (LLC frames).
ETHERTYPE_MIN = 0x0600
ETHERNET_HEADER_LEN = 14
VLAN_TAG_LEN = 4
SLL_HEADER_LEN = 16  # protocol type at offset 14
SLL2_HEADER_LEN = 20  # protocol type at offset 0
LOOPBACK_HEADER_LEN = 4
#: Address-family values of IPv4 and IPv6 in NULL/LOOP headers (AF_INET6 differs per OS:
#: 10 Linux, 24 NetBSD/OpenBSD, 28 FreeBSD/DragonFly, 30 macOS, 23 Windows).
AF_INET_VALUES = frozenset({2})
AF_INET6_VALUES = frozenset({10, 23, 24, 28, 30})
IPV4_MIN_HEADER = 20
IPV6_HEADER_LEN = 40

# --- Implementation constants ------------------------------------------------------------------
#: Largest packet record accepted (libpcap's MAXIMUM_SNAPLEN); a larger length means corruption.
MAX_RECORD_BYTES = 262144


def record_time(raw: int, frac: int) -> tuple[int, int]:
    """The (seconds, fraction) fields a classic pcap record stores for ``raw`` ticks of
    ``frac`` per second: (raw // frac, raw % frac), except that the seconds stop at the
    field's 2^32 - 1 and the fraction takes the rest (capped likewise). Only a broken record
    gets there (seconds near 2^32 with a fraction field >= 1 s); it is rewritten with its
    ticks kept instead of failing the tool. ``ipsecsa._capio`` applies the same rule."""
    sec = min(raw // frac, 0xFFFFFFFF)
    return sec, min(raw - sec * frac, 0xFFFFFFFF)
#: Bytes read at a time from a classic pcap file (records are parsed out of this buffer).
READ_CHUNK = 1 << 20
#: Largest pcapng block accepted (libpcap's MAX_BLOCKSIZE, 16 MiB).
MAX_BLOCK_BYTES = 16 * 1024 * 1024
#: Interfaces per pcapng section (a corrupt file must not grow the table without bound).
MAX_INTERFACES = 65536
#: Snap length written into pcap headers by :class:`PcapWriter`.
DEFAULT_SNAPLEN = MAX_RECORD_BYTES
#: The synthetic Ethernet header of ETHERNET files: locally administered unicast MACs.
SYNTHETIC_DST_MAC = bytes.fromhex("020000000002")
SYNTHETIC_SRC_MAC = bytes.fromhex("020000000001")

#: Reasons under which :attr:`PcapReader.skipped` counts frames it does not yield.
SKIP_UNSUPPORTED_LINKTYPE = "unsupported_linktype"
SKIP_NON_IP = "non_ip"
SKIP_TRUNCATED_CAPTURE = "truncated_capture"


class PcapError(IpsecsaError):
    """A capture file is not pcap/pcapng, or is truncated or corrupt.

    ``offset`` is the byte offset in the file of the header, record or block that is bad (it is
    also in the message), so a hex editor or ``editcap`` can be pointed at it.
    """

    def __init__(self, offset: int, message: str) -> None:
        self.offset = offset
        self.reason = message
        super().__init__(f"at offset {offset}: {message}")


class Packet(NamedTuple):
    """One frame read from a capture.

    ``ts`` is seconds since the epoch (``None`` for pcapng simple packet blocks, which carry no
    timestamp), ``linktype`` the frame's link type, ``data`` the whole captured frame, and ``ip``
    the IP packet in it (trailing link-layer padding, such as Ethernet's 60-byte minimum, removed
    using the IP length field).
    """

    ts: float | None
    linktype: int
    data: bytes
    ip: bytes


class Frame(NamedTuple):
    """One record of a capture, IP or not, as the rewriting tools need it.

    ``number`` is the 0-based position of the record among all packet records of the file (the
    frame number Wireshark shows, minus one). ``ip`` is the IP packet (None for a frame that
    carries none: ``skip`` then says why) and ``ip_offset`` where it starts in ``data``.
    ``ts_raw`` is the timestamp as stored, in ticks of the interface's resolution (pcap:
    ``seconds * 10**6 + microseconds``, or nanoseconds with the nanosecond magic; pcapng: the
    64-bit tick count), so a rewritten capture keeps timestamps exactly; None for pcapng simple
    packet blocks. ``section`` and ``interface`` locate the pcapng interface (0 for pcap).
    """

    number: int
    ts: float | None
    linktype: int
    data: bytes
    ip: bytes | None
    ip_offset: int
    origlen: int
    section: int
    interface: int
    ts_raw: int | None
    skip: str | None


# ============================================================================ link layers
def _ip_version(buf: bytes | memoryview, offset: int) -> int:
    return buf[offset] >> 4 if len(buf) > offset else 0


def _ip_end(frame: bytes, offset: int) -> int | None:
    """Where the IP packet at ``offset`` of ``frame`` ends; None if there is no IP packet."""
    version = _ip_version(frame, offset)
    avail = len(frame) - offset
    if version == 4:
        if avail < IPV4_MIN_HEADER:
            return None
        total = int.from_bytes(frame[offset + 2:offset + 4], "big")
    elif version == 6:
        if avail < IPV6_HEADER_LEN:
            return None
        payload = int.from_bytes(frame[offset + 4:offset + 6], "big")
        # Payload length 0 is a jumbogram (RFC 2675) or a TSO artefact: keep everything.
        total = IPV6_HEADER_LEN + payload if payload else avail
    else:
        return None
    # A length field larger than the frame (TSO/GRO captures report 0 or a wrong length) keeps
    # the frame as captured; the data path judges it.
    if 0 < total <= avail:
        return offset + total
    return len(frame)


def _ethertype_ip(frame: bytes, ethertype: int, offset: int) -> int | None:
    if ethertype == ETHERTYPE_IPV4 and _ip_version(frame, offset) == 4:
        return offset
    if ethertype == ETHERTYPE_IPV6 and _ip_version(frame, offset) == 6:
        return offset
    return None


def _strip_ethernet(frame: bytes) -> int | None:
    if len(frame) < ETHERNET_HEADER_LEN:
        return None
    offset = 12
    ethertype = int.from_bytes(frame[offset:offset + 2], "big")
    offset += 2
    while ethertype in ETHERTYPE_VLAN_TAGS:
        if len(frame) < offset + VLAN_TAG_LEN:
            return None
        ethertype = int.from_bytes(frame[offset + 2:offset + 4], "big")
        offset += VLAN_TAG_LEN
    if ethertype < ETHERTYPE_MIN:
        return None  # 802.3 length field: an LLC frame, never IP in practice
    return _ethertype_ip(frame, ethertype, offset)


def _strip_sll(frame: bytes) -> int | None:
    if len(frame) < SLL_HEADER_LEN:
        return None
    return _ethertype_ip(frame, int.from_bytes(frame[14:16], "big"), SLL_HEADER_LEN)


def _strip_sll2(frame: bytes) -> int | None:
    if len(frame) < SLL2_HEADER_LEN:
        return None
    return _ethertype_ip(frame, int.from_bytes(frame[0:2], "big"), SLL2_HEADER_LEN)


def _strip_loopback(frame: bytes) -> int | None:
    # NULL stores the family in the capturing host's byte order, which the file does not record;
    # LOOP uses network order. Accept either order for both, and let the version nibble decide.
    if len(frame) < LOOPBACK_HEADER_LEN:
        return None
    families = {int.from_bytes(frame[:4], "big"), int.from_bytes(frame[:4], "little")}
    version = _ip_version(frame, LOOPBACK_HEADER_LEN)
    if version == 4 and families & AF_INET_VALUES:
        return LOOPBACK_HEADER_LEN
    if version == 6 and families & AF_INET6_VALUES:
        return LOOPBACK_HEADER_LEN
    return None


def _strip_raw(frame: bytes) -> int | None:
    return 0


def _strip_ipv4(frame: bytes) -> int | None:
    return 0 if _ip_version(frame, 0) == 4 else None


def _strip_ipv6(frame: bytes) -> int | None:
    return 0 if _ip_version(frame, 0) == 6 else None


_STRIPPERS = {
    LINKTYPE_NULL: _strip_loopback,
    LINKTYPE_ETHERNET: _strip_ethernet,
    LINKTYPE_RAW: _strip_raw,
    LINKTYPE_LOOP: _strip_loopback,
    LINKTYPE_LINUX_SLL: _strip_sll,
    LINKTYPE_IPV4: _strip_ipv4,
    LINKTYPE_IPV6: _strip_ipv6,
    LINKTYPE_LINUX_SLL2: _strip_sll2,
}

#: Link types :func:`read_packets` unwraps to IP.
SUPPORTED_LINKTYPES = frozenset(_STRIPPERS)


def ip_of_frame(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside one link-layer ``frame``, or None (unsupported link type, not IP)."""
    located = locate_ip(linktype, bytes(frame))
    return None if located is None else bytes(frame)[located[0]:located[1]]


def locate_ip(linktype: int, frame: bytes) -> tuple[int, int] | None:
    """``(start, end)`` of the IP packet inside one link-layer ``frame`` (link-layer padding
    after the IP length excluded), or None (unsupported link type, not IP)."""
    strip = _STRIPPERS.get(linktype)
    if strip is None:
        return None
    offset = strip(frame)
    if offset is None:
        return None
    end = _ip_end(frame, offset)
    return None if end is None else (offset, end)


# ============================================================================ reader
class Interface(NamedTuple):
    """A capture interface: the pcap file header, or one pcapng interface description block.

    ``tsresol`` is the raw ``if_tsresol`` byte (6 = microseconds; the pcap nanosecond magic is
    reported as 9) and ``options`` the pcapng options kept for rewriting (code, value) with
    numeric values already in host order; ``linktype_field`` is pcap's whole 32-bit link-type
    field (its upper bits carry FCS information).
    """

    linktype: int
    snaplen: int
    ts_unit: float  # seconds per timestamp tick
    ts_offset: int  # seconds added to every timestamp
    tsresol: int = PCAPNG_DEFAULT_TSRESOL
    options: tuple[tuple[int, bytes], ...] = ()
    linktype_field: int = 0


_Interface = Interface


_ETH_IPV4 = ETHERTYPE_IPV4.to_bytes(2, "big")
_new_frame = tuple.__new__


class PcapReader:
    """Iterate over the IP packets of a pcap or pcapng file (see the module docstring).

    ``source`` is a path or a binary file object opened for reading. Use as an iterator (once)
    and, for a path, as a context manager or call :meth:`close`. After (or during) iteration
    :attr:`skipped` counts the frames not yielded by reason (``"non_ip"``,
    ``"unsupported_linktype"``, ``"truncated_capture"``) and :attr:`skipped_linktypes` counts
    the unsupported link types seen. :attr:`format` is ``"pcap"`` or ``"pcapng"``.
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryIO) -> None:
        if isinstance(source, (str, os.PathLike)):
            self._file: IO[bytes] = open(source, "rb")  # noqa: SIM115 - closed in close()
            self._owned = True
        else:
            self._file = source
            self._owned = False
        self.skipped: Counter[str] = Counter()
        self.skipped_linktypes: Counter[int] = Counter()
        self.format = ""
        self._offset = 0
        self._started = False
        self._index = 0
        #: pcapng: the current section's interfaces (index = interface id); pcap: the one header.
        self.interfaces: list[Interface] = []
        #: pcapng: index of the current section (0-based).
        self.section = -1

    # ------------------------------------------------------------------ plumbing
    @property
    def position(self) -> int:
        """Bytes of the file consumed so far (for progress reports)."""
        return self._offset

    @property
    def frames_read(self) -> int:
        """Packet records read so far (all of them, IP or not)."""
        return self._index

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _read(self, n: int, what: str, start: int) -> bytes:
        """Exactly ``n`` bytes, or PcapError naming ``start`` (the record's offset)."""
        data = self._file.read(n)
        if len(data) != n:
            raise PcapError(start, f"truncated {what}: needed {n} bytes, file has "
                                   f"{len(data)} more")
        self._offset += n
        return data

    def _read_or_eof(self, n: int, what: str) -> bytes | None:
        """``n`` bytes, or None at a clean end of file (zero bytes left)."""
        start = self._offset
        data = self._file.read(n)
        if not data:
            return None
        if len(data) != n:
            raise PcapError(start, f"truncated {what}: needed {n} bytes, file has "
                                   f"{len(data)} more")
        self._offset += n
        return data

    def _frame(self, iface: _Interface, ts: float | None, data: bytes, origlen: int,
               interface: int = 0, ts_raw: int | None = None) -> Frame:
        index = self._index
        self._index = index + 1
        linktype = iface.linktype
        section = max(0, self.section)
        if (linktype == LINKTYPE_ETHERNET and len(data) >= 34 and data[12:14] == _ETH_IPV4
                and data[14] == 0x45 and len(data) >= origlen):
            # The common case, decided inline: Ethernet, IPv4 without options.
            total = data[16] << 8 | data[17]
            end = 14 + total if 20 <= total <= len(data) - 14 else len(data)
            return _new_frame(Frame, (index, ts, linktype, data, data[14:end], 14, origlen,
                                      section, interface, ts_raw, None))
        skip = None
        start = end = 0
        if linktype not in _STRIPPERS:
            skip = SKIP_UNSUPPORTED_LINKTYPE
            self.skipped_linktypes[linktype] += 1
        elif len(data) < origlen:
            # Cut by the snap length: the IP packet is incomplete and cannot be verified.
            skip = SKIP_TRUNCATED_CAPTURE
        else:
            located = locate_ip(linktype, data)
            if located is None:
                skip = SKIP_NON_IP
            else:
                start, end = located
        if skip is not None:
            self.skipped[skip] += 1
            return _new_frame(Frame, (index, ts, linktype, data, None, 0, origlen, section,
                                      interface, ts_raw, skip))
        return _new_frame(Frame, (index, ts, linktype, data, data[start:end], start, origlen,
                                  section, interface, ts_raw, None))

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Packet]:
        for frame in self.frames():
            if frame.ip is not None:
                yield Packet(frame.ts, frame.linktype, frame.data, frame.ip)

    def frames(self) -> Iterator[Frame]:
        """Every packet record of the file as a :class:`Frame`, IP or not, in file order.

        Frames without an IP packet are yielded too (``ip`` None, ``skip`` the reason) and
        counted in :attr:`skipped`; tools that rewrite a capture pass them through unchanged.
        """
        if self._started:
            raise ValueError("a PcapReader can be iterated only once")
        self._started = True
        try:
            head = self._read_or_eof(4, "file header")
            if head is None:
                raise PcapError(0, "empty file: not a pcap or pcapng capture")
            if int.from_bytes(head, "little") == PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(head)
            else:
                self.format = "pcap"
                yield from self._pcap(head)
        finally:
            if sum(self.skipped.values()):
                log.info("capture: skipped %s", dict(self.skipped))

    def batches(self) -> Iterator[Frame | RecordBatch]:
        """The file's records in order, a chunk at a time where the format allows.

        A classic pcap file comes as :class:`~ipsecsa.io.pcapbatch.RecordBatch` objects (one per
        read chunk; see that module), a pcapng file as single :class:`Frame` records. Either way
        every record is reported once, in file order; use instead of :meth:`frames`, not with
        it. The frame numbers of a batch's records are ``batch.first`` onwards."""
        if self._started:
            raise ValueError("a PcapReader can be iterated only once")
        self._started = True
        try:
            head = self._read_or_eof(4, "file header")
            if head is None:
                raise PcapError(0, "empty file: not a pcap or pcapng capture")
            if int.from_bytes(head, "little") == PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(head)
            else:
                self.format = "pcap"
                yield from self._pcap_batches(head)
        finally:
            if sum(self.skipped.values()):
                log.info("capture: skipped %s", dict(self.skipped))

    def _pcap_batches(self, head: bytes) -> Iterator[RecordBatch]:
        from ipsecsa.io.pcapbatch import RecordBatch, scan

        order, iface, tick, frac_per_s = self._pcap_header(head)
        big = order == ">"
        linktype = iface.linktype
        read = self._file.read
        buf = b""
        base = self._offset  # file offset of buf[0]
        while True:
            chunk = read(READ_CHUNK)
            buf = buf + chunk if buf else chunk
            if not chunk:
                if not buf:
                    return
                if len(buf) < 16:
                    raise PcapError(base, f"truncated record header: needed 16 bytes, file has "
                                          f"{len(buf)} more")
                (caplen,) = struct.unpack_from(order + "I", buf, 8)
                raise PcapError(base, f"truncated packet record: needed {caplen} bytes, "
                                      f"file has {len(buf) - 16} more")
            end, status, meta, ips, runs = scan(buf, 0, big, linktype)
            if end:
                self._offset = base + end
                batch = RecordBatch(self, buf, meta, ips, runs, self._index, big, linktype,
                                    frac_per_s, tick)
                first = self._index
                yield batch
                self._index = first + len(batch)
            if status:
                (caplen,) = struct.unpack_from(order + "I", buf, end + 8)
                raise PcapError(base + end, f"record claims {caplen} captured bytes, more "
                                            f"than the {MAX_RECORD_BYTES}-byte limit "
                                            f"(corrupt file?)")
            buf = buf[end:]
            base += end

    def _pcap_header(self, head: bytes) -> tuple[str, Interface, float, int]:
        """Read the rest of the classic pcap file header: (byte order, interface, seconds per
        tick, ticks per second)."""
        for order in ("<", ">"):
            (magic,) = struct.unpack(order + "I", head)
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        else:
            raise PcapError(0, f"not a pcap or pcapng file (magic 0x{head.hex()})")
        tick = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
        file_header = struct.Struct(order + PCAP_FILE_HEADER)
        rest = self._read(file_header.size - 4, "pcap file header", 0)
        hdr = file_header.unpack(head + rest)
        major, _minor, _zone, _sigfigs, snaplen, linktype_field = hdr[1:]
        if major != PCAP_VERSION[0]:
            raise PcapError(4, f"unsupported pcap version {major}.{_minor}")
        # Only the low 16 bits are the link type; the upper bits carry FCS information (the
        # P bit 0x04000000 and the FCS length, pcap-savefile(5) / draft-ietf-opsawg-pcap).
        iface = _Interface(linktype_field & 0xFFFF, snaplen, tick, 0,
                           9 if magic == PCAP_MAGIC_NS else 6, (), linktype_field)
        self.interfaces = [iface]
        self.section = 0
        return order, iface, tick, 10**9 if magic == PCAP_MAGIC_NS else 10**6

    def _pcap(self, head: bytes) -> Iterator[Frame]:
        order, iface, tick, frac_per_s = self._pcap_header(head)
        # Records are parsed out of large reads (one read per READ_CHUNK, not two per record):
        # the per-record cost is what a million-packet capture pays a million times.
        unpack = struct.Struct(order + PCAP_RECORD_HEADER).unpack_from
        read = self._file.read
        frame = self._frame
        buf = b""
        pos = 0
        base = self._offset  # file offset of buf[0]
        while True:
            if len(buf) - pos < 16:
                buf = buf[pos:] + read(READ_CHUNK)
                base += pos
                pos = 0
                if not buf:
                    return
                if len(buf) < 16:
                    raise PcapError(base, f"truncated record header: needed 16 bytes, file has "
                                          f"{len(buf)} more")
            ts_sec, ts_frac, caplen, origlen = unpack(buf, pos)
            if caplen > MAX_RECORD_BYTES:
                raise PcapError(base + pos, f"record claims {caplen} captured bytes, more than "
                                            f"the {MAX_RECORD_BYTES}-byte limit (corrupt file?)")
            end = pos + 16 + caplen
            if end > len(buf):
                buf = buf[pos:] + read(max(READ_CHUNK, end - len(buf)))
                base += pos
                end -= pos
                pos = 0
                if end > len(buf):
                    raise PcapError(base, f"truncated packet record: needed {caplen} bytes, "
                                          f"file has {len(buf) - 16} more")
            self._offset = base + end
            yield frame(iface, ts_sec + ts_frac * tick, buf[pos + 16:end], origlen, 0,
                        ts_sec * frac_per_s + ts_frac)
            pos = end

    def _pcapng(self, first: bytes) -> Iterator[Frame]:
        pending: bytes | None = first
        order = "<"
        interfaces: list[_Interface] = []
        seen_shb = False
        while True:
            start = self._offset - (4 if pending is not None else 0)
            if pending is None:
                pending = self._read_or_eof(4, "block header")
                if pending is None:
                    return
            raw_type, pending = pending, None
            block_type_le = int.from_bytes(raw_type, "little")
            if block_type_le == PCAPNG_SHB:
                # The byte order of a section is only known from its byte-order magic, which
                # follows the block length: read both before interpreting the length.
                head = self._read(8, "section header block", start)
                bom_le = int.from_bytes(head[4:8], "little")
                if bom_le == PCAPNG_BYTE_ORDER_MAGIC:
                    order = "<"
                elif int.from_bytes(head[4:8], "big") == PCAPNG_BYTE_ORDER_MAGIC:
                    order = ">"
                else:
                    raise PcapError(start, "section header block with a bad byte-order magic")
                (total,) = struct.unpack(order + "I", head[:4])
                body = self._block_body(total, 12, start, "section header block")
                if len(body) < 12:
                    raise PcapError(start, "section header block too short")
                (major,) = struct.unpack(order + "H", body[:2])
                if major != 1:
                    raise PcapError(start, f"unsupported pcapng version {major}")
                interfaces = []
                self.interfaces = interfaces
                self.section += 1
                seen_shb = True
                continue
            if not seen_shb:
                raise PcapError(start, "pcapng block before the first section header")
            (block_type,) = struct.unpack(order + "I", raw_type)
            (total,) = struct.unpack(order + "I", self._read(4, "block header", start))
            body = self._block_body(total, 8, start, f"block type 0x{block_type:08x}")
            if block_type == PCAPNG_IDB:
                if len(interfaces) >= MAX_INTERFACES:
                    raise PcapError(start, f"more than {MAX_INTERFACES} interfaces in a section")
                interfaces.append(self._interface(body, order, start))
            elif block_type in (PCAPNG_EPB, PCAPNG_OPB):
                yield self._packet_block(block_type, body, order, interfaces, start)
            elif block_type == PCAPNG_SPB:
                if not interfaces:
                    raise PcapError(start, "simple packet block without an interface")
                if len(body) < 4:
                    raise PcapError(start, "simple packet block too short")
                (origlen,) = struct.unpack(order + "I", body[:4])
                iface = interfaces[0]
                caplen = min(origlen, len(body) - 4)
                if iface.snaplen:
                    caplen = min(caplen, iface.snaplen)
                yield self._frame(iface, None, body[4:4 + caplen], origlen)
            # Other blocks (name resolution, statistics, decryption secrets, custom) carry no
            # packets; they were length-checked and are skipped.

    def _block_body(self, total: int, consumed: int, start: int, what: str) -> bytes:
        """Read the rest of a block whose total length is ``total`` (``consumed`` bytes of it
        already read); check the trailing length copy. Returns the body between the header and
        the trailing length."""
        if total < consumed + 4 or total % 4:
            raise PcapError(start, f"{what} has an invalid length {total}")
        if total > MAX_BLOCK_BYTES:
            raise PcapError(start, f"{what} claims {total} bytes, more than the "
                                   f"{MAX_BLOCK_BYTES}-byte limit (corrupt file?)")
        rest = self._read(total - consumed, what, start)
        trailer = rest[-4:]
        if trailer not in (total.to_bytes(4, "little"), total.to_bytes(4, "big")):
            raise PcapError(start, f"{what}: trailing length does not match the leading "
                                   f"length {total} (corrupt file?)")
        return rest[:-4]

    def _interface(self, body: bytes, order: str, start: int) -> _Interface:
        if len(body) < 8:
            raise PcapError(start, "interface description block too short")
        linktype, _reserved, snaplen = struct.unpack(order + "HHI", body[:8])
        resol, offset_s = PCAPNG_DEFAULT_TSRESOL, 0
        kept: list[tuple[int, bytes]] = []
        pos = 8
        while pos + 4 <= len(body):
            code, length = struct.unpack(order + "HH", body[pos:pos + 4])
            pos += 4
            if code == PCAPNG_OPT_ENDOFOPT:
                break
            if pos + length > len(body):
                raise PcapError(start, f"interface option {code} runs past its block")
            value = body[pos:pos + length]
            if code == PCAPNG_OPT_IF_TSRESOL and length >= 1:
                resol = value[0]
            elif code == PCAPNG_OPT_IF_TSOFFSET and length >= 8:
                (offset_s,) = struct.unpack(order + "q", value[:8])
            elif code in PCAPNG_TEXT_OPTIONS:
                kept.append((code, value))
            pos += (length + 3) & ~3
        exponent = resol & 0x7F
        unit = 2.0 ** -exponent if resol & 0x80 else 10.0 ** -exponent
        return _Interface(linktype, snaplen, unit, offset_s, resol, tuple(kept))

    def _packet_block(self, block_type: int, body: bytes, order: str,
                      interfaces: list[_Interface], start: int) -> Frame:
        if len(body) < 20:
            raise PcapError(start, "packet block too short")
        if block_type == PCAPNG_EPB:
            if_id, ts_hi, ts_lo, caplen, origlen = struct.unpack(order + "IIIII", body[:20])
        else:
            if_id, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack(order + "HHIIII",
                                                                        body[:20])
        if if_id >= len(interfaces):
            raise PcapError(start, f"packet block names interface {if_id}, but the section "
                                   f"describes {len(interfaces)}")
        if caplen > len(body) - 20:
            raise PcapError(start, f"packet block claims {caplen} captured bytes but holds "
                                   f"{len(body) - 20}")
        iface = interfaces[if_id]
        ticks = (ts_hi << 32) | ts_lo
        ts = ticks * iface.ts_unit + iface.ts_offset
        return self._frame(iface, ts, body[20:20 + caplen], origlen, if_id, ticks)


def read_packets(source: str | os.PathLike[str] | BinaryIO, *,
                 skipped: Counter[str] | dict[str, int] | None = None) -> Iterator[Packet]:
    """Yield a :class:`Packet` for every IP frame of a pcap or pcapng file.

    Frames without an IP packet are skipped; pass a dict/Counter as ``skipped`` to receive the
    counts by reason (filled in as the iteration proceeds). Raises :class:`PcapError` (with the
    offset) for a file that is not a capture, or is truncated or corrupt.
    """
    with PcapReader(source) as reader:
        try:
            yield from reader
        finally:
            if skipped is not None:
                for reason, n in reader.skipped.items():
                    skipped[reason] = skipped.get(reason, 0) + n


# ============================================================================ writer
WRITER_LINKTYPES = (LINKTYPE_RAW, LINKTYPE_ETHERNET)


class PcapWriter:
    """Write IP packets to a classic pcap file (see the module docstring).

    ``PcapWriter(path_or_file, linktype=LINKTYPE_RAW, *, nanosecond=False, snaplen=...)``.
    ``write(packet, ts=None)`` appends one IP packet (``ts`` in seconds since the epoch; now if
    None). With ``LINKTYPE_ETHERNET`` each packet gets the fixed synthetic header
    ``02:00:00:00:00:01 -> 02:00:00:00:00:02`` with the ethertype of its IP version. A path is
    opened (and truncated) here with mode 0600 -- it may hold decrypted traffic, so it is kept
    like a key file (an existing file is narrowed to 0600 too) -- and closed by :meth:`close` /
    the ``with`` block; a file object passed in is flushed but left open.
    """

    def __init__(self, target: str | os.PathLike[str] | BinaryIO,
                 linktype: int = LINKTYPE_RAW, *, nanosecond: bool = False,
                 snaplen: int = DEFAULT_SNAPLEN) -> None:
        if linktype not in WRITER_LINKTYPES:
            raise ConfigError("linktype", f"{linktype} is not writable; use LINKTYPE_RAW "
                                          f"({LINKTYPE_RAW}) or LINKTYPE_ETHERNET "
                                          f"({LINKTYPE_ETHERNET})")
        if not isinstance(snaplen, int) or not 1 <= snaplen <= MAX_RECORD_BYTES:
            raise ConfigError("snaplen", f"must be an integer from 1 to {MAX_RECORD_BYTES}")
        self.linktype = linktype
        self.snaplen = snaplen
        self._frac = 10**9 if nanosecond else 10**6
        if isinstance(target, (str, os.PathLike)):
            # 0600 from the first byte, like key files: a capture we write may hold decrypted
            # traffic. fchmod also narrows an existing file that O_CREAT leaves as it was.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                         | getattr(os, "O_CLOEXEC", 0), SECRET_FILE_MODE)
            try:
                os.fchmod(fd, SECRET_FILE_MODE)
            except BaseException:
                os.close(fd)
                raise
            self._file: IO[bytes] = os.fdopen(fd, "wb")
            self._owned = True
        else:
            self._file = target
            self._owned = False
        self._closed = False
        self.count = 0
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        self._file.write(struct.pack("<" + PCAP_FILE_HEADER, magic, *PCAP_VERSION, 0, 0,
                                     snaplen, linktype))

    def write(self, packet: bytes | bytearray | memoryview, ts: float | None = None) -> None:
        """Append one IP packet (RAW) or its synthetic Ethernet frame (ETHERNET)."""
        if self._closed:
            raise ValueError("PcapWriter is closed")
        packet = bytes(packet)
        version = _ip_version(packet, 0)
        if version not in (4, 6):
            raise ConfigError("packet", f"not an IPv4 or IPv6 packet (version nibble "
                                        f"{version})")
        if self.linktype == LINKTYPE_ETHERNET:
            ethertype = ETHERTYPE_IPV4 if version == 4 else ETHERTYPE_IPV6
            frame = SYNTHETIC_DST_MAC + SYNTHETIC_SRC_MAC + ethertype.to_bytes(2, "big") + packet
        else:
            frame = packet
        if len(frame) > self.snaplen:
            raise ConfigError("packet", f"{len(frame)}-byte frame exceeds the snap length "
                                        f"{self.snaplen}")
        if ts is None:
            ts = time.time()
        if not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
            raise ConfigError("ts", "must be a finite, non-negative number of seconds")
        sec = int(ts)
        frac = round((ts - sec) * self._frac)
        if frac >= self._frac:
            sec, frac = sec + 1, frac - self._frac
        if sec > 0xFFFFFFFF:
            raise ConfigError("ts", "does not fit the 32-bit seconds field of pcap")
        header = struct.pack("<" + PCAP_RECORD_HEADER, sec, frac, len(frame), len(frame))
        self._file.write(header + frame)
        self.count += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owned:
            self._file.close()
        else:
            self._file.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "MAX_BLOCK_BYTES",
    "MAX_RECORD_BYTES",
    "SUPPORTED_LINKTYPES",
    "Frame",
    "Interface",
    "Packet",
    "PcapError",
    "PcapReader",
    "PcapWriter",
    "ip_of_frame",
    "locate_ip",
    "read_packets",
]
