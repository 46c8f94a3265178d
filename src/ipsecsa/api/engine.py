"""The Pythonic face of the SA-context engine: ``api.Engine``, sessions, transactions.

Every operation calls one or more Windows-faithful methods of :class:`ipsecsa.wfp.Engine` (or
its snake_case ipsecsa extensions) and turns a failed status into the typed exception of
:mod:`.errors`, with the field the engine named, renamed to this API's argument names. No rule
is written here: validation, the state machine and filter semantics are the engine's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

from ipsecsa import wfp
from ipsecsa.api.errors import AccessDenied, InvalidArgument, NotSupported, error_for
from ipsecsa.api.policy import MARKER, FilterSpec, context_filters
from ipsecsa.api.views import ContextEvent, ContextInfo, FilterEvent
from ipsecsa.config import parse_sa
from ipsecsa.datapath.result import Result
from ipsecsa.errors import ConfigError

_KINDS = {wfp.IPSEC_SA_CONTEXT_EVENT_ADD: "added", wfp.IPSEC_SA_CONTEXT_EVENT_DELETE: "deleted",
          wfp.IPSECSA_SA_CONTEXT_EVENT_STATE: "changed"}
_FILTER_KINDS = {wfp.FWPM_CHANGE_ADD: "added", wfp.FWPM_CHANGE_DELETE: "deleted"}
Rename = Callable[[str], str]


def _same(field: str) -> str:
    return field


def _renamer(table: dict[str, str], descriptions: str | None = None,
             single: bool = True) -> Rename:
    """Engine field names -> this API's: ``table`` for parameters, and the ``descriptions``
    prefix of an SA-description field for the argument that held them."""

    def rename(field: str) -> str:
        if descriptions is not None and field.startswith("descriptions"):
            rest = field[len("descriptions"):]
            if single and rest.startswith("[0]"):
                rest = rest[3:]
            return descriptions + rest
        return table.get(field, field)

    return rename


def _check(bfe: wfp.Engine, result: Any, rename: Rename = _same) -> Any:
    """A Windows method's result: its out-parameters on success, else the typed exception."""
    status = result if isinstance(result, int) else result[0]
    if status == wfp.ERROR_SUCCESS:
        if isinstance(result, int):
            return None
        return result[1] if len(result) == 2 else result[1:]
    failure = bfe.last_failure()
    detail = field = ""
    if failure is not None and failure.status == status:
        detail, field = failure.detail, failure.field
    raise error_for(status, detail, rename(field) if field else "")


def _check_unless_gone(bfe: wfp.Engine, status: int) -> None:
    """:func:`_check` for closing calls: a handle already gone (ERROR_INVALID_HANDLE) or an
    engine already closed (EPT_S_NOT_REGISTERED) means there is nothing left to close."""
    if status not in (wfp.ERROR_INVALID_HANDLE, wfp.EPT_S_NOT_REGISTERED):
        _check(bfe, status)


