"""Bounded IP fragment reassembly (RFC 791 §3.2, RFC 8200 §4.5, RFC 5722).

Tunnel-mode IPsec receives fragmented outer packets, and policy checks need whole inner packets,
so the data path reassembles. A reassembler is also a classic memory-exhaustion target, so this
one is bounded three ways: number of datagrams in progress, bytes held (fragment data plus saved
headers), and time (a datagram is dropped ``timeout`` seconds after its first fragment, no
refresh). When a cap is reached new fragments are refused rather than old datagrams evicted:
eviction lets a flood churn out legitimate datagrams, refusal keeps what is in progress and the
timeout frees space.

Overlapping fragments drop the whole datagram (RFC 5722 for IPv6; the same rule for IPv4 is our
choice, because overlap is only ever an attack or a broken stack). The datagram's key then stays
as a tombstone until its timeout so that fragments still in flight are refused too (RFC 5722:
"including those not yet received"). Exact duplicates are ignored, as RFC 8200 §4.5 permits.

Every refusal also leaves a short word in :attr:`Reassembler.refusal` saying which rule refused
the fragment (``overlap``, ``bad-offset``, ``length-mismatch``, ``too-many-fragments``,
``table-full``, ``memory-full``, ``after-drop``, ``two-first-fragments``, ``too-large``,
``malformed``), for
tools that report more than the one ``FRAGMENT`` reason. An optional cap on fragments per
datagram (``max_fragments``; off by default) bounds the work a flood of tiny fragments causes.

Keys: IPv4 ``(src, dst, protocol, identification)`` (RFC 791); IPv6 ``(src, dst,
identification)`` — RFC 8200 §4.5 keys on these three only and uses the Next Header of the
offset-0 fragment, since fragments' Next Header values may differ.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from ipsecsa.errors import DropReason, MalformedPacket
from ipsecsa.packet.checksum import internet_checksum
from ipsecsa.packet.ipv4 import (
    FRAG_OFFSET_MASK,
    IPV4_MAX_TOTAL_LENGTH,
    MF,
    parse_ipv4,
)
from ipsecsa.packet.ipv6 import (
    FRAGMENT,
    FRAGMENT_HEADER_LEN,
    IPV6_HEADER_LEN,
    MAX_PAYLOAD_LENGTH,
    NEXT_HEADER_OFFSET,
    parse_ipv6_chain,
)

# --- specification constants ---------------------------------------------------------------------
#: Fragment offsets count 8-octet units (RFC 791, RFC 8200).
FRAGMENT_UNIT = 8

# --- implementation constants --------------------------------------------------------------------
DEFAULT_MAX_DATAGRAMS = 1024
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
#: Seconds; RFC 8200 §4.5 uses 60 s, we hold memory for less.
DEFAULT_TIMEOUT = 30.0

_U16 = struct.Struct("!H")

Buffer = bytes | bytearray | memoryview
Verdict = tuple[bytes | None, DropReason | None]


@dataclass(slots=True)
class _Datagram:
    """A datagram in progress (or a tombstone when ``dead``)."""

    deadline: float
    #: Sorted, non-overlapping ``(start, end, data)`` pieces; starts kept apart for bisect.
    starts: list[int] = field(default_factory=list)
    pieces: list[tuple[int, int, bytes]] = field(default_factory=list)
    #: Length of the reassembled payload, known once the last fragment arrived.
    total: int | None = None
    received: int = 0
    #: Header material of the offset-0 fragment (IPv4 header / IPv6 unfragmentable part).
    header: bytes | None = None
    #: IPv6: offset of the next-header byte that names the Fragment header, and its new value.
    nh_offset: int = 0
    next_header: int = 0
    held: int = 0
    dead: bool = False


def is_fragment(packet: bytes | bytearray | memoryview) -> bool:
    """True for an IPv4 packet with MF set or a non-zero offset, or an IPv6 packet with a
    Fragment header (atomic fragments included). Raises MalformedPacket on garbage."""
    if not packet:
        raise MalformedPacket(DropReason.TRUNCATED, "empty packet")
    version = packet[0] >> 4
    if version == 4:
        hdr = parse_ipv4(packet)
        return bool(hdr.flags & MF) or hdr.frag_offset != 0
    if version == 6:
        return parse_ipv6_chain(packet).fragment is not None
    raise MalformedPacket(DropReason.MALFORMED, "IP version is neither 4 nor 6")


class Reassembler:
    """IPv4 and IPv6 reassembly with caps on datagrams, bytes and time. Not thread-safe.

    ``now`` is the caller's monotonic clock (seconds); expiry assumes it never goes backwards.
    """

    __slots__ = ("_held", "_table", "max_bytes", "max_datagrams", "max_fragments", "refusal",
                 "timeout")

    def __init__(
        self,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
        max_fragments: int | None = None,
    ) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        #: Fragments one datagram may have (None: no cap beyond ``max_bytes``).
        self.max_fragments = max_fragments
        #: Which rule refused the last refused fragment (module docstring), else None.
        self.refusal: str | None = None
        # Insertion order is creation order, hence deadline order: expiry pops from the front.
        self._table: dict[tuple, _Datagram] = {}
        self._held = 0

    @property
    def bytes_held(self) -> int:
        """Bytes of fragment data and saved headers currently held."""
        return self._held

    def __len__(self) -> int:
        """Datagrams in progress, tombstones included."""
        return len(self._table)

    def next_deadline(self) -> float | None:
        """When the oldest datagram held times out (for the owner's timer), or None."""
        for dgram in self._table.values():
            return dgram.deadline
        return None

    def expire(self, now: float) -> int:
        """Drop datagrams whose timeout has passed; return how many were still in progress
        (tombstones of already-refused datagrams are removed but not counted)."""
        count = 0
        table = self._table
        while table:
            key = next(iter(table))
            dgram = table[key]
            if dgram.deadline > now:
                break
            del table[key]
            if not dgram.dead:
                count += 1
                self._held -= dgram.held
        return count

    def feed(
        self, packet: bytes | bytearray | memoryview, now: float
    ) -> tuple[bytes | None, DropReason | None]:
        """Offer one packet. Returns ``(whole, None)`` when a datagram completes (a packet that is
        not a fragment comes straight back), ``(None, None)`` while holding, and ``(None,
        reason)`` when refused: ``FRAGMENT`` for reassembly rules and caps, ``TRUNCATED`` /
        ``MALFORMED`` when the packet itself does not parse."""
        self.expire(now)
        self.refusal = None
        try:
            if not packet:
                raise MalformedPacket(DropReason.TRUNCATED, "empty packet")
            version = packet[0] >> 4
            if version == 4:
                verdict = self._feed_v4(packet, now)
            elif version == 6:
                verdict = self._feed_v6(packet, now)
            else:
                raise MalformedPacket(DropReason.MALFORMED, "IP version is neither 4 nor 6")
            if verdict[1] is not None and self.refusal is None:
                self.refusal = "too-large"  # the rebuilt datagram exceeds its length field
            return verdict
        except MalformedPacket as exc:
            self.refusal = "malformed"
            return None, exc.reason

    # --- per family: extract (key, start, data, more, header material) ---------------------------

    def _feed_v4(self, packet: Buffer, now: float) -> Verdict:
        hdr = parse_ipv4(packet)
        more = bool(hdr.flags & MF)
        if not more and hdr.frag_offset == 0:
            return bytes(packet), None
        hlen = hdr.header_length
        data = bytes(packet[hlen : hdr.total_length])
        key = (4, hdr.src, hdr.dst, hdr.protocol, hdr.ident)
        header = bytes(packet[:hlen]) if hdr.frag_offset == 0 else None
        return self._add(key, hdr.frag_offset * FRAGMENT_UNIT, data, more, header, 0, 0, now)

    def _feed_v6(self, packet: Buffer, now: float) -> Verdict:
        chain = parse_ipv6_chain(packet)
        if chain.fragment is None:
            return bytes(packet), None
        offset_units, more, ident = chain.fragment
        index = next(i for i, h in enumerate(chain.headers) if h[0] == FRAGMENT)
        frag_off = chain.headers[index][1]
        nh_offset = NEXT_HEADER_OFFSET if index == 0 else chain.headers[index - 1][1]
        next_header = packet[frag_off]
        data = bytes(
            packet[frag_off + FRAGMENT_HEADER_LEN : IPV6_HEADER_LEN + chain.payload_length]
        )
        if offset_units == 0 and not more:
            # Atomic fragment (RFC 6946): processed in isolation, never mixed with a reassembly.
            return self._rebuild_v6(bytes(packet[:frag_off]), nh_offset, next_header, data)
        header = bytes(packet[:frag_off]) if offset_units == 0 else None
        key = (6, chain.src, chain.dst, ident)
        return self._add(
            key, offset_units * FRAGMENT_UNIT, data, more, header, nh_offset, next_header, now
        )

    # --- common bookkeeping ---------------------------------------------------------------------

    def _refuse(self, why: str) -> tuple[None, DropReason]:
        self.refusal = why
        return None, DropReason.FRAGMENT

    def _kill(self, dgram: _Datagram, why: str) -> tuple[None, DropReason]:
        """Turn a datagram into a tombstone: memory released, later fragments refused."""
        self.refusal = why
        self._held -= dgram.held
        dgram.held = 0
        dgram.pieces = []
        dgram.starts = []
        dgram.header = None
        dgram.dead = True
        return None, DropReason.FRAGMENT

    def _add(
        self,
        key: tuple,
        start: int,
        data: bytes,
        more: bool,
        header: bytes | None,
        nh_offset: int,
        next_header: int,
        now: float,
    ) -> Verdict:
        end = start + len(data)
        dgram = self._table.get(key)
        if dgram is not None and dgram.dead:
            return self._refuse("after-drop")
        bad = (more and (not data or len(data) % FRAGMENT_UNIT)) or end > IPV4_MAX_TOTAL_LENGTH
        if dgram is None:
            if bad:
                return self._refuse("bad-offset")
            if len(self._table) >= self.max_datagrams:
                return self._refuse("table-full")
            cost = len(data) + (len(header) if header else 0)
            if self._held + cost > self.max_bytes:
                return self._refuse("memory-full")
            dgram = _Datagram(deadline=now + self.timeout)
            self._table[key] = dgram
        if bad:
            return self._kill(dgram, "bad-offset")
        # Overlap / duplicate check against the neighbours of the insertion point.
        i = bisect.bisect_left(dgram.starts, start)
        if i < len(dgram.pieces) and dgram.starts[i] == start:
            _, p_end, p_data = dgram.pieces[i]
            if p_end == end and p_data == data and (header is None or dgram.header is not None):
                return None, None  # exact duplicate
            return self._kill(dgram, "overlap")
        if i > 0 and dgram.pieces[i - 1][1] > start:
            return self._kill(dgram, "overlap")
        if i < len(dgram.pieces) and dgram.starts[i] < end:
            return self._kill(dgram, "overlap")
        if self.max_fragments is not None and len(dgram.pieces) >= self.max_fragments:
            return self._kill(dgram, "too-many-fragments")
        # Length consistency with the last fragment.
        if not more:
            if dgram.total is not None and dgram.total != end:
                return self._kill(dgram, "length-mismatch")
            if dgram.pieces and dgram.pieces[-1][1] > end:
                return self._kill(dgram, "length-mismatch")
            dgram.total = end
        elif dgram.total is not None and end > dgram.total:
            return self._kill(dgram, "length-mismatch")
        if header is not None:
            if dgram.header is not None:
                # two offset-0 fragments that are not duplicates
                return self._kill(dgram, "two-first-fragments")
            dgram.header = header
            dgram.nh_offset = nh_offset
            dgram.next_header = next_header
        cost = len(data) + (len(header) if header else 0)
        if self._held + cost > self.max_bytes:
            return self._kill(dgram, "memory-full")
        self._held += cost
        dgram.held += cost
        dgram.starts.insert(i, start)
        dgram.pieces.insert(i, (start, end, data))
        dgram.received += len(data)
        if dgram.total is None or dgram.header is None or dgram.received != dgram.total:
            return None, None
        # Complete: non-overlapping pieces inside [0, total) summing to total cover it exactly.
        payload = b"".join(p[2] for p in dgram.pieces)
        header = dgram.header
        del self._table[key]
        self._held -= dgram.held
        if key[0] == 4:
            return self._rebuild_v4(header, payload)
        return self._rebuild_v6(header, dgram.nh_offset, dgram.next_header, payload)

    @staticmethod
    def _rebuild_v4(header: bytes, payload: bytes) -> tuple[bytes | None, DropReason | None]:
        total_length = len(header) + len(payload)
        if total_length > IPV4_MAX_TOTAL_LENGTH:
            return None, DropReason.FRAGMENT
        out = bytearray(header)
        _U16.pack_into(out, 2, total_length)
        word = _U16.unpack_from(out, 6)[0] & ~(MF | FRAG_OFFSET_MASK)
        _U16.pack_into(out, 6, word)
        _U16.pack_into(out, 10, 0)
        _U16.pack_into(out, 10, internet_checksum(out))
        return bytes(out) + payload, None

    @staticmethod
    def _rebuild_v6(
        unfragmentable: bytes, nh_offset: int, next_header: int, payload: bytes
    ) -> tuple[bytes | None, DropReason | None]:
        payload_length = len(unfragmentable) - IPV6_HEADER_LEN + len(payload)
        if payload_length > MAX_PAYLOAD_LENGTH:
            return None, DropReason.FRAGMENT
        out = bytearray(unfragmentable)
        out[nh_offset] = next_header
        _U16.pack_into(out, 4, payload_length)
        return bytes(out) + payload, None


__all__ = ["Reassembler", "is_fragment"]
