"""Filters for manual keying (reference C.7, F.15–F.21): validation, the filter table, weights,
and classification of packets at the transport layers.

Classification goes through the SA database's classifier (:class:`ipsecsa.sad.Classifier`), one
per transport layer: each filter is installed under the index entries its conditions give
(:meth:`Compiled.index`), :meth:`Classifier.lookup_all` returns the candidates, the exact
conditions decide, and F.20's order (effectiveWeight descending, filterId ascending) arbitrates.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipsecsa.sad import Classifier, Filter
from ipsecsa.store.codec import encode
from ipsecsa.wfp import constants as C
from ipsecsa.wfp._structbase import clone_but
from ipsecsa.wfp.conditions import Compiled, PacketView, compile_conditions
from ipsecsa.wfp.registry import (
    CALLOUT_INFO,
    LAYER_CONDITIONS,
    LAYERS,
    PROVIDERS,
    SUBLAYER_UNIVERSAL,
    SUBLAYERS,
    CalloutInfo,
    LayerInfo,
    layer_info,
)
from ipsecsa.wfp.status import Fail
from ipsecsa.wfp.types import (
    FWP_CONDITION_VALUE0,
    FWP_RANGE0,
    FWP_VALUE0,
    FWPM_FILTER0,
    FWPM_FILTER_CONDITION0,
    GUID_NULL,
    clone,
    effective_count,
)
from ipsecsa.wfp.unions import CONDITION_VALUE_MEMBERS, selected

#: F.19: the first filterId a fresh engine hands out.
FIRST_FILTER_ID = 0x10000
_AUTO_LOW = (1 << 52) - 1

#: F.15: the flags FwpmFilterAdd0 accepts.
_ADD_FLAGS = (C.FWPM_FILTER_FLAG_PERSISTENT | C.FWPM_FILTER_FLAG_BOOTTIME
              | C.FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT | C.FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT
              | C.FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED | C.FWPM_FILTER_FLAG_INDEXED)
_FILTER_ACTIONS = frozenset({C.FWP_ACTION_BLOCK, C.FWP_ACTION_PERMIT,
                             C.FWP_ACTION_CALLOUT_TERMINATING, C.FWP_ACTION_CALLOUT_INSPECTION,
                             C.FWP_ACTION_CALLOUT_UNKNOWN})


@dataclass(eq=False)
class FilterRecord:
    """One filter in the table.

    A record a durable engine reopened (:func:`.filterrows.record_from_row`) starts without
    ``stored`` and ``compiled``: they are rebuilt from the stored row at first read
    (:class:`_LazyStored`, :class:`_LazyCompiled`), while the classifier entries and the F.16
    key come from the row's compiled form."""

    id: int
    key: uuid.UUID
    stored: FWPM_FILTER0  # what Get returns (a private copy, ids and weight filled in)
    layer: LayerInfo
    weight: int
    action: int
    callout: CalloutInfo | None
    compiled: Compiled
    lifetime: str  # "dynamic", "static", "persistent", "boottime"
    session: Any = None  # the dynamic session that owns it
    handles: tuple[int, ...] = ()  # classifier handles while published
    published: bool = False
    order: tuple[int, int] = field(init=False)
    #: conditions_key() of an IPsec filter, computed once (insert and remove both need it).
    cond_key: tuple[Any, ...] | None = field(init=False, default=None)
    #: A reopened record: the stored FWPM_FILTER0 (store codec JSON) until ``stored`` is read.
    lazy_body: str | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.order = (-self.weight, self.id)

    @property
    def ipsec_role(self) -> tuple[str, str] | None:
        """("outbound"/"inbound", "transport"/"tunnel") for an IPsec SA-context filter."""
        c = self.callout
        if c is None or not c.role or self.action not in (C.FWP_ACTION_CALLOUT_TERMINATING,
                                                          C.FWP_ACTION_CALLOUT_UNKNOWN):
            return None
        return c.direction, c.role


class _LazyStored:
    """``FilterRecord.stored`` of a reopened record: decoded from the stored row at first read
    (Get, Enum, a context's details, a callout's flags). Concurrent first reads may both
    decode: each gets an equal structure, one of them stays."""

    def __get__(self, rec: Any, owner: Any = None) -> Any:
        if rec is None:
            return None
        from ipsecsa.store.codec import loads

        value = loads(rec.lazy_body)
        rec.__dict__["stored"] = value
        return value