def _bundle(value: Any, name: str) -> list[dict[str, Any]]:
    """One description or a list of them (ESP then AH)."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER,
                          "an SA description (dict) or a list of them", name)


def _parsed(value: Any, name: str) -> Any:
    """The first SA of a bundle, parsed by the shared parser (for its addresses, mode and
    selectors); create_context hands it to the engine as parsed, which validates the rest of
    the bundle and fits it all to the context when it installs it."""
    descriptions = _bundle(value, name)
    if not descriptions:
        raise InvalidArgument(wfp.FWP_E_INVALID_TRANSFORM_COMBINATION, "no SA", name)
    where = name if isinstance(value, dict) else f"{name}[0]"
    try:
        return parse_sa(descriptions[0])
    except ConfigError as exc:
        raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER, exc.reason,
                              f"{where}.{exc.field}" if exc.field else where) from exc


def _identity(user: str | None) -> Any:
    if user is None:
        return None
    domain, _, name = user.rpartition("\\")
    return wfp.SEC_WINNT_AUTH_IDENTITY_W(User=name, Domain=domain or None)


def _ip_traffic(version: int, local: str, remote: str, filter_id: int, tunnel: bool) -> Any:
    la, ra = ipaddress.ip_address(local), ipaddress.ip_address(remote)
    kw: dict[str, Any] = {"ipsecFilterId": filter_id,
                          "trafficType": wfp.IPSEC_TRAFFIC_TYPE_TUNNEL if tunnel
                          else wfp.IPSEC_TRAFFIC_TYPE_TRANSPORT}
    if version == 4:
        return wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_V4, localV4Address=int(la),
                                  remoteV4Address=int(ra), **kw)
    return wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_V6, localV6Address=la.packed,
                              remoteV6Address=ra.packed, **kw)


def _address(value: Any, name: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER, str(exc), name) from None


def _network(value: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        return ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER, str(exc), name) from None


def _mode(mode: str) -> bool:
    if mode not in ("transport", "tunnel"):
        raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER,
                              f"mode {mode!r}: 'transport' or 'tunnel'", "mode")
    return mode == "tunnel"


class _Operations:
    """The operations of a session; :class:`Engine` runs them in its own default session."""

    _bfe: wfp.Engine
    _handle: int
    _owner: Engine

    # ---------------------------------------------------------------- SA contexts, whole
    def create_context(self, *, outbound: Any, inbound: Any) -> ContextInfo:
        """Establish an SA context from two SA descriptions (``sa-format``; a dict, or a list
        of two for ESP then AH): this host sends with ``outbound`` (src = this host) and
        receives with ``inbound`` (its SPI is this host's). Makes (or reuses) the IPsec filter
        pair the traffic needs, then Create, SetSpi, AddInbound, AddOutbound. On any failure
        everything it made is removed and the typed error raised, its ``field`` prefixed by
        ``outbound``/``inbound``."""
        out_cfg = _parsed(outbound, "outbound")
        in_cfg = _parsed(inbound, "inbound")
        for name, cfg in (("outbound", out_cfg), ("inbound", in_cfg)):
            if len(cfg.selectors) > 1:
                raise NotSupported(wfp.ERROR_NOT_SUPPORTED,
                                   "one selector per context (a filter pair matches one); make "
                                   "one context per selector", f"{name}.selectors")
        if (in_cfg.src, in_cfg.dst) != (out_cfg.dst, out_cfg.src):
            raise error_for(wfp.FWP_E_TRAFFIC_MISMATCH, "the inbound SA must run from the "
                            f"outbound SA's dst {out_cfg.dst} to its src {out_cfg.src}",
                            "inbound.src")
        if in_cfg.mode != out_cfg.mode:
            raise error_for(wfp.FWP_E_TRAFFIC_MISMATCH, f"a {in_cfg.mode} inbound SA with a "
                            f"{out_cfg.mode} outbound SA", "inbound.mode")
        in_spec, out_spec = context_filters(out_cfg, in_cfg)
        tunnel = out_cfg.mode == "tunnel"
        local, remote = str(out_cfg.src), str(out_cfg.dst)
        owner = self._owner
        if owner._sweeper is None:
            # No subscription tells this engine when a context ends by itself (its user may
            # not subscribe): remove the filters such contexts left before making more.
            owner._sweep()
        made: list[int] = []
        ctx_id = None
        try:
            # Until SetSpi the context names only the outbound filter: the lock keeps the
            # sweep and other contexts' deletes from taking the inbound one meanwhile.
            with owner._policy:
                made.append(self._policy_filter(in_spec))
                made.append(self._policy_filter(out_spec))
                ctx_id = self._create(local, remote, made[1], tunnel, out_cfg.src.version)
                encap = in_cfg.encapsulation
                self.set_spi(ctx_id, in_cfg.spi, inbound_filter=made[0],
                             encapsulation=None if encap is None else
                             {"local_port": encap.dport, "remote_port": encap.sport},
                             _rename={"inboundSpi": "inbound.spi", "spi": "inbound.spi"})
            self._add(ctx_id, inbound, True, "inbound", in_cfg)
            self._add(ctx_id, outbound, False, "outbound", out_cfg)
        except BaseException:
            self._undo_create(ctx_id, made)
            raise
        return self.context(ctx_id)

    def _policy_filter(self, spec: FilterSpec) -> int:
        """The API's filter for ``spec``: the existing one (same key), or a new one."""
        status, flt = self._bfe.FwpmFilterGetByKey0(self._handle, spec.key)
        if status == wfp.ERROR_SUCCESS:
            return int(flt.filterId)
        return int(_check(self._bfe, self._bfe.FwpmFilterAdd0(
            self._handle, spec.to_filter(MARKER, spec.key), None)))

    def _create(self, local: str, remote: str, out_fid: int, tunnel: bool, version: int) -> int:
        traffic = _ip_traffic(version, local, remote, out_fid, tunnel)
        result = self._bfe.IPsecSaContextCreate1(self._handle, traffic, None)
        return int(_check(self._bfe, result, _renamer({"ipsecFilterId": "outbound_filter"}))[1])

    def _undo_create(self, ctx_id: int | None, filters: list[int]) -> None:
        """Remove what a failed create_context made: the context, and its filters unless
        another context names them (the engine refuses with FWP_E_IN_USE)."""
        owner = self._owner
        if ctx_id is not None:
            owner._note_deleting(ctx_id)
            if self._bfe.IPsecSaContextDeleteById0(self._handle, ctx_id) != wfp.ERROR_SUCCESS:
                owner._note_deleting(ctx_id, False)  # already gone: nothing to undo there
        with owner._policy:
            for fid in filters:
                owner._drop_policy_filter(fid, self._handle)

    def _add(self, ctx_id: int, descriptions: Any, inbound: bool, name: str,
             first: Any = None) -> None:
        """Install a bundle through the engine. ``first``: the bundle's first SA as
        :func:`_parsed` made it, handed over so the engine does not parse it again (the rest
        are parsed there, in the engine's order of checks)."""
        bundle = _bundle(descriptions, name)
        if first is not None:
            bundle[0] = first
        method = self._bfe.add_inbound_sas if inbound else self._bfe.add_outbound_sas
        _check(self._bfe, method(self._handle, ctx_id, bundle),
               _renamer({"id": "context_id"}, name, isinstance(descriptions, dict)))

    # ---------------------------------------------------------------- SA contexts, by step
    def new_context(self, *, local: str, remote: str, outbound_filter: int,
                    mode: str = "transport") -> ContextInfo:
        """IPsecSaContextCreate1: a context for traffic from ``local`` to ``remote`` sent through
        the outbound IPsec filter ``outbound_filter`` (state ``"created"``)."""
        tunnel = _mode(mode)
        local = _address(local, "local")
        remote = _address(remote, "remote")
        version = ipaddress.ip_address(local).version
        return self.context(self._create(local, remote, outbound_filter, tunnel, version))

    def _getspi(self, info: ContextInfo, inbound_filter: int,
                encapsulation: dict[str, int] | None) -> Any:
        traffic = _ip_traffic(info.ip_version, info.local, info.remote, inbound_filter,
                              info.mode == "tunnel")
        udp = None
        if encapsulation is not None:
            try:
                udp = wfp.IPSEC_V4_UDP_ENCAPSULATION0(
                    localUdpEncapPort=encapsulation["local_port"],
                    remoteUdpEncapPort=encapsulation["remote_port"])
            except (KeyError, TypeError):
                raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER, "encapsulation takes "
                                      "local_port and remote_port", "encapsulation") from None
        return wfp.IPSEC_GETSPI1(inboundIpsecTraffic=traffic, ipVersion=traffic.ipVersion,
                                 inboundUdpEncapsulation=udp)

    def get_spi(self, context_id: int, *, inbound_filter: int,
                encapsulation: dict[str, int] | None = None) -> int:
        """IPsecSaContextGetSpi1: allocate this host's inbound SPI (random, F.4). The inbound
        traffic is the context's host pair through ``inbound_filter``; ``encapsulation``
        ``{"local_port": 4500, "remote_port": 4500}`` asks for UDP-encapsulated ESP."""
        getspi = self._getspi(self.context(context_id), inbound_filter, encapsulation)
        return int(_check(self._bfe, self._bfe.IPsecSaContextGetSpi1(
            self._handle, context_id, getspi), _renamer(
            {"id": "context_id", "ipsecFilterId": "inbound_filter"})))

    def set_spi(self, context_id: int, spi: int, *, inbound_filter: int,
                encapsulation: dict[str, int] | None = None,
                _rename: dict[str, str] | None = None) -> None:
        """IPsecSaContextSetSpi0: this host's inbound SPI is ``spi`` (manual keying)."""
        getspi = self._getspi(self.context(context_id), inbound_filter, encapsulation)
        table = {"id": "context_id", "ipsecFilterId": "inbound_filter", "inboundSpi": "spi"}
        table.update(_rename or {})
        _check(self._bfe, self._bfe.IPsecSaContextSetSpi0(self._handle, context_id, getspi, spi),
               _renamer(table))

    def add_inbound(self, context_id: int, sa: Any) -> ContextInfo:
        """Install the inbound SA(s): one description, or ESP then AH. Their SPI must be the
        one get_spi/set_spi gave."""
        self._add(context_id, sa, True, "sa")
        return self.context(context_id)

    def add_outbound(self, context_id: int, sa: Any) -> ContextInfo:
        """Install the outbound SA(s); traffic flows from here on (state ``"established"``)."""
        self._add(context_id, sa, False, "sa")
        return self.context(context_id)

    def expire(self, context_id: int) -> None:
        """IPsecSaContextExpire0: stop sending at once; the inbound SA keeps accepting packets
        in flight for 60 s (F.8), then the context is deleted."""
        _check(self._bfe, self._bfe.IPsecSaContextExpire0(self._handle, context_id),
               _renamer({"id": "context_id"}))

    def delete(self, context_id: int) -> None:
        """IPsecSaContextDeleteById0: both sides gone at once; the filters the API made for the
        context are deleted too when no other context names them."""
        info = self.context(context_id)
        owner = self._owner
        owner._note_deleting(context_id)
        try:
            _check(self._bfe, self._bfe.IPsecSaContextDeleteById0(self._handle, context_id),
                   _renamer({"id": "context_id"}))
        except BaseException:
            owner._note_deleting(context_id, False)
            raise
        with owner._policy:
            for fid in (info.outbound_filter, info.inbound_filter):
                if fid:
                    owner._drop_policy_filter(fid, self._handle)

    # ---------------------------------------------------------------- reading
    def context(self, context_id: int) -> ContextInfo:
        """One context: state, host pair, SPIs, filters, SAs with their counters."""
        view = _check(self._bfe, self._bfe.sa_context_view(self._handle, context_id),
                      _renamer({"id": "context_id"}))
        return ContextInfo.from_view(view)

    def contexts(self) -> list[ContextInfo]:
        """Every context, by id."""
        views = _check(self._bfe, self._bfe.sa_context_views(self._handle))
        return [ContextInfo.from_view(v) for v in views]

    def statistics(self) -> dict[str, Any]:
        """IPsecGetStatistics1 as a dict (SA counts, drops by kind, traffic totals)."""
        st = _check(self._bfe, self._bfe.IPsecGetStatistics1(self._handle))
        return dataclasses.asdict(st)

    # ---------------------------------------------------------------- filters
    def add_ipsec_filter(self, direction: str, *, local: Any = None, remote: Any = None,
                         protocol: int = 0, local_port: int = 0, remote_port: int = 0,
                         mode: str = "transport", ip_version: int | None = None,
                         name: str = "ipsecsa.api filter") -> int:
        """FwpmFilterAdd0 of an IPsec filter for step-by-step contexts: ``direction``
        ``"inbound"``/``"outbound"``; ``local``/``remote`` an address or prefix (None: any);
        protocol and ports 0 for any. Returns the filter id. The API never deletes it."""
        if direction not in ("inbound", "outbound"):
            raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER,
                                  f"direction {direction!r}: 'inbound' or 'outbound'",
                                  "direction")
        tunnel = _mode(mode)
        lnet, rnet = _network(local, "local"), _network(remote, "remote")
        version = ip_version or (lnet or rnet).version if (lnet or rnet) else ip_version
        if version not in (4, 6):
            raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER,
                                  "ip_version 4 or 6 (needed when no address is given)",
                                  "ip_version")
        spec = FilterSpec(direction, version, tunnel, lnet, rnet, protocol, local_port,
                          remote_port)
        rename = _renamer({})
        return int(_check(self._bfe, self._bfe.FwpmFilterAdd0(
            self._handle, spec.to_filter(name), None), rename))

    def delete_filter(self, filter_id: int) -> None:
        """FwpmFilterDeleteById0 (InUse while a context names it)."""
        _check(self._bfe, self._bfe.FwpmFilterDeleteById0(self._handle, filter_id),
               _renamer({"id": "filter_id"}))

    # ---------------------------------------------------------------- events
    def events(self, *, timeout: float | None = None, filters: bool = False,
               states: bool = False) -> EventStream:
        """The SA-context events from now on, as an iterator (a context manager too: leaving
        it unsubscribes). ``timeout``: iteration stops when no event came for that long.
        ``filters``: filter additions and deletions too (:class:`FilterEvent`), in the order
        they happened with the context events. ``states``: ``"changed"`` events too (see
        :meth:`subscribe`)."""
        return EventStream(self, timeout, filters, states)

    def subscribe(self, callback: Callable[[Any], Any], *, filters: bool = False,
                  states: bool = False) -> Subscription:
        """Call ``callback(event)`` for each SA-context event (and, with ``filters``, each
        filter event), on the engine's notification thread (it may call the engine).
        ``states``: also ``ContextEvent("changed", id)`` when a context changes state without
        appearing or disappearing (SPI set, a side added, expired by a call, a lifetime or a
        hard limit) -- an ipsecsa extension, for a subscriber that keeps a copy of the
        contexts up to date without listing them. Returns the :class:`Subscription` to
        cancel."""
        return Subscription(self, callback, filters, states)


