"""The SAs of a reopened context as their stored form says they are: what a view or the
statistics show of them, without building them (issue 12: reading a reopened engine fast).

A durable engine reopened from its store leaves each context's SAs unbuilt until first use
(:class:`.contexts.SaContext`, ``docs/store.md``): building one parses its keys, checks them and
makes OpenSSL cipher contexts, ~1 ms a context. A listing or the statistics need none of that:
what they show of an SA not built yet is fixed by its stored description (SPI, protocol, mode,
algorithms, ESN, replay window, UDP encapsulation, lifetimes) and its stored SA-state row
(sequence-number reservation or replay edge, packets, bytes), neither of which changes while
the SA is unbuilt. :func:`stored_bundle` derives from those exactly what the SA built at that
moment would report -- the same rules as :meth:`.engine.Engine._bundle_of` and the
``SecurityAssociation`` constructor apply -- into objects shaped like the built ones for the
readers (``sa.spi``, ``sa.config.protocol``/``encryption.name``/..., ``sa.seq``, ``sa.state``,
``sa.packets``/``sa.bytes``/``sa.counters``), so :func:`.views.sa_view` and the statistics read
both the same way. No key is kept: the objects hold algorithm descriptors, never key bytes.

``tests/store/test_stored_views.py`` holds every view and the statistics of an unbuilt context
equal, field for field, to those of the same context once built.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipsecsa.config.model import REPLAY_WINDOW_DEFAULT, Lifetime, UdpEncapsulation
from ipsecsa.crypto.algorithms import lookup_encryption, lookup_integrity
from ipsecsa.datapath.lifetime import Limits, lifetime_marks
from ipsecsa.datapath.replay import SEQ_MAX_32, SEQ_MAX_64
from ipsecsa.datapath.sa import SaCounters
from ipsecsa.datapath.state import USABLE, SaState
from ipsecsa.store.codec import loads_u64
from ipsecsa.wfp.contexts import UNBUILT, AddedSas, SaContext

log = logging.getLogger("ipsecsa.wfp")

#: One SA's stored state row: (sequence-number reservation or replay edge, packets, bytes).
StateRow = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """The parts of an SA's configuration that its readers show (no keys, no addresses)."""

    protocol: str
    mode: str
    direction: str | None
    encryption: Any  # an EncryptionAlgorithm (its ``name`` is canonical), None for AH
    integrity: Any  # an IntegrityAlgorithm, None when there is none
    esn: bool
    encapsulation: UdpEncapsulation | None
    replay_window: int


class StoredSa:
    """An SA not built yet, as it would be if it were built now: read-only."""

    __slots__ = ("bytes", "config", "packets", "seq", "spi", "state")

    def __init__(self, spi: int, config: StoredConfig, seq: int, state: SaState,
                 packets: int, nbytes: int) -> None:
        self.spi, self.config, self.seq, self.state = spi, config, seq, state
        self.packets, self.bytes = packets, nbytes

    @property
    def counters(self) -> SaCounters:
        # Drops are not stored: a built SA starts without any, as this one would.
        return SaCounters(self.packets, self.bytes, {})

    def __repr__(self) -> str:
        c = self.config
        return (f"<StoredSa spi=0x{self.spi:08x} {c.protocol} {c.mode} {c.direction} "
                f"seq={self.seq} state={self.state.value} (not built)>")


class StoredBundle:
    """The SAs of one direction of a context, not built (ESP first, as in a Bundle), and what
    the statistics add up of them (:func:`traffic_counts`: they never change)."""

    __slots__ = ("sas", "traffic")

    def __init__(self, sas: tuple[StoredSa, ...]) -> None:
        self.sas = sas
        self.traffic = traffic_counts(sas)

    def __repr__(self) -> str:
        return f"StoredBundle({', '.join(map(repr, self.sas))})"


#: Encryption algorithms whose bytes IPsecGetStatistics does not count as encrypted.
NOT_ENCRYPTING = frozenset({"null", "null-aes-gmac"})


def traffic_counts(sas: Sequence[Any]) -> tuple[int, int, int, int, int]:
    """What IPsecGetStatistics adds up of one direction's SAs (built or stored): (packets,
    bytes, ESP bytes, AH bytes, encrypted bytes). Packets and bytes are the first SA's: a
    packet through an ESP+AH bundle counts once, its ESP and AH bytes each."""
    esp = ah = encrypted = 0
    for sa in sas:
        cfg = sa.config
        n = sa.bytes
        if cfg.protocol == "ah":
            ah += n
        else:
            esp += n
            enc = getattr(cfg, "encryption", None)
            if cfg.protocol == "esp" and enc is not None and \
                    getattr(enc, "name", "null") not in NOT_ENCRYPTING:
                encrypted += n
    first = sas[0]
    return first.packets, first.bytes, esp, ah, encrypted


