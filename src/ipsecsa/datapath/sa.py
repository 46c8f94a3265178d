"""The security association: state, counters, lifetimes and events shared by ESP and AH.

``SecurityAssociation`` is the public object (``ipsecsa.SecurityAssociation``). It is built from a
validated :class:`~ipsecsa.config.SaConfig`; ``from_dict`` returns the ESP or AH subclass, whose
per-packet code lives in :mod:`ipsecsa.datapath.esp` and :mod:`ipsecsa.datapath.ah`.

Everything that can be derived per SA is derived once, in the constructor (practice 3): the crypto
step, header templates, lengths, lookup keys, the replay window, lifetime thresholds. The
per-packet ``protect``/``unprotect`` are bound at construction to the function for this SA's
protocol, mode and family, so a packet call does no dispatching.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ipsecsa.datapath.events import (
    HardLifetimeExpired,
    LifetimeKind,
    SaEvent,
    SequenceNumberExhausted,
    SoftLifetimeExpired,
)
from ipsecsa.datapath.lifetime import INF, Limits, lifetime_marks
from ipsecsa.datapath.replay import SEQ_MAX_32, SEQ_MAX_64, ReplayWindow
from ipsecsa.datapath.result import DROPPED, HELD, Result
from ipsecsa.datapath.state import USABLE, SaState, SaTrigger, next_state
from ipsecsa.errors import ConfigError, DirectionError, DropReason, MalformedPacket
from ipsecsa.packet.checksum import fold16, ones_sum
from ipsecsa.packet.ecn import ecn_decapsulate, set_ecn
from ipsecsa.packet.flow import PORTED_PROTOCOLS, flow_of
from ipsecsa.packet.fragment import Reassembler
from ipsecsa.packet.ipv4 import HEADER_WORDS
from ipsecsa.packet.ipv4 import IPIP as PROTO_IPIP  # tunnel mode: an IPv4 inner packet
from ipsecsa.packet.ipv4 import IPV6_IN_IP as PROTO_IPV6  # tunnel mode: an IPv6 inner packet
from ipsecsa.packet.ipv6 import IPv6Chain
from ipsecsa.selectors import selectors_match

log = logging.getLogger("ipsecsa.sa")

#: Implementation cap on events queued per SA before the oldest are discarded (a consumer that
#: never drains must not grow memory without bound).
MAX_QUEUED_EVENTS = 1024

IvSource = Callable[[int], bytes]

_PORTS = struct.Struct("!HH")
_H = struct.Struct("!H")
_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class SaCounters:
    """A snapshot of an SA's counters. ``drops`` lists only reasons that occurred."""

    packets: int
    bytes: int
    drops: dict[DropReason, int]

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


