"""The Base Filtering Engine: sessions, transactions, access checks, filters, SA contexts, and the
traffic that runs through them (reference B–F).

Every Windows function is a method with the Windows name and parameters in order. It returns the
DWORD status first, then its out-parameters in declaration order (a function with none returns
the bare status). It never raises for bad arguments: validation raises :class:`Fail` inside and
:func:`_api` turns it into the status, with the out-parameters None. Checks run in F.10's order:
handle → access → transaction/session → arguments → state.

Concurrency: one re-entrant *state lock* guards the tables; the *transaction lock*
(:mod:`.txn`) serialises sessions' transactions. Packets (:meth:`Engine.outbound`,
:meth:`Engine.inbound`) take neither: they read the published classifiers and contexts and lock
only the SA context they use, so concurrent packets on one SA never share a sequence number.

Outbound packets have two paths with one meaning. :meth:`Engine.outbound` and
:meth:`Engine.outbound_batch` as written here are the reference. With the native extension, the
engine binds in front of them its route table (``_fastesp.Flows``, see
:mod:`ipsecsa.datapath.native` and the C file): a packet of a flow already classified to a
context whose outbound bundle is one native ESP SA is sent in C (clock, timer check, flow probe,
the context's lock, protect, ``last_used``); everything else, and everything unusual (a timer
due, a miss, a busy lock, a drop, a hard limit), is handed to the Python methods below, which
also teach the table its flows. The table is emptied whenever the generation changes
(:meth:`Engine._changed`), and a context's route is killed when its outbound bundle goes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import heapq
import ipaddress
import itertools
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ipsecsa.config import parse_sa
from ipsecsa.datapath import native
from ipsecsa.datapath.replay import SEQ_MAX_32, SEQ_MAX_64
from ipsecsa.datapath.result import DROPPED, Result
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import ConfigError, DropReason, MalformedPacket, as_packet
from ipsecsa.packet.flow import PORTED_PROTOCOLS, flow_of
from ipsecsa.packet.ipv6 import parse_ipv6_chain
from ipsecsa.sad import Bundle, SaDatabase, SadError
from ipsecsa.sad.database import bundle_problem
from ipsecsa.store.sqlite import Snapshot, SqliteStore, StoreError, key_from_environment
from ipsecsa.wfp import constants as C
from ipsecsa.wfp import filterrows, persist, stored
from ipsecsa.wfp import types as T
from ipsecsa.wfp.access import AccessControl, principal_of
from ipsecsa.wfp.conditions import PacketView, same_conditions
from ipsecsa.wfp.contexts import (
    EXPIRE_LINGER_SECONDS,
    UNBUILT,
    AddedSas,
    CtxOp,
    CtxState,
    SaContext,
    next_state,
)
from ipsecsa.wfp.described import fit_to_context, parse_descriptions, reported_bundle
from ipsecsa.wfp.described import limits as described_limits
from ipsecsa.wfp.filters import (
    FIRST_FILTER_ID,
    FilterRecord,
    FilterTable,
    conditions_key,
    effective_weight,
    stored_copy,
    validate_filter,
)
from ipsecsa.wfp.notify import Notifier, Subscription
from ipsecsa.wfp.offload import NicOffload
from ipsecsa.wfp.persist import (
    CHECKPOINT_PACKETS,
    ID_BLOCK,
    SEQ_BLOCK,
    SEQ_BLOCK_FAST_SECONDS,
    SEQ_BLOCK_MAX,
    SEQ_BLOCK_SLOW_SECONDS,
)
from ipsecsa.wfp.registry import GUID_OF, LAYERS
from ipsecsa.wfp.sabuild import (
    BUNDLE_FLAGS_VALID,
    BundleSpec,
    Shape,
    check_bundle,
    describe,
    log_format_warnings,
)
from ipsecsa.wfp.status import Fail
from ipsecsa.wfp.txn import DEFAULT_WAIT_MS, TXN_MAX_SECONDS, Transaction, TxnLock
from ipsecsa.wfp.views import context_view

log = logging.getLogger("ipsecsa.wfp")

#: F.4: the range GetSpi allocates from (strongSwan's charon.spi_min/spi_max defaults).
SPI_MIN, SPI_MAX = 0xC0000000, 0xCFFFFFFF
#: The range holds 2**28 SPIs: 28 random bits are a uniform draw from it (secrets.randbelow of
#: its size draws 29 bits and throws half the draws away).
_SPI_BITS = (SPI_MAX - SPI_MIN).bit_length()
if SPI_MAX - SPI_MIN + 1 != 1 << _SPI_BITS:
    raise ImportError("the SPI range must hold a power of two of SPIs")
_SESSION_FLAGS = C.FWPM_SESSION_FLAG_DYNAMIC | C.FWPM_SESSION_FLAG_RESERVED
_UPDATE_FLAGS = 0x7F  # C.6
_ENUM_FLAGS = 0x1F  # C.7.1: the five documented FWP_FILTER_ENUM_FLAG_* bits (F.23)
_NOTIFY_FLAGS = C.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_ADD | C.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_DELETE
_LAYER_NAMES = {(d, v): f"FWPM_LAYER_{d.upper()}_TRANSPORT_V{v}"
                for d in ("inbound", "outbound") for v in (4, 6)}
# Flow decisions (interned strings, compared by identity on the per-packet path).
_SEND, _PASS, _BLOCK, _NO_SA, _SECURE, _MALFORMED = (
    "send", "pass", "block", "no_sa", "secure", "malformed")
#: Flows remembered at most before the cache starts over (an implementation constant).
_FLOW_CACHE_MAX = 65536
#: ipsecsa extension (CHOICE): the changeType of an SA-context state change, delivered only to
#: :meth:`Engine.sa_context_subscribe_states` subscriptions (beyond IPSEC_SA_CONTEXT_EVENT_MAX,
#: so a Windows-shaped subscriber never sees a value it does not know).
IPSECSA_SA_CONTEXT_EVENT_STATE = 0x1000
_V4_PORTED = frozenset({6, 17, 132, 136})


def _api(outs: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap an implementation into the DWORD-returning Windows shape."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Engine, *args: Any, **kwargs: Any) -> Any:
            failures = self._failures
            failures.last = None
            if self._closed:
                status = C.EPT_S_NOT_REGISTERED  # B.1 OBS: the BFE is not running
                failures.last = Fail(status, "the engine is closed")
            else:
                try:
                    if self._due_at is not None:  # a timer is set: run what came due
                        self._due(self._clock())
                    result = fn(self, *args, **kwargs)
                except Fail as failure:
                    status = failure.status
                    failures.last = failure
                    log.debug("%s -> 0x%08X %s", fn.__name__, status, failure.detail)
                except (AttributeError, TypeError, ValueError, KeyError) as exc:
                    # An argument of a shape no check anticipated (a str for a structure, a list
                    # for a GUID): the contract is a status, never an exception. Logged with
                    # its traceback so that an engine bug hiding here is still visible.
                    status = C.FWP_E_INVALID_PARAMETER
                    failures.last = Fail(status, f"an argument of an unexpected shape "
                                                 f"({type(exc).__name__})")
                    log.info("%s: malformed argument (%s: %s) -> FWP_E_INVALID_PARAMETER",
                             fn.__name__, type(exc).__name__, exc, exc_info=True)
                else:
                    if outs == 0:
                        return C.ERROR_SUCCESS
                    return (C.ERROR_SUCCESS, *result)
            return status if outs == 0 else (status, *([None] * outs))

        wrapper.__wrapped_outs__ = outs  # type: ignore[attr-defined]
        return wrapper

    return deco


@dataclass(eq=False)
class _Session:
    handle: int
    key: uuid.UUID
    flags: int
    wait_ms: int
    principal: str
    record: Any  # FWPM_SESSION0 with the out fields filled in
    txn: Transaction | None = None
    txn_aborted: bool = False
    filters: set[int] = field(default_factory=set)  # dynamic filters it added
    subscriptions: set[int] = field(default_factory=set)
    enums: set[int] = field(default_factory=set)
    ended: bool = False
    #: The session's :class:`_CallLock` (it holds no state of its own: one per session serves
    #: every call, nested ones included).
    call_lock: Any = field(default=None, repr=False)

    @property
    def dynamic(self) -> bool:
        return bool(self.flags & C.FWPM_SESSION_FLAG_DYNAMIC)


@dataclass(eq=False)
class _Enum:
    session: _Session
    kind: str  # "filter", "context", "sa"
    items: list[Any]
    pos: int = 0


def _is_uint(value: object, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits


def _uint(value: object, bits: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Fail(C.FWP_E_INVALID_PARAMETER, f"{name} must be an integer", name)
    if not 0 <= value < 1 << bits:
        raise Fail(C.FWP_E_OUT_OF_BOUNDS, f"{name} out of range", name)
    return value


def _convert(obj: Any, cls: type) -> Any:
    """Copy the fields ``cls`` shares with ``obj`` (a *1 structure into its *0 form)."""
    if obj is None:
        return None
    if type(obj) is cls:
        return T.clone(obj)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {n: T.clone(getattr(obj, n)) for n in names if hasattr(obj, n)}
    return cls(**kwargs)


def _details0(d: Any) -> Any:
    """An IPSEC_SA_DETAILS1 in its version-0 form (GetById0, Enum0)."""
    if d is None:
        return None
    out = _convert(d, T.IPSEC_SA_DETAILS0)
    out.traffic = _convert(d.traffic, T.IPSEC_TRAFFIC0)
    out.saBundle = _convert(d.saBundle, T.IPSEC_SA_BUNDLE0)
    return out


class _Traffic(NamedTuple):
    """A validated IPSEC_TRAFFIC0/1 (a named tuple: two are made per context, and a frozen
    dataclass took longer to make than the rest of a traffic's validation)."""

    version: int
    tunnel: bool
    local: bytes
    remote: bytes
    filter_id: int
    local_port: int
    remote_port: int
    protocol: int
    stored: Any  # IPSEC_TRAFFIC1 (private copy)


class _Install(NamedTuple):
    """What :meth:`Engine._install` puts into a context: its SAs as checked but not built
    (ESP first: complete descriptions, or validated configurations; see ``AddedSas``) with
    what ``bundle_problem`` reads of them, the bundle GetById reports, the limits the engine
    times (the data path enforces the rest), and the UDP ports its ESP-in-UDP SAs receive on
    (inbound: known before they are built). A named tuple: one is made per Add, and a frozen
    dataclass's ``__init__`` (a ``object.__setattr__`` per field) cost ~2 µs more."""

    descriptions: tuple[dict[str, Any], ...] | None
    configs: tuple[Any, ...] | None
    shapes: tuple[Any, ...]
    given: Any  # IPSEC_SA_BUNDLE1
    seconds: float
    limited: bool  # the SAs have packet or byte limits
    idle_seconds: int
    ports: tuple[int, ...]


class Engine:
    """The Base Filtering Engine, in memory (state lost on :meth:`close`, as on Windows when
    the service stops, reference F.8).

    ``clock`` returns seconds (default :func:`time.monotonic`); lifetimes, idle timeouts, the
    expire linger and the one-hour transaction limit use it. Waiting for another session's
    transaction lock is real time. ``offload`` is a NIC with the :mod:`ipsecsa.ndis` miniport
    interface (e.g. ``ipsecsa.ndis.Miniport()``): established contexts' SA pairs are offloaded
    to it, best effort (:mod:`ipsecsa.wfp.offload`).
    """

    def __init__(self, *, database: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] | None = None, offload: Any = None,
                 database_key: bytes | None = None) -> None:
        #: issue 13: SA pairs of established contexts go to this NIC (best effort), see .offload.
        self._offload = NicOffload(offload) if offload is not None else None
        #: The native route table in front of outbound/outbound_batch (bound at the end).
        self._routes: Any = None
        self._due_at: float | None = None
        #: Contexts' timers, a heap of (time, context id): a lower bound of when each context
        #: must be looked at (an idle timer only moves later as packets come; an entry of a
        #: context gone or changed is checked and dropped or pushed again when it comes up).
        self._timers: list[tuple[float, int]] = []
        #: Test hook (known-answer tests only): the ``unsafe_iv_source`` of every SA built here.
        self._unsafe_iv_source: Callable[[int], bytes] | None = None
        self._clock: Callable[[], float] = clock or time.monotonic
        self._closed = False
        self._failures = threading.local()  # .last: this thread's last failed call (a Fail)
        self._lock = threading.RLock()
        self._txn_lock = TxnLock()
        self._acl = AccessControl()
        self._filters = FilterTable()
        self._sad = SaDatabase()
        self._notifier = Notifier()
        self._sessions: dict[int, _Session] = {}
        self._session_keys: dict[uuid.UUID, _Session] = {}
        self._handles = itertools.count(0x1000)
        self._enums: dict[int, _Enum] = {}
        self._subs: dict[int, Subscription] = {}
        self._contexts: dict[int, SaContext] = {}
        self._next_ctx = 1
        self._by_out_filter: dict[int, list[SaContext]] = {}
        #: Filter id -> ids of the contexts whose traffic names it (F.16: such a filter cannot
        #: be deleted), so a filter delete does not scan every context. Built on first use
        #: (after a reopen, from the loaded contexts), then kept up to date.
        self._filter_users: dict[int, set[int]] | None = None
        self._ctx_of_sa: dict[int, SaContext] = {}  # id(outermost inbound SA) -> context
        self._spis: dict[bytes, set[int]] = {}  # local address -> live inbound SPIs
        self._stats_lock = threading.Lock()
        self._stats: dict[str, int] = {}
        #: Decisions per flow (see _decision): valid while ``_gen`` is unchanged.
        self._gen = 0
        self._flows: dict[tuple[Any, ...], tuple[int, str, Any]] = {}
        #: The durable store (issue 12), or None for today's in-memory engine.
        self._store: SqliteStore | None = None
        #: Durable engines: the id counters as stored (see _ids_reserved).
        self._id_marks: dict[str, int] = {}
        #: Durable engines: the clock at the reopen (SAs built later are built as of then);
        #: the lock under which a context's outbound SAs are built (_build_bundle).
        self._reopened_at = 0.0
        #: Reopened contexts may have stored SAs not read yet (:meth:`_read_stored`).
        self._stored_unread = False
        self._build_lock = threading.Lock()
        #: Every context's ``builder`` (one bound method for all).
        self._builder = self._build_bundle
        #: Ids of contexts whose outbound SAs failed to build last time (logged once).
        self._failing: set[int] = set()
        self._bind_routes()
        if database is not None:
            self._store = SqliteStore(database, database_key or key_from_environment())
            try:
                self._load(self._store.load())
            except BaseException:
                self._notifier.close()
                self._store.close()
                raise

    # ================================================================ the engine itself
    def _bind_routes(self) -> None:
        """Put the native route table in front of :meth:`outbound` and :meth:`outbound_batch`
        (instance attributes shadow the methods, which stay the reference and the slow path);
        nothing without the extension."""
        routes = native.new_flows(
            clock=self._clock, slow=functools.partial(Engine.outbound, self),
            at=self._outbound_at, tail=self._out_tail,
            slow_batch=functools.partial(Engine.outbound_batch, self),
            batch_at=self._outbound_batch_at, group=self._protect_group,
            max_entries=_FLOW_CACHE_MAX)
        if routes is None:
            return
        routes.invalidate(self._gen)
        routes.next_due = self._due_at
        self._routes = routes
        self.outbound = routes  # type: ignore[method-assign]
        self.outbound_batch = routes.batch  # type: ignore[method-assign]

    def _python_only(self) -> None:
        """Tests and benchmarks: every packet through the Python reference methods."""
        self.__dict__.pop("outbound", None)
        self.__dict__.pop("outbound_batch", None)
        self._routes = None

    @property
    def _next_due(self) -> float | None:
        """When the next timer is due (None: none); mirrored into the route table, whose
        packets at or after it take the Python path (which runs :meth:`_due`)."""
        return self._due_at

    @_next_due.setter
    def _next_due(self, t: float | None) -> None:
        self._due_at = t
        if self._routes is not None:
            self._routes.next_due = t

    def close(self) -> None:
        """Stop the engine: every session ends, every context and filter is gone."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed()  # no cached decision outlives the engine
            if self._store is not None:
                self._checkpoint(list(self._contexts.values()))
                with self._store.transaction():  # exact counters: a clean stop skips no id
                    self._store.put_meta("next_filter_id", str(self._filters.next_id))
                    self._store.put_meta("next_ctx_id", str(self._next_ctx))
                self._store.close()
            self._sessions.clear()
            self._contexts.clear()
            if self._offload is not None:  # issue 13: the NIC keeps no SA of a stopped engine
                self._offload.close()
        self._notifier.close()

    def grant(self, principal: str, rights: int, container: str = "engine") -> None:
        """ipsecsa's choice (no IPsecSaDbSetSecurityInfo0): allow ``principal`` the ``rights``
        on ``"engine"`` (inherited by every container), ``"ipsec_sa_db"`` or ``"filters"``."""
        self._acl.grant(principal, rights, container)
        if self._store is not None:
            self._store.put_grants(self._acl.entries())

    def revoke(self, principal: str, rights: int, container: str = "engine") -> None:
        """Take ``rights`` back from ``principal`` on ``container``; effective at once."""
        self._acl.revoke(principal, rights, container)
        if self._store is not None:
            self._store.put_grants(self._acl.entries())

    # ---------------------------------------------------------------- common checks
    def _session(self, handle: object) -> _Session:
        s = self._sessions.get(handle) if isinstance(handle, int) else None  # type: ignore[arg-type]
        if s is None:
            raise Fail(C.ERROR_INVALID_HANDLE, "engineHandle", "engineHandle")
        return s

    def _need(self, s: _Session, container: str, rights: int) -> None:
        if not self._acl.allowed(s.principal, container, rights):
            raise Fail(C.ERROR_ACCESS_DENIED, f"{s.principal or '(owner)'} lacks 0x{rights:x} "
                                              f"on {container}")

    def _txn_state(self, s: _Session) -> None:
        """B.4: a transaction past its hour is aborted; the next call in it fails."""
        if s.txn is not None and self._clock() - s.txn.began > TXN_MAX_SECONDS:
            self._abort(s, forced=True)
        if s.txn_aborted:
            s.txn_aborted = False
            raise Fail(C.FWP_E_TXN_ABORTED, "the transaction was aborted after an hour")

    def _no_txn(self, s: _Session) -> None:
        self._txn_state(s)
        if s.txn is not None:
            raise Fail(C.FWP_E_TXN_IN_PROGRESS, "not allowed inside an explicit transaction")

    def _writable(self, s: _Session) -> None:
        self._txn_state(s)
        if s.txn is not None and s.txn.read_only:
            raise Fail(C.FWP_E_INCOMPATIBLE_TXN, "a write in a read-only transaction")

    def _locked(self, s: _Session) -> _CallLock:
        """The call's (implicit) transaction: the transaction lock, then the state lock."""
        lock = s.call_lock
        if lock is None:
            lock = s.call_lock = _CallLock(self, s)
        return lock  # type: ignore[no-any-return]

    def _reap_owner(self, owner: Any) -> None:
        """Called while waiting for the lock: abort an owner past the one-hour limit."""
        with self._lock:
            if isinstance(owner, _Session) and owner.txn is not None \
                    and self._clock() - owner.txn.began > TXN_MAX_SECONDS:
                self._abort(owner, forced=True)

    def _changed(self) -> None:
        """What packets are classified against changed: forget every cached flow decision.
        The generation is bumped *after* the change, so a decision computed from the old state
        is stored under the old generation and never used (see :meth:`_decision`)."""
        self._gen += 1
        self._flows = {}
        if self._routes is not None:
            self._routes.invalidate(self._gen)

    def _record(self, s: _Session, undo: Callable[[], None],
                publish: Callable[[], None]) -> None:
        """A change was made: undo it on abort; publish it now, or at commit."""
        if s.txn is not None:
            s.txn.undo.append(undo)
            s.txn.publish.append(publish)
        else:
            publish()

    # ================================================================ B: sessions, transactions
    @_api(1)
    def FwpmEngineOpen0(self, serverName: Any, authnService: Any, authIdentity: Any,
                        session: Any) -> tuple[int]:
        principal = principal_of(authIdentity)
        if principal is None:
            raise Fail(C.ERROR_ACCESS_DENIED, "authIdentity names no user")
        if not self._acl.is_admin(principal) and not self._acl.allowed(principal, "engine",
                                                                          C.FWPM_ACTRL_OPEN):
            raise Fail(C.ERROR_ACCESS_DENIED, "FWPM_ACTRL_OPEN on the engine")
        if serverName is not None:
            raise Fail(C.FWP_E_INVALID_PARAMETER, "serverName must be NULL (local engine only)")
        if authnService not in (C.RPC_C_AUTHN_WINNT, C.RPC_C_AUTHN_DEFAULT):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "authnService must be RPC_C_AUTHN_WINNT or "
                                                  "RPC_C_AUTHN_DEFAULT")
        if session is not None and not isinstance(session, T.FWPM_SESSION0):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "session must be an FWPM_SESSION0")
        given = T.clone(session) if session is not None else T.FWPM_SESSION0()
        flags = _uint(given.flags, 32, "flags")
        if flags & ~_SESSION_FLAGS:
            raise Fail(C.FWP_E_INVALID_FLAGS, f"session flags 0x{flags:x}")
        wait = _uint(given.txnWaitTimeoutInMSec, 32, "txnWaitTimeoutInMSec") or DEFAULT_WAIT_MS
        key = given.sessionKey if given.sessionKey not in (None, T.GUID_NULL) else uuid.uuid4()
        if not isinstance(key, uuid.UUID):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "sessionKey must be a GUID")
        with self._lock:
            if key in self._session_keys:
                raise Fail(C.FWP_E_ALREADY_EXISTS, "a session with this sessionKey is open")
            handle = next(self._handles)
            given.sessionKey = key
            given.processId = _pid()
            given.username = principal or "(owner)"
            given.kernelMode = 0
            s = _Session(handle, key, flags, wait, principal, given)
            self._sessions[handle] = s
            self._session_keys[key] = s
        return (handle,)

    @_api(0)
    def FwpmEngineClose0(self, engineHandle: Any) -> None:
        s = self._session(engineHandle)
        with self._lock:
            if s.txn is not None:
                self._abort(s)
            subs = [self._subs.pop(h) for h in list(s.subscriptions) if h in self._subs]
            s.subscriptions.clear()
            for h in list(s.enums):
                self._enums.pop(h, None)
            s.ended = True
            if s.dynamic:
                self._end_dynamic(s)
            del self._sessions[s.handle]
            self._session_keys.pop(s.key, None)
        # Outside the lock: cancelling waits for a running callback, which may call the engine.
        for sub in subs:
            self._notifier.cancel(sub)

    def _end_dynamic(self, s: _Session) -> None:
        """B.7/F.16: a dynamic session's filters die with it; contexts naming them go first."""
        ids = set(s.filters)
        doomed = {cid for fid in ids for cid in self._users_of(fid)}
        for cid in sorted(doomed):
            self._delete_ctx(self._contexts[cid])
        for fid in ids:
            rec = self._filters.by_id.get(fid)
            if rec is not None:
                self._filters.remove(rec)
                self._filters.unpublish(rec)
                self._changed()
                self._filter_changed(rec, C.FWPM_CHANGE_DELETE)
        s.filters.clear()

    @_api(0)
    def FwpmTransactionBegin0(self, engineHandle: Any, flags: Any) -> None:
        s = self._session(engineHandle)
        ro = isinstance(flags, int) and bool(flags & C.FWPM_TXN_READ_ONLY)
        self._need(s, "engine", C.FWPM_ACTRL_BEGIN_READ_TXN if ro
                   else C.FWPM_ACTRL_BEGIN_WRITE_TXN)
        self._txn_state(s)
        if s.txn is not None:
            raise Fail(C.FWP_E_TXN_IN_PROGRESS, "one transaction per session")
        flags = _uint(flags, 32, "flags")
        if flags & ~C.FWPM_TXN_READ_ONLY:
            raise Fail(C.FWP_E_INVALID_FLAGS, f"transaction flags 0x{flags:x}")
        if not self._txn_lock.acquire(s, s.wait_ms, self._reap_owner):
            raise Fail(C.FWP_E_TIMEOUT, "timed out waiting for the transaction lock")
        s.txn = Transaction(read_only=ro, began=self._clock())

    @_api(0)
    def FwpmTransactionCommit0(self, engineHandle: Any) -> None:
        s = self._session(engineHandle)
        self._txn_state(s)
        if s.txn is None:
            raise Fail(C.FWP_E_NO_TXN_IN_PROGRESS, "no explicit transaction")
        with self._lock:
            txn, s.txn = s.txn, None
            for publish in txn.publish:
                publish()
        self._txn_lock.release_all(s)

    @_api(0)
    def FwpmTransactionAbort0(self, engineHandle: Any) -> None:
        s = self._session(engineHandle)
        self._txn_state(s)
        if s.txn is None:
            raise Fail(C.FWP_E_NO_TXN_IN_PROGRESS, "no explicit transaction")
        with self._lock:
            self._abort(s)

    def _abort(self, s: _Session, forced: bool = False) -> None:
        txn, s.txn = s.txn, None
        if txn is not None:
            for undo in reversed(txn.undo):
                undo()
        if forced:
            s.txn_aborted = True
            log.warning("session %s: transaction aborted after %d s (B.4)", s.key,
                        int(TXN_MAX_SECONDS))
        self._txn_lock.release_all(s)

    def FwpmFreeMemory0(self, p: Any) -> None:
        """B.6: memory returned by the engine is Python's to collect; accepting it is all."""
        return

    # ================================================================ C.7: filters
    @_api(1)
    def FwpmFilterAdd0(self, engineHandle: Any, filter: Any, sd: Any) -> tuple[int]:
        s = self._session(engineHandle)
        self._need(s, "filters", C.FWPM_ACTRL_ADD | C.FWPM_ACTRL_ADD_LINK)
        self._writable(s)
        if s.dynamic and filter is not None and isinstance(getattr(filter, "flags", 0), int) \
                and filter.flags & (C.FWPM_FILTER_FLAG_PERSISTENT | C.FWPM_FILTER_FLAG_BOOTTIME):
            raise Fail(C.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, "a dynamic session adds only "
                                                            "dynamic filters (F.15)")
        if filter is None:
            raise Fail(C.FWP_E_NULL_POINTER, "filter")
        if sd is not None:
            raise Fail(C.ERROR_NOT_SUPPORTED, "per-object security descriptors are not "
                                              "implemented (grant/revoke on the container)")
        layer, action, callout, compiled, lifetime, conds = validate_filter(filter, s.dynamic)
        key = filter.filterKey
        if key is None or key == T.GUID_NULL:
            key = uuid.uuid4()
        elif not isinstance(key, uuid.UUID):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "filterKey must be a GUID")
        with self._locked(s):
            if key in self._filters.by_key:
                raise Fail(C.FWP_E_ALREADY_EXISTS, "filterKey is in use")
            fid = self._filters.allocate_id()
            self._ids_reserved("next_filter_id", self._filters.next_id)
            weight = effective_weight(filter.weight, compiled.count, fid)
            rec = FilterRecord(fid, key, stored_copy(filter, fid, key, weight, conds), layer,
                               weight, action, callout, compiled, lifetime,
                               session=s if lifetime == "dynamic" else None)
            self._filters.insert(rec)
            if rec.session is not None:
                s.filters.add(fid)

            def undo() -> None:
                self._filters.remove(rec)
                s.filters.discard(fid)

            def publish() -> None:
                entries = rec.compiled.index() if rec.layer.transport else []
                if rec.lifetime != "boottime":  # F.15: stored, not enforced
                    self._filters.publish(rec, entries)
                    self._changed()
                self._persist_filter(rec, entries)
                self._filter_changed(rec, C.FWPM_CHANGE_ADD)

            self._record(s, undo, publish)
        return (fid,)

    @_api(0)
    def FwpmFilterDeleteById0(self, engineHandle: Any, id: Any) -> None:
        s = self._session(engineHandle)
        self._need(s, "filters", C.DELETE)
        self._writable(s)
        _uint(id, 64, "id")
        with self._locked(s):
            self._filter_delete(s, self._filters.by_id.get(id))

    @_api(0)
    def FwpmFilterDeleteByKey0(self, engineHandle: Any, key: Any) -> None:
        s = self._session(engineHandle)
        self._need(s, "filters", C.DELETE)
        self._writable(s)
        if key is None:
            raise Fail(C.FWP_E_NULL_POINTER, "key")
        if not isinstance(key, uuid.UUID):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "key must be a GUID")
        with self._locked(s):
            self._filter_delete(s, self._filters.by_key.get(key))

    def _filter_delete(self, s: _Session, rec: FilterRecord | None) -> None:
        if rec is None:
            raise Fail(C.FWP_E_FILTER_NOT_FOUND, "no such filter", "id")
        if s.dynamic:
            if rec.session is None:
                raise Fail(C.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, "not a filter of this session")
            if rec.session is not s:
                raise Fail(C.FWP_E_WRONG_SESSION, "a filter of another dynamic session")
        users = self._users_of(rec.id)
        if users:
            raise Fail(C.FWP_E_IN_USE, f"SA context {min(users)} references the filter", "id")
        self._filters.remove(rec)
        owner = rec.session
        if owner is not None:
            owner.filters.discard(rec.id)

        def undo() -> None:
            if owner is not None and owner.ended:
                # Its dynamic session ended meanwhile: the filter died with it (B.7), so the
                # delete stands even though this transaction is undone.
                self._filters.unpublish(rec)
                self._changed()
                self._filter_changed(rec, C.FWPM_CHANGE_DELETE)
                return
            self._filters.insert(rec)
            if owner is not None:
                owner.filters.add(rec.id)

        def publish() -> None:
            self._filters.unpublish(rec)
            self._changed()
            if self._store is not None and rec.lifetime != "dynamic":
                self._store.delete_filter(rec.id)
            self._filter_changed(rec, C.FWPM_CHANGE_DELETE)

        self._record(s, undo, publish)

    def _filter_get(self, s: _Session, rec: FilterRecord | None) -> tuple[Any]:
        if rec is None:
            raise Fail(C.FWP_E_FILTER_NOT_FOUND, "no such filter")
        return (T.clone(rec.stored),)

    @_api(1)
    def FwpmFilterGetById0(self, engineHandle: Any, id: Any) -> tuple[Any]:
        s = self._session(engineHandle)
        self._need(s, "filters", C.FWPM_ACTRL_READ)
        self._txn_state(s)
        _uint(id, 64, "id")
        with self._locked(s):
            return self._filter_get(s, self._filters.by_id.get(id))

    @_api(1)
    def FwpmFilterGetByKey0(self, engineHandle: Any, key: Any) -> tuple[Any]:
        s = self._session(engineHandle)
        self._need(s, "filters", C.FWPM_ACTRL_READ)
        self._txn_state(s)
        if key is None:
            raise Fail(C.FWP_E_NULL_POINTER, "key")
        if not isinstance(key, uuid.UUID):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "key must be a GUID")
        with self._locked(s):
            return self._filter_get(s, self._filters.by_key.get(key))

    @_api(1)
    def FwpmFilterCreateEnumHandle0(self, engineHandle: Any, enumTemplate: Any) -> tuple[int]:
        s = self._session(engineHandle)
        self._need(s, "filters", C.FWPM_ACTRL_ENUM)
        self._txn_state(s)
        select = _filter_template(enumTemplate)
        readable = self._acl.allowed(s.principal, "filters", C.FWPM_ACTRL_READ)
        with self._locked(s):
            recs = sorted(self._filters.by_id.values(), key=lambda r: r.id)
            items = [r for r in recs if readable and select(r)] if recs else []
            items = _enum_order(enumTemplate, items)
            return (self._new_enum(s, "filter", [T.clone(r.stored) for r in items]),)

    @_api(2)
    def FwpmFilterEnum0(self, engineHandle: Any, enumHandle: Any,
                        numEntriesRequested: Any) -> tuple[list[Any], int]:
        return self._enum_next(engineHandle, enumHandle, numEntriesRequested, "filter")

    @_api(0)
    def FwpmFilterDestroyEnumHandle0(self, engineHandle: Any, enumHandle: Any) -> None:
        self._enum_destroy(engineHandle, enumHandle, "filter")

    @_api(1)
    def FwpmFilterSubscribeChanges0(self, engineHandle: Any, subscription: Any, callback: Any,
                                    context: Any) -> tuple[int]:
        s = self._session(engineHandle)
        self._need(s, "filters", C.FWPM_ACTRL_SUBSCRIBE)
        self._txn_state(s)
        if subscription is None or callback is None:
            raise Fail(C.FWP_E_NULL_POINTER, "subscription/callback")
        if not isinstance(subscription, T.FWPM_FILTER_SUBSCRIPTION0) or not callable(callback):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "subscription/callback")
        flags = _uint(subscription.flags, 32, "flags")
        if flags & ~_NOTIFY_FLAGS:
            raise Fail(C.FWP_E_INVALID_FLAGS, f"subscription flags 0x{flags:x}")
        select = _filter_template(subscription.enumTemplate)
        wanted = flags or _NOTIFY_FLAGS
        principal = s.principal

        def accepts(change: tuple[int, FilterRecord]) -> bool:
            kind, rec = change
            bit = C.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_ADD if kind == C.FWPM_CHANGE_ADD \
                else C.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_DELETE
            return bool(wanted & bit) and select(rec) and \
                self._acl.allowed(principal, "filters", C.FWPM_ACTRL_READ)

        stored = T.clone(subscription)
        stored.sessionKey = s.key
        with self._locked(s):
            return (self._subscribe(s, "filter", stored, callback, context, accepts),)

    @_api(0)
    def FwpmFilterUnsubscribeChanges0(self, engineHandle: Any, changeHandle: Any) -> None:
        s = self._session(engineHandle)
        self._txn_state(s)
        self._unsubscribe(s, changeHandle, "filter")

    @_api(2)
    def FwpmFilterSubscriptionsGet0(self, engineHandle: Any) -> tuple[list[Any], int]:
        s = self._session(engineHandle)
        self._need(s, "filters", C.FWPM_ACTRL_READ)
        self._txn_state(s)
        with self._lock:
            entries = [T.clone(sub.template) for sub in self._subs.values()
                       if sub.kind == "filter"]
        return entries, len(entries)

    def _filter_changed(self, rec: FilterRecord, kind: int) -> None:
        if not self._subs:  # nobody subscribed: no change structure to build
            return
        change = T.FWPM_FILTER_CHANGE0(changeType=kind, filterKey=rec.key, filterId=rec.id)
        for sub in list(self._subs.values()):
            if sub.kind == "filter" and sub.accepts((kind, rec)):
                self._notifier.post(sub, T.clone(change))

    # ---------------------------------------------------------------- shared: enum, subscribe
    def _new_enum(self, s: _Session, kind: str, items: list[Any]) -> int:
        h = next(self._handles)
        self._enums[h] = _Enum(s, kind, items)
        s.enums.add(h)
        return h

    def _enum_of(self, s: _Session, handle: Any, kind: str) -> _Enum:
        e = self._enums.get(handle) if isinstance(handle, int) else None
        if e is None or e.session is not s or e.kind != kind:
            raise Fail(C.ERROR_INVALID_HANDLE, "enumHandle")
        return e

    def _enum_next(self, engineHandle: Any, enumHandle: Any, n: Any, kind: str,
                   convert: Callable[[Any], Any] | None = None) -> tuple[list[Any], int]:
        s = self._session(engineHandle)
        self._txn_state(s)
        with self._lock:
            e = self._enum_of(s, enumHandle, kind)
            count = _uint(n, 32, "numEntriesRequested")
            chunk = e.items[e.pos:e.pos + count]
            e.pos += len(chunk)
        out = [T.clone(x) if convert is None else convert(x) for x in chunk]
        return out, len(out)

    def _enum_destroy(self, engineHandle: Any, enumHandle: Any, kind: str) -> None:
        s = self._session(engineHandle)
        with self._lock:
            self._enum_of(s, enumHandle, kind)
            del self._enums[enumHandle]
            s.enums.discard(enumHandle)

    def _subscribe(self, s: _Session, kind: str, stored: Any, callback: Any, context: Any,
                   accepts: Callable[[Any], bool], states: bool = False) -> int:
        h = next(self._handles)
        self._subs[h] = Subscription(h, s, kind, stored, callback, context, accepts, states=states)
        s.subscriptions.add(h)
        return h

    def _unsubscribe(self, s: _Session, handle: Any, kind: str) -> None:
        if handle is None:
            return  # C.3: NULL is a no-op
        with self._lock:
            sub = self._subs.get(handle) if isinstance(handle, int) else None
            if sub is None or sub.session is not s or sub.kind != kind:
                raise Fail(C.ERROR_INVALID_HANDLE, "subscription handle")
            del self._subs[handle]
            s.subscriptions.discard(handle)
        self._notifier.cancel(sub)  # outside the lock: the callback may call the engine

    # ================================================================ C.3: SA contexts
    def _traffic(self, t: Any, v1: bool, direction: str) -> _Traffic:
        """A validated traffic: :func:`_common_traffic` when it applies, else the checks of
        :meth:`_traffic_checked` (which raise what the traffic deserves)."""
        tr = _common_traffic(t)
        return tr if tr is not None else self._traffic_checked(t, v1, direction)

    def _traffic_checked(self, t: Any, v1: bool, direction: str) -> _Traffic:
        want = T.IPSEC_TRAFFIC1 if v1 else T.IPSEC_TRAFFIC0
        if t is None:
            raise Fail(C.FWP_E_NULL_POINTER, "traffic")
        if not isinstance(t, (T.IPSEC_TRAFFIC0, T.IPSEC_TRAFFIC1)):
            raise Fail(C.FWP_E_INVALID_PARAMETER, f"traffic must be an {want.__name__}")
        ipv = _uint(t.ipVersion, 32, "ipVersion")
        if ipv >= C.FWP_IP_VERSION_MAX:
            raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"ipVersion {ipv}")
        if ipv == C.FWP_IP_VERSION_NONE:
            raise Fail(C.FWP_E_INVALID_PARAMETER, "ipVersion NONE")
        ttype = _uint(t.trafficType, 32, "trafficType")
        if ttype >= C.IPSEC_TRAFFIC_TYPE_MAX:
            raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"trafficType {ttype}")
        version = 4 if ipv == C.FWP_IP_VERSION_V4 else 6
        if version == 4:
            local = _uint(t.localV4Address, 32, "localV4Address").to_bytes(4, "big")
            remote = _uint(t.remoteV4Address, 32, "remoteV4Address").to_bytes(4, "big")
        else:
            local, remote = t.localV6Address, t.remoteV6Address
            for name, v in (("localV6Address", local), ("remoteV6Address", remote)):
                if not isinstance(v, (bytes, bytearray)) or len(v) != 16:
                    raise Fail(C.FWP_E_INVALID_PARAMETER, f"{name} must be 16 bytes")
            local, remote = bytes(local), bytes(remote)
        if not any(local) or not any(remote):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "traffic needs both addresses")
        tunnel = ttype == C.IPSEC_TRAFFIC_TYPE_TUNNEL
        fid = _uint(t.tunnelPolicyId or t.ipsecFilterId if tunnel
                    else t.ipsecFilterId or t.tunnelPolicyId, 64, "ipsecFilterId")
        rport = _uint(t.remotePort, 16, "remotePort")
        lport = _uint(getattr(t, "localPort", 0), 16, "localPort")
        proto = _uint(getattr(t, "ipProtocol", 0), 8, "ipProtocol")
        _uint(getattr(t, "localIfLuid", 0), 64, "localIfLuid")
        _uint(getattr(t, "realIfProfileId", 0), 32, "realIfProfileId")
        if tunnel and (rport or lport or proto):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "ports and protocol must not be set in "
                                                  "tunnel mode (C.4)")
        stored = _convert(t, T.IPSEC_TRAFFIC1)
        return _Traffic(version, tunnel, local, remote, fid, lport, rport, proto, stored)

    def _traffic_filter(self, tr: _Traffic, direction: str) -> FilterRecord:
        """F.16/F.22: the filter a traffic names must exist and be an IPsec filter of the right
        direction, kind and IP version."""
        rec = self._filters.by_id.get(tr.filter_id)
        if rec is None:
            raise Fail(C.FWP_E_FILTER_NOT_FOUND, "the traffic's filter id", "ipsecFilterId")
        want = (direction, "tunnel" if tr.tunnel else "transport")
        if rec.ipsec_role != want or rec.layer.version != tr.version:
            raise Fail(C.FWP_E_INCOMPATIBLE_LAYER,
                       f"filter {rec.id} is not an {want[0]} {want[1]} IPsec filter for "
                       f"IPv{tr.version}")
        return rec

    def _ctx(self, id: Any) -> SaContext:
        ctx = self._contexts.get(id) if _is_uint(id, 64) else None
        if ctx is None:
            raise Fail(C.FWP_E_NOT_FOUND, f"no SA context {id!r}", "id")
        return ctx

    def _step(self, ctx: SaContext, op: CtxOp) -> CtxState:
        nxt = next_state(ctx.state, op)
        if nxt is None:
            raise Fail(C.FWP_E_INCOMPATIBLE_SA_STATE, f"{op.value} in state {ctx.state.value}",
                       "state")
        return nxt

    def _create(self, engineHandle: Any, traffic: Any, v1: bool,
                virtual: Any = None) -> tuple[int, int]:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ADD)
        self._no_txn(s)
        if s.dynamic:
            raise Fail(C.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, "SA contexts are never dynamic")
        tr = self._traffic(traffic, v1, "outbound")
        if virtual is not None and not isinstance(virtual, T.IPSEC_VIRTUAL_IF_TUNNEL_INFO0):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "virtualIfTunnelInfo")
        with self._locked(s):
            rec = self._traffic_filter(tr, "outbound")
            ctx_id = self._next_ctx
            self._next_ctx += 1
            self._ids_reserved("next_ctx_id", self._next_ctx)
            now = self._clock()
            ctx = SaContext(ctx_id, CtxState.CREATED, v1, tr.stored, tr.version, tr.tunnel,
                            tr.local, tr.remote, rec.id, now, last_used=now)
            self._contexts[ctx_id] = ctx
            self._names_filter(ctx, rec.id)
            self._persist_ctx(ctx)
            self._ctx_changed(ctx, C.IPSEC_SA_CONTEXT_EVENT_ADD)
            return self._cached_inbound_filter(rec), ctx_id

    def _cached_inbound_filter(self, out: FilterRecord) -> int:
        """F.16: the lowest-id inbound filter of the same kind with the same conditions."""
        layer = GUID_OF[_LAYER_NAMES[("inbound", out.layer.version)]]
        role = ("inbound", out.ipsec_role[1] if out.ipsec_role else "transport")
        ids = self._filters.by_conditions.get(conditions_key(out, layer, role))
        return min(ids) if ids else 0

    @_api(2)
    def IPsecSaContextCreate0(self, engineHandle: Any, outboundTraffic: Any) -> tuple[int, int]:
        return self._create(engineHandle, outboundTraffic, False)

    @_api(2)
    def IPsecSaContextCreate1(self, engineHandle: Any, outboundTraffic: Any,
                              virtualIfTunnelInfo: Any) -> tuple[int, int]:
        return self._create(engineHandle, outboundTraffic, True, virtualIfTunnelInfo)

    def _getspi_args(self, getSpi: Any, v1: bool) -> tuple[_Traffic, tuple[int, int] | None]:
        if getSpi is None:
            raise Fail(C.FWP_E_NULL_POINTER, "getSpi")
        if not isinstance(getSpi, (T.IPSEC_GETSPI0, T.IPSEC_GETSPI1)):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "getSpi must be an IPSEC_GETSPI1")
        if getSpi.rngCryptoModuleID is not None:
            raise Fail(C.FWP_E_RESERVED, "rngCryptoModuleID must be NULL")
        tr = self._traffic(getSpi.inboundIpsecTraffic, v1, "inbound")
        ipv = _uint(getSpi.ipVersion, 32, "ipVersion")
        if ipv >= C.FWP_IP_VERSION_MAX:
            raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"ipVersion {ipv}")
        if ipv != getSpi.inboundIpsecTraffic.ipVersion:
            raise Fail(C.FWP_E_INVALID_PARAMETER, "getSpi.ipVersion differs from the traffic's")
        encap = None
        u = getSpi.inboundUdpEncapsulation
        if u is not None:
            if tr.version != 4:
                raise Fail(C.FWP_E_INVALID_PARAMETER, "UDP encapsulation is IPv4 only (C.4)")
            lp = _uint(u.localUdpEncapPort, 16, "localUdpEncapPort")
            rp = _uint(u.remoteUdpEncapPort, 16, "remoteUdpEncapPort")
            if not lp or not rp:
                raise Fail(C.FWP_E_INVALID_PARAMETER, "UDP encapsulation ports must be non-zero")
            encap = (lp, rp)
        return tr, encap

    def _spi_traffic_ok(self, ctx: SaContext, tr: _Traffic, encap: Any) -> None:
        if (tr.version, tr.tunnel, tr.local, tr.remote) != (ctx.version, ctx.tunnel, ctx.local,
                                                             ctx.remote):
            raise Fail(C.FWP_E_TRAFFIC_MISMATCH, "inbound traffic of another host pair")
        if ctx.getspi_traffic is not None and (ctx.getspi_traffic != tr.stored
                                               or ctx.udp_encap != encap):
            raise Fail(C.FWP_E_TRAFFIC_MISMATCH, "GetSpi again with different traffic")

    def _get_spi(self, engineHandle: Any, id: Any, getSpi: Any, v1: bool) -> tuple[int]:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ADD)
        self._no_txn(s)
        tr, encap = self._getspi_args(getSpi, v1)
        with self._locked(s):
            ctx = self._ctx(id)
            rec = self._traffic_filter(tr, "inbound")
            nxt = self._step(ctx, CtxOp.GET_SPI)
            self._spi_traffic_ok(ctx, tr, encap)
            if ctx.spi is None:
                ctx.spi = self._allocate_spi(ctx.local)
            self._take_spi_traffic(ctx, tr, encap, rec, getSpi)
            ctx.state = nxt
            self._persist_ctx(ctx)
            self._ctx_changed(ctx, IPSECSA_SA_CONTEXT_EVENT_STATE)
            return (ctx.spi,)

    def _take_spi_traffic(self, ctx: SaContext, tr: _Traffic, encap: Any, rec: FilterRecord,
                          getSpi: Any) -> None:
        ctx.getspi_traffic = tr.stored
        ctx.udp_encap = encap
        ctx.udp_struct = T.clone(getSpi.inboundUdpEncapsulation)
        if ctx.inbound_filter != rec.id:
            self._drop_filter_use(ctx, ctx.inbound_filter)
            ctx.inbound_filter = rec.id
            self._names_filter(ctx, rec.id)

    def _allocate_spi(self, local: bytes) -> int:
        used = self._spis.setdefault(local, set())
        while True:
            spi = SPI_MIN + secrets.randbits(_SPI_BITS)
            if spi not in used:
                used.add(spi)
                return spi

    def _release_spi(self, ctx: SaContext) -> None:
        if ctx.spi is not None:
            used = self._spis.get(ctx.local)
            if used is not None:
                used.discard(ctx.spi)
                if not used:
                    del self._spis[ctx.local]

    @_api(1)
    def IPsecSaContextGetSpi0(self, engineHandle: Any, id: Any, getSpi: Any) -> tuple[int]:
        return self._get_spi(engineHandle, id, getSpi, False)

    @_api(1)
    def IPsecSaContextGetSpi1(self, engineHandle: Any, id: Any, getSpi: Any) -> tuple[int]:
        return self._get_spi(engineHandle, id, getSpi, True)

    @_api(0)
    def IPsecSaContextSetSpi0(self, engineHandle: Any, id: Any, getSpi: Any,
                              inboundSpi: Any) -> None:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ADD)
        self._no_txn(s)
        tr, encap = self._getspi_args(getSpi, True)
        spi = _uint(inboundSpi, 32, "inboundSpi")
        if spi < 256:
            raise Fail(C.FWP_E_INVALID_PARAMETER, f"SPI {spi} is reserved (RFC 4303)",
                       "inboundSpi")
        with self._locked(s):
            ctx = self._ctx(id)
            rec = self._traffic_filter(tr, "inbound")
            nxt = self._step(ctx, CtxOp.SET_SPI)
            self._spi_traffic_ok(ctx, tr, encap)
            used = self._spis.setdefault(ctx.local, set())
            if spi != ctx.spi and spi in used:
                raise Fail(C.FWP_E_ALREADY_EXISTS, "the SPI is in use for this address (F.5)",
                           "inboundSpi")
            self._release_spi(ctx)
            self._spis.setdefault(ctx.local, set()).add(spi)
            ctx.spi = spi
            self._take_spi_traffic(ctx, tr, encap, rec, getSpi)
            ctx.state = nxt
            self._persist_ctx(ctx)
            self._ctx_changed(ctx, IPSECSA_SA_CONTEXT_EVENT_STATE)

    def _describe_sas(self, ctx: SaContext, spec: BundleSpec, direction: str
                      ) -> tuple[tuple[dict[str, Any], ...], tuple[Any, ...] | None]:
        """A checked bundle's SAs as complete descriptions, not built (:mod:`.sabuild` says
        why they need not be parsed here), and their configurations when they are parsed all
        the same: to try the test hook ``unsafe_iv_source`` on them (a misuse of it is this
        Add's error). The format's warnings are logged here, as parsing them would."""
        local, remote = _address_text(ctx.local), _address_text(ctx.remote)
        mode = "tunnel" if ctx.tunnel else "transport"
        descs = tuple(describe(part, spi, direction, mode, local, remote, ctx.udp_encap, spec)
                      for part, spi in zip(spec.sas, spec.spis, strict=True))
        try:
            if self._unsafe_iv_source is None:
                log_format_warnings(descs)
                return descs, None
            configs = []
            for obj in descs:
                cfg = parse_sa(obj)  # logs the format's warnings
                self._try_build(cfg)
                configs.append(cfg)
        except ConfigError as exc:
            raise Fail(C.FWP_E_INVALID_PARAMETER, str(exc), exc.field) from exc
        return descs, tuple(configs)

    def _try_build(self, cfg: Any) -> None:
        """Engines with the known-answer test hook ``unsafe_iv_source``: build an SA of ``cfg``
        now and drop it, so that the Add reports what the hook refuses (an SA is otherwise
        built at first need, with that same hook, from a configuration already validated)."""
        if self._unsafe_iv_source is not None:
            SecurityAssociation.from_config(cfg, unsafe_iv_source=self._unsafe_iv_source)

    def _add(self, engineHandle: Any, id: Any, bundle: Any, v1: bool, inbound: bool) -> None:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ADD)
        self._no_txn(s)
        want = (T.IPSEC_SA_BUNDLE1 if v1 else T.IPSEC_SA_BUNDLE0)
        if bundle is None:
            raise Fail(C.FWP_E_NULL_POINTER, "bundle", "bundle")
        if not isinstance(bundle, (T.IPSEC_SA_BUNDLE0, T.IPSEC_SA_BUNDLE1)):
            raise Fail(C.FWP_E_INVALID_PARAMETER, f"bundle must be an {want.__name__}", "bundle")
        spec = check_bundle(bundle, v1)

        def build(ctx: SaContext) -> _Install:
            ipv = C.FWP_IP_VERSION_V4 if ctx.version == 4 else C.FWP_IP_VERSION_V6
            if bundle.ipVersion != ipv:
                raise Fail(C.FWP_E_INVALID_PARAMETER, "bundle.ipVersion differs from the "
                                                      "context's traffic", "ipVersion")
            if inbound and any(spi != ctx.spi for spi in spec.spis):
                raise Fail(C.FWP_E_INVALID_PARAMETER, "the inbound SA's SPI is not the one "
                                                      "GetSpi/SetSpi gave (F.5)", "spi")
            descs, configs = self._describe_sas(ctx, spec, "inbound" if inbound else "outbound")
            given = _convert(bundle, T.IPSEC_SA_BUNDLE1)
            given.numSAs = len(given.saList)
            ports = tuple(d["encapsulation"]["dport"] for d in descs if "encapsulation" in d)
            return _Install(descs, configs, tuple(map(Shape, descs)), given,
                            spec.lifetime_seconds, bool(spec.kilobytes or spec.packets),
                            spec.idle_seconds, ports)

        self._install(s, id, inbound, build)

    def _install(self, s: _Session, id: Any, inbound: bool,
                 build: Callable[[SaContext], _Install]) -> None:
        """AddInbound/AddOutbound, whatever the SAs were described with (a Windows bundle or
        ipsecsa's SA descriptions): the state machine, then ``build``'s checks against the
        context, then the SAs go live, unbuilt: they are built at first need (a packet either
        way, an offload: :meth:`_build_bundle`), with their lifetimes counted from now. Every
        error the build could meet was ruled out by then (``build``'s checks and the bundle's
        here), so the Add is where it is reported."""
        with self._locked(s):
            ctx = self._ctx(id)
            nxt = self._step(ctx, CtxOp.ADD_INBOUND if inbound else CtxOp.ADD_OUTBOUND)
            made = build(ctx)
            given = made.given
            problem = bundle_problem(made.shapes)
            if problem is not None:
                raise Fail(C.FWP_E_INVALID_TRANSFORM_COMBINATION, str(SadError("bundle", problem)))
            now = self._clock()
            sas = AddedSas(made.descriptions, made.configs, now)
            if inbound:
                # Every inbound SA of a context has its SPI and its local address (_add and
                # fit_to_context refuse others): the SA database holds both until the build.
                assert ctx.spi is not None  # the state machine: GetSpi/SetSpi came first
                try:
                    ctx.inbound_handle = self._sad.add_inbound_deferred(
                        ctx.spi, ctx.local, functools.partial(self._build_inbound, ctx),
                        made.ports)
                except SadError as exc:
                    raise Fail(C.FWP_E_ALREADY_EXISTS, str(exc), "spi") from exc
                ctx.defer_sas("inbound", sas, self._builder)
                ctx.inbound_given, ctx.inbound_added = given, now
            else:
                ctx.outbound_given, ctx.outbound_added = given, now
                ctx.limited = made.limited
                ctx.defer_sas("outbound", sas, self._builder)  # packets may use it from here on
                self._by_out_filter.setdefault(ctx.outbound_filter, []).append(ctx)
                self._changed()
            self._count("totalSasAdded", len(sas))
            if made.seconds:
                d = now + made.seconds
                ctx.deadline = d if ctx.deadline is None else min(ctx.deadline, d)
            if made.idle_seconds:
                ctx.idle_seconds = made.idle_seconds if not ctx.idle_seconds \
                    else min(ctx.idle_seconds, made.idle_seconds)
            ctx.last_used = now
            ctx.state = nxt
            self._persist_ctx(ctx, added="in" if inbound else "out")
            self._schedule(ctx)
            self._ctx_changed(ctx, IPSECSA_SA_CONTEXT_EVENT_STATE)
            if not inbound and self._offload is not None:
                self._offload.established(ctx)  # issue 13: before AddOutbound returns

    @_api(0)
    def IPsecSaContextAddInbound0(self, engineHandle: Any, id: Any, inboundBundle: Any) -> None:
        self._add(engineHandle, id, inboundBundle, False, True)

    @_api(0)
    def IPsecSaContextAddInbound1(self, engineHandle: Any, id: Any, inboundBundle: Any) -> None:
        self._add(engineHandle, id, inboundBundle, True, True)

    @_api(0)
    def IPsecSaContextAddOutbound0(self, engineHandle: Any, id: Any,
                                   outboundBundle: Any) -> None:
        self._add(engineHandle, id, outboundBundle, False, False)

    @_api(0)
    def IPsecSaContextAddOutbound1(self, engineHandle: Any, id: Any,
                                   outboundBundle: Any) -> None:
        self._add(engineHandle, id, outboundBundle, True, False)

    @_api(0)
    def IPsecSaContextUpdate0(self, engineHandle: Any, flags: Any, newValues: Any) -> None:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ADD)
        self._no_txn(s)
        if newValues is None:
            raise Fail(C.FWP_E_NULL_POINTER, "newValues")
        if not isinstance(newValues, T.IPSEC_SA_CONTEXT1):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "newValues must be an IPSEC_SA_CONTEXT1")
        flags = _uint(flags, 64, "flags")
        if flags & ~_UPDATE_FLAGS:
            raise Fail(C.FWP_E_INVALID_FLAGS, f"update flags 0x{flags:x}")
        with self._locked(s):
            ctx = self._ctx(newValues.saContextId)
            self._step(ctx, CtxOp.UPDATE)
            sides = [(d, g) for d, g in ((newValues.inboundSa, ctx.inbound_given),
                                         (newValues.outboundSa, ctx.outbound_given))
                     if d is not None and g is not None]
            if flags and not sides:
                raise Fail(C.FWP_E_NULL_POINTER, "newValues has no details for the flags")
            bundle_fields = ((C.IPSEC_SA_BUNDLE_UPDATE_FLAGS, "flags"),
                             (C.IPSEC_SA_BUNDLE_UPDATE_NAP_CONTEXT, "napContext"),
                             (C.IPSEC_SA_BUNDLE_UPDATE_KEY_MODULE_STATE, "keyModuleState"),
                             (C.IPSEC_SA_BUNDLE_UPDATE_PEER_V4_PRIVATE_ADDRESS,
                              "peerV4PrivateAddress"),
                             (C.IPSEC_SA_BUNDLE_UPDATE_MM_SA_ID, "mmSaId"))
            for details, _ in sides:  # validate everything before changing anything
                if flags & C.IPSEC_SA_BUNDLE_UPDATE_FLAGS:
                    f = _uint(details.saBundle.flags, 32, "saBundle.flags")
                    if f & ~BUNDLE_FLAGS_VALID:
                        raise Fail(C.FWP_E_INVALID_FLAGS, f"bundle flags 0x{f:x}")
                if flags & C.IPSEC_SA_DETAILS_UPDATE_TRAFFIC:
                    tr = self._traffic(details.traffic, True, "")
                    if (tr.version, tr.tunnel, tr.local, tr.remote) != (
                            ctx.version, ctx.tunnel, ctx.local, ctx.remote):
                        raise Fail(C.FWP_E_INVALID_PARAMETER,
                                   "Update may change ports and protocol, not the host pair")
                if flags & C.IPSEC_SA_DETAILS_UPDATE_UDP_ENCAPSULATION:
                    raise Fail(C.ERROR_NOT_SUPPORTED, "changing the UDP encapsulation of live "
                                                      "SAs is not implemented")
            for details, given in sides:
                for bit, name in bundle_fields:
                    if flags & bit:
                        setattr(given, name, T.clone(getattr(details.saBundle, name)))
                if flags & C.IPSEC_SA_DETAILS_UPDATE_TRAFFIC:
                    tr = self._traffic(details.traffic, True, "")
                    traffic = tr.stored
                    traffic.ipsecFilterId = ctx.traffic.ipsecFilterId
                    traffic.tunnelPolicyId = ctx.traffic.tunnelPolicyId
                    ctx.traffic = traffic
                    self._changed()
            for name in ("inbound_given", "outbound_given"):
                ctx.encoded.pop(name, None)  # the given bundles were changed in place
            self._persist_ctx(ctx)

    @_api(0)
    def IPsecSaContextExpire0(self, engineHandle: Any, id: Any) -> None:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.DELETE)
        self._no_txn(s)
        with self._locked(s):
            ctx = self._ctx(id)
            self._step(ctx, CtxOp.EXPIRE)
            self._expire(ctx, self._clock())

    @_api(0)
    def IPsecSaContextDeleteById0(self, engineHandle: Any, id: Any) -> None:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.DELETE)
        self._no_txn(s)
        if s.dynamic:
            raise Fail(C.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, "not in a dynamic session (C.3)")
        with self._locked(s):
            self._delete_ctx(self._ctx(id))

    def _users_of(self, fid: int) -> set[int]:
        """Ids of the contexts whose traffic names filter ``fid``."""
        users = self._filter_users
        if users is None:
            users = {}
            for ctx in self._contexts.values():
                for f in (ctx.outbound_filter, ctx.inbound_filter):
                    if f:
                        users.setdefault(f, set()).add(ctx.id)
            self._filter_users = users
        return users.get(fid, set())

    def _names_filter(self, ctx: SaContext, fid: int) -> None:
        if self._filter_users is not None and fid:
            self._filter_users.setdefault(fid, set()).add(ctx.id)

    def _drop_filter_use(self, ctx: SaContext, fid: int) -> None:
        users = None if self._filter_users is None else self._filter_users.get(fid)
        if users is not None:
            users.discard(ctx.id)
            if not users:
                del self._filter_users[fid]  # type: ignore[union-attr]

    def _withdraw_outbound(self, ctx: SaContext) -> tuple[Any, bool]:
        """Take ``ctx``'s outbound SAs away (``outbound_bundle`` None from here on), without
        building them: (the built Bundle, or while unbuilt what the statistics retire of them,
        or None for none; whether they were unbuilt)."""
        b = ctx.built("outbound_bundle")
        if b is not UNBUILT:
            ctx.outbound_bundle = None
            return b, False
        seen = self._unbuilt_counts(ctx, "outbound")  # before the lock: this may read rows
        with self._build_lock:  # no packet builds them meanwhile
            b = ctx.built("outbound_bundle")
            ctx.outbound_bundle = None
            if b is not UNBUILT:  # a packet built them after all
                return b, False
            ctx.lazy.pop("outbound_sas", None)
            stored.forget(ctx, "outbound_sas")
        return seen, True

    def _unbuilt_counts(self, ctx: SaContext, direction: str) -> Any:
        """What the statistics retire of ``ctx``'s SAs of ``direction`` not built yet: their
        stored state (a reopened context's: :func:`.stored.side`), or nothing but their number
        when they were added since the engine started (no traffic has gone through them). The
        SAs are never built for this (an unreadable stored form aside, which is logged)."""
        unbuilt = ctx.lazy.get(f"{direction}_sas")
        if type(unbuilt) is AddedSas:
            return len(unbuilt)
        return stored.side(ctx, direction, self._store, self._reopened_at)

    def _stop_outbound(self, ctx: SaContext) -> None:
        b, unbuilt = self._withdraw_outbound(ctx)
        route, ctx.route = ctx.route, False
        if route:
            route.kill()  # no packet takes the native route from here on
        if b is not None:
            lst = self._by_out_filter.get(ctx.outbound_filter)
            if lst is not None and ctx in lst:
                lst.remove(ctx)
                if not lst:
                    del self._by_out_filter[ctx.outbound_filter]
            self._changed()
            if self._offload is not None:
                self._offload.outbound_gone(ctx)  # issue 13: off the NIC at once
            if not unbuilt:
                for sa in b.sas:
                    sa.delete()
                    if isinstance(sa.seq_limit_hook, _Reservation):
                        # The SA and its reservation refer to each other (and through it to
                        # the context): cut the loop, so that a deleted context is freed at
                        # once rather than left to the cyclic collector (measured: most of a
                        # durable life cycle's collector time).
                        sa.seq_limit_hook = None
            self._retire("out", ctx, b)

    def _expire(self, ctx: SaContext, now: float) -> None:
        """F.8: outbound gone at once, inbound kept for the linger."""
        self._stop_outbound(ctx)
        ctx.outbound_given = None
        ctx.state = CtxState.EXPIRING
        ctx.linger_until = now + EXPIRE_LINGER_SECONDS
        self._persist_ctx(ctx)
        self._schedule(ctx)
        self._ctx_changed(ctx, IPSECSA_SA_CONTEXT_EVENT_STATE)

    def _delete_ctx(self, ctx: SaContext) -> None:
        if self._contexts.pop(ctx.id, None) is None:
            return
        self._stop_outbound(ctx)
        if ctx.inbound_handle is not None:
            seen = None
            if ctx.built("inbound_bundle") is UNBUILT:
                seen = self._unbuilt_counts(ctx, "inbound")
            b = self._sad.withdraw(ctx.inbound_handle)  # None: withdrawn unbuilt
            if b is not None:
                self._ctx_of_sa.pop(id_of_outer(b), None)
                for sa in b.sas:
                    sa.delete()
            else:
                b = seen
                ctx.lazy.pop("inbound_sas", None)
                stored.forget(ctx, "inbound_sas")
            if b is not None:
                self._retire("in", ctx, b)
            ctx.inbound_handle = ctx.inbound_bundle = None
        if self._offload is not None:
            self._offload.removed(ctx)  # issue 13: nothing of it stays on the NIC
        self._failing.discard(ctx.id)
        self._release_spi(ctx)
        self._drop_filter_use(ctx, ctx.outbound_filter)
        self._drop_filter_use(ctx, ctx.inbound_filter)
        if self._store is not None:
            self._store.delete_context(ctx.id)
        self._ctx_changed(ctx, C.IPSEC_SA_CONTEXT_EVENT_DELETE)

    # ---------------------------------------------------------------- reading contexts
    def _details(self, ctx: SaContext, inbound: bool) -> Any:
        given = ctx.inbound_given if inbound else ctx.outbound_given
        if given is None:
            return None
        bundle = T.clone(given)
        if ctx.offloaded:
            bundle.flags |= C.IPSEC_SA_BUNDLE_FLAG_SA_OFFLOADED
        fid = ctx.inbound_filter if inbound else ctx.outbound_filter
        rec = self._filters.by_id.get(fid)
        traffic = T.clone(ctx.getspi_traffic if inbound else ctx.traffic)
        return T.IPSEC_SA_DETAILS1(
            ipVersion=C.FWP_IP_VERSION_V4 if ctx.version == 4 else C.FWP_IP_VERSION_V6,
            saDirection=C.FWP_DIRECTION_INBOUND if inbound else C.FWP_DIRECTION_OUTBOUND,
            traffic=traffic, saBundle=bundle, udpEncapsulation=T.clone(ctx.udp_struct),
            transportFilter=T.clone(rec.stored) if rec is not None else None)

    def _snapshot(self, ctx: SaContext) -> Any:
        return T.IPSEC_SA_CONTEXT1(saContextId=ctx.id, inboundSa=self._details(ctx, True),
                                   outboundSa=self._details(ctx, False))

    @staticmethod
    def _to0(snap: Any) -> Any:
        return T.IPSEC_SA_CONTEXT0(saContextId=snap.saContextId,
                                   inboundSa=_details0(snap.inboundSa),
                                   outboundSa=_details0(snap.outboundSa))

    def _get_by_id(self, engineHandle: Any, id: Any) -> Any:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_READ)
        self._txn_state(s)
        with self._locked(s):
            return self._snapshot(self._ctx(id))

    @_api(1)
    def IPsecSaContextGetById0(self, engineHandle: Any, id: Any) -> tuple[Any]:
        return (self._to0(self._get_by_id(engineHandle, id)),)

    @_api(1)
    def IPsecSaContextGetById1(self, engineHandle: Any, id: Any) -> tuple[Any]:
        return (self._get_by_id(engineHandle, id),)

    @_api(1)
    def IPsecSaContextCreateEnumHandle0(self, engineHandle: Any, enumTemplate: Any) -> tuple[int]:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ENUM | C.FWPM_ACTRL_READ)
        self._txn_state(s)
        select = _context_template(enumTemplate)
        with self._locked(s):
            items = [self._snapshot(c) for c in sorted(self._contexts.values(),
                                                       key=lambda c: c.id) if select(c)]
            return (self._new_enum(s, "context", items),)

    @_api(2)
    def IPsecSaContextEnum0(self, engineHandle: Any, enumHandle: Any,
                            numEntriesRequested: Any) -> tuple[list[Any], int]:
        return self._enum_next(engineHandle, enumHandle, numEntriesRequested, "context",
                               self._to0)

    @_api(2)
    def IPsecSaContextEnum1(self, engineHandle: Any, enumHandle: Any,
                            numEntriesRequested: Any) -> tuple[list[Any], int]:
        return self._enum_next(engineHandle, enumHandle, numEntriesRequested, "context")

    @_api(0)
    def IPsecSaContextDestroyEnumHandle0(self, engineHandle: Any, enumHandle: Any) -> None:
        self._enum_destroy(engineHandle, enumHandle, "context")

    @_api(1)
    def IPsecSaCreateEnumHandle0(self, engineHandle: Any, enumTemplate: Any) -> tuple[int]:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ENUM | C.FWPM_ACTRL_READ)
        self._txn_state(s)
        direction = None
        if enumTemplate is not None:
            direction = _uint(enumTemplate.saDirection, 32, "saDirection")
            if direction >= C.FWP_DIRECTION_MAX:
                raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"saDirection {direction}")
        with self._locked(s):
            items = []
            for c in sorted(self._contexts.values(), key=lambda c: c.id):
                for inbound in (False, True):
                    d = self._details(c, inbound)
                    if d is not None and direction in (None, d.saDirection):
                        items.append(d)
            return (self._new_enum(s, "sa", items),)

    @_api(2)
    def IPsecSaEnum0(self, engineHandle: Any, enumHandle: Any,
                     numEntriesRequested: Any) -> tuple[list[Any], int]:
        return self._enum_next(engineHandle, enumHandle, numEntriesRequested, "sa", _details0)

    @_api(2)
    def IPsecSaEnum1(self, engineHandle: Any, enumHandle: Any,
                     numEntriesRequested: Any) -> tuple[list[Any], int]:
        return self._enum_next(engineHandle, enumHandle, numEntriesRequested, "sa")

    @_api(0)
    def IPsecSaDestroyEnumHandle0(self, engineHandle: Any, enumHandle: Any) -> None:
        self._enum_destroy(engineHandle, enumHandle, "sa")

    # ---------------------------------------------------------------- subscriptions
    @_api(1)
    def IPsecSaContextSubscribe0(self, engineHandle: Any, subscription: Any, callback: Any,
                                 context: Any) -> tuple[int]:
        return self._subscribe_contexts(engineHandle, subscription, callback, context, False)

    @_api(1)
    def sa_context_subscribe_states(self, engineHandle: Any, subscription: Any, callback: Any,
                                    context: Any) -> tuple[int]:
        """ipsecsa extension (CHOICE): IPsecSaContextSubscribe0 whose callback also receives
        :data:`IPSECSA_SA_CONTEXT_EVENT_STATE` when a context changes state without appearing
        or disappearing -- GetSpi/SetSpi, AddInbound, AddOutbound, and Expire whether called,
        reached by a lifetime (time, idle, bytes, packets) or by a data-path SA's hard limit.
        Windows notifies ADD and DELETE only, so a subscriber keeping a copy of the contexts'
        state would otherwise have to list them all to see an expiry. Same access, template,
        handles and IPsecSaContextUnsubscribe0 as IPsecSaContextSubscribe0."""
        return self._subscribe_contexts(engineHandle, subscription, callback, context, True)

    def _subscribe_contexts(self, engineHandle: Any, subscription: Any, callback: Any,
                            context: Any, states: bool) -> tuple[int]:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_SUBSCRIBE)
        self._no_txn(s)
        if subscription is None or callback is None:
            raise Fail(C.FWP_E_NULL_POINTER, "subscription/callback")
        if not isinstance(subscription, T.IPSEC_SA_CONTEXT_SUBSCRIPTION0) or \
                not callable(callback):
            raise Fail(C.FWP_E_INVALID_PARAMETER, "subscription/callback")
        if subscription.flags:
            raise Fail(C.FWP_E_RESERVED, "subscription flags are reserved")
        select = _context_template(subscription.enumTemplate)
        principal = s.principal

        def accepts(ctx: SaContext) -> bool:
            return select(ctx) and self._acl.allowed(principal, "ipsec_sa_db",
                                                     C.FWPM_ACTRL_READ)

        stored = T.clone(subscription)
        stored.sessionKey = s.key
        with self._locked(s):
            return (self._subscribe(s, "sa_context", stored, callback, context, accepts,
                                    states),)

    @_api(0)
    def IPsecSaContextUnsubscribe0(self, engineHandle: Any, eventsHandle: Any) -> None:
        s = self._session(engineHandle)
        self._no_txn(s)
        self._unsubscribe(s, eventsHandle, "sa_context")

    @_api(2)
    def IPsecSaContextSubscriptionsGet0(self, engineHandle: Any) -> tuple[list[Any], int]:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_READ)
        self._txn_state(s)
        with self._lock:
            entries = [T.clone(sub.template) for sub in self._subs.values()
                       if sub.kind == "sa_context"]
        return entries, len(entries)

    def _ctx_changed(self, ctx: SaContext, kind: int) -> None:
        if not self._subs:  # every change of every context comes here: nothing to build
            return
        change = T.IPSEC_SA_CONTEXT_CHANGE0(changeType=kind, saContextId=ctx.id)
        state = kind == IPSECSA_SA_CONTEXT_EVENT_STATE
        for sub in list(self._subs.values()):
            if sub.kind == "sa_context" and (sub.states or not state) and sub.accepts(ctx):
                self._notifier.post(sub, T.clone(change))

    @property
    def notifications_dropped(self) -> int:
        """ipsecsa extension: notifications dropped so far because the queue was full (F.13:
        Windows has no path to report FWP_E_NOTIFICATION_DROPPED). A subscriber keeping a copy
        of the engine's state reads it to know when to read everything again."""
        return self._notifier.dropped

    @_api(0)
    def run_timers(self, engineHandle: Any) -> None:
        """ipsecsa extension: do nothing but what every call does first -- run the timers that
        are due (lifetimes, expire lingers, the transaction limit; :meth:`_due`). For a caller
        that must let time-based changes happen without reading anything; cheap unless
        something is due."""
        self._session(engineHandle)

    def flush_notifications(self, timeout: float = 5.0) -> None:
        """Wait until every notification posted so far has been delivered (for tests and
        orderly shutdown; callbacks still run on the worker thread)."""
        self._notifier.flush(timeout)

    # ---------------------------------------------------------------- statistics
    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] = self._stats.get(name, 0) + n

    def _retire(self, d: str, ctx: SaContext, b: Any) -> None:
        """Keep the traffic counts of SAs leaving the engine (statistics are totals): ``b`` is
        their Bundle, their StoredBundle (a reopened context's, unbuilt), or the number of SAs
        added unbuilt since the engine started (they have no traffic)."""
        with self._stats_lock:
            if type(b) is int:
                n = b
            else:
                _add_traffic(self._stats, d, ctx, b)
                n = len(b.sas)
            self._stats["totalSasDeleted"] = self._stats.get("totalSasDeleted", 0) + n

    def _sides(self, ctx: SaContext) -> tuple[Any, Any]:
        """``ctx``'s inbound and outbound SAs for a view or the statistics, never built by
        this: a reopened context's SAs not built yet are read from their stored form
        (:mod:`.stored`), once."""
        return stored.sides(ctx, self._store, self._reopened_at)

    def _read_stored(self, contexts: list[SaContext]) -> None:
        """Before a view or the statistics of all ``contexts``: read the stored SAs of the
        reopened ones at once (:func:`.stored.read_all`). After one such pass every context's
        are read or built (new contexts never have stored SAs), so later passes skip this."""
        if self._stored_unread:
            stored.read_all(contexts, self._store, self._reopened_at)

    def _statistics1(self) -> Any:
        with self._stats_lock:
            st = dict(self._stats)
        contexts = list(self._contexts.values())
        self._read_stored(contexts)
        active = pending = tunnels = 0
        for c in contexts:
            inbound, outbound = self._sides(c)
            if inbound is not None:
                _add_traffic(st, "in", c, inbound)
                active += len(inbound.sas)
            if outbound is not None:
                _add_traffic(st, "out", c, outbound)
                active += len(outbound.sas)
            if c.state in (CtxState.CREATED, CtxState.SPI_ASSIGNED, CtxState.INBOUND):
                pending += 1
            if c.tunnel and c.state is CtxState.ESTABLISHED:
                tunnels += 1
        self._stored_unread = False
        if self._offload is not None:  # issue 13: bytes the SAs handled while on the NIC
            st["out:offload"], st["in:offload"] = self._offload.bytes_offloaded()

        def g(k: str) -> int:
            return st.get(k, 0) & 0xFFFFFFFF

        def g64(k: str) -> int:
            return st.get(k, 0) & 0xFFFFFFFFFFFFFFFF

        agg = T.IPSEC_AGGREGATE_SA_STATISTICS0(
            activeSas=active, pendingSaNegotiations=pending, totalSasAdded=g("totalSasAdded"),
            totalSasDeleted=g("totalSasDeleted"), successfulRekeys=0, activeTunnels=tunnels,
            offloadedSas=self._offload.sa_count() if self._offload is not None else 0)
        esp = T.IPSEC_ESP_DROP_PACKET_STATISTICS0(
            invalidSpisOnInbound=g("esp:bad_spi"),
            decryptionFailuresOnInbound=g("esp:bad_padding") + g("esp:bad_length"),
            authenticationFailuresOnInbound=g("esp:icv_failure"),
            replayCheckFailuresOnInbound=g("esp:replay"),
            saNotInitializedOnInbound=g("esp:sa_unusable") + g("esp:expired"))
        ah = T.IPSEC_AH_DROP_PACKET_STATISTICS0(
            invalidSpisOnInbound=g("ah:bad_spi"),
            authenticationFailuresOnInbound=g("ah:icv_failure"),
            replayCheckFailuresOnInbound=g("ah:replay"),
            saNotInitializedOnInbound=g("ah:sa_unusable") + g("ah:expired"))
        total = sum(v for k, v in st.items() if k.startswith("in-drop:"))
        drops = T.IPSEC_AGGREGATE_DROP_PACKET_STATISTICS1(
            invalidSpisOnInbound=g("in-drop:bad_spi"),
            decryptionFailuresOnInbound=g("in-drop:bad_padding") + g("in-drop:bad_length"),
            authenticationFailuresOnInbound=g("in-drop:icv_failure"),
            udpEspValidationFailuresOnInbound=g("in-drop:bad_udp"),
            replayCheckFailuresOnInbound=g("in-drop:replay"),
            invalidClearTextInbound=g("in-drop:clear_text"),
            saNotInitializedOnInbound=g("in-drop:sa_unusable") + g("in-drop:expired"),
            receiveOverIncorrectSaInbound=g("in-drop:selector_mismatch"),
            secureReceivesNotMatchingFilters=g("in-drop:secure_not_matching"),
            totalDropPacketsInbound=total & 0xFFFFFFFF)

        def traffic(d: str) -> Any:
            return T.IPSEC_TRAFFIC_STATISTICS1(
                encryptedByteCount=g64(f"{d}:encrypted"),
                authenticatedAHByteCount=g64(f"{d}:ah"),
                authenticatedESPByteCount=g64(f"{d}:esp"),
                transportByteCount=g64(f"{d}:transport"), tunnelByteCount=g64(f"{d}:tunnel"),
                offloadByteCount=g64(f"{d}:offload"),
                totalSuccessfulPackets=g64(f"{d}:packets"))

        return T.IPSEC_STATISTICS1(aggregateSaStatistics=agg, espDropPacketStatistics=esp,
                                   ahDropPacketStatistics=ah,
                                   aggregateDropPacketStatistics=drops,
                                   inboundTrafficStatistics=traffic("in"),
                                   outboundTrafficStatistics=traffic("out"))

    def _get_statistics(self, engineHandle: Any) -> Any:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_READ_STATS)
        self._no_txn(s)
        with self._locked(s):
            return self._statistics1()

    @_api(1)
    def IPsecGetStatistics0(self, engineHandle: Any) -> tuple[Any]:
        st = self._get_statistics(engineHandle)
        return (T.IPSEC_STATISTICS0(
            aggregateSaStatistics=st.aggregateSaStatistics,
            espDropPacketStatistics=st.espDropPacketStatistics,
            ahDropPacketStatistics=st.ahDropPacketStatistics,
            aggregateDropPacketStatistics=_convert(st.aggregateDropPacketStatistics,
                                                   T.IPSEC_AGGREGATE_DROP_PACKET_STATISTICS0),
            inboundTrafficStatistics=_convert(st.inboundTrafficStatistics,
                                              T.IPSEC_TRAFFIC_STATISTICS0),
            outboundTrafficStatistics=_convert(st.outboundTrafficStatistics,
                                               T.IPSEC_TRAFFIC_STATISTICS0)),)

    @_api(1)
    def IPsecGetStatistics1(self, engineHandle: Any) -> tuple[Any]:
        return (self._get_statistics(engineHandle),)

    # ================================================================ durable state
    def _persist_filter(self, rec: FilterRecord, entries: list[Any]) -> None:
        """Store a filter: as given (Get/Enum read it back) and compiled (``entries``: its
        classifier entries; a reopen classifies with this form, :mod:`.filterrows`)."""
        if self._store is None or rec.lifetime == "dynamic":
            return
        self._store.put_filter(rec.id, str(rec.key), rec.lifetime, persist.filter_body(rec.stored),
                               filterrows.compiled_form(rec, entries))

    def _persist_ctx(self, ctx: SaContext, sync: bool = False, added: str | None = None) -> None:
        """Write a context whole: before the call that changed it returns (durability: every
        acknowledged call survives a crash of the process; ``sync`` for reservations).

        SA-state rows are written when they changed. ``added`` ("in"/"out"): that direction's
        SAs were just added, and their rows need not be written at all: the descriptions
        stored with the context say as much (their sequence numbers, no counters, nothing
        reserved yet), and a reopen reads a missing row so. Their first change writes them."""
        if self._store is None:
            return
        body, secret = persist.context_rows(ctx, self._clock)
        saved = ctx.saved_rows
        rows = []
        if added is not None:
            # Not built yet: the row each SA will have once built, as the missing row says.
            unbuilt = ctx.lazy.get("inbound_sas" if added == "in" else "outbound_sas")
            if type(unbuilt) is AddedSas:
                for i, d in enumerate(unbuilt.descriptions):
                    saved[(added, i)] = (ctx.id, added, i, d.get("seq", 0), 0, 0)
        for r in self._sa_rows(ctx):
            if r[1] == added:
                saved[(r[1], r[2])] = r  # what the missing row stands for
            elif saved.get((r[1], r[2])) != r:
                rows.append(r)
        self._store.put_context(ctx.id, body, secret, rows, sync)
        for r in rows:
            saved[(r[1], r[2])] = r
        ctx.unsaved = 0

    def _ids_reserved(self, name: str, next_id: int) -> None:
        """Ids are never given out twice, not even across a crash: the stored counter stays
        ahead of the ids in use by up to ID_BLOCK, written once per block instead of once per
        id (a crash skips at most a block of ids; a clean close stores the exact counter)."""
        if self._store is not None and next_id > self._id_marks.get(name, 0):
            mark = next_id + ID_BLOCK
            self._store.put_meta(name, str(mark))
            self._id_marks[name] = mark

    @staticmethod
    def _sa_rows(ctx: SaContext) -> list[tuple[int, str, int, int, int, int]]:
        """The SA-state rows of a context's built SAs (those not built yet have not changed
        since they were stored: their rows stay as they are)."""
        rows = []
        inbound, outbound = ctx.built("inbound_bundle"), ctx.built("outbound_bundle")
        if inbound is not None and inbound is not UNBUILT:
            rows += [(ctx.id, "in", i, sa.seq, sa.packets, sa.bytes)
                     for i, sa in enumerate(inbound.sas)]
        if outbound is not None and outbound is not UNBUILT:
            # The end of the reserved block (as being written: never below what is on disk,
            # see _Reservation); an SA never armed (none on a durable engine) counts as having
            # reserved nothing beyond what it used.
            rows += [(ctx.id, "out", i,
                      hook.limits[i] if isinstance(hook := sa.seq_limit_hook, _Reservation)
                      else sa.seq, sa.packets, sa.bytes)
                     for i, sa in enumerate(outbound.sas)]
        return rows

    def _arm_reservation(self, ctx: SaContext, sas: tuple[SecurityAssociation, ...]) -> None:
        """Durable engines: outbound sequence numbers are reserved on disk in blocks before use,
        through the SAs' own ``seq_limit``/``seq_limit_hook`` (the data path, native or not,
        stops at the limit and calls the hook, with the context's lock held). Nothing is
        reserved yet: the first packet reserves (and syncs) the first block, so a control-plane
        call costs no fsync. An in-memory engine reserves nothing and its packets check
        nothing."""
        if self._store is None:
            return
        hook = _Reservation(self, ctx, sas)
        for sa in sas:
            sa.seq_limit = sa.seq
            sa.seq_limit_hook = hook

    def _reserve(self, ctx: SaContext, sas: tuple[SecurityAssociation, ...],
                 limits: list[int]) -> None:
        """Write the SAs' new reservation ``limits``, synced (the caller moves ``seq_limit``
        only after this returns)."""
        if self._store is None:
            return
        rows = [(ctx.id, "out", i, limit, s.packets, s.bytes)
                for i, (s, limit) in enumerate(zip(sas, limits, strict=True))]
        self._store.put_sa_state(rows, sync=True)
        for r in rows:
            ctx.saved_rows[(r[1], r[2])] = r

    def _checkpoint(self, ctxs: list[SaContext]) -> None:
        """Write contexts' counters and replay edges (not synced: process-crash safe)."""
        if self._store is None:
            return
        rows = [r for c in ctxs for r in self._sa_rows(c)]
        if rows:
            self._store.put_sa_state(rows)
        for c in ctxs:
            c.unsaved = 0

    def _load(self, snap: Snapshot) -> None:
        """Bring a stored engine back: the same ids, filters, contexts, SAs and grants.

        SAs are not built here (building one is most of a context's cost, and a gateway holding
        100,000 contexts mostly needs a few at a time): each context keeps their stored
        descriptions, its inbound bundle is installed in the SA database as a deferred entry
        (found by SPI and destination), and the bundles are built at first use
        (:meth:`_build_bundle`). The collector is paused meanwhile: the load makes many
        objects and frees few, so its passes would find nothing to collect."""
        paused = gc.isenabled()
        gc.disable()
        try:
            self._load_all(snap)
        finally:
            if paused:
                gc.enable()

    def _load_all(self, snap: Snapshot) -> None:
        now = self._clock()
        self._reopened_at = now
        self._stored_unread = True
        meta = snap.meta
        if "created" not in meta:  # a new database: it starts with the default DACL (D.2)
            assert self._store is not None
            with self._store.transaction():
                self._store.put_grants(self._acl.entries())
                self._store.put_meta("created", str(time.time()))
        else:
            self._acl.load(snap.grants)
        self._filters.next_id = max(int(meta.get("next_filter_id", FIRST_FILTER_ID)),
                                    FIRST_FILTER_ID)
        self._next_ctx = int(meta.get("next_ctx_id", 1))
        self._id_marks = {"next_filter_id": self._filters.next_id,
                          "next_ctx_id": self._next_ctx}
        path = self._store.path if self._store is not None else ""
        recompiled = []
        for fid, key, lifetime, body, compiled in snap.filters:
            made = None
            if compiled is not None:  # as the engine compiled it when the filter was added
                try:
                    made = filterrows.record_from_row(fid, key, lifetime, body, compiled)
                except filterrows.RowError as exc:
                    raise StoreError(f"{path}: {exc}: refused") from None
            if made is None:  # written before compiled forms, or under other rules
                stored = persist.filter_from_body(body)
                try:
                    layer, action, callout, compiled_, _, _ = validate_filter(stored, False)
                except Fail as exc:
                    raise StoreError(f"{path}: stored filter {fid} no longer validates "
                                     f"(0x{exc.status:08X})") from exc
                rec = FilterRecord(fid, uuid.UUID(key), stored, layer,
                                   int(stored.effectiveWeight.uint64), action, callout,
                                   compiled_, lifetime)
                made = rec, rec.compiled.index() if layer.transport else []
                recompiled.append(made)
            rec, entries = made
            self._filters.insert(rec)
            if lifetime != "boottime":
                self._filters.publish(rec, entries)
            self._filters.next_id = max(self._filters.next_id, fid + 1)
        if recompiled and self._store is not None:  # compiled once: the next reopen is fast
            with self._store.transaction():
                for rec, entries in recompiled:
                    self._persist_filter(rec, entries)
        by_id, spis = self._filters.by_id, self._spis
        for cid, body, secret in snap.contexts:
            text = secret.decode()
            ctx, (inbound, outbound) = persist.context_from_rows(cid, body, text, self._clock)
            self._next_ctx = max(self._next_ctx, cid + 1)
            if ctx.outbound_filter not in by_id or (
                    ctx.inbound_filter and ctx.inbound_filter not in by_id):
                # Its filters were dynamic and died with the process: so does the context.
                if self._store is not None:
                    self._store.delete_context(cid)
                continue
            if inbound:
                if ctx.spi is None:
                    raise StoreError(f"{self._store.path if self._store else ''}: SA context "
                                     f"{cid} has inbound SAs but no SPI")
                ctx.defer_sas("inbound", text, self._builder)
                # Every inbound SA of a context has its SPI and its local address (_add and
                # fit_to_context refuse others); ESP-in-UDP ones GetSpi's local port.
                ports = (ctx.udp_encap[0],) if ctx.udp_encap and "esp" in inbound else ()
                ctx.inbound_handle = self._sad.add_inbound_deferred(
                    ctx.spi, ctx.local, functools.partial(self._build_inbound, ctx), ports)
            if outbound:
                ctx.defer_sas("outbound", text, self._builder)
                self._by_out_filter.setdefault(ctx.outbound_filter, []).append(ctx)
            self._contexts[cid] = ctx
            if ctx.spi is not None:
                used = spis.get(ctx.local)
                if used is None:
                    used = spis[ctx.local] = set()
                used.add(ctx.spi)
            if self._offload is not None and ctx.state is CtxState.ESTABLISHED:
                self._offload.established(ctx)  # a NIC keeps nothing across a restart
            self._schedule(ctx)
        self._changed()

    # ---------------------------------------------------------------- SAs built at first use
    def _build_bundle(self, ctx: SaContext, name: str) -> Any:
        """``SaContext.builder``: build a context's ``inbound_bundle`` or ``outbound_bundle``
        left unbuilt by its Add or by a reopen (``ctx.lazy``): as the Add gave them, with their
        lifetimes counted from the Add, or from the stored descriptions and state, exactly as
        the engine that wrote them would have had them at the reopen. Outbound SAs of a
        durable engine are armed for sequence-number reservation here. Reached from a packet's
        thread or a control call, once per bundle; None (logged) if it cannot be built (the
        engine was closed meanwhile, or the SAs were withdrawn unbuilt)."""
        if name == "inbound_bundle":
            handle = ctx.inbound_handle
            if handle is not None:
                try:
                    self._sad.materialize(handle)  # calls _build_inbound once
                except Exception:
                    log.exception("SA context %d: its inbound SAs cannot be built", ctx.id)
            return ctx.__dict__.get(name)
        with self._build_lock:
            b = ctx.built(name)
            if b is not UNBUILT:  # built by another thread meanwhile, or withdrawn
                return b
            try:
                b = self._bundle_of(ctx, "outbound")
            except Exception:
                # Every packet to it tries again: the error is logged once, until a build
                # succeeds (the packets are dropped and counted as having no SA).
                if ctx.id in self._failing:
                    log.debug("SA context %d: its outbound SAs still cannot be built", ctx.id,
                              exc_info=True)
                else:
                    self._failing.add(ctx.id)
                    log.exception("SA context %d: its outbound SAs cannot be built", ctx.id)
                return None
            self._failing.discard(ctx.id)
            # Continue from the stored reservation: the first packet reserves the next block.
            self._arm_reservation(ctx, b.sas)
            ctx.__dict__[name] = b  # packets may use it from here on
            ctx.lazy.pop("outbound_sas", None)
            stored.forget(ctx, "outbound_sas")
            return b

    def _build_inbound(self, ctx: SaContext) -> Bundle:
        """The SA database's build of a context's deferred inbound bundle (under its build
        lock, before it publishes the keys: the context is known by then)."""
        b = self._bundle_of(ctx, "inbound")
        self._ctx_of_sa[id_of_outer(b)] = ctx
        ctx.__dict__["inbound_bundle"] = b
        ctx.lazy.pop("inbound_sas", None)
        stored.forget(ctx, "inbound_sas")
        return b

    def _bundle_of(self, ctx: SaContext, direction: str) -> Bundle:
        """The SAs ``ctx.lazy`` holds for ``direction``, built (not installed anywhere)."""
        name = f"{direction}_sas"
        unbuilt = ctx.lazy[name]
        if type(unbuilt) is AddedSas:
            now = unbuilt.installed
            configs = unbuilt.configs
            if configs is None:
                configs = tuple(map(parse_sa, unbuilt.descriptions))
            return Bundle(tuple(SecurityAssociation.from_config(
                cfg, now=now, unsafe_iv_source=self._unsafe_iv_source) for cfg in configs))
        descs = json.loads(unbuilt)[name]
        assert self._store is not None
        states = self._store.sa_state(ctx.id, "in" if direction == "inbound" else "out")
        now = self._reopened_at
        sas = []
        for i, desc in enumerate(descs):
            state = states.get(i)
            if state is not None:
                # outbound: continue after the reserved block; inbound: the stored edge.
                desc = dict(desc, seq=max(desc.get("seq", 0), state[0]))
            sa = SecurityAssociation.from_dict(desc, now=now)
            if state is not None:
                sa.restore_counters(max(sa.packets, state[1]), max(sa.bytes, state[2]), now)
            sas.append(sa)
        return Bundle(tuple(sas))

    # ================================================================ ipsecsa extensions
    # Not Windows functions (hence snake_case): what ipsecsa's Pythonic API (ipsecsa.api) needs
    # and Windows' structures cannot say. Same conventions as the rest: the status first, checks
    # in F.10's order, nothing raised for bad arguments, the same internal paths.
    def last_failure(self) -> Fail | None:
        """The failure behind the status of this thread's last engine call (None if it
        succeeded): ``.status``, ``.field`` (the parameter or description field at fault, or
        "") and ``.detail`` (a message without key material)."""
        return getattr(self._failures, "last", None)

    @_api(0)
    def add_inbound_sas(self, engineHandle: Any, id: Any, descriptions: Any) -> None:
        """IPsecSaContextAddInbound1 with the bundle given as SA descriptions (``sa-format``
        dicts, ESP first): see :mod:`.described` for the rules particular to them."""
        self._add_described(engineHandle, id, descriptions, True)

    @_api(0)
    def add_outbound_sas(self, engineHandle: Any, id: Any, descriptions: Any) -> None:
        """IPsecSaContextAddOutbound1 with the bundle given as SA descriptions."""
        self._add_described(engineHandle, id, descriptions, False)

    def _add_described(self, engineHandle: Any, id: Any, descriptions: Any,
                       inbound: bool) -> None:
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ADD)
        self._no_txn(s)
        direction = "inbound" if inbound else "outbound"
        configs = parse_descriptions(descriptions, direction)

        def build(ctx: SaContext) -> _Install:
            fitted = fit_to_context(configs, direction, tunnel=ctx.tunnel, local=ctx.local,
                                    remote=ctx.remote, spi=ctx.spi, udp_encap=ctx.udp_encap)
            for i, cfg in enumerate(fitted):
                try:
                    self._try_build(cfg)
                except ConfigError as exc:
                    raise Fail(C.FWP_E_INVALID_PARAMETER, exc.reason,
                               f"descriptions[{i}].{exc.field}") from exc
            seconds, limited = described_limits(fitted)
            ports = tuple(c.encapsulation.dport for c in fitted if c.encapsulation is not None)
            return _Install(None, fitted, fitted, reported_bundle(fitted, ctx.version), seconds,
                            limited, 0, ports)

        self._install(s, id, inbound, build)

    @_api(1)
    def sa_context_view(self, engineHandle: Any, id: Any) -> tuple[dict[str, Any]]:
        """One SA context as a JSON-friendly dict (:mod:`.views`): state, host pair, SPIs,
        filters, per-SA algorithms and counters. Access as IPsecSaContextGetById0."""
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_READ)
        self._txn_state(s)
        with self._locked(s):
            ctx = self._ctx(id)
            return (context_view(ctx, self._clock(), *self._sides(ctx)),)

    @_api(1)
    def sa_context_views(self, engineHandle: Any) -> tuple[list[dict[str, Any]]]:
        """Every SA context's view, by id. Access as IPsecSaContextCreateEnumHandle0."""
        s = self._session(engineHandle)
        self._need(s, "ipsec_sa_db", C.FWPM_ACTRL_ENUM | C.FWPM_ACTRL_READ)
        self._txn_state(s)
        with self._locked(s):
            now = self._clock()
            contexts = sorted(self._contexts.values(), key=lambda c: c.id)
            self._read_stored(contexts)
            views = [context_view(c, now, *self._sides(c)) for c in contexts]
            self._stored_unread = False
            return (views,)

    # ================================================================ timers
    def _schedule(self, ctx: SaContext) -> None:
        t = ctx.next_timer()
        if t is not None:
            heapq.heappush(self._timers, (t, ctx.id))
            self._set_due(t)

    def _due(self, now: float) -> None:
        """Expiry is evaluated on every call and every packet: cheap unless something is due,
        and then only the contexts whose timers came up are looked at (a heap: a gateway of
        100,000 contexts with lifetimes has one due somewhere every few milliseconds)."""
        due = self._next_due
        if due is None or now < due:
            return
        with self._lock:
            self._next_due = None
            timers, contexts = self._timers, self._contexts
            looked: set[int] = set()
            while timers and timers[0][0] <= now:
                _, cid = heapq.heappop(timers)
                ctx = contexts.get(cid)
                if ctx is not None and cid not in looked:
                    looked.add(cid)
                    self._tick_ctx(ctx, now)
            if timers:
                self._set_due(timers[0][0])
            for s in list(self._sessions.values()):
                if s.txn is not None and now - s.txn.began > TXN_MAX_SECONDS:
                    self._abort(s, forced=True)
                elif s.txn is not None:
                    self._set_due(s.txn.began + TXN_MAX_SECONDS)

    def _set_due(self, t: float) -> None:
        if self._next_due is None or t < self._next_due:
            self._next_due = t

    def _tick_ctx(self, ctx: SaContext, now: float) -> None:
        if ctx.linger_until is not None:
            if now >= ctx.linger_until:
                self._delete_ctx(ctx)
                return
        elif ctx.state is not CtxState.EXPIRING and (
                (ctx.deadline is not None and now >= ctx.deadline)
                or (ctx.idle_seconds and now >= ctx.last_used + ctx.idle_seconds)):
            self._expire(ctx, now)  # schedules the linger's end
            return
        self._schedule(ctx)

    def _sa_spent(self, ctx: SaContext) -> None:
        """A data-path SA of ``ctx`` reached a hard limit (F.7: behaves like Expire)."""
        with self._lock:
            if ctx.id in self._contexts and ctx.state is not CtxState.EXPIRING:
                self._expire(ctx, self._clock())

    # ================================================================ traffic
    def outbound(self, packet: bytes) -> Result:
        """The host's stack sending ``packet``: classified at the outbound transport layer,
        protected by the SA context its IPsec filter names, blocked or passed in clear.

        This method is the reference; with the native extension the engine's route table
        stands in front of it (module docstring) and gives the same results."""
        if type(packet) is not bytes:
            packet = as_packet(packet)  # the one TypeError wording of every entry point
        return self._outbound_at(packet, self._clock())

    def _outbound_at(self, packet: bytes, now: float) -> Result:
        """:meth:`outbound` of a ``bytes`` packet at clock value ``now`` (the route table's
        slow path: it has called the clock already)."""
        due = self._due_at
        if due is not None and now >= due:
            self._due(now)
        gen = self._gen  # before deciding: a change meanwhile refuses the route learned below
        # The flow cache, inlined for the common case (_flow_key: IPv4, no options, not a
        # fragment); everything else goes through _decision.
        hit = None
        if len(packet) >= 24 and packet[0] == 0x45 and not (packet[6] & 0x3F or packet[7]):
            proto = packet[9]
            hit = self._flows.get((proto, packet[12:24] if proto in _V4_PORTED else
                                   packet[12:22] if proto == 1 else packet[12:20]))
        if hit is not None and hit[0] == gen:
            verdict, target = hit[1], hit[2]
        else:
            if self._closed:
                return DROPPED[DropReason.SA_UNUSABLE]
            verdict, target = self._decision(packet, True)
        if verdict is not _SEND:
            return self._outbound_verdict(verdict, packet, target)
        ctx = target
        bundle = ctx.outbound_bundle
        if bundle is None:  # expired or deleted since the decision: look again
            verdict, ctx = self._decision(packet, True, fresh=True)
            if verdict is not _SEND:
                return self._outbound_verdict(verdict, packet, ctx)
            bundle = ctx.outbound_bundle
            if bundle is None:
                return self._outbound_verdict(_NO_SA, packet)
        elif self._routes is not None:
            self._learn(packet, gen, ctx, bundle)
        sas = bundle.sas
        lock = ctx.lock
        lock.acquire()
        try:
            result = sas[0].protect(packet, now)
            if len(sas) == 2 and result[0] is not None:
                result = sas[1].protect(result[0], now)
            ctx.last_used = now
        finally:
            lock.release()
        if result[1] is not None or ctx.limited:
            self._out_tail(ctx, sas, [result])
        return result

    def _learn(self, packet: bytes, gen: int, ctx: SaContext, bundle: Bundle) -> None:
        """Teach the route table that ``packet``'s flow goes to ``ctx`` (refused by the table
        if the generation moved since ``gen`` was read, i.e. the decision may be stale)."""
        route = ctx.route
        if route is None:  # the first packet: can this context's bundle have a native route?
            sas = bundle.sas
            route = native.new_route(sas[0], ctx, ctx.limited) if len(sas) == 1 else None
            ctx.route = route = route if route is not None else False
        if route:
            self._routes.learn(packet, gen, route)

    def _out_tail(self, ctx: SaContext, sas: tuple[SecurityAssociation, ...],
                  results: list[Result]) -> None:
        """After packets of ``ctx`` were protected (either path): count the drops, and expire
        the context if an SA reached a hard limit (F.7)."""
        drops = [r[1] for r in results if r[1] is not None]
        for reason in drops:
            self._count(f"out-drop:{reason.value}")
        if (drops or ctx.limited) and not (sas[0].usable and sas[-1].usable):
            self._sa_spent(ctx)

    def outbound_batch(self, packets: Any) -> list[Result]:
        """:meth:`outbound` over a batch: one ``Result`` per packet, in input order, the same
        verdicts. Packets are classified one by one (the flow cache makes that a probe) and
        gathered per SA context; each context's packets then go through its ESP SA's
        ``protect_batch`` (one native call on the fast path) under the context's lock taken
        once, in arrival order. Two-SA bundles (ESP+AH) go packet by packet, in order.

        The reference, as :meth:`outbound` is: the native route table protects each run of
        consecutive packets of one routed context with one native call under one lock
        acquisition and hands every other packet, in its place, to :meth:`_outbound_at`."""
        if isinstance(packets, (bytes, bytearray, memoryview)):
            raise TypeError("outbound_batch takes an iterable of packets, not one packet")
        items = [p if type(p) is bytes else as_packet(p) for p in packets]
        if self._closed:
            return [DROPPED[DropReason.SA_UNUSABLE]] * len(items)
        return self._outbound_batch_at(items, self._clock())

    def _outbound_batch_at(self, items: list[bytes], now: float) -> list[Result]:
        results: list[Result] = [DROPPED[DropReason.SA_UNUSABLE]] * len(items)
        if self._closed:
            return results
        due = self._due_at
        if due is not None and now >= due:
            self._due(now)
        groups: dict[int, tuple[SaContext, list[int], list[bytes]]] = {}
        flows, gen = self._flows, self._gen
        for i, packet in enumerate(items):
            # The flow cache probe of outbound(), inlined: this loop is the batch's cost.
            hit = None
            if len(packet) >= 24 and packet[0] == 0x45 and not (packet[6] & 0x3F or packet[7]):
                proto = packet[9]
                hit = flows.get((proto, packet[12:24] if proto in _V4_PORTED else
                                 packet[12:22] if proto == 1 else packet[12:20]))
            if hit is not None and hit[0] == gen:
                verdict, target = hit[1], hit[2]
            else:
                verdict, target = self._decision(packet, True)
                flows, gen = self._flows, self._gen
            if verdict is not _SEND:
                results[i] = self._outbound_verdict(verdict, packet, target)
                continue
            bundle = target.outbound_bundle
            if bundle is None or len(bundle.sas) != 1:
                results[i] = self._outbound_at(packet, now)  # a bundle, or gone: one by one
                continue
            group = groups.get(target.id)
            if group is None:
                groups[target.id] = (target, [i], [packet])
            else:
                group[1].append(i)
                group[2].append(packet)
        for ctx, where, group_packets in groups.values():
            for i, result in zip(where, self._protect_group(ctx, group_packets, now),
                                 strict=True):
                results[i] = result
        return results

    def _protect_group(self, ctx: SaContext, packets: list[bytes], now: float) -> list[Result]:
        """Packets of one context with a one-SA bundle: one ``protect_batch`` under its lock
        (also the route table's path when the lock was busy: this waits for it)."""
        bundle = ctx.outbound_bundle
        if bundle is None or len(bundle.sas) != 1:  # changed since the packets were gathered
            return [self._outbound_at(p, now) for p in packets]
        sas = bundle.sas
        with ctx.lock:
            out = sas[0].protect_batch(packets, now)
            ctx.last_used = now
        if ctx.limited or any(r[1] is not None for r in out):
            self._out_tail(ctx, sas, out)
        return out

    def _outbound_verdict(self, verdict: str, packet: bytes, reason: Any = None) -> Result:
        if verdict is _PASS:
            return Result(packet, None)
        if verdict is _BLOCK:
            self._count("out-drop:blocked")
            return DROPPED[DropReason.BLOCKED]
        if verdict is _MALFORMED:
            self._count(f"out-drop:{reason.value}")
            return DROPPED[reason]
        self._count("out-drop:no_policy")  # F.20: no SA, and nothing here negotiates one
        return DROPPED[DropReason.NO_POLICY]

    def _decision(self, packet: bytes, outbound: bool, fresh: bool = False,
                  secured: bool = False) -> tuple[str, Any]:
        """What the filters say about a clear packet: (_SEND, context), (_PASS, None),
        (_BLOCK, None), (_NO_SA, None), (_SECURE, filter id) inbound, or (_MALFORMED, reason).

        The answer depends only on the packet's flow and on the engine's filters and contexts,
        so it is cached per flow and generation (bumped by every change that could alter it):
        a packet of a known flow costs one slice and one dict probe."""
        key = _flow_key(packet)
        if key is not None and (secured or not outbound):
            key = ("S" if secured else "I", *key)  # inbound flows keyed apart from outbound
        gen = self._gen  # read before computing: a change meanwhile makes this entry stale
        flows = self._flows
        if key is not None and not fresh:
            hit = flows.get(key)
            if hit is not None and hit[0] == gen:
                return hit[1], hit[2]
        try:
            pkt, ports = _view(packet, outbound=outbound, secured=secured)
        except MalformedPacket as exc:
            return _MALFORMED, exc.reason
        verdict, rec = self._decide(_LAYER_NAMES[("outbound" if outbound else "inbound",
                                                  pkt.version)], pkt, ports)
        answer: tuple[str, Any]
        if verdict == "permit":
            answer = (_PASS, None)
        elif verdict == "block":
            answer = (_BLOCK, None)
        elif not outbound:
            assert rec is not None
            answer = (_SECURE, rec.id)
        else:
            assert rec is not None
            ctx = self._context_for(rec, pkt)
            answer = (_NO_SA, None) if ctx is None else (_SEND, ctx)
        if key is not None:
            if len(flows) >= _FLOW_CACHE_MAX:
                flows.clear()
            flows[key] = (gen, answer[0], answer[1])
        return answer

    def inbound(self, packet: bytes) -> Result:
        """The host receiving ``packet``: IPsec is removed by the SA context it names and the
        inner packet checked against that context's inbound filter; clear text is checked
        against the inbound filters (dropped when one demands IPsec)."""
        if type(packet) is not bytes:
            packet = as_packet(packet)  # the one TypeError wording of every entry point
        if self._closed:
            return DROPPED[DropReason.SA_UNUSABLE]
        now = self._clock()
        due = self._due_at
        if due is not None and now >= due:
            self._due(now)
        result, sa = self._sad.inbound_via(packet, now, self._guard)
        if sa is None:
            reason = result[1]
            if reason is DropReason.WRONG_PROTOCOL or reason is DropReason.NON_ESP_MARKER:
                return self._clear_inbound(packet)
            if reason is not None:
                self._count_in_drop(packet, reason)
            return result
        ctx = self._ctx_of_sa.get(id(sa))
        inner = result[0]
        if inner is None:
            if result[1] is not None:
                self._count_in_drop(packet, result[1])
                if ctx is not None and not sa.usable:
                    self._sa_spent(ctx)
            return result
        if ctx is None:  # deleted while the packet was in flight
            self._count_in_drop(packet, DropReason.SA_UNUSABLE)
            return DROPPED[DropReason.SA_UNUSABLE]
        ctx.last_used = now
        if self._store is not None:
            ctx.unsaved += 1
            if ctx.unsaved >= CHECKPOINT_PACKETS:
                self._checkpoint([ctx])
        verdict, target = self._decision(inner, False, secured=True)
        if verdict is _PASS and not ctx.tunnel:
            return result
        if verdict is _SECURE and target == ctx.inbound_filter:
            return result
        if verdict is _MALFORMED:
            self._count_in_drop(packet, target)
            return DROPPED[target]
        if verdict is _BLOCK:
            self._count("in-drop:blocked")
            return DROPPED[DropReason.BLOCKED]
        # Another IPsec filter covers the inner packet, or a tunnel SA delivered what its
        # inbound tunnel filter does not cover (F.20, F.22).
        self._count("in-drop:secure_not_matching")
        return DROPPED[DropReason.SELECTOR_MISMATCH]

    def _guard(self, sa: SecurityAssociation) -> Any:
        ctx = self._ctx_of_sa.get(id(sa))
        return ctx.lock if ctx is not None else contextlib.nullcontext()

    def _clear_inbound(self, packet: bytes) -> Result:
        verdict, target = self._decision(packet, False)
        if verdict is _PASS:
            return Result(packet, None)
        if verdict is _MALFORMED:
            self._count(f"in-drop:{target.value}")
            return DROPPED[target]
        if verdict is _BLOCK:
            self._count("in-drop:blocked")
            return DROPPED[DropReason.BLOCKED]
        self._count("in-drop:clear_text")
        return DROPPED[DropReason.CLEAR_TEXT]

    def _decide(self, layer: str, pkt: PacketView, ports: tuple[int, int]
                ) -> tuple[str, FilterRecord | None]:
        """F.20 step 3: walk the matching filters in order."""
        for rec in self._filters.classify(layer, pkt, ports):
            a = rec.action
            if a == C.FWP_ACTION_BLOCK:
                return "block", rec
            if a == C.FWP_ACTION_PERMIT:
                return "permit", rec
            c = rec.callout
            if c is not None and c.role:
                return "ipsec", rec
            if a == C.FWP_ACTION_CALLOUT_INSPECTION:
                continue
            if c is not None and c.name.endswith(("_SILENT_DROP", "_SILENT_DROP_V4",
                                                  "_SILENT_DROP_V6")):
                return "block", rec  # a built-in callout, always registered: it drops
            # A callout nothing has registered here: Block, or Permit when the filter says so.
            if rec.stored.flags & C.FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED:
                return "permit", rec
            return "block", rec
        return "permit", None

    def _context_for(self, rec: FilterRecord, pkt: PacketView) -> SaContext | None:
        """The newest established context whose outbound filter is ``rec`` and whose traffic
        covers the packet (transport: the host pair and C.4's port/protocol overrides)."""
        lst = self._by_out_filter.get(rec.id)
        if not lst:
            return None
        for ctx in reversed(lst):
            if ctx.tunnel:
                return ctx
            t = ctx.traffic
            if int.from_bytes(ctx.local, "big") != pkt.local or \
                    int.from_bytes(ctx.remote, "big") != pkt.remote:
                continue
            if t.ipProtocol and t.ipProtocol != pkt.protocol:
                continue
            if t.localPort and t.localPort != pkt.local_port:
                continue
            if t.remotePort and t.remotePort != pkt.remote_port:
                continue
            return ctx
        return None

    def _count_in_drop(self, packet: bytes, reason: DropReason) -> None:
        proto = _outer_protocol(packet)
        with self._stats_lock:
            st = self._stats
            k = f"in-drop:{reason.value}"
            st[k] = st.get(k, 0) + 1
            if proto:
                k = f"{proto}:{reason.value}"
                st[k] = st.get(k, 0) + 1