def parse_sas(stored: str, name: str) -> list[dict[str, Any]]:
    """The SA descriptions of member ``name`` ("inbound_sas"/"outbound_sas") of a context's
    secret column text. The SA descriptions are its last members (``persist.context_rows``
    writes them after the bundles as given, which are most of the text), so only that tail is
    parsed when it can be. ``,"inbound_sas":`` can only start a member of some object (inside
    a JSON string a ``"`` is escaped, and a string closed by that quote could not be followed
    by ``inbound_sas``), and of the outermost one exactly when the text from there on parses
    as an object. Anything else (another member order, an integer wider than 64 bits, which
    the fast parser would read as a float) is parsed whole by the standard library."""
    at = stored.rfind(',"inbound_sas":')
    if at >= 0:
        try:
            tail = loads_u64("{" + stored[at + 1:])
            descs = tail[name]
            if _u64_exact(descs):
                return descs  # type: ignore[no-any-return]
        except (ValueError, KeyError, TypeError):
            pass
    return json.loads(stored)[name]  # type: ignore[no-any-return]


def _u64_exact(descs: Any) -> bool:
    """False when the fast parser may have read a wide integer as a float (only lifetimes can
    hold one: every other number of a description fits 64 bits)."""
    for d in descs:
        life = d.get("lifetime")
        if life:
            for limits in life.values():
                if limits and any(isinstance(v, float) for k, v in limits.items()
                                  if k != "seconds"):
                    return False
    return True


def stored_bundle(descriptions: Sequence[Mapping[str, Any]], states: Mapping[int, StateRow],
                  installed: float) -> StoredBundle:
    """The SAs ``descriptions`` describe (one direction of a context, as stored), with their
    stored state rows by index in the bundle (``SqliteStore.sa_state``; a missing row: the SA
    as added), as they would be if built now with ``installed`` as their install time (the
    reopen's, as :meth:`.engine.Engine._bundle_of` builds them). Raises (ValueError,
    KeyError, TypeError, ConfigError) for a description it cannot read; the caller then builds
    the SAs the full way, which reports the error as the engine always has."""
    sas = []
    for i, d in enumerate(descriptions):
        cfg = _config(d["protocol"], d.get("mode", "transport"), d.get("direction"),
                      _algorithm_name(d.get("encryption")), _algorithm_name(d.get("integrity")),
                      d.get("esn", False), _ports(d.get("encapsulation")),
                      d.get("replay_window", REPLAY_WINDOW_DEFAULT))
        seq = d.get("seq", 0)
        packets = nbytes = 0
        row = states.get(i)
        if row is not None:
            # outbound: continues after the reserved block; inbound: the stored edge.
            seq, packets, nbytes = max(seq, row[0]), max(0, row[1]), max(0, row[2])
        if type(seq) is not int or seq < 0:
            raise ValueError(f"SA {i}: bad seq")
        state = SaState.MATURE
        if cfg.direction == "outbound" and seq >= (SEQ_MAX_64 if cfg.esn else SEQ_MAX_32):
            state = SaState.DEAD  # sequence numbers used up: exhausted from the start
        life = d.get("lifetime")
        if life:  # without, nothing is ever crossed
            marks = lifetime_marks(Limits.of(_lifetime(life.get("soft"))),
                                   Limits.of(_lifetime(life.get("hard"))), installed)
            if packets >= marks.packet_mark or nbytes >= marks.byte_mark:
                soft, hard = marks.crossed(packets, nbytes, installed)
                if soft is not None and state is SaState.MATURE:
                    state = SaState.DYING
                if hard is not None and state in USABLE:
                    state = SaState.DEAD
        sas.append(StoredSa(_spi(d["spi"]), cfg, seq, state, packets, nbytes))
    return StoredBundle(tuple(sas))


@functools.lru_cache(maxsize=4096)
def _config(protocol: str, mode: str, direction: str | None, encryption: str | None,
            integrity: str | None, esn: bool, encapsulation: tuple[int, int] | None,
            replay_window: int) -> StoredConfig:
    """One shared StoredConfig per distinct configuration (the SAs of a gateway mostly share
    a few), with the algorithms resolved to their canonical descriptors."""
    enc = None if encryption is None else lookup_encryption(encryption).algorithm
    integ = None if integrity is None else lookup_integrity(integrity).algorithm
    if integ is not None and integ.name == "none":
        integ = None  # SaConfig's one way to say "no integrity"
    encap = None if encapsulation is None else UdpEncapsulation(*encapsulation)
    return StoredConfig(protocol, mode, direction, enc, integ, bool(esn), encap, replay_window)


def _algorithm_name(value: Any) -> str | None:
    if value is None:
        return None
    return value["algorithm"] if isinstance(value, dict) else value  # type: ignore[no-any-return]


def _ports(value: Any) -> tuple[int, int] | None:
    return None if value is None else (value["sport"], value["dport"])


def _lifetime(value: Any) -> Lifetime | None:
    if value is None:
        return None
    return Lifetime(bytes=value.get("bytes"), packets=value.get("packets"),
                    seconds=value.get("seconds"))