class SecurityAssociation:
    """One IPsec SA: outbound, inbound, or -- with ``direction`` unset -- receive-only for
    offline tools that read captures in both directions with one description.

    Use :meth:`from_dict` (the format of ``sa-format.md``) or :meth:`from_config`.
    ``protect(packet, now=None)`` and ``unprotect(packet, now=None)`` take one whole IP packet
    and return a :class:`~ipsecsa.datapath.result.Result`; they never raise for bad packets.
    They raise for caller mistakes: :class:`~ipsecsa.errors.DirectionError` when the SA's
    ``direction`` does not allow the call (``protect`` needs ``outbound``; ``unprotect`` needs
    ``inbound`` or no direction), ``TypeError`` when the packet is not bytes-like.
    """

    #: The protocol this class implements ("esp" or "ah"); set by subclasses.
    PROTOCOL = ""

    # Slotted to keep an installed SA small (the SA database holds millions); subclasses add
    # their own per-SA fields and the ``protect``/``unprotect`` slots that shadow the methods.
    __slots__ = (
        "__weakref__",
        "_bmark",
        "_drops",
        "_events",
        "_life",
        "_nic",
        "_pmark",
        "_reasm",
        "_selectors",
        "_seq",
        "_seq_hook",
        "_seq_limit",
        "_seq_max",
        "_slow",
        "_state",
        "_timed",
        "_tmark",
        "_window",
        "bytes",
        "config",
        "direction",
        "esn",
        "mode",
        "packets",
        "spi",
    )

    #: Inbound anti-replay window. Set only on an SA that can receive; an outbound-only SA has
    #: none and leaves the slot empty. Its per-packet readers (the inbound paths) are bound only
    #: when it is set (``_bind``), so they read it as a plain ``ReplayWindow``; everything else
    #: goes through :attr:`_replay`.
    _window: ReplayWindow

    def __init__(self, config: Any, *, now: float | None = None,
                 unsafe_iv_source: IvSource | None = None, native: bool | None = None) -> None:
        if config.protocol != self.PROTOCOL:
            raise ConfigError("protocol", f"{type(self).__name__} cannot carry a "
                                          f"{config.protocol} SA")
        self.config = config
        self.spi: int = config.spi
        self.mode: str = config.mode
        self.direction: str | None = config.direction
        self.esn: bool = config.esn
        self._timed = False
        self.state = SaState.LARVAL
        self.packets = 0
        self.bytes = 0
        # Only reasons that occur get an entry, and the event queue exists once an event does:
        # most SAs never drop a packet or expire, and each empty container costs memory.
        self._drops: dict[DropReason, int] | None = None
        self._events: deque[SaEvent] | None = None
        self._seq_max = SEQ_MAX_64 if config.esn else SEQ_MAX_32
        #: Outbound: the last sequence number used (the next packet gets _seq + 1).
        self._seq: int = config.seq
        #: Outbound: the highest sequence number that may be sent (see :attr:`seq_limit`).
        self._seq_limit: int = self._seq_max
        self._seq_hook: Callable[[SecurityAssociation, int], None] | None = None
        use_native = self._wants_native(config, native)
        if config.direction != "outbound":
            self._window = self._new_window(config, use_native)
        self._selectors: tuple[Any, ...] = tuple(config.selectors)
        self._reasm: Reassembler | None = None
        #: A NIC doing the crypto step (``ipsecsa.ndis.transport``), or None for software.
        self._nic: Any = None
        installed = time.monotonic() if now is None else now
        self._life = lifetime_marks(Limits.of(config.soft), Limits.of(config.hard), installed)
        self._timed = self._life.timed
        self._refresh_marks()
        self._build(unsafe_iv_source, use_native)
        if use_native:
            self._attach_native(unsafe_iv_source)
        self.state = next_state(self.state, SaTrigger.INSTALL)
        if self.direction == "outbound" and self._seq >= self._seq_max:
            # An SA that can send and has used its last number is exhausted from the start
            # (RFC 4303 §3.3.3 / RFC 4302 §3.3.2: sequence numbers never cycle). Deciding it
            # here keeps the per-packet paths free of the check.
            self._exhausted(now)
        self._bind()

    @property
    def state(self) -> SaState:
        """The life-cycle state (see :mod:`ipsecsa.datapath.state`)."""
        return self._state

    @state.setter
    def state(self, value: SaState) -> None:
        self._state = value
        # The per-packet code tests this one flag; everything unusual takes the slow gate.
        self._slow = self._timed or value is not SaState.MATURE

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: Any, *, now: float | None = None,
                    unsafe_iv_source: IvSource | None = None,
                    native: bool | None = None) -> SecurityAssociation:
        """Build the ESP or AH SA a validated :class:`SaConfig` describes.

        ``unsafe_iv_source(seq) -> bytes`` replaces IV generation: known-answer tests only, never
        traffic (a repeated IV under GCM/CCM/CTR/ChaCha20 is catastrophic; for GCM it also gives
        away the authentication key). Without it, counter IVs are ``seq ^ iv_mask`` with a random
        mask per SA object, so two objects built from one description never share IVs
        (:mod:`ipsecsa.crypto.transforms`). ``ipsecsa.crypto.transforms.COUNTER_IV`` is the
        override "IV = sequence number" that some published vectors assume.
        ``native``: None (default) uses the native ESP fast path where it is available and
        implements the SA's algorithms (:mod:`ipsecsa.datapath.native`); False forces the
        pure-Python path; True requires the native one (ConfigError ``native`` if it cannot).
        """
        if config.protocol == "esp":
            from ipsecsa.datapath.esp import EspSA

            return EspSA(config, now=now, unsafe_iv_source=unsafe_iv_source,
                         native=native)
        from ipsecsa.datapath.ah import AhSA

        return AhSA(config, now=now, unsafe_iv_source=unsafe_iv_source, native=native)

    @classmethod
    def from_dict(cls, obj: dict, *, now: float | None = None,
                  unsafe_iv_source: IvSource | None = None,
                  native: bool | None = None) -> SecurityAssociation:
        """Build an SA from one object of the SA description format (``sa-format.md``).

        Raises :class:`~ipsecsa.errors.ConfigError` naming the offending field.
        ``unsafe_iv_source``: known-answer tests only, see :meth:`from_config`."""
        from ipsecsa.config import parse_sa

        return cls.from_config(parse_sa(obj), now=now, unsafe_iv_source=unsafe_iv_source,
                               native=native)

    def to_dict(self) -> dict:
        """The SA in the description format, with ``seq`` at its current value so that a saved
        SA resumes where it stopped (outbound: last number used; inbound: window top)."""
        obj = self.config.to_dict()
        obj["seq"] = self.seq
        return obj

    def _build(self, unsafe_iv_source: IvSource | None,
               native: bool = False) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wants_native(self, config: Any, native: bool | None) -> bool:
        """Whether this SA runs on the native fast path (ESP overrides); AH never does."""
        if native:
            raise ConfigError("native", f"no native fast path for {self.PROTOCOL}")
        return False

    def _new_window(self, config: Any, use_native: bool) -> ReplayWindow:
        """The inbound anti-replay window (the native engine brings its own C twin)."""
        return ReplayWindow(config.replay_window, config.esn, top=config.seq)

    def _attach_native(self, unsafe_iv_source: IvSource | None) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def _replay(self) -> ReplayWindow | None:
        """The inbound anti-replay window, or None on an outbound-only SA."""
        return getattr(self, "_window", None)

    def _bind(self) -> None:
        """Bind ``protect``/``unprotect`` to this SA's per-packet functions.

        The inbound path is bound only when the SA has a replay window (direction not
        ``outbound``): the inbound paths read ``_window`` unguarded. (The refusing direction
        stays a bound method: answering it from ``__getattr__`` instead would save its 64
        bytes per SA but turns off CPython 3.11's attribute specialisation for every
        ``self.x`` of the class, measured at -28 % on the Python path.)"""
        out_fn, in_fn = self._select_paths()
        if self.direction != "outbound":
            out_fn = self._refuse_protect
        if self.direction == "outbound":
            in_fn = self._refuse_unprotect
        # Instance attributes shadow the documented methods below: no dispatch per packet.
        self.protect = out_fn  # type: ignore[method-assign]
        self.unprotect = in_fn  # type: ignore[method-assign]

    def _select_paths(self) -> tuple[Callable[..., Result], Callable[..., Result]]:
        raise NotImplementedError  # pragma: no cover - abstract

    # ----------------------------------------------------------------- the packet API
    def protect(self, packet: bytes, now: float | None = None) -> Result:
        """Apply this SA to one outbound IP packet. Bound per SA in the constructor."""
        raise NotImplementedError  # pragma: no cover - replaced per instance

    def unprotect(self, packet: bytes, now: float | None = None) -> Result:
        """Verify and remove this SA's protection from one inbound IP packet (for a
        UDP-encapsulated SA, the outer IP/UDP/ESP packet). Bound per SA in the constructor."""
        raise NotImplementedError  # pragma: no cover - replaced per instance

    def protect_batch(self, packets: Iterable[bytes], now: float | None = None) -> list[Result]:
        """``protect`` over a batch, in order (sequence numbers follow the batch order)."""
        if isinstance(packets, (bytes, bytearray, memoryview)):
            raise TypeError("protect_batch takes an iterable of packets, not one packet")
        fn = self.protect
        return [fn(p, now) for p in packets]

    def unprotect_batch(self, packets: Iterable[bytes], now: float | None = None) -> list[Result]:
        """``unprotect`` over a batch, in order."""
        if isinstance(packets, (bytes, bytearray, memoryview)):
            raise TypeError("unprotect_batch takes an iterable of packets, not one packet")
        fn = self.unprotect
        return [fn(p, now) for p in packets]

    def _refuse_protect(self, packet: bytes, now: float | None = None) -> Result:
        # A caller mistake, not bad peer input: raised, never counted as a drop. An SA without
        # a direction exists for offline tools that read captures; sending on it would let two
        # objects made from one description (the other side's, too) number packets alike.
        if self.direction is None:
            raise DirectionError(f"SA 0x{self.spi:08x} has no direction: it may unprotect "
                                 "(offline tools) but not protect; describe it as outbound")
        raise DirectionError(f"SA 0x{self.spi:08x} is inbound: protect needs an outbound SA")

    def _refuse_unprotect(self, packet: bytes, now: float | None = None) -> Result:
        raise DirectionError(f"SA 0x{self.spi:08x} is outbound: unprotect needs an inbound SA "
                             "(or one without a direction)")

    # ----------------------------------------------------------------- accounting
    def _drop(self, reason: DropReason) -> Result:
        d = self._drops
        if d is None:
            d = self._drops = {}
        d[reason] = d.get(reason, 0) + 1
        return DROPPED[reason]

    def _refresh_marks(self) -> None:
        life = self._life
        self._pmark = life.packet_mark
        self._bmark = life.byte_mark
        deadline = life.next_deadline()
        self._tmark = INF if deadline is None else deadline

    def _gate(self, now: float | None) -> tuple[DropReason | None, float | None]:
        """The slow gate run before a packet when ``_slow`` is set: fires due lifetimes and
        returns (reason to refuse or None, the clock value used)."""
        if self._timed and now is None:
            now = time.monotonic()
        return self._check_usable(now), now

    def _check_usable(self, now: float | None) -> DropReason | None:
        """Slow path run when the SA is not mature or a deadline passed: the reason to refuse
        the packet, or None to carry it."""
        if self._timed and now is not None and now >= self._tmark:
            self._lifetime_crossed(now)
        if self.state in USABLE:
            return None
        if self._life.hard_fired is not None:
            return DropReason.EXPIRED
        if self._seq >= self._seq_max:
            return DropReason.SEQ_EXHAUSTED
        return DropReason.SA_UNUSABLE

    def _lifetime_crossed(self, now: float | None) -> None:
        soft, hard = self._life.crossed(self.packets, self.bytes, now)
        at = now if now is not None else time.monotonic()
        if soft is not None:
            self._event(SoftLifetimeExpired(self.spi, at, soft))
            if self.state is SaState.MATURE:
                self.state = next_state(self.state, SaTrigger.SOFT_EXPIRE)
        if hard is not None:
            self._event(HardLifetimeExpired(self.spi, at, hard))
            if self.state in USABLE:
                self.state = next_state(self.state, SaTrigger.HARD_EXPIRE)
        self._refresh_marks()

    def _exhausted(self, now: float | None) -> None:
        at = now if now is not None else time.monotonic()
        self._event(SequenceNumberExhausted(self.spi, at, self._seq))
        if self.state in USABLE:
            self.state = next_state(self.state, SaTrigger.EXHAUST)

    def _event(self, event: SaEvent) -> None:
        log.info("SA 0x%08x: %s", self.spi, type(event).__name__)
        if self._events is None:
            self._events = deque(maxlen=MAX_QUEUED_EVENTS)
        self._events.append(event)

    # ----------------------------------------------------------------- sequence reservation
    @property
    def seq_limit(self) -> int:
        """Outbound: the highest sequence number this SA may send (default: the protocol's
        maximum, 2^32 - 1 or 2^64 - 1 with ESN).

        This is the hook for a durable store that reserves outbound sequence numbers in blocks
        (so that a restart never reuses one): it sets ``seq_limit`` to the end of the block it
        has made durable, and :attr:`seq_limit_hook` to be called when the block runs out. The
        native fast path never sends a number beyond the limit; it hands that packet to the
        Python path, which calls the hook and then either sends (the hook raised the limit) or
        drops the packet as ``SEQ_UNRESERVED`` without spending a number. Setting ``None``
        removes the limit."""
        return self._seq_limit

    @seq_limit.setter
    def seq_limit(self, value: int | None) -> None:
        if value is None:
            value = self._seq_max
        if type(value) is not int or not 0 <= value <= self._seq_max:
            raise ConfigError("seq_limit", f"must be an integer from 0 to {self._seq_max}")
        self._seq_limit = value

    @property
    def seq_limit_hook(self) -> Callable[[SecurityAssociation, int], None] | None:
        """Called as ``hook(sa, seq)`` when the next outbound number ``seq`` would pass
        :attr:`seq_limit`; it may raise ``sa.seq_limit`` (after reserving durably)."""
        return self._seq_hook

    @seq_limit_hook.setter
    def seq_limit_hook(self, hook: Callable[[SecurityAssociation, int], None] | None) -> None:
        if hook is not None and not callable(hook):
            raise ConfigError("seq_limit_hook", "must be callable or None")
        self._seq_hook = hook

    def _over_limit(self) -> DropReason | None:
        """Run when the next sequence number would pass ``seq_limit`` (before it is spent):
        None if the hook made room, else the drop reason."""
        seq = self._seq + 1
        if self._seq_hook is not None:
            self._seq_hook(self, seq)
        return None if seq <= self._seq_limit else DropReason.SEQ_UNRESERVED

    # ----------------------------------------------------------------- owner API
    @property
    def seq(self) -> int:
        """Outbound: the last sequence number used. Inbound: the highest one received."""
        replay = self._replay
        if replay is None:
            return self._seq
        if self.direction == "inbound":
            return replay.top
        return max(self._seq, replay.top)

    @property
    def usable(self) -> bool:
        return self.state in USABLE

    @property
    def counters(self) -> SaCounters:
        return SaCounters(self.packets, self.bytes, dict(self._drops) if self._drops else {})

    def drain_events(self) -> list[SaEvent]:
        """Return and forget the queued events, oldest first."""
        if not self._events:
            return []
        events = list(self._events)
        self._events.clear()
        return events

    def next_timer(self) -> float | None:
        """The clock value at which :meth:`handle_timer` has work to do (a lifetime deadline,
        or fragments held for reassembly timing out), or None."""
        due = [t for t in (self._life.next_deadline() if self.state in USABLE else None,
                           self._reasm.next_deadline() if self._reasm is not None else None)
               if t is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        """Fire time-based lifetime events due at ``now`` and drop fragments whose reassembly
        timed out (each datagram counted once as ``fragment``); no traffic needed."""
        if self.state in USABLE and now >= self._tmark:
            self._lifetime_crossed(now)
        if self._reasm is not None:
            for _ in range(self._reasm.expire(now)):
                self._drop(DropReason.FRAGMENT)

    def restore_counters(self, packets: int, nbytes: int, now: float | None = None) -> None:
        """Continue the packet and byte counts of an SA that existed before (a reopened durable
        store): its lifetimes keep counting, so a restart never extends an SA's life."""
        self.packets, self.bytes = packets, nbytes
        if packets >= self._pmark or nbytes >= self._bmark:
            self._lifetime_crossed(now)

    def delete(self) -> None:
        """End the SA: every later packet is dropped as SA_UNUSABLE."""
        if self.state is not SaState.DEAD:
            self.state = next_state(self.state, SaTrigger.DELETE)

    # ----------------------------------------------------------------- shared by ESP and AH
    def _selectors_ok(self, version: int, src: bytes, dst: bytes, proto: int,
                      l4: bytes | memoryview, l4_off: int) -> bool:
        """Whether (src, dst, proto, ports at ``l4[l4_off:]``) is inside the SA's selectors."""
        sport = dport = 0
        if proto in PORTED_PROTOCOLS and len(l4) >= l4_off + 4:
            sport, dport = _PORTS.unpack_from(l4, l4_off)
        for sel in self._selectors:
            if sel.matches(version, src, dst, proto, sport, dport):
                return True
        return False

    def _inner_selectors_ok(self, inner: bytes) -> bool:
        """Selector check of a whole (inner) packet; raises MalformedPacket if it won't parse.

        An IPv4 packet without options whose total length fits the buffer (what tunnels carry
        almost always) has its flow read straight from the header: the same values
        :func:`flow_of` returns, without building a ``Flow`` — measured at ~60% of the outbound
        tunnel cost in the gateway. Anything else goes through :func:`flow_of`.
        tests/datapath/test_inner_selectors.py holds the two equal."""
        n = len(inner)
        if n >= 24 and inner[0] == 0x45 and 20 <= (inner[2] << 8 | inner[3]) <= n:
            proto = inner[9]
            if proto in PORTED_PROTOCOLS and not (inner[6] & 0x1F | inner[7]):
                if (inner[2] << 8 | inner[3]) < 24:
                    return selectors_match(self._selectors, flow_of(inner))  # TRUNCATED
                sport, dport = _PORTS.unpack_from(inner, 20)
            else:
                sport = dport = 0
            src, dst = inner[12:16], inner[16:20]
            for sel in self._selectors:
                if sel.matches(4, src, dst, proto, sport, dport):
                    return True
            return not self._selectors
        return selectors_match(self._selectors, flow_of(inner))

    def _inner_policy(self, inner: bytes) -> DropReason | None:
        """Why a whole (inner) packet is refused by the selectors, or None if it is covered."""
        try:
            ok = self._inner_selectors_ok(inner)
        except MalformedPacket as exc:
            return exc.reason
        return None if ok else DropReason.SELECTOR_MISMATCH

    @staticmethod
    def _rebuild_transport(pkt: bytes, off: int, dlen: int, next_header: int,
                           chain: IPv6Chain | None) -> tuple[bytes, bytes, bytes]:
        """Transport mode, inbound: the IP header ``pkt[:off]`` that carried ESP/AH, rebuilt for
        the ``dlen``-byte payload that replaces it; returns ``(header, src, dst)``.

        IPv4 (``chain`` None): total length ``off + dlen``, protocol ``next_header``, and the
        header checksum recomputed over the new header, options included (copied as they are).
        IPv6 (``chain`` the packet's chain, walked to ESP/AH): the extension headers before
        ESP/AH kept, the next header that named ESP/AH (the fixed header's, or the last walked
        extension header's) set to ``next_header``, and the payload length ``off - 40 + dlen``.
        """
        if chain is None:
            vihl, tos, _len, ident, ff, ttl, _p, _c, s1, s2, d1, d2 = HEADER_WORDS.unpack_from(pkt)
            new_len = off + dlen
            s = fold16((vihl << 8) + tos + new_len + ident + ff + (ttl << 8) + next_header
                       + s1 + s2 + d1 + d2 + (ones_sum(pkt[20:off]) if off > 20 else 0))
            hdr = HEADER_WORDS.pack(vihl, tos, new_len, ident, ff, ttl, next_header,
                                    ~s & 0xFFFF, s1, s2, d1, d2)
            if off > 20:
                hdr += pkt[20:off]
            return hdr, pkt[12:16], pkt[16:20]
        head = bytearray(pkt[:off])
        head[chain.headers[-1][1] if chain.headers else 6] = next_header
        _H.pack_into(head, 4, off - 40 + dlen)
        return bytes(head), chain.src, chain.dst

    def _deliver_tunnel(self, plain: bytes, dlen: int, next_header: int, outer_ecn: int,
                        now: float | None) -> Result:
        """Tunnel mode, inbound: validate the inner packet in ``plain[:dlen]`` (anything after
        its IP length is TFC padding, RFC 4303 §2.4), combine ECN (RFC 6040 §4.2), check the
        selectors (RFC 4301 §5.2) and account for it."""
        if next_header == PROTO_IPIP:
            if dlen < 20 or plain[0] >> 4 != 4 or plain[0] & 15 < 5:
                return self._drop(DropReason.BAD_INNER)
            ilen = plain[2] << 8 | plain[3]
            if ilen > dlen or ilen < (plain[0] & 15) << 2:
                return self._drop(DropReason.BAD_INNER)
            inner = plain[:ilen]
            inner_ecn = plain[1] & 3
        elif next_header == PROTO_IPV6:
            if dlen < 40 or plain[0] >> 4 != 6:
                return self._drop(DropReason.BAD_INNER)
            ilen = 40 + (plain[4] << 8 | plain[5])
            if ilen > dlen or (ilen == 40 and plain[6] == 0):  # RFC 2675 jumbogram: unsupported
                return self._drop(DropReason.BAD_INNER)
            inner = plain[:ilen]
            inner_ecn = (plain[1] >> 4) & 3
        else:
            return self._drop(DropReason.BAD_INNER)
        if outer_ecn != inner_ecn:
            ecn = ecn_decapsulate(outer_ecn, inner_ecn)
            if ecn is None:
                return self._drop(DropReason.ECN_DROP)
            if ecn != inner_ecn:
                inner = set_ecn(inner, ecn)
        if self._selectors:
            refused = self._inner_policy(inner)
            if refused is not None:
                return self._drop(refused)
        self.packets = p = self.packets + 1
        self.bytes = b = self.bytes + ilen
        if p >= self._pmark or b >= self._bmark:
            self._lifetime_crossed(now)
        return _new(Result, (inner, None))

    def _reassemble(self, pkt: bytes, now: float | None) -> Result:
        """RFC 4303 §3.4.1 / RFC 4302 §3.4.1: fragments are reassembled before IPsec
        processing; the whole datagram then re-enters ``unprotect``."""
        if self._reasm is None:
            self._reasm = Reassembler()
        whole, reason = self._reasm.feed(pkt, time.monotonic() if now is None else now)
        if reason is not None:
            return self._drop(reason)
        if whole is None:
            return HELD
        return self.unprotect(whole, now)

    def describe(self) -> str:
        """A one-line description with no key material."""
        c = self.config
        algs = "+".join(a.name for a in (getattr(c, "encryption", None),
                                          getattr(c, "integrity", None))
                        if a is not None and a.name != "none")
        encap = " udp-encap" if getattr(c, "encapsulation", None) else ""
        return (f"spi=0x{self.spi:08x} {self.PROTOCOL} {self.mode}{encap} "
                f"{self.direction or 'undirected'} {c.src}->{c.dst} {algs} esn={self.esn} "
                f"state={self.state.value}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


__all__ = ["LifetimeKind", "SaCounters", "SecurityAssociation"]