#: Types a field of a traffic may have for :func:`_common_traffic` (ints that are not bools).
_TRAFFIC_INTS = frozenset({int, C.FWP_IP_VERSION, C.IPSEC_TRAFFIC_TYPE})
_U16, _U32, _U64 = 1 << 16, 1 << 32, 1 << 64


def _common_traffic(t: Any) -> _Traffic | None:
    """:meth:`Engine._traffic_checked` of the common traffic — an IPSEC_TRAFFIC1 whose fields
    are all present and valid, integers (not bools) where integers go, an IPv6 address as 16
    bytes — in one pass over its fields; None for anything else, which then takes the full
    checks in F.10's order (so that the status and the field named are theirs). Never raises."""
    if type(t) is not T.IPSEC_TRAFFIC1:
        return None
    d = t.__dict__
    ints = _TRAFFIC_INTS
    try:
        ipv, ttype = d["ipVersion"], d["trafficType"]
        fid_a, fid_b = d["ipsecFilterId"], d["tunnelPolicyId"]
        rport, lport, proto = d["remotePort"], d["localPort"], d["ipProtocol"]
        luid, profile = d["localIfLuid"], d["realIfProfileId"]
        if type(ipv) not in ints or type(ttype) not in ints or type(fid_a) not in ints \
                or type(fid_b) not in ints or type(rport) not in ints \
                or type(lport) not in ints or type(proto) not in ints \
                or type(luid) not in ints or type(profile) not in ints:
            return None
        if ttype == C.IPSEC_TRAFFIC_TYPE_TRANSPORT:
            tunnel = False
            fid = fid_a or fid_b
        elif ttype == C.IPSEC_TRAFFIC_TYPE_TUNNEL:
            tunnel = True
            fid = fid_b or fid_a
            if rport or lport or proto:
                return None
        else:
            return None
        if not (0 <= fid < _U64 and 0 <= rport < _U16 and 0 <= lport < _U16
                and 0 <= proto < 256 and 0 <= luid < _U64 and 0 <= profile < _U32):
            return None
        if ipv == C.FWP_IP_VERSION_V4:
            lv4, rv4 = d["localV4Address"], d["remoteV4Address"]
            if type(lv4) not in ints or type(rv4) not in ints \
                    or not (0 < lv4 < _U32 and 0 < rv4 < _U32):
                return None
            version, local, remote = 4, lv4.to_bytes(4, "big"), rv4.to_bytes(4, "big")
        elif ipv == C.FWP_IP_VERSION_V6:
            local, remote = d["localV6Address"], d["remoteV6Address"]
            if type(local) is not bytes or type(remote) is not bytes or len(local) != 16 \
                    or len(remote) != 16 or not any(local) or not any(remote):
                return None
            version = 6
        else:
            return None
    except KeyError:
        return None
    return _Traffic(version, tunnel, local, remote, fid, lport, rport, proto, T.clone(t))