Event = ContextEvent | FilterEvent


class Subscription:
    """A callback subscription to SA-context events (IPsecSaContextSubscribe0) and, when asked
    for, filter events (FwpmFilterSubscribeChanges0). Both arrive on the engine's one
    notification thread, so their relative order is the order of the changes."""

    def __init__(self, ops: _Operations, callback: Callable[[Any], Any],
                 filters: bool = False, states: bool = False) -> None:
        if not callable(callback):
            raise InvalidArgument(wfp.FWP_E_INVALID_PARAMETER, "callback must be callable",
                                  "callback")
        self._bfe, self._session = ops._bfe, ops._handle
        self._filter_handle: int | None = None

        def deliver(_context: Any, change: Any) -> None:
            kind = _KINDS.get(change.changeType)
            if kind is not None:
                callback(ContextEvent(kind, change.saContextId))

        def deliver_filter(_context: Any, change: Any) -> None:
            kind = _FILTER_KINDS.get(change.changeType)
            if kind is not None:
                callback(FilterEvent(kind, change.filterId, str(change.filterKey)))

        subscribe = (self._bfe.sa_context_subscribe_states if states
                     else self._bfe.IPsecSaContextSubscribe0)
        self._handle: int | None = _check(self._bfe, subscribe(
            self._session, wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(), deliver, None))
        if filters:
            try:
                self._filter_handle = _check(self._bfe, self._bfe.FwpmFilterSubscribeChanges0(
                    self._session, wfp.FWPM_FILTER_SUBSCRIPTION0(), deliver_filter, None))
            except BaseException:
                self.cancel()
                raise

    def cancel(self) -> None:
        """Unsubscribe; waits for a callback in progress. Idempotent."""
        handle, self._handle = self._handle, None
        fhandle, self._filter_handle = self._filter_handle, None
        for h, unsubscribe in ((handle, self._bfe.IPsecSaContextUnsubscribe0),
                               (fhandle, self._bfe.FwpmFilterUnsubscribeChanges0)):
            if h is not None:
                _check_unless_gone(self._bfe, unsubscribe(self._session, h))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


