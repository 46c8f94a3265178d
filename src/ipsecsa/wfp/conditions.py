"""Filter conditions at the transport layers: validation (F.17, in its order), matching, and the
index entries that put a filter into the SA database's classifier.

A validated filter's conditions compile to one :class:`Compiled`: per field, a tuple of
predicates (ORed, F.17: "conditions on the same field are ORed whether or not they are
consecutive"), the fields ANDed. :meth:`Compiled.matches` is the exact test; :meth:`Compiled.index`
gives an *over-approximation* as ``ipsecsa.sad.Filter`` entries, so the classifier (a tuple-space
search) finds every candidate in a few dict probes and only candidates pay for the exact test.
"""

from __future__ import annotations

import ipaddress
import itertools
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ipsecsa.sad import Filter
from ipsecsa.wfp import constants as C
from ipsecsa.wfp.registry import CONDITIONS, LAYER_CONDITIONS, LayerInfo
from ipsecsa.wfp.status import Fail

# The fields of the F.17 table, by condition name.
_ADDRESS = {"FWPM_CONDITION_IP_LOCAL_ADDRESS": "local", "FWPM_CONDITION_IP_REMOTE_ADDRESS": "remote"}
_PORT = {"FWPM_CONDITION_IP_LOCAL_PORT": "local_port",
         "FWPM_CONDITION_IP_REMOTE_PORT": "remote_port"}
_OTHER = {"FWPM_CONDITION_IP_PROTOCOL": "protocol",
          "FWPM_CONDITION_IP_LOCAL_ADDRESS_TYPE": "local_address_type",
          "FWPM_CONDITION_IP_LOCAL_INTERFACE": "interface",
          "FWPM_CONDITION_FLAGS": "flags"}
FIELD_OF: dict[str, str] = {**_ADDRESS, **_PORT, **_OTHER}

_SCALAR_MATCH = frozenset({C.FWP_MATCH_EQUAL, C.FWP_MATCH_NOT_EQUAL, C.FWP_MATCH_GREATER,
                           C.FWP_MATCH_LESS, C.FWP_MATCH_GREATER_OR_EQUAL,
                           C.FWP_MATCH_LESS_OR_EQUAL})
_EQ_NE = frozenset({C.FWP_MATCH_EQUAL, C.FWP_MATCH_NOT_EQUAL})
_FLAGS_MATCH = frozenset({C.FWP_MATCH_FLAGS_ALL_SET, C.FWP_MATCH_FLAGS_ANY_SET,
                          C.FWP_MATCH_FLAGS_NONE_SET})

#: Index limits: a field's conditions become at most this many classifier atoms (address ranges
#: split into prefixes, small port/protocol ranges into values), and a filter at most
#: _MAX_ENTRIES classifier entries; beyond that the field is a wildcard in the index and only
#: the exact test decides (implementation constants).
_MAX_ATOMS = 16
_MAX_ENTRIES = 256

_BITS = {4: 32, 6: 128}


@dataclass(frozen=True, slots=True)
class PacketView:
    """What the conditions look at, from the point of view of the host (local/remote)."""

    version: int
    local: int
    remote: int
    protocol: int
    local_port: int | None  # None: the protocol has no ports (F.17: port conditions are false)
    remote_port: int | None
    flags: int = 0
    local_address_type: int = 1  # NlatUnicast
    interface: int = 0  # packets reach this engine without an interface LUID (ipsecsa's choice)


Predicate = Callable[[int], bool]


def _scalar(match: int, value: int) -> Predicate:
    if match == C.FWP_MATCH_EQUAL:
        return lambda x: x == value
    if match == C.FWP_MATCH_NOT_EQUAL:
        return lambda x: x != value
    if match == C.FWP_MATCH_GREATER:
        return lambda x: x > value
    if match == C.FWP_MATCH_LESS:
        return lambda x: x < value
    if match == C.FWP_MATCH_GREATER_OR_EQUAL:
        return lambda x: x >= value
    return lambda x: x <= value


def _flags(match: int, value: int) -> Predicate:
    if match == C.FWP_MATCH_FLAGS_ALL_SET:
        return lambda x: x & value == value
    if match == C.FWP_MATCH_FLAGS_ANY_SET:
        return lambda x: bool(x & value)
    return lambda x: not x & value