def _add_traffic(st: dict[str, int], d: str, ctx: SaContext, b: Any) -> None:
    """Add a bundle's data-path counters to the statistics totals ``st`` (direction ``d``): a
    Bundle's, or a StoredBundle's (SAs of a reopened context not built yet, counted once)."""
    packets, n, esp, ah, encrypted = b.traffic if type(b) is stored.StoredBundle \
        else stored.traffic_counts(b.sas)
    packets_key, tunnel_key, transport_key, esp_key, ah_key, encrypted_key = _TRAFFIC_KEYS[d]
    kind = tunnel_key if ctx.tunnel else transport_key
    get = st.get
    st[packets_key] = get(packets_key, 0) + packets
    st[kind] = get(kind, 0) + n
    if esp:
        st[esp_key] = get(esp_key, 0) + esp
    if ah:
        st[ah_key] = get(ah_key, 0) + ah
    if encrypted:
        st[encrypted_key] = get(encrypted_key, 0) + encrypted


_TRAFFIC_KEYS = {d: tuple(f"{d}:{k}" for k in ("packets", "tunnel", "transport", "esp", "ah",
                                               "encrypted")) for d in ("in", "out")}


class _CallLock:
    """``with engine._locked(session):`` — the transaction lock for the session, then the
    engine's state lock; released in the reverse order, whatever the block raised. A class
    rather than a generator-based context manager: every mutating call takes it, and the
    generator's machinery cost half again as much as the two locks."""

    __slots__ = ("engine", "session")

    def __init__(self, engine: Engine, session: _Session) -> None:
        self.engine, self.session = engine, session

    def __enter__(self) -> None:
        engine, s = self.engine, self.session
        if not engine._txn_lock.acquire(s, s.wait_ms, engine._reap_owner):
            raise Fail(C.FWP_E_TIMEOUT, "timed out waiting for the transaction lock")
        try:
            engine._lock.acquire()
        except BaseException:
            engine._txn_lock.release(s)
            raise

    def __exit__(self, *exc: object) -> None:
        engine = self.engine
        try:
            engine._lock.release()
        finally:
            engine._txn_lock.release(self.session)