_END = object()


class EventStream:
    """Events as an iterator, fed by a subscription made when it is created."""

    def __init__(self, ops: _Operations, timeout: float | None, filters: bool = False,
                 states: bool = False) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._timeout = timeout
        self._sub = Subscription(ops, self._queue.put, filters, states)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        event = self.get(self._timeout)
        if event is None:
            raise StopIteration
        return event

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after ``timeout`` seconds (None: wait) or once closed."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END:
            self._queue.put(_END)  # stay closed
            return None
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._sub.cancel()
        self._queue.put(_END)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transaction:
    """An explicit transaction of a session (FwpmTransactionBegin0). As a context manager it
    commits when the block ends normally and aborts when it raises."""

    def __init__(self, session: Session, read_only: bool) -> None:
        self._session = session
        flags = wfp.FWPM_TXN_READ_ONLY if read_only else 0
        _check(session._bfe, session._bfe.FwpmTransactionBegin0(session._handle, flags))
        self.read_only = read_only
        self.open = True

    def commit(self) -> None:
        self.open = False
        _check(self._session._bfe, self._session._bfe.FwpmTransactionCommit0(
            self._session._handle))

    def abort(self) -> None:
        self.open = False
        _check(self._session._bfe, self._session._bfe.FwpmTransactionAbort0(
            self._session._handle))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if not self.open:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Session(_Operations):
    """A session of the engine (FwpmEngineOpen0), as ``user`` (``"DOMAIN\\\\name"`` or
    ``"name"``; None: the engine's owner). ``dynamic``: its filters die with it.
    ``wait_timeout``: seconds to wait for another session's transaction (0: 15 s)."""

    def __init__(self, owner: Engine, user: str | None = None, *, dynamic: bool = False,
                 wait_timeout: float = 0.0, name: str | None = None) -> None:
        self._owner = owner
        self._bfe = owner._bfe
        record = wfp.FWPM_SESSION0(
            displayData=wfp.FWPM_DISPLAY_DATA0(name=name or "ipsecsa.api session"),
            flags=wfp.FWPM_SESSION_FLAG_DYNAMIC if dynamic else 0,
            txnWaitTimeoutInMSec=int(wait_timeout * 1000))
        self._handle = int(_check(self._bfe, self._bfe.FwpmEngineOpen0(
            None, wfp.RPC_C_AUTHN_WINNT, _identity(user), record)))
        self.user = user
        self.dynamic = dynamic

    @property
    def handle(self) -> int:
        """The Windows session handle (for calls on ``engine.wfp``)."""
        return self._handle

    def transaction(self, *, read_only: bool = False) -> Transaction:
        """Begin an explicit transaction (``with session.transaction(): ...``)."""
        return Transaction(self, read_only)

    def close(self) -> None:
        """FwpmEngineClose0 (aborts an open transaction; a dynamic session's filters go)."""
        _check_unless_gone(self._bfe, self._bfe.FwpmEngineClose0(self._handle))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine(_Operations):
    """The SA-context engine with a Pythonic face. ``database``: where its state lives (None:
    in memory, lost on close), ``database_key`` the key encrypting its key columns (see
    ``docs/store.md``); ``offload``: an NDIS miniport to offload SA pairs to (``docs/wfp.md``);
    ``clock``: seconds, for lifetimes (default monotonic); ``user``:
    the principal of the engine's own session, which runs the operations called on the engine
    itself (``engine.create_context(...)``); open more with :meth:`session`."""

    def __init__(self, database: str | os.PathLike[str] | None = None, *,
                 clock: Callable[[], float] | None = None, user: str | None = None,
                 database_key: bytes | None = None, offload: Any = None) -> None:
        self._bfe = wfp.Engine(database=database, clock=clock, database_key=database_key,
                               offload=offload)
        self._owner = self
        self._policy = threading.RLock()  # the API's filters: find/make + Create vs. delete
        self._deleting: set[int] = set()
        self._deleting_lock = threading.Lock()
        try:
            self._session = Session(self, user, name="ipsecsa.api engine")
            self._handle = self._session.handle
            self._sweeper: Subscription | None = None
            try:
                self._sweeper = Subscription(self, self._context_gone)
            except AccessDenied:
                # A user without the subscribe right: filters of contexts that vanish on
                # their own (linger, lifetime) are swept at the next create_context instead.
                pass
        except BaseException:
            self._bfe.close()
            raise

    @property
    def wfp(self) -> wfp.Engine:
        """The Windows-faithful engine underneath (the same state)."""
        return self._bfe

    def session(self, user: str | None = None, *, dynamic: bool = False,
                wait_timeout: float = 0.0, name: str | None = None) -> Session:
        """Open a session (a context manager: leaving it closes the session)."""
        return Session(self, user, dynamic=dynamic, wait_timeout=wait_timeout, name=name)

    def grant(self, principal: str, rights: int, container: str = "engine") -> None:
        """Allow ``principal`` the ``FWPM_ACTRL_*`` ``rights`` on ``container``
        (``"engine"``, ``"ipsec_sa_db"``, ``"filters"``)."""
        self._bfe.grant(principal, rights, container)

    def revoke(self, principal: str, rights: int, container: str = "engine") -> None:
        self._bfe.revoke(principal, rights, container)

    # ---------------------------------------------------------------- traffic
    def outbound(self, packet: bytes) -> Result:
        """The host sending ``packet``: ``Result(packet, drop)`` (protected, clear, or dropped
        with a ``DropReason``)."""
        return self._bfe.outbound(packet)

    def outbound_batch(self, packets: Any) -> list[Result]:
        """:meth:`outbound` for many packets at once, one ``Result`` each in input order (each
        context's packets protected in one native call; see ``docs/wfp.md``)."""
        return self._bfe.outbound_batch(packets)

    def inbound(self, packet: bytes) -> Result:
        """The host receiving ``packet``: ``Result(inner packet, drop)``."""
        return self._bfe.inbound(packet)

    def flush_events(self, timeout: float = 5.0) -> None:
        """Wait until every event so far has reached its subscribers."""
        self._bfe.flush_notifications(timeout)

    @property
    def events_dropped(self) -> int:
        """Events dropped so far, for every subscriber, because the engine's notification
        queue was full (a subscriber too slow): one that keeps a copy of the contexts reads
        them all again when this grows."""
        return self._bfe.notifications_dropped

    def run_timers(self) -> None:
        """Let the engine run the timers that are due (lifetimes, expire lingers) and nothing
        else. Every call runs them first; this one reads nothing, so it costs nothing unless
        a timer is due -- for a caller that must see contexts expire on time without listing
        them (the gateway's housekeeping)."""
        _check(self._bfe, self._bfe.run_timers(self._handle))

    # ---------------------------------------------------------------- the API's filters
    def _note_deleting(self, context_id: int, add: bool = True) -> None:
        with self._deleting_lock:
            if add:
                self._deleting.add(context_id)
            else:
                self._deleting.discard(context_id)

    def _context_gone(self, event: ContextEvent) -> None:
        """A context disappeared. If not by :meth:`delete` (which removes its filters itself),
        by a linger's end or a lifetime: remove the API's filters no context names any more."""
        if event.kind != "deleted":
            return
        with self._deleting_lock:
            if event.context_id in self._deleting:
                self._deleting.discard(event.context_id)
                return
        self._sweep()

    def _sweep(self) -> None:
        bfe, h = self._bfe, self._handle
        with self._policy:
            status, enum = bfe.FwpmFilterCreateEnumHandle0(h, None)
            if status != wfp.ERROR_SUCCESS:
                return  # closing, or no right to read filters: nothing the sweep can do
            try:
                status, filters, _ = bfe.FwpmFilterEnum0(h, enum, 0xFFFFFFFF)
            finally:
                bfe.FwpmFilterDestroyEnumHandle0(h, enum)
            for flt in filters or ():
                if flt.displayData is not None and flt.displayData.name == MARKER:
                    bfe.FwpmFilterDeleteById0(h, flt.filterId)  # FWP_E_IN_USE: still named

    def _drop_policy_filter(self, filter_id: int, handle: int | None = None) -> None:
        """Delete one of the API's filters unless a context still names it (the engine says
        FWP_E_IN_USE) or it is not the API's. ``handle``: the session that made it (a dynamic
        session's filters are its own to delete)."""
        h = self._handle if handle is None else handle
        status, flt = self._bfe.FwpmFilterGetById0(h, filter_id)
        if status == wfp.ERROR_SUCCESS and flt.displayData is not None \
                and flt.displayData.name == MARKER:
            self._bfe.FwpmFilterDeleteById0(h, filter_id)

    # ---------------------------------------------------------------- life
    def close(self) -> None:
        """Stop the engine (with ``database=None`` its state is gone)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
        self._bfe.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(database: str | os.PathLike[str] | None = None, *,
         clock: Callable[[], float] | None = None, user: str | None = None,
         database_key: bytes | None = None, offload: Any = None) -> Engine:
    """``api.open(...)`` is ``api.Engine(...)``: reads well in ``with api.open() as engine:``."""
    return Engine(database, clock=clock, user=user, database_key=database_key, offload=offload)
