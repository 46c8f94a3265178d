"""SA contexts: their life cycle as a transition table (reference C.2, F.5, F.8) and their state.

::

    CREATED --GetSpi/SetSpi--> SPI_ASSIGNED --AddInbound--> INBOUND --AddOutbound--> ESTABLISHED
    ESTABLISHED/INBOUND/SPI_ASSIGNED/CREATED --Expire--> EXPIRING --linger ends--> (gone)
    any --DeleteById--> (gone)

Documented edges are Windows' (C.2); the linger of 60 s, GetSpi/SetSpi repeated in SPI_ASSIGNED,
Update in INBOUND/ESTABLISHED, Expire from the states before ESTABLISHED (nothing to send yet:
the context just lingers) are ipsecsa's choices (F.5, F.8). Any (state, operation) pair not in
:data:`TRANSITIONS` is FWP_E_INCOMPATIBLE_SA_STATE.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipsecsa.datapath.native import new_lock

#: F.8: how long an expired context's inbound SA keeps accepting packets in flight.
EXPIRE_LINGER_SECONDS = 60.0


class CtxState(enum.Enum):
    CREATED = "created"
    SPI_ASSIGNED = "spi_assigned"
    INBOUND = "inbound"
    ESTABLISHED = "established"
    EXPIRING = "expiring"


class CtxOp(enum.Enum):
    GET_SPI = "get_spi"
    SET_SPI = "set_spi"
    ADD_INBOUND = "add_inbound"
    ADD_OUTBOUND = "add_outbound"
    UPDATE = "update"
    EXPIRE = "expire"


S, O = CtxState, CtxOp
#: (state, operation) -> next state.
TRANSITIONS: dict[tuple[CtxState, CtxOp], CtxState] = {
    (S.CREATED, O.GET_SPI): S.SPI_ASSIGNED,
    (S.CREATED, O.SET_SPI): S.SPI_ASSIGNED,
    (S.SPI_ASSIGNED, O.GET_SPI): S.SPI_ASSIGNED,
    (S.SPI_ASSIGNED, O.SET_SPI): S.SPI_ASSIGNED,
    (S.SPI_ASSIGNED, O.ADD_INBOUND): S.INBOUND,
    (S.INBOUND, O.ADD_OUTBOUND): S.ESTABLISHED,
    (S.INBOUND, O.UPDATE): S.INBOUND,
    (S.ESTABLISHED, O.UPDATE): S.ESTABLISHED,
    (S.CREATED, O.EXPIRE): S.EXPIRING,
    (S.SPI_ASSIGNED, O.EXPIRE): S.EXPIRING,
    (S.INBOUND, O.EXPIRE): S.EXPIRING,
    (S.ESTABLISHED, O.EXPIRE): S.EXPIRING,
}
del S, O


def next_state(state: CtxState, op: CtxOp) -> CtxState | None:
    """The state after ``op``, or None when the table has no such edge."""
    return TRANSITIONS.get((state, op))


@dataclass(eq=False)
class SaContext:
    """One SA context. Mutated under the engine's state lock; the data path reads
    ``outbound_bundle``/``inbound_bundle`` (single reference loads) and takes ``lock`` around a
    packet so concurrent packets never share a sequence number."""

    id: int
    state: CtxState
    version1: bool  # created with Create1 (IPSEC_TRAFFIC1) rather than Create0
    traffic: Any  # IPSEC_TRAFFIC1 (a private copy; Create0's traffic converted)
    version: int  # 4 or 6
    tunnel: bool
    local: bytes
    remote: bytes
    outbound_filter: int
    created: float
    inbound_filter: int = 0
    getspi_traffic: Any = None
    udp_encap: tuple[int, int] | None = None  # (local port, remote port), GetSpi's
    udp_struct: Any = None
    spi: int | None = None
    inbound_given: Any = None  # the bundle as the caller gave it (private copy)
    outbound_given: Any = None
    inbound_bundle: Any = None  # ipsecsa.sad.Bundle while installed
    outbound_bundle: Any = None
    inbound_handle: int | None = None  # SaDatabase handle
    inbound_added: float | None = None
    outbound_added: float | None = None
    deadline: float | None = None  # lifetime seconds: behaves like Expire at this time
    idle_seconds: int = 0
    last_used: float = 0.0
    linger_until: float | None = None
    #: Taken around every outbound packet (and by the inbound path): ``_fastesp.Lock`` when
    #: the native extension is on, so that the engine's native route takes the very same lock
    #: (:mod:`ipsecsa.datapath.native`), else a ``threading.Lock``.
    lock: Any = field(default_factory=new_lock)
    #: True while at least one of its SAs is on the NIC (:mod:`ipsecsa.wfp.offload` sets it;
    #: GetById/SaEnum then report IPSEC_SA_BUNDLE_FLAG_SA_OFFLOADED); False in software.
    offloaded: bool = False
    #: The outbound SAs have packet or byte limits (only then is each packet followed by a
    #: check of whether it used the last of them).
    limited: bool = False
    #: The engine's native outbound route for this context (``_fastesp.Route``) once a packet
    #: learned it, False when the outbound bundle cannot have one (ESP+AH, AH, a Python-path
    #: SA), None before; killed when the context loses its outbound bundle.
    route: Any = None
    #: Durable engines: inbound packets since the last checkpoint of counters and replay edge.
    #: (Outbound sequence numbers are reserved through the SAs' ``seq_limit``/``seq_limit_hook``.)
    unsaved: int = 0
    #: Durable engines: JSON of the parts that are set once, and the secret column's bytes
    #: made of them (:func:`.persist.context_rows`).
    encoded: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False,
                                                compare=False)
    #: Durable engines: the SA-state row last written per (direction, index), or the row a
    #: missing one stands for (an SA as added: its description says it all), so that a change
    #: of state rewrites only rows that changed.
    saved_rows: dict[tuple[str, int], tuple[int, str, int, int, int, int]] = field(
        default_factory=dict, repr=False, compare=False)
    #: What is not built yet. A reopened context's LAZY_FIELDS map to the text of the stored
    #: row (its body or its secret column) that holds them as members; ``inbound_sas`` and
    #: ``outbound_sas``, for SAs not built yet, to that text too (a reopened context's) or to
    #: the :class:`AddedSas` an Add left (a context's SAs are built at first need, not at the
    #: Add: see :meth:`defer_sas`).
    lazy: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: A context with SAs not built yet: ``builder(ctx, name)`` builds ``inbound_bundle`` or
    #: ``outbound_bundle`` from ``lazy``, stores it in the context and returns it (None if it
    #: cannot be built now; see :class:`_LazyBundle`).
    builder: Callable[[SaContext, str], Any] | None = field(default=None, repr=False,
                                                           compare=False)
    #: A context with SAs not built yet: what views and statistics read of them
    #: (``ipsecsa.wfp.stored``), by ``inbound_sas``/``outbound_sas``: (the ``lazy`` entry it
    #: was read from, the StoredBundle). None until something reads them.
    stored_sas: dict[str, tuple[Any, Any]] | None = field(default=None, repr=False,
                                                          compare=False)

    @classmethod
    def restored(cls, values: dict[str, Any], lazy: dict[str, Any]) -> SaContext:
        """A context rebuilt from the store (a reopen makes 100,000 of these): the declared
        defaults, then ``values``, without running ``__init__``. Each of LAZY_FIELDS is either
        in ``values`` or in ``lazy``: the text of the stored row that holds it as a member,
        rebuilt at first read (:class:`_Lazy`)."""
        obj = object.__new__(cls)
        state = obj.__dict__
        state.update(_RESTORE_DEFAULTS)
        for name, factory in _RESTORE_FACTORIES:
            state[name] = factory()
        state.update(values)
        obj.lazy = lazy
        return obj

    def defer_sas(self, direction: str, stored: str | AddedSas,
                  builder: Callable[[SaContext, str], Any]) -> None:
        """Keep the ``direction`` ("inbound"/"outbound") SAs unbuilt until first needed
        (:class:`_LazyBundle`, which calls ``builder``): ``stored`` is the secret column holding
        their descriptions (a reopened context's) or what the Add gave (:class:`AddedSas`)."""
        self.__dict__.pop(f"{direction}_bundle", None)
        self.lazy[f"{direction}_sas"] = stored
        self.builder = builder

    def built(self, name: str) -> Any:
        """``inbound_bundle``/``outbound_bundle`` if it exists as an object (None included),
        UNBUILT while it is still in stored form; never builds it."""
        return self.__dict__.get(name, UNBUILT)

    def __repr__(self) -> str:
        """Identity, state and SPIs only: reading a field still in stored form would build it
        (a reopened context's SAs: keys parsed, cipher contexts made) just to print it, and
        the structures as given hold the keys."""
        def sas(name: str) -> str:
            b = self.built(name)
            if b is UNBUILT:
                return "not built"
            if b is None:
                return "none"
            return "[" + ", ".join(f"{sa.config.protocol} 0x{sa.spi:08x}" for sa in b.sas) + "]"

        try:
            hosts = f"{ipaddress.ip_address(self.local)} -> {ipaddress.ip_address(self.remote)}"
        except ValueError:
            hosts = "?"
        spi = "none" if self.spi is None else f"0x{self.spi:08x}"
        return (f"<SaContext {self.id} {self.state.value} IPv{self.version} "
                f"{'tunnel' if self.tunnel else 'transport'} {hosts} spi={spi} "
                f"filters={self.outbound_filter}/{self.inbound_filter} "
                f"inbound={sas('inbound_bundle')} outbound={sas('outbound_bundle')}>")

    def next_timer(self) -> float | None:
        """When the engine must look at this context again (lifetime, idle time, linger)."""
        times = []
        if self.linger_until is not None:
            times.append(self.linger_until)
        elif self.state is not CtxState.EXPIRING:
            if self.deadline is not None:
                times.append(self.deadline)
            if self.idle_seconds:
                times.append(self.last_used + self.idle_seconds)
        return min(times) if times else None


#: Stands for a part of a context not built yet (see SaContext.built).
UNBUILT: Any = object()


class AddedSas:
    """One direction's SAs as an Add gave them, not built yet (issue 12: building an SA parses
    its keys and makes its OpenSSL contexts, most of an Add's cost, and nothing needs the
    objects before the first packet, an offload or a key-known-answer test).

    ``descriptions``: complete ``sa-format`` descriptions (keys included, as hex), ESP first:
    what :func:`.sabuild.describe` made of a Windows bundle, or made from ``configs`` when
    first asked for. ``configs``: their validated ``SaConfig`` when the Add had them
    (``add_inbound_sas``/``add_outbound_sas``, whose descriptions are parsed to be checked
    against the context), else None (parsed at the build; :mod:`.sabuild` holds why every
    description it makes parses). ``installed``: the engine's clock at the Add, when the SAs'
    lifetimes start, whenever they are built."""

    __slots__ = ("_descriptions", "configs", "installed")

    def __init__(self, descriptions: tuple[dict[str, Any], ...] | None,
                 configs: tuple[Any, ...] | None, installed: float) -> None:
        if descriptions is None and configs is None:
            raise ValueError("AddedSas needs descriptions or configs")
        self._descriptions = descriptions
        self.configs = configs
        self.installed = installed

    @property
    def descriptions(self) -> tuple[dict[str, Any], ...]:
        if self._descriptions is None:
            assert self.configs is not None
            self._descriptions = tuple(cfg.to_dict() for cfg in self.configs)
        return self._descriptions

    def __len__(self) -> int:
        return len(self.configs if self.configs is not None else self._descriptions or ())

    def __repr__(self) -> str:  # never the keys
        return f"<AddedSas of {len(self)} SA(s), not built>"

#: The structures a reopened context keeps in stored form until something reads them: the
#: caller's traffic and bundles as given are read only by Get/Enum/Update, so a database of
#: 100,000 contexts reopens without rebuilding 500,000 structures nobody asked for.
LAZY_FIELDS = ("traffic", "getspi_traffic", "udp_struct", "inbound_given", "outbound_given")
_lazy_lock = threading.Lock()


class _Lazy:
    """A non-data descriptor standing in for a deferred field: the first read rebuilds the
    structure (the store codec's ``loads`` of the row holding it, which rebuilds at once every
    other deferred field of that row) and stores it in the instance, which then shadows this.
    Reads may come from packet threads (the traffic of a flow's first packet): the rebuild is
    done once, under a lock."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return None
        from ipsecsa.store.codec import loads  # the store imports this module

        with _lazy_lock:
            state = obj.__dict__
            if self.name in state:  # rebuilt by another thread meanwhile
                return state[self.name]
            text = obj.lazy[self.name]
            row = loads(text)
            for name in LAZY_FIELDS:
                if obj.lazy.get(name) is text:
                    del obj.lazy[name]
                    if name not in state:  # not replaced (set) since the reopen
                        state[name] = row[name]
            return state[self.name]


class _LazyBundle:
    """A non-data descriptor standing in for SAs not built yet: the first read builds them
    (``ctx.builder``, the engine's), which stores the bundle in the instance."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return None
        return obj.builder(obj, self.name)


_FIELDS = dataclasses.fields(SaContext)
#: SaContext.restored: the plain defaults, and the fields made per instance.
_RESTORE_DEFAULTS = {f.name: f.default for f in _FIELDS
                     if f.default is not dataclasses.MISSING and f.name not in LAZY_FIELDS}
_RESTORE_FACTORIES = [(f.name, f.default_factory) for f in _FIELDS
                      if f.default_factory is not dataclasses.MISSING and f.name != "lazy"]
for _name in LAZY_FIELDS:
    setattr(SaContext, _name, _Lazy(_name))
for _name in ("inbound_bundle", "outbound_bundle"):
    setattr(SaContext, _name, _LazyBundle(_name))