class _Reservation:
    """The ``seq_limit_hook`` of a durable context's outbound SAs: reserves the next block,
    sized by how fast the last one went (real time, not the engine's clock: this is about the
    cost of an fsync): doubled up to SEQ_BLOCK_MAX while blocks last less than
    SEQ_BLOCK_FAST_SECONDS, halved down to SEQ_BLOCK when one lasts more than
    SEQ_BLOCK_SLOW_SECONDS."""

    __slots__ = ("at", "block", "ctx", "engine", "limits", "sas")

    def __init__(self, engine: Engine, ctx: SaContext,
                 sas: tuple[SecurityAssociation, ...]) -> None:
        self.engine, self.ctx, self.sas = engine, ctx, sas
        self.block = SEQ_BLOCK
        self.at: float | None = None
        #: The reservation as written to the store, or being written: raised *before* the
        #: synced write, so that a control call persisting the context meanwhile (on another
        #: thread, without the context's lock) never writes a lower limit over it; the SAs'
        #: ``seq_limit`` moves only *after* it, so no packet uses a number not yet synced.
        self.limits = [sa.seq for sa in sas]

    def __call__(self, sa: SecurityAssociation, seq: int) -> None:
        now = time.monotonic()
        if self.at is not None:
            took = now - self.at
            if took < SEQ_BLOCK_FAST_SECONDS:
                self.block = min(self.block * 2, SEQ_BLOCK_MAX)
            elif took > SEQ_BLOCK_SLOW_SECONDS:
                self.block = max(self.block // 2, SEQ_BLOCK)
        sas, block = self.sas, self.block
        self.limits = limits = [max(old, min(s.seq + block, SEQ_MAX_64 if s.esn else SEQ_MAX_32))
                                for s, old in zip(sas, self.limits, strict=True)]
        self.engine._reserve(self.ctx, sas, limits)
        for s, limit in zip(sas, limits, strict=True):
            s.seq_limit = limit
        self.at = now


def id_of_outer(bundle: Bundle) -> int:
    """The key of the SA an inbound packet is found under: the bundle's outermost SA."""
    return id(bundle.sas[-1])


def _pid() -> int:
    import os

    return os.getpid()


@functools.lru_cache(maxsize=4096)
def _address_text(packed: bytes) -> str:
    """An address of a context as SA descriptions spell it (a gateway has few peers: cached)."""
    return str(ipaddress.ip_address(packed))


def _flow_key(packet: bytes) -> tuple[Any, ...] | None:
    """What decides a clear packet's classification, for the flow cache: protocol, then
    addresses and ports (ICMP type and code) of an unfragmented IPv4 packet without options;
    None for anything else (classified without the cache). Nothing per-packet (identification,
    checksum, TTL) is part of it, so every packet of a flow hits."""
    if len(packet) < 24 or packet[0] != 0x45 or packet[6] & 0x3F or packet[7]:
        return None
    proto = packet[9]
    if proto in _V4_PORTED:
        return (proto, packet[12:24])
    if proto == 1:
        return (proto, packet[12:22])
    return (proto, packet[12:20])


def _is_loopback(version: int, addr: int) -> bool:
    return addr >> 24 == 127 if version == 4 else addr == 1


def _view(packet: bytes | bytearray | memoryview, outbound: bool, secured: bool = False
          ) -> tuple[PacketView, tuple[int, int]]:
    """The condition view of a clear packet and its (sport, dport) for the classifier."""
    f = flow_of(packet)
    src, dst = int.from_bytes(f.src, "big"), int.from_bytes(f.dst, "big")
    proto = f.protocol
    sport: int | None
    dport: int | None
    if proto in PORTED_PROTOCOLS:
        sport, dport = f.sport, f.dport
    elif proto == (1 if f.version == 4 else 58):
        icmp_type, icmp_code = _icmp(packet, f.version)
        # F.17: at the transport layers the local port is the ICMP type, the remote the code.
        if outbound:
            sport, dport = icmp_type, icmp_code
        else:
            sport, dport = icmp_code, icmp_type
    else:
        sport = dport = None
    flags = 0
    if _is_loopback(f.version, src) or _is_loopback(f.version, dst):
        flags |= C.FWP_CONDITION_FLAG_IS_LOOPBACK
    if secured:
        flags |= C.FWP_CONDITION_FLAG_IS_IPSEC_SECURED
    if outbound:
        view = PacketView(f.version, src, dst, proto, sport, dport, flags)
    else:
        view = PacketView(f.version, dst, src, proto, dport, sport, flags)
    return view, (sport or 0, dport or 0)


def _icmp(packet: bytes | bytearray | memoryview, version: int) -> tuple[int, int]:
    if version == 4:
        off = (packet[0] & 15) * 4
    else:
        off = parse_ipv6_chain(bytes(packet)).upper_offset
    if len(packet) < off + 2:
        raise MalformedPacket(DropReason.TRUNCATED, "ICMP header")
    return packet[off], packet[off + 1]


def _outer_protocol(packet: bytes) -> str:
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        p = packet[9]
        return "esp" if p in (50, 17) else "ah" if p == 51 else ""
    try:
        ch = parse_ipv6_chain(packet, stop_at_ipsec=True)
    except Exception:  # noqa: BLE001 - a statistic, never an error
        return ""
    p = ch.upper_protocol
    return "esp" if p in (50, 17) else "ah" if p == 51 else ""


def _filter_template(tpl: Any) -> Callable[[FilterRecord], bool]:
    """F.23: what an FWPM_FILTER_ENUM_TEMPLATE0 selects (validated here)."""
    if tpl is None:
        return lambda r: r.lifetime != "boottime"
    if not isinstance(tpl, T.FWPM_FILTER_ENUM_TEMPLATE0):
        raise Fail(C.FWP_E_INVALID_PARAMETER, "enumTemplate must be an FWPM_FILTER_ENUM_TEMPLATE0")
    if tpl.layerKey not in (None, T.GUID_NULL) and (
            not isinstance(tpl.layerKey, uuid.UUID) or tpl.layerKey not in LAYERS):
        raise Fail(C.FWP_E_LAYER_NOT_FOUND, "enumTemplate.layerKey")
    et = _uint(tpl.enumType, 32, "enumType")
    if et >= C.FWP_FILTER_ENUM_TYPE_MAX:
        raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"enumType {et}")
    flags = _uint(tpl.flags, 32, "flags")
    if flags & ~_ENUM_FLAGS:
        raise Fail(C.FWP_E_INVALID_FLAGS, f"enum flags 0x{flags:x}")
    mask = _uint(tpl.actionMask, 32, "actionMask")
    if mask != 0xFFFFFFFF and mask & C.FWP_ACTION_FLAG_CALLOUT and tpl.calloutKey is None:
        raise Fail(C.FWP_E_NULL_POINTER, "calloutKey is required with FWP_ACTION_FLAG_CALLOUT")
    if tpl.numFilterConditions and tpl.filterCondition is None:
        raise Fail(C.FWP_E_NULL_POINTER, "filterCondition")
    if tpl.filterCondition is not None and not isinstance(tpl.filterCondition, list):
        raise Fail(C.FWP_E_INVALID_PARAMETER, "filterCondition must be a list")
    try:
        n = T.effective_count(tpl, "filterCondition")
    except (ValueError, TypeError) as exc:
        raise Fail(C.FWP_E_INVALID_PARAMETER, str(exc)) from exc
    conds = list(tpl.filterCondition or [])[:n]
    for i, a in enumerate(conds):
        for b in conds[i + 1:]:
            if a == b:
                raise Fail(C.FWP_E_DUPLICATE_CONDITION, "the template repeats a condition")
    fields = {c.fieldKey for c in conds}
    boot_only = flags & C.FWP_FILTER_ENUM_FLAG_BOOTTIME_ONLY
    with_boot = flags & C.FWP_FILTER_ENUM_FLAG_INCLUDE_BOOTTIME

    def select(r: FilterRecord) -> bool:
        st = r.stored
        if tpl.layerKey not in (None, T.GUID_NULL) and st.layerKey != tpl.layerKey:
            return False
        if tpl.providerKey is not None and st.providerKey != tpl.providerKey:
            return False
        if boot_only:
            if r.lifetime != "boottime":
                return False
        elif r.lifetime == "boottime" and not with_boot:
            return False
        if mask != 0xFFFFFFFF:
            if not r.action & mask:
                return False
            if mask & C.FWP_ACTION_FLAG_CALLOUT and st.action.calloutKey != tpl.calloutKey:
                return False
        for fk in fields:
            mine = [c for c in st.filterCondition if c.fieldKey == fk]
            wanted = [c for c in conds if c.fieldKey == fk]
            if not mine:
                if et == C.FWP_FILTER_ENUM_OVERLAPPING:
                    continue
                return False
            if not same_conditions(mine, wanted):
                return False
        return True

    return select