def _spi(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and value[:2].lower() == "0x":
        return int(value, 16)
    raise ValueError("bad spi")


# ------------------------------------------------------------------------ reading a context
#: A listing or the statistics read the SA-state rows of all contexts in one query when at
#: least this many contexts have SAs to be read as stored (one query per context otherwise).
BULK_READ = 32
#: Stored SA-state rows by (context id, "in"/"out"): ``SqliteStore.sa_states()``.
States = Mapping[tuple[int, str], Mapping[int, StateRow]]


#: direction -> (bundle field, stored member, SA-state direction)
_NAMES = {"inbound": ("inbound_bundle", "inbound_sas", "in"),
          "outbound": ("outbound_bundle", "outbound_sas", "out")}


def sides(ctx: SaContext, store: Any, installed: float, states: States | None = None
          ) -> tuple[Any, Any]:
    """``ctx``'s (inbound, outbound) SAs as :func:`side` reads them."""
    state = ctx.__dict__
    inbound = state.get("inbound_bundle", UNBUILT)
    outbound = state.get("outbound_bundle", UNBUILT)
    if inbound is UNBUILT:
        inbound = side(ctx, "inbound", store, installed, states)
    if outbound is UNBUILT:
        outbound = side(ctx, "outbound", store, installed, states)
    return inbound, outbound


def side(ctx: SaContext, direction: str, store: Any, installed: float,
         states: States | None = None) -> Any:
    """``ctx``'s SAs of one ``direction`` ("inbound"/"outbound") as a view or the statistics
    reads them, never building them: the built Bundle (None: no SAs that way), or while they
    are unbuilt their :class:`StoredBundle` (``installed``: the reopen's time, ``store``: the
    engine's ``SqliteStore``, ``states``: its rows read at once by :func:`read_all`, else
    the context's are read now). Parsed once per context: kept in ``ctx.stored_sas`` under the
    stored text it was made from, which stays the same until the SAs are built (the engine's
    builder then drops the entry); the SA-state rows of SAs not built are never rewritten.
    A description that cannot be read so is built the full way (which logs the error)."""
    name, key, d = _NAMES[direction]
    state = ctx.__dict__
    built = state.get(name, UNBUILT)
    if built is not UNBUILT:
        return built
    text = ctx.lazy.get(key)
    cache = ctx.stored_sas
    if text is not None and cache is not None:
        hit = cache.get(key)
        if hit is not None and hit[0] is text:
            return hit[1]
    made = None
    if type(text) is AddedSas:
        # Added since the engine started: no state row, no traffic; lifetimes from the Add.
        made = stored_bundle(text.descriptions, {}, text.installed)
    elif text is not None:
        try:
            rows = states.get((ctx.id, d), {}) if states is not None \
                else store.sa_state(ctx.id, d)
            made = stored_bundle(parse_sas(text, key), rows, installed)
        except Exception:  # the full build below reports it
            log.debug("SA context %d: %s SAs not readable as stored", ctx.id, direction,
                      exc_info=True)
    # Checked after the rows were read: an SA built meanwhile (by a packet's thread) may have
    # reserved sequence numbers since, and is then read itself.
    built = state.get(name, UNBUILT)
    if built is not UNBUILT:
        return built
    if made is None or text is None:
        return getattr(ctx, name)
    if ctx.stored_sas is None:
        ctx.stored_sas = {}
    ctx.stored_sas[key] = (text, made)
    return made


def unread(ctx: SaContext) -> bool:
    """Whether ``ctx`` has SAs not built whose stored form (a reopened context's: SAs added
    since are not read from the store) was not read yet."""
    lazy = ctx.lazy
    if not lazy:
        return False
    cache = ctx.stored_sas or {}
    for key in ("inbound_sas", "outbound_sas"):
        text = lazy.get(key)
        if type(text) is str and cache.get(key, (None,))[0] is not text:
            return True
    return False


def read_all(ctxs: Iterable[SaContext], store: Any, installed: float) -> None:
    """Read the stored SAs of every one of ``ctxs`` not read yet, when there are at least
    :data:`BULK_READ` of them (a listing or the statistics right after a reopen): all SA-state
    rows in one query instead of one per context, and the collector paused meanwhile, as the
    load pauses it (this makes a few objects per context and frees none: on the heap of
    100,000 reopened contexts each of the full passes the allocations would trigger takes
    ~1.5 s and finds nothing)."""
    if store is None:
        return
    todo = [c for c in ctxs if c.lazy and unread(c)]
    if len(todo) < BULK_READ:
        return
    paused = gc.isenabled()
    gc.disable()
    try:
        states = store.sa_states()
        for c in todo:
            sides(c, store, installed, states)
        del states
    finally:
        if paused:
            gc.enable()


def forget(ctx: SaContext, key: str) -> None:
    """Drop what was read of ``ctx``'s ``key`` SAs: they are built now."""
    if ctx.stored_sas:
        ctx.stored_sas.pop(key, None)