def _is_uint(value: object, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits


# An index atom: (value, mask) for an address field, value for protocol/ports; None = wildcard.
Atom = tuple[int, int]


@dataclass(slots=True)
class _Field:
    predicates: list[Predicate]
    atoms: list[Atom] | None  # None: not expressible in the index (a wildcard there)


def _prefixes(lo: int, hi: int, width: int) -> list[Atom]:
    """The CIDR blocks covering [lo, hi] exactly, as (address, mask)."""
    version = 4 if width == 32 else 6
    ip_cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    nets = ipaddress.summarize_address_range(ip_cls(lo), ip_cls(hi))
    out = []
    for net in nets:
        out.append((int(net.network_address), int(net.netmask)))
        if len(out) > _MAX_ATOMS:
            break
    return out


class Compiled:
    """The validated conditions of one filter. Never changed once made (filters with the same
    conditions may share one, see :func:`.filters.validate_filter`)."""

    __slots__ = ("_entries", "count", "direction", "fields", "text", "version")

    def __init__(self, version: int, direction: str, fields: dict[str, _Field], count: int):
        self.version = version
        self.direction = direction
        self.fields = fields
        #: Number of distinct fields (the auto-weight of F.20 counts them).
        self.count = count
        #: F.16's text of the conditions (:func:`.filters.conditions_text`) when the compiler's
        #: caller knew it, else None.
        self.text: str | None = None
        self._entries: tuple[Filter, ...] | None = None

    def matches(self, pkt: PacketView) -> bool:
        for name, fld in self.fields.items():
            value = getattr(pkt, name)
            if value is None:  # a port of a protocol without ports
                return False
            for pred in fld.predicates:
                if pred(value):
                    break
            else:
                return False
        return True

    def index(self) -> list[Filter]:
        """Classifier entries covering at least every packet the conditions match (made once;
        a new list each call, of the same frozen entries)."""
        entries = self._entries
        if entries is None:
            entries = self._entries = tuple(self._make_index())
        return list(entries)

    def _make_index(self) -> list[Filter]:
        fields = self.fields
        per: list[list[Atom]] = []
        size = 1
        for name in _INDEXED:
            fld = fields.get(name)
            atoms = None if fld is None else fld.atoms
            if atoms is None or len(atoms) > _MAX_ATOMS:
                atoms = _WILDCARD
            per.append(atoms)
            size *= len(atoms)
        # Wildcard the widest fields (the first of equals) until the cross product is small
        # enough.
        while size > _MAX_ENTRIES:
            widest = max(range(len(per)), key=lambda i: len(per[i]))
            size //= len(per[widest])
            per[widest] = _WILDCARD
        inbound = self.direction == "inbound"
        version = self.version
        out = []
        for (la, lm), (ra, rm), (p, _), (lp, _), (rp, _) in itertools.product(*per):
            # An address 0 is a wildcard to the classifier whatever the mask: over-approximate.
            la, ra = la & lm, ra & rm
            if inbound:  # the packet's source is the remote end
                out.append(Filter(version, ra, rm, la, lm, p, rp, lp))
            else:
                out.append(Filter(version, la, lm, ra, rm, p, lp, rp))
        return out


#: The fields the classifier indexes, in the order of its entries' cross product.
_INDEXED = ("local", "remote", "protocol", "local_port", "remote_port")
_WILDCARD: list[Atom] = [(0, 0)]


def compile_conditions(conditions: Sequence[Any], layer: LayerInfo) -> Compiled:
    """Validate ``conditions`` for ``layer`` in F.17's order (raising :class:`Fail` with the
    status) and compile them."""
    allowed = LAYER_CONDITIONS.get(layer.name, frozenset())
    fields: dict[str, _Field] = {}
    for cond in conditions:
        if cond is None:
            raise Fail(C.FWP_E_NULL_POINTER, "filterCondition entry is NULL")
        key = getattr(cond, "fieldKey", None)
        name = CONDITIONS.get(key) if isinstance(key, uuid.UUID) else None
        if name is None:
            raise Fail(C.FWP_E_CONDITION_NOT_FOUND, "fieldKey is not a known condition")
        field = FIELD_OF.get(name)
        if name not in allowed or field is None:
            raise Fail(C.FWP_E_CONDITION_NOT_FOUND,
                       f"{name} is not supported at {layer.name}")
        match = _need_uint(getattr(cond, "matchType", None), 32, "matchType")
        if match >= C.FWP_MATCH_TYPE_MAX:
            raise Fail(C.FWP_E_INVALID_ENUMERATOR, f"matchType {match}")
        value = getattr(cond, "conditionValue", None)
        if value is None:
            raise Fail(C.FWP_E_NULL_POINTER, "conditionValue is NULL")
        pred, atoms = _compile_one(field, match, value, layer.version)
        fld = fields.get(field)
        if fld is None:
            fields[field] = _Field([pred], atoms)
            continue
        fld.predicates.append(pred)
        if fld.atoms is not None:
            fld.atoms = None if atoms is None else fld.atoms + atoms
    return Compiled(layer.version, layer.direction, fields, len(fields))


def _compile_one(field: str, match: int, value: Any, version: int
                 ) -> tuple[Predicate, list[Atom] | None]:
    dtype = getattr(value, "type", None)
    if field in ("local", "remote"):
        return _address(match, value, dtype, version)
    if field in ("protocol", "local_port", "remote_port"):
        scalar_type, bits = (C.FWP_UINT8, 8) if field == "protocol" else (C.FWP_UINT16, 16)
        attr = "uint8" if bits == 8 else "uint16"
        if dtype == scalar_type:
            v = _need_uint(getattr(value, attr, None), bits, attr)
            _need_match(match, _SCALAR_MATCH)
            atoms = [(v, 0)] if match == C.FWP_MATCH_EQUAL else None
            return _scalar(match, v), atoms
        if dtype == C.FWP_RANGE_TYPE:
            _need_match(match, {C.FWP_MATCH_RANGE})  # F.17: before the bounds are looked at
            lo, hi = _range(value, scalar_type, attr, bits)
            atoms = [(v, 0) for v in range(lo, hi + 1)] if hi - lo < _MAX_ATOMS else None
            return (lambda x: lo <= x <= hi), atoms
        raise Fail(C.FWP_E_TYPE_MISMATCH, f"{field} does not take data type {dtype}")
    if field == "local_address_type":
        if dtype != C.FWP_UINT8:
            raise Fail(C.FWP_E_TYPE_MISMATCH, "IP_LOCAL_ADDRESS_TYPE takes FWP_UINT8")
        v = _need_uint(getattr(value, "uint8", None), 8, "uint8")
        _need_match(match, _EQ_NE)
        return _scalar(match, v), None
    if field == "interface":
        if dtype != C.FWP_UINT64:
            raise Fail(C.FWP_E_TYPE_MISMATCH, "IP_LOCAL_INTERFACE takes FWP_UINT64")
        v = _need_uint(getattr(value, "uint64", None), 64, "uint64")
        _need_match(match, _EQ_NE)
        return _scalar(match, v), None
    # FLAGS
    if dtype != C.FWP_UINT32:
        raise Fail(C.FWP_E_TYPE_MISMATCH, "FLAGS takes FWP_UINT32")
    v = _need_uint(getattr(value, "uint32", None), 32, "uint32")
    _need_match(match, _FLAGS_MATCH)
    return _flags(match, v), None


def _need_uint(v: object, bits: int, name: str) -> int:
    if not _is_uint(v, bits):
        raise Fail(C.FWP_E_OUT_OF_BOUNDS if isinstance(v, int) else C.FWP_E_INVALID_PARAMETER,
                   f"{name} must be an unsigned {bits}-bit integer")
    assert isinstance(v, int)
    return v


def _need_match(match: int, allowed: Iterable[int]) -> None:
    if match not in allowed:
        raise Fail(C.FWP_E_MATCH_TYPE_MISMATCH, f"matchType {match} does not fit the data type")


def _range(value: Any, scalar_type: int, attr: str, bits: int) -> tuple[int, int]:
    rng = getattr(value, "rangeValue", None)
    if rng is None:
        raise Fail(C.FWP_E_NULL_POINTER, "rangeValue is NULL")
    low, high = getattr(rng, "valueLow", None), getattr(rng, "valueHigh", None)
    if low is None or high is None:
        raise Fail(C.FWP_E_NULL_POINTER, "rangeValue bounds are NULL")
    if low.type != high.type or low.type != scalar_type:
        raise Fail(C.FWP_E_TYPE_MISMATCH, "range bounds must both have the field's type")
    lo, hi = getattr(low, attr, None), getattr(high, attr, None)
    if scalar_type == C.FWP_BYTE_ARRAY16_TYPE:
        lo, hi = _v6(lo), _v6(hi)
    else:
        _need_uint(lo, bits, attr)
        _need_uint(hi, bits, attr)
    assert isinstance(lo, int) and isinstance(hi, int)
    if lo > hi:
        raise Fail(C.FWP_E_INVALID_RANGE, "valueLow is above valueHigh")
    return lo, hi


def _v6(raw: object) -> int:
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 16:
        raise Fail(C.FWP_E_INVALID_PARAMETER, "an IPv6 address is 16 bytes")
    return int.from_bytes(raw, "big")


def _address(match: int, value: Any, dtype: object, version: int
             ) -> tuple[Predicate, list[Atom] | None]:
    width = _BITS[version]
    ones = (1 << width) - 1
    scalar_type = C.FWP_UINT32 if version == 4 else C.FWP_BYTE_ARRAY16_TYPE
    mask_type = C.FWP_V4_ADDR_MASK if version == 4 else C.FWP_V6_ADDR_MASK
    if dtype == scalar_type:
        if version == 4:
            v = _need_uint(getattr(value, "uint32", None), 32, "uint32")
        else:
            v = _v6(getattr(value, "byteArray16", None))
        assert isinstance(v, int)
        _need_match(match, _SCALAR_MATCH)
        return _scalar(match, v), ([(v, ones)] if match == C.FWP_MATCH_EQUAL else None)
    if dtype == mask_type:
        if version == 4:
            am = getattr(value, "v4AddrMask", None)
            if am is None:
                raise Fail(C.FWP_E_NULL_POINTER, "v4AddrMask is NULL")
            addr, mask = getattr(am, "addr", None), getattr(am, "mask", None)
            _need_uint(addr, 32, "addr")
            _need_uint(mask, 32, "mask")
            assert isinstance(addr, int) and isinstance(mask, int)
        else:
            am = getattr(value, "v6AddrMask", None)
            if am is None:
                raise Fail(C.FWP_E_NULL_POINTER, "v6AddrMask is NULL")
            addr = _v6(getattr(am, "addr", None))
            plen = getattr(am, "prefixLength", None)
            _need_uint(plen, 8, "prefixLength")
            assert isinstance(plen, int)
            _need_match(match, _EQ_NE)
            if plen > 128:
                raise Fail(C.FWP_E_INVALID_NET_MASK, "prefixLength above 128")
            mask = (ones << (128 - plen)) & ones
        _need_match(match, _EQ_NE)
        inverted = ~mask & ones
        if inverted & (inverted + 1):
            raise Fail(C.FWP_E_INVALID_NET_MASK, "the mask is not contiguous high-order ones")
        net = addr & mask
        if match == C.FWP_MATCH_EQUAL:
            return (lambda x: x & mask == net), [(net, mask)]
        return (lambda x: x & mask != net), None
    if dtype == C.FWP_RANGE_TYPE:
        attr = "uint32" if version == 4 else "byteArray16"
        _need_match(match, {C.FWP_MATCH_RANGE})  # F.17: before the bounds are looked at
        lo, hi = _range(value, scalar_type, attr, width)
        atoms = _prefixes(lo, hi, width)
        return (lambda x: lo <= x <= hi), (atoms if len(atoms) <= _MAX_ATOMS else None)
    raise Fail(C.FWP_E_TYPE_MISMATCH, f"address conditions at an IPv{version} layer do not take "
                                      f"data type {dtype}")


def same_conditions(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """F.16: the same *set* of (field, matchType, value)."""
    left = [(c.fieldKey, c.matchType, c.conditionValue) for c in a]
    right = [(c.fieldKey, c.matchType, c.conditionValue) for c in b]
    if len(left) != len(right):
        return False
    return all(x in right for x in left) and all(y in left for y in right)