def _enum_order(tpl: Any, items: list[FilterRecord]) -> list[FilterRecord]:
    if tpl is None:
        return items
    if tpl.flags & (C.FWP_FILTER_ENUM_FLAG_SORTED | C.FWP_FILTER_ENUM_FLAG_BEST_TERMINATING_MATCH):
        items = sorted(items, key=lambda r: r.order)
    if tpl.flags & C.FWP_FILTER_ENUM_FLAG_BEST_TERMINATING_MATCH:
        items = [r for r in items if r.action & C.FWP_ACTION_FLAG_TERMINATING][:1]
    return items


def _context_template(tpl: Any) -> Callable[[SaContext], bool]:
    """F.14: an IPSEC_SA_CONTEXT_ENUM_TEMPLATE0 (FWP_EMPTY matches all; V4/V6 masks)."""
    if tpl is None:
        return lambda c: True
    tests = []
    for name in ("localSubNet", "remoteSubNet"):
        v = getattr(tpl, name)
        if v is None or v.type == C.FWP_EMPTY:
            continue
        if v.type == C.FWP_V4_ADDR_MASK:
            am = v.v4AddrMask
            if am is None:
                raise Fail(C.FWP_E_NULL_POINTER, name)
            addr, mask = _uint(am.addr, 32, "addr"), _uint(am.mask, 32, "mask")
            tests.append((name, 4, addr & mask, mask))
        elif v.type == C.FWP_V6_ADDR_MASK:
            am = v.v6AddrMask
            if am is None:
                raise Fail(C.FWP_E_NULL_POINTER, name)
            plen = _uint(am.prefixLength, 8, "prefixLength")
            if plen > 128:
                raise Fail(C.FWP_E_INVALID_NET_MASK, "prefixLength above 128")
            mask = ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
            tests.append((name, 6, int.from_bytes(am.addr, "big") & mask, mask))
        else:
            raise Fail(C.FWP_E_TYPE_MISMATCH, f"{name} takes an address and mask")

    def select(c: SaContext) -> bool:
        for name, version, net, mask in tests:
            addr = c.local if name == "localSubNet" else c.remote
            if c.version != version or int.from_bytes(addr, "big") & mask != net:
                return False
        return True

    return select