class _LazyCompiled:
    """``FilterRecord.compiled`` of a reopened record: its conditions compiled at first read
    (a packet for which the classifier returned it as a candidate). The row was validated when
    the filter was added and is checked against its digest on load; a stored filter this
    version cannot compile is a damaged store (StoreError)."""

    def __get__(self, rec: Any, owner: Any = None) -> Any:
        if rec is None:
            return None
        conds = rec.stored.filterCondition or []
        try:
            compiled = compile_conditions(conds, rec.layer)
        except Fail as exc:
            from ipsecsa.store.sqlite import StoreError

            raise StoreError(f"stored filter {rec.id} no longer compiles "
                             f"(0x{exc.status:08X}: {exc.detail})") from exc
        rec.__dict__["compiled"] = compiled
        return compiled


FilterRecord.stored = _LazyStored()  # type: ignore[assignment]
FilterRecord.compiled = _LazyCompiled()  # type: ignore[assignment]


def _is_uint(value: object, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits


#: The registry tables by the GUIDs' integers: a UUID hashes and compares in Python code, an
#: int in C, and a filter add looks up five of them.
_BY_INT: dict[int, dict[int, Any]] = {
    id(table): {g.int: v for g, v in table.items()}
    for table in (LAYERS, SUBLAYERS, PROVIDERS, CALLOUT_INFO)}


def _known(table: dict[uuid.UUID, Any], key: object) -> Any:
    """``table[key]``, or None for an unknown key or one that is not a GUID at all (a caller's
    garbage must become a status, never a TypeError from hashing it)."""
    if type(key) is uuid.UUID:
        return _BY_INT[id(table)].get(key.int)
    return table.get(key) if isinstance(key, uuid.UUID) else None


#: layer_info() of each layer filters were added at (a LayerInfo is a frozen value).
_LAYER_INFO: dict[str, LayerInfo] = {}


def validate_filter(flt: Any, session_dynamic: bool) -> tuple[LayerInfo, int, CalloutInfo | None,
                                                               Compiled, str, list[Any]]:
    """F.21's checks after the filter pointer itself, in order; returns what the table needs:
    (layer, action type, callout, compiled conditions, lifetime, conditions list)."""
    if not isinstance(flt, FWPM_FILTER0):
        raise Fail(C.FWP_E_INVALID_PARAMETER, "filter must be an FWPM_FILTER0")
    dd = flt.displayData
    if dd is None or getattr(dd, "name", None) is None:
        raise Fail(C.FWP_E_NULL_DISPLAY_NAME, "displayData.name is NULL")
    if not isinstance(dd.name, str):
        raise Fail(C.FWP_E_INVALID_PARAMETER, "displayData.name must be a string")
    flags = flt.flags
    if not _is_uint(flags, 32):
        raise Fail(C.FWP_E_INVALID_PARAMETER, "flags must be a UINT32")
    action = flt.action
    atype = getattr(action, "type", None)
    if flags & ~_ADD_FLAGS or (flags & C.FWPM_FILTER_FLAG_PERSISTENT
                               and flags & C.FWPM_FILTER_FLAG_BOOTTIME):
        raise Fail(C.FWP_E_INVALID_FLAGS, f"filter flags 0x{flags:x}")
    if flags & C.FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED and atype not in (
            C.FWP_ACTION_CALLOUT_TERMINATING, C.FWP_ACTION_CALLOUT_UNKNOWN):
        raise Fail(C.FWP_E_INVALID_FLAGS, "PERMIT_IF_CALLOUT_UNREGISTERED needs a callout action")
    layer_name = _known(LAYERS, flt.layerKey)
    if layer_name is None:
        raise Fail(C.FWP_E_LAYER_NOT_FOUND, "layerKey")
    if layer_name not in LAYER_CONDITIONS:
        raise Fail(C.FWP_E_INCOMPATIBLE_LAYER, f"filters cannot be added at {layer_name} here")
    layer = _LAYER_INFO.get(layer_name)
    if layer is None:
        layer = _LAYER_INFO[layer_name] = layer_info(layer_name)
    sub = flt.subLayerKey
    if sub is not None and sub != GUID_NULL and _known(SUBLAYERS, sub) is None:
        raise Fail(C.FWP_E_SUBLAYER_NOT_FOUND, "subLayerKey")
    if flt.providerKey is not None and _known(PROVIDERS, flt.providerKey) is None:
        raise Fail(C.FWP_E_PROVIDER_NOT_FOUND, "providerKey")
    if flags & C.FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT:
        raise Fail(C.FWP_E_PROVIDER_CONTEXT_NOT_FOUND,
                   "provider contexts are not implemented (F.15)")
    _check_weight(flt.weight)
    if flt.numFilterConditions and flt.filterCondition is None:
        raise Fail(C.FWP_E_NULL_POINTER, "filterCondition is NULL")
    try:
        n = effective_count(flt, "filterCondition")
    except (ValueError, TypeError) as exc:
        raise Fail(C.FWP_E_INVALID_PARAMETER, str(exc)) from exc
    conds = list(flt.filterCondition or [])[:n]
    compiled = compile_filter_conditions(conds, layer)
    if not isinstance(atype, int) or atype not in _FILTER_ACTIONS:
        raise Fail(C.FWP_E_INVALID_ACTION_TYPE, f"action type {atype!r}")
    callout = None
    if atype & C.FWP_ACTION_FLAG_CALLOUT:
        key = getattr(action, "calloutKey", None)
        callout = _known(CALLOUT_INFO, key)  # every callout, with what it means
        if callout is None:
            raise Fail(C.FWP_E_CALLOUT_NOT_FOUND, "calloutKey")
        if callout.layer != layer_name:
            raise Fail(C.FWP_E_INCOMPATIBLE_LAYER,
                       f"{callout.name} does not apply at {layer_name}")
        if callout.ipsec and atype == C.FWP_ACTION_CALLOUT_INSPECTION:
            raise Fail(C.FWP_E_ACTION_INCOMPATIBLE_WITH_LAYER,
                       "an IPsec callout cannot inspect")
    if session_dynamic:
        lifetime = "dynamic"
    elif flags & C.FWPM_FILTER_FLAG_PERSISTENT:
        lifetime = "persistent"
    elif flags & C.FWPM_FILTER_FLAG_BOOTTIME:
        lifetime = "boottime"
    else:
        lifetime = "static"
    return layer, atype, callout, compiled, lifetime, conds


def _check_weight(w: Any) -> None:
    if w is None:
        return
    t = getattr(w, "type", None)
    if t == C.FWP_EMPTY:
        return
    if t == C.FWP_UINT8:
        if not _is_uint(w.uint8, 8) or w.uint8 > C.FWPM_WEIGHT_RANGE_MAX:
            raise Fail(C.FWP_E_INVALID_WEIGHT, "weight range index above 15")
        return
    if t == C.FWP_UINT64 and _is_uint(w.uint64, 64):
        return
    raise Fail(C.FWP_E_INVALID_WEIGHT, "weight must be FWP_EMPTY, FWP_UINT8 or FWP_UINT64")


def effective_weight(w: Any, field_count: int, filter_id: int) -> int:
    """F.20: the weight BFE assigns."""
    auto = (field_count << 52) | (_AUTO_LOW - min(filter_id, _AUTO_LOW))
    if w is None or w.type == C.FWP_EMPTY:
        return auto
    if w.type == C.FWP_UINT8:
        return (w.uint8 << 60) | auto
    return int(w.uint64)


class FilterTable:
    """Every filter of the engine, by id and by key, and the per-layer classifiers.

    Writers hold the engine's transaction lock; the dicts are also guarded by ``lock`` for
    readers outside it (the data path reads only the classifiers)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.by_id: dict[int, FilterRecord] = {}
        self.by_key: dict[uuid.UUID, FilterRecord] = {}
        self.next_id = FIRST_FILTER_ID
        self._index: dict[str, Classifier[FilterRecord]] = {}
        #: IPsec filters by (layer, role, conditions as a set): F.16's "cached inbound filter"
        #: of a Create is one probe here instead of a scan of every filter.
        self.by_conditions: dict[tuple[Any, ...], set[int]] = {}

    # --------------------------------------------------------------- changes
    def allocate_id(self) -> int:
        with self.lock:
            fid = self.next_id
            self.next_id += 1
            return fid

    def insert(self, rec: FilterRecord) -> None:
        with self.lock:
            self.by_id[rec.id] = rec
            self.by_key[rec.key] = rec
            if rec.ipsec_role is not None:
                if rec.cond_key is None:  # a reopened record comes with it
                    rec.cond_key = conditions_key(rec)
                self.by_conditions.setdefault(rec.cond_key, set()).add(rec.id)

    def remove(self, rec: FilterRecord) -> None:
        with self.lock:
            self.by_id.pop(rec.id, None)
            key = rec.key  # a GUID hashes in Python code: once per table, not get then del
            held = self.by_key.pop(key, None)
            if held is not rec and held is not None:
                self.by_key[key] = held  # another record's key: put back
            if rec.cond_key is not None:
                ids = self.by_conditions.pop(rec.cond_key, None)
                if ids is not None:
                    ids.discard(rec.id)
                    if ids:
                        self.by_conditions[rec.cond_key] = ids

    def publish(self, rec: FilterRecord, entries: list[Filter] | None = None) -> None:
        """Make ``rec`` visible to classification (transport layers only), under ``entries``
        (default: its compiled conditions' :meth:`~.conditions.Compiled.index`)."""
        if not rec.layer.transport or rec.published:
            return
        clf = self._index.get(rec.layer.name)
        if clf is None:
            clf = self._index[rec.layer.name] = Classifier()
        index = rec.compiled.index() if entries is None else entries
        rec.handles = tuple([clf.add(f, rec) for f in index])
        rec.published = True

    def unpublish(self, rec: FilterRecord) -> None:
        if not rec.published:
            return
        clf = self._index[rec.layer.name]
        for h in rec.handles:
            clf.remove(h)
        rec.handles = ()
        rec.published = False

    # --------------------------------------------------------------- classification
    def classify(self, layer: str, pkt: PacketView, ports: tuple[int, int]) -> list[FilterRecord]:
        """The filters at ``layer`` matching ``pkt``, in F.20 order. ``ports`` is (sport,
        dport) of the packet as the classifier indexes it."""
        clf = self._index.get(layer)
        if clf is None:
            return []
        if pkt.version == 4 or pkt.version == 6:
            if layer.startswith("FWPM_LAYER_INBOUND"):
                src, dst = pkt.remote, pkt.local
            else:
                src, dst = pkt.local, pkt.remote
            cands = clf.lookup_all(pkt.version, src, dst, pkt.protocol, ports[0], ports[1])
        else:
            return []
        if not cands:
            return []
        seen: set[int] = set()
        hits = []
        for rec in cands:
            if rec.id in seen:
                continue
            seen.add(rec.id)
            if rec.compiled.matches(pkt):
                hits.append(rec)
        hits.sort(key=_order)
        return hits


def conditions_key(rec: FilterRecord, layer: Any = None, role: Any = None) -> tuple[Any, ...]:
    """(layer, IPsec role, the filter's conditions as a set) — what F.16 compares: each
    condition as (field, match type, data type, selected member), so stale union members a C
    caller would not see make no difference. The set is written as text
    (:func:`conditions_text`), so that a durable engine stores it and reopens without
    rebuilding the conditions."""
    if rec.cond_key is not None:
        text = rec.cond_key[2]
    else:
        compiled = rec.__dict__.get("compiled")  # never compiles a reopened record's
        text = compiled.text if compiled is not None else None
        if text is None:
            text = conditions_text(rec.stored.filterCondition)
    return (layer or rec.stored.layerKey, role or rec.ipsec_role, text)


def conditions_text(conditions: list[Any]) -> str:
    """F.16's set of conditions in one canonical text: each condition's (field, match type,
    :func:`value_key`) as sorted-key JSON, the distinct ones sorted, one per line."""
    return "\n".join(sorted({_condition_text(c) for c in conditions}))


#: Integer types whose JSON is ``int.__repr__`` of the value: int, and the IntEnums a condition's
#: match type and data type come as (their members' values are plain ints; the codec writes an
#: enum as its value).
_JSON_INTS = frozenset({int, C.FWP_MATCH_TYPE, C.FWP_DATA_TYPE})



@functools.lru_cache(maxsize=256)
def _guid_text(n: int) -> str:
    """``str()`` of the GUID whose integer is ``n``, remembered for the few condition fields
    there are."""
    return str(uuid.UUID(int=n))


def _condition_text(c: Any) -> str:
    """One line of :func:`conditions_text`: ``encode([fieldKey, matchType, value_key(value)])``.

    The common shape (:func:`_common_line`) is written directly, as encode writes it; a new
    JSON encoder per condition cost more than the rest of a filter's validation. Any other
    shape goes through encode."""
    line = _common_line(c)
    if line is not None:
        return line
    return encode([c.fieldKey, c.matchType, value_key(c.conditionValue)])


def _common_line(c: Any) -> str | None:
    """The line of :func:`conditions_text` of a condition of the common shape
    (:func:`_common_parts`), as encode writes it (``[{"$g":"<guid>"},<match>,[<type>,<member>]]``);
    None for any other condition."""
    parts = _common_parts(c)
    return None if parts is None else _line_of(parts)


def _line_of(parts: tuple[int, int, int, int]) -> str:
    guid, mt, vt, member = parts
    return (f'[{{"$g":"{_guid_text(guid)}"}},{int.__repr__(mt)},'
            f'[{int.__repr__(vt)},{int.__repr__(member)}]]')


def _common_parts(c: Any) -> tuple[int, int, int, int] | None:
    """(field GUID's integer, match type, data type, selected member) of a condition of the
    common shape — an FWPM_FILTER_CONDITION0 with a GUID field, an integer match type, an
    FWP_CONDITION_VALUE0 whose type is an integer and whose selected member is a plain int
    (addresses, ports, protocol, flags) —, all its line of :func:`conditions_text` says; None
    for any other condition (nothing here raises, whatever ``c`` is)."""
    if type(c) is not FWPM_FILTER_CONDITION0:
        return None
    fk = getattr(c, "fieldKey", None)
    mt = getattr(c, "matchType", None)
    v = getattr(c, "conditionValue", None)
    if type(fk) is uuid.UUID and type(mt) in _JSON_INTS and type(v) is FWP_CONDITION_VALUE0:
        vt: Any = getattr(v, "type", None)
        member_name = CONDITION_VALUE_MEMBERS.get(vt) if type(vt) in _JSON_INTS else None
        if member_name is not None:
            member = getattr(v, member_name, None)
            if type(member) is int:
                return fk.int, mt, vt, member  # type: ignore[return-value]
    return None


#: Compiled conditions by (layer name, their _common_parts in order), for lists of common-shape
#: conditions only: those parts are everything compile_conditions reads of a condition (the
#: field's GUID, the match type's value, the data type's value and the selected member, the
#: only member compilation reads), so conditions with the same parts at the same
#: layer compile to the same thing, and a filter added again with the conditions of one added
#: before (the same peer's filters after a delete, a rekey that remakes them) skips the
#: compilation, its F.16 text and its classifier entries. Only successful compilations are
#: kept, the oldest dropped beyond _COMPILED_MAX (an implementation constant).
_COMPILED_MAX = 512
_compiled: dict[tuple[str, tuple[tuple[int, int, int, int], ...]], Compiled] = {}
_compiled_lock = threading.Lock()


def compile_filter_conditions(conds: list[Any], layer: LayerInfo) -> Compiled:
    """:func:`.conditions.compile_conditions` of a filter's conditions (raising its Fail),
    through :data:`_compiled`; the result's ``text`` is set when the conditions have the common
    shape."""
    parts = []
    for c in conds:
        p = _common_parts(c)
        if p is None:
            return compile_conditions(conds, layer)
        parts.append(p)
    key = (layer.name, tuple(parts))
    compiled = _compiled.get(key)
    if compiled is None:
        compiled = compile_conditions(conds, layer)
        compiled.text = "\n".join(sorted({_line_of(p) for p in parts}))
        with _compiled_lock:
            if len(_compiled) >= _COMPILED_MAX:
                del _compiled[next(iter(_compiled))]
            _compiled[key] = compiled
    return compiled


def value_key(value: Any) -> tuple[Any, ...]:
    """A hashable form of an FWP_VALUE0/FWP_CONDITION_VALUE0 that is equal exactly when
    :func:`.unions.same_value` is true."""
    member = selected(value)
    if isinstance(member, FWP_RANGE0):
        return (value.type, value_key(member.valueLow), value_key(member.valueHigh))
    if member is None or isinstance(member, (int, float, str, bytes, uuid.UUID)):
        return (value.type, member)
    return (value.type, encode(member))  # a structure (blob, address and mask, token)


def _order(rec: FilterRecord) -> tuple[int, int]:
    return rec.order


def stored_copy(flt: FWPM_FILTER0, fid: int, key: uuid.UUID, weight: int,
                conds: list[Any]) -> FWPM_FILTER0:
    """F.19: what Get/Enum return: the caller's fields as given, plus filterId, the filterKey,
    effectiveWeight (FWP_UINT64) and the universal sublayer for a zero subLayerKey (F.20)."""
    effective = FWP_VALUE0(type=C.FWP_UINT64, uint64=weight)
    # The caller's effectiveWeight (an output field) is replaced, not copied.
    out = clone_but(flt, "filterCondition", clone(conds), "effectiveWeight", effective)
    out.filterId = fid
    out.filterKey = key
    out.numFilterConditions = len(conds)
    if out.subLayerKey is None or out.subLayerKey == GUID_NULL:
        out.subLayerKey = SUBLAYER_UNIVERSAL
    out.effectiveWeight = effective  # in place when the copy has it; else set last, as before
    return out


Action = Callable[[], None]
