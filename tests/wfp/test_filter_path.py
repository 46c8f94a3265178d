"""The filter path's derived forms against the general formulas they shortcut, on random input.

* F.16's conditions text (``filters.conditions_text``): its direct writer of the common
  condition shape against ``encode([fieldKey, matchType, value_key(value)])`` of the store
  codec. The text is stored with each durable IPsec filter and compared after a reopen, so the
  two must agree to the byte, whatever a caller put in the condition (IntEnum or int, bool,
  integers wider than 64 bits, ranges, byte arrays, address-and-mask structures, a stale union
  member).
* A filter's classifier entries (``Compiled.index``) against the previous way of building them
  (kept here as the oracle), for conditions whose cross product of atoms is too large and must
  be wildcarded field by field.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import uuid
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.sad import Filter
from ipsecsa.store.codec import encode
from ipsecsa.wfp import constants as C
from ipsecsa.wfp.conditions import (
    _MAX_ATOMS,
    _MAX_ENTRIES,
    Compiled,
    PacketView,
    compile_conditions,
)
from ipsecsa.wfp.filters import compile_filter_conditions, conditions_text, value_key
from ipsecsa.wfp.registry import layer_info
from ipsecsa.wfp.status import Fail
from ipsecsa.wfp.unions import CONDITION_VALUE_MEMBERS, UnionSelectorError


def _reference_text(conditions: list[Any]) -> str:
    """The formula conditions_text is defined by."""
    return "\n".join(sorted({encode([c.fieldKey, c.matchType, value_key(c.conditionValue)])
                             for c in conditions}))


_FIELDS = [C.FWPM_CONDITION_IP_LOCAL_ADDRESS, C.FWPM_CONDITION_IP_REMOTE_ADDRESS,
           C.FWPM_CONDITION_IP_PROTOCOL, C.FWPM_CONDITION_IP_LOCAL_PORT, C.FWPM_CONDITION_FLAGS]


def _integer(rng: random.Random) -> Any:
    return rng.choice([0, 1, rng.getrandbits(8), rng.getrandbits(32), rng.getrandbits(64),
                       1 << 70, True, C.FWP_UINT8, C.FWP_MATCH_RANGE])


def _value(rng: random.Random, depth: int = 0) -> wfp.FWP_CONDITION_VALUE0:
    dtype = rng.choice([*CONDITION_VALUE_MEMBERS, C.FWP_EMPTY])
    if rng.random() < 0.2:
        dtype = int(dtype)  # a plain int instead of the IntEnum member
    v = wfp.FWP_CONDITION_VALUE0(type=dtype)
    member = CONDITION_VALUE_MEMBERS.get(dtype)
    if member in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"):
        setattr(v, member, _integer(rng))
    elif member in ("float32", "double64"):
        setattr(v, member, rng.random())
    elif member in ("byteArray16", "byteArray6", "sid"):
        setattr(v, member, rng.randbytes(16 if member == "byteArray16" else 6))
    elif member == "v4AddrMask":
        v.v4AddrMask = wfp.FWP_V4_ADDR_AND_MASK(addr=rng.getrandbits(32), mask=0xFFFFFF00)
    elif member == "v6AddrMask":
        v.v6AddrMask = wfp.FWP_V6_ADDR_AND_MASK(addr=rng.randbytes(16), prefixLength=64)
    elif member == "rangeValue" and depth == 0:
        low, high = _value(rng, 1), _value(rng, 1)
        v.rangeValue = wfp.FWP_RANGE0(
            valueLow=wfp.FWP_VALUE0(type=low.type, uint32=low.uint32, uint8=low.uint8),
            valueHigh=wfp.FWP_VALUE0(type=high.type, uint32=high.uint32, uint8=high.uint8))
    elif member == "unicodeString":
        v.unicodeString = "é\"\\x"
    if rng.random() < 0.3:
        v.uint16 = rng.getrandbits(16)  # a stale member the selected one must win over
    return v


def _condition(rng: random.Random) -> wfp.FWPM_FILTER_CONDITION0:
    match = rng.choice([C.FWP_MATCH_EQUAL, C.FWP_MATCH_RANGE, int(C.FWP_MATCH_EQUAL), True])
    return wfp.FWPM_FILTER_CONDITION0(fieldKey=rng.choice(_FIELDS), matchType=match,
                                      conditionValue=_value(rng))


@pytest.mark.parametrize("seed", range(40))
def test_conditions_text_is_the_general_formula(seed: int) -> None:
    rng = random.Random(seed)
    conds = [_condition(rng) for _ in range(rng.randint(0, 6))]
    try:
        want = _reference_text(conds)
    except UnionSelectorError:  # a range bound of a type FWP_VALUE0 has no member for
        with pytest.raises(UnionSelectorError):
            conditions_text(conds)
        return
    assert conditions_text(conds) == want


def test_the_common_shape_is_written_as_the_codec_writes_it() -> None:
    key = uuid.UUID("0c1ba1af-5765-453f-af22-a8f791ac775b")
    cond = wfp.FWPM_FILTER_CONDITION0(
        fieldKey=key, matchType=C.FWP_MATCH_EQUAL,
        conditionValue=wfp.FWP_CONDITION_VALUE0(type=C.FWP_UINT32, uint32=0xC0000201))
    text = conditions_text([cond, cond])
    assert text == f'[{{"$g":"{key}"}},0,[3,3221225985]]' == _reference_text([cond])
    # bool is no int to JSON: the general path writes true, not 1.
    odd = wfp.FWPM_FILTER_CONDITION0(
        fieldKey=key, matchType=C.FWP_MATCH_EQUAL,
        conditionValue=wfp.FWP_CONDITION_VALUE0(type=True, uint8=True))  # type: ignore[arg-type]
    assert conditions_text([odd]) == _reference_text([odd])
    assert "true" in conditions_text([odd])


# ------------------------------------------------------------------ classifier entries
def _reference_index(compiled: Compiled) -> list[Filter]:
    """Compiled.index() as written before it was tightened, kept as the oracle."""
    def atoms(name: str) -> list[tuple[int, int]]:
        fld = compiled.fields.get(name)
        if fld is None or fld.atoms is None or len(fld.atoms) > _MAX_ATOMS:
            return [(0, 0)]
        return fld.atoms

    per = {name: atoms(name) for name in ("local", "remote", "protocol", "local_port",
                                          "remote_port")}
    while math.prod(len(v) for v in per.values()) > _MAX_ENTRIES:
        widest = max(per, key=lambda k: len(per[k]))
        per[widest] = [(0, 0)]
    out = []
    for (la, lm), (ra, rm), (p, _), (lp, _), (rp, _) in itertools.product(
            per["local"], per["remote"], per["protocol"], per["local_port"],
            per["remote_port"]):
        la, ra = la & lm, ra & rm
        if compiled.direction == "inbound":
            out.append(Filter(compiled.version, ra, rm, la, lm, p, rp, lp))
        else:
            out.append(Filter(compiled.version, la, lm, ra, rm, p, lp, rp))
    return out


def _index_condition(rng: random.Random, version: int) -> wfp.FWPM_FILTER_CONDITION0:
    kind = rng.choice(["addr", "mask", "addr-range", "proto", "proto-range", "port",
                       "port-range", "flags"])
    if kind in ("addr", "mask", "addr-range"):
        field = rng.choice([C.FWPM_CONDITION_IP_LOCAL_ADDRESS, C.FWPM_CONDITION_IP_REMOTE_ADDRESS])
        bits = 32 if version == 4 else 128

        def addr(n: int) -> wfp.FWP_VALUE0:
            if version == 4:
                return wfp.FWP_VALUE0(type=C.FWP_UINT32, uint32=n)
            return wfp.FWP_VALUE0(type=C.FWP_BYTE_ARRAY16_TYPE, byteArray16=n.to_bytes(16, "big"))

        base = rng.getrandbits(bits)
        if kind == "addr":
            single = addr(base)
            return wfp.FWPM_FILTER_CONDITION0(
                fieldKey=field, matchType=rng.choice([C.FWP_MATCH_EQUAL, C.FWP_MATCH_NOT_EQUAL]),
                conditionValue=wfp.FWP_CONDITION_VALUE0(
                    type=single.type, uint32=single.uint32, byteArray16=single.byteArray16))
        if kind == "mask":
            plen = rng.randint(0, bits)
            if version == 4:
                value = wfp.FWP_CONDITION_VALUE0(
                    type=C.FWP_V4_ADDR_MASK, v4AddrMask=wfp.FWP_V4_ADDR_AND_MASK(
                        addr=base, mask=((1 << 32) - 1) ^ ((1 << (32 - plen)) - 1)))
            else:
                value = wfp.FWP_CONDITION_VALUE0(
                    type=C.FWP_V6_ADDR_MASK, v6AddrMask=wfp.FWP_V6_ADDR_AND_MASK(
                        addr=base.to_bytes(16, "big"), prefixLength=plen))
            return wfp.FWPM_FILTER_CONDITION0(fieldKey=field, matchType=C.FWP_MATCH_EQUAL,
                                              conditionValue=value)
        high = min(base + rng.choice([0, 3, 200, 1 << 20]), (1 << bits) - 1)
        return wfp.FWPM_FILTER_CONDITION0(
            fieldKey=field, matchType=C.FWP_MATCH_RANGE,
            conditionValue=wfp.FWP_CONDITION_VALUE0(
                type=C.FWP_RANGE_TYPE, rangeValue=wfp.FWP_RANGE0(valueLow=addr(base),
                                                                 valueHigh=addr(high))))
    if kind in ("proto", "proto-range"):
        field, dtype, member, bits = C.FWPM_CONDITION_IP_PROTOCOL, C.FWP_UINT8, "uint8", 8
    elif kind in ("port", "port-range"):
        field = rng.choice([C.FWPM_CONDITION_IP_LOCAL_PORT, C.FWPM_CONDITION_IP_REMOTE_PORT])
        dtype, member, bits = C.FWP_UINT16, "uint16", 16
    else:
        return wfp.FWPM_FILTER_CONDITION0(
            fieldKey=C.FWPM_CONDITION_FLAGS, matchType=C.FWP_MATCH_FLAGS_ANY_SET,
            conditionValue=wfp.FWP_CONDITION_VALUE0(type=C.FWP_UINT32, uint32=1))
    low = rng.getrandbits(bits)
    if kind.endswith("range"):
        high = min(low + rng.choice([0, 2, 9, 15, 15, 40]), (1 << bits) - 1)
        return wfp.FWPM_FILTER_CONDITION0(
            fieldKey=field, matchType=C.FWP_MATCH_RANGE,
            conditionValue=wfp.FWP_CONDITION_VALUE0(type=C.FWP_RANGE_TYPE, rangeValue=wfp.FWP_RANGE0(
                valueLow=wfp.FWP_VALUE0(type=dtype, **{member: low}),
                valueHigh=wfp.FWP_VALUE0(type=dtype, **{member: high}))))
    return wfp.FWPM_FILTER_CONDITION0(
        fieldKey=field, matchType=rng.choice([C.FWP_MATCH_EQUAL, C.FWP_MATCH_GREATER]),
        conditionValue=wfp.FWP_CONDITION_VALUE0(type=dtype, **{member: low}))


_TRANSPORT = ["FWPM_LAYER_INBOUND_TRANSPORT_V4", "FWPM_LAYER_OUTBOUND_TRANSPORT_V4",
              "FWPM_LAYER_INBOUND_TRANSPORT_V6", "FWPM_LAYER_OUTBOUND_TRANSPORT_V6"]


@pytest.mark.parametrize("seed", range(60))
def test_index_entries_are_the_same_as_before(seed: int) -> None:
    rng = random.Random(f"index/{seed}")
    layer = layer_info(rng.choice(_TRANSPORT))
    conds = [_index_condition(rng, layer.version) for _ in range(rng.randint(0, 10))]
    compiled = compile_conditions(conds, layer)
    assert compiled.index() == _reference_index(compiled)


def _port_range(field: Any, low: int, high: int, dtype: Any = C.FWP_UINT16,
                member: str = "uint16") -> wfp.FWPM_FILTER_CONDITION0:
    return wfp.FWPM_FILTER_CONDITION0(
        fieldKey=field, matchType=C.FWP_MATCH_RANGE,
        conditionValue=wfp.FWP_CONDITION_VALUE0(type=C.FWP_RANGE_TYPE, rangeValue=wfp.FWP_RANGE0(
            valueLow=wfp.FWP_VALUE0(type=dtype, **{member: low}),
            valueHigh=wfp.FWP_VALUE0(type=dtype, **{member: high}))))


@pytest.mark.parametrize("layer_name", _TRANSPORT)
def test_index_wildcards_the_widest_fields_as_before(layer_name: str) -> None:
    """Atoms whose cross product exceeds _MAX_ENTRIES: 16 x 16 ports x 4 protocols x 10
    addresses; equal widths wildcard the first of them."""
    layer = layer_info(layer_name)
    rng = random.Random(layer_name)
    addrs = [_index_condition(random.Random(i), layer.version) for i in range(40)]
    addrs = [c for c in addrs if c.matchType == C.FWP_MATCH_EQUAL
             and c.conditionValue.type in (C.FWP_UINT32, C.FWP_BYTE_ARRAY16_TYPE)][:10]
    for extra in ([], addrs):
        conds = [_port_range(C.FWPM_CONDITION_IP_LOCAL_PORT, 1000, 1015),
                 _port_range(C.FWPM_CONDITION_IP_REMOTE_PORT, 2000, 2015),
                 _port_range(C.FWPM_CONDITION_IP_PROTOCOL, 6, 9, C.FWP_UINT8, "uint8"),
                 *extra]
        rng.shuffle(conds)
        compiled = compile_conditions(conds, layer)
        sizes = [len(f.atoms) for f in compiled.fields.values() if f.atoms]
        assert math.prod(sizes) > _MAX_ENTRIES
        entries = compiled.index()
        assert entries == _reference_index(compiled)
        assert 1 < len(entries) <= _MAX_ENTRIES


# ------------------------------------------------------------------ compiled conditions, shared
_SCALAR_FIELDS = [(C.FWPM_CONDITION_IP_LOCAL_ADDRESS, C.FWP_UINT32, "uint32", 32),
                  (C.FWPM_CONDITION_IP_REMOTE_ADDRESS, C.FWP_UINT32, "uint32", 32),
                  (C.FWPM_CONDITION_IP_PROTOCOL, C.FWP_UINT8, "uint8", 8),
                  (C.FWPM_CONDITION_IP_LOCAL_PORT, C.FWP_UINT16, "uint16", 16),
                  (C.FWPM_CONDITION_IP_REMOTE_PORT, C.FWP_UINT16, "uint16", 16),
                  (C.FWPM_CONDITION_FLAGS, C.FWP_UINT32, "uint32", 32),
                  (C.FWPM_CONDITION_IP_LOCAL_ADDRESS_TYPE, C.FWP_UINT8, "uint8", 8),
                  (C.FWPM_CONDITION_IP_LOCAL_INTERFACE, C.FWP_UINT64, "uint64", 64)]


def _common_condition(rng: random.Random) -> Any:
    """A condition of the common shape (integer member), valid or not: wrong match types,
    wrong data types, values out of range, plain ints for enums, stale members."""
    field, dtype, member, bits = rng.choice(_SCALAR_FIELDS)
    if rng.random() < 0.1:
        dtype, member, bits = rng.choice(_SCALAR_FIELDS)[1:]  # often a type mismatch
    match = rng.choice([C.FWP_MATCH_EQUAL, C.FWP_MATCH_EQUAL, C.FWP_MATCH_NOT_EQUAL,
                        C.FWP_MATCH_GREATER, C.FWP_MATCH_LESS_OR_EQUAL,
                        C.FWP_MATCH_FLAGS_ANY_SET, C.FWP_MATCH_FLAGS_NONE_SET, C.FWP_MATCH_RANGE])
    if rng.random() < 0.3:
        match = int(match)
    if rng.random() < 0.02:
        match = C.FWP_MATCH_TYPE_MAX + 1
    value = rng.choice([0, 1, 6, 17, rng.getrandbits(bits), (1 << bits) - 1])
    if rng.random() < 0.03:
        value = 1 << bits  # out of range
    v = wfp.FWP_CONDITION_VALUE0(type=dtype if rng.random() < 0.8 else int(dtype),
                                 **{member: value})
    if rng.random() < 0.2 and member != "uint16":
        v.uint16 = rng.getrandbits(16)  # a stale member: never read
    return wfp.FWPM_FILTER_CONDITION0(fieldKey=field, matchType=match, conditionValue=v)


def _outcome(conds: list[Any], layer: Any, compile_: Any) -> Any:
    try:
        return compile_(conds, layer)
    except Fail as exc:
        return (exc.status, exc.detail)


def _packets(rng: random.Random, version: int, n: int) -> list[PacketView]:
    bits = 32 if version == 4 else 128
    return [PacketView(version, rng.getrandbits(bits), rng.getrandbits(bits),
                       rng.choice([6, 17, 1, 50]), rng.choice([None, 0, 500, rng.getrandbits(16)]),
                       rng.choice([None, 0, 4500, rng.getrandbits(16)]),
                       flags=rng.choice([0, 1, 0x20, rng.getrandbits(32)]),
                       local_address_type=rng.choice([0, 1, 2]),
                       interface=rng.choice([0, 1, rng.getrandbits(64)]))
            for _ in range(n)]


@pytest.mark.parametrize("seed", range(30))
def test_shared_compilations_are_what_compiling_again_gives(seed: int) -> None:
    """compile_filter_conditions (compilations shared by the conditions' F.16 lines) against a
    fresh compile_conditions of the same list, on random lists, many of them repeated with new
    but equal objects (so that the second one finds the first one's compilation): the same
    Fail, or the same count, version, direction, atoms, classifier entries and verdict on
    random packets; and the F.16 text it carries is conditions_text of the list."""
    rng = random.Random(f"shared/{seed}")
    seen: list[tuple[Any, list[Any]]] = []
    for _ in range(60):
        if seen and rng.random() < 0.4:
            layer, old = rng.choice(seen)
            conds = [copy.deepcopy(c) for c in old]  # equal values, new objects
        else:
            layer = layer_info(rng.choice(_TRANSPORT))
            conds = [_common_condition(rng) if rng.random() < 0.9 else
                     _index_condition(rng, layer.version) for _ in range(rng.randint(0, 4))]
            seen.append((layer, conds))
        got = _outcome(conds, layer, compile_filter_conditions)
        want = _outcome(conds, layer, compile_conditions)
        if isinstance(want, tuple):
            assert got == want
            continue
        assert isinstance(got, Compiled)
        assert (got.count, got.version, got.direction) == (want.count, want.version,
                                                           want.direction)
        assert list(got.fields) == list(want.fields)
        for name, fld in want.fields.items():
            assert got.fields[name].atoms == fld.atoms
            assert len(got.fields[name].predicates) == len(fld.predicates)
        assert got.index() == want.index()
        for pkt in _packets(rng, layer.version, 40):
            assert got.matches(pkt) == want.matches(pkt)
        if all(type(c.conditionValue.type) in (int, C.FWP_DATA_TYPE)
               and type(getattr(c.conditionValue,
                                CONDITION_VALUE_MEMBERS[c.conditionValue.type])) is int
               for c in conds):
            assert got.text == conditions_text(conds)
        else:
            assert got.text is None


def test_shared_compilations_are_bounded_and_per_layer() -> None:
    from ipsecsa.wfp import filters as F

    inbound, outbound = (layer_info("FWPM_LAYER_INBOUND_TRANSPORT_V4"),
                         layer_info("FWPM_LAYER_OUTBOUND_TRANSPORT_V4"))

    def conds(n: int) -> list[Any]:
        return [wfp.FWPM_FILTER_CONDITION0(
            fieldKey=C.FWPM_CONDITION_IP_REMOTE_ADDRESS, matchType=C.FWP_MATCH_EQUAL,
            conditionValue=wfp.FWP_CONDITION_VALUE0(type=C.FWP_UINT32, uint32=n))]

    a, b = compile_filter_conditions(conds(7), inbound), compile_filter_conditions(conds(7),
                                                                                   outbound)
    assert a is compile_filter_conditions(conds(7), inbound)  # shared
    assert a is not b and (a.direction, b.direction) == ("inbound", "outbound")
    assert a.index() == [Filter(4, 7, 0xFFFFFFFF, 0, 0)]
    assert b.index() == [Filter(4, 0, 0, 7, 0xFFFFFFFF)]
    for n in range(F._COMPILED_MAX + 50):
        compile_filter_conditions(conds(1000 + n), inbound)
    assert len(F._compiled) <= F._COMPILED_MAX
    assert a is not compile_filter_conditions(conds(7), inbound)  # dropped, compiled again
