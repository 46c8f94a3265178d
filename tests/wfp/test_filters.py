"""Filters for manual keying (reference C.7, F.15–F.21, F.23): every FwpmFilterAdd0 error in its
order, ids and keys, Get, weights, delete, enumeration, change notifications, and the
classification of real packets by BLOCK/PERMIT/IPsec filters.

Expected values come from the reference (section named at each test), never from the engine:
statuses are the Windows FWP_E_* values, weights F.20's formula computed here by hand.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.errors import DropReason

from .helpers import (
    A4,
    ALL_ACTIONS,
    B4,
    add_filter,
    addr_conditions,
    all_filters,
    cond,
    create_context,
    icmp4,
    ipsec_filter,
    ipsec_pair,
    ipv4_packet,
    open_engine,
    plain_filter,
    traffic,
    udp4,
    udp6,
    v_ip4,
    v_ip6,
    v_mask4,
    v_mask6,
    v_range,
    v_u8,
    v_u16,
    v_u32,
    val,
)

OK = wfp.ERROR_SUCCESS
LOCAL, REMOTE = wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS, wfp.FWPM_CONDITION_IP_REMOTE_ADDRESS
LPORT, RPORT = wfp.FWPM_CONDITION_IP_LOCAL_PORT, wfp.FWPM_CONDITION_IP_REMOTE_PORT
PROTO = wfp.FWPM_CONDITION_IP_PROTOCOL
EQ, NE = wfp.FWP_MATCH_EQUAL, wfp.FWP_MATCH_NOT_EQUAL
BLOCK, PERMIT = wfp.FWP_ACTION_BLOCK, wfp.FWP_ACTION_PERMIT
AUTO_LOW = (1 << 52) - 1


@pytest.fixture
def bfe():
    engine = wfp.Engine()
    yield engine
    engine.close()


@pytest.fixture
def h(bfe):
    return open_engine(bfe)


def good(**kw: Any) -> wfp.FWPM_FILTER0:
    return ipsec_filter("outbound", addr_conditions(A4, B4), **kw)


def sent(bfe: wfp.Engine, src: str = A4, dst: str = B4, **kw: Any) -> Any:
    return bfe.outbound(udp4(src, dst, b"payload", **kw)).drop


def auto(fields: int, fid: int) -> int:
    """F.20's automatic weight, written out independently."""
    return (fields << 52) | (AUTO_LOW - min(fid, AUTO_LOW))


# =================================================================== F.21: add errors and order
def test_add_null_filter_and_null_name(bfe, h):
    assert bfe.FwpmFilterAdd0(h, None, None) == (wfp.FWP_E_NULL_POINTER, None)
    flt = good()
    flt.displayData = wfp.FWPM_DISPLAY_DATA0(name=None, description="no name")
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_NULL_DISPLAY_NAME, None)
    assert all_filters(bfe, h) == []


def test_add_invalid_and_closed_handle(bfe, h):
    assert bfe.FwpmFilterAdd0(12345, good(), None) == (wfp.ERROR_INVALID_HANDLE, None)
    assert bfe.FwpmFilterAdd0(None, good(), None) == (wfp.ERROR_INVALID_HANDLE, None)
    h2 = open_engine(bfe)
    assert bfe.FwpmEngineClose0(h2) == OK
    assert bfe.FwpmFilterAdd0(h2, good(), None) == (wfp.ERROR_INVALID_HANDLE, None)
    assert all_filters(bfe, h) == []


UNKNOWN = uuid.UUID("12345678-1234-5678-9abc-def012345678")


def _bad_flags(f):
    f.flags = wfp.FWPM_FILTER_FLAG_PERSISTENT | wfp.FWPM_FILTER_FLAG_BOOTTIME


def _bad_layer(f):
    f.layerKey = UNKNOWN


def _bad_sublayer(f):
    f.subLayerKey = UNKNOWN


def _bad_provider(f):
    f.providerKey = UNKNOWN


def _bad_weight(f):
    f.weight = val(wfp.FWP_UINT8, uint8=16)


def _bad_condition(f):
    f.filterCondition = [cond(UNKNOWN, EQ, v_ip4(B4))]


def _bad_action(f):
    f.action = wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_CONTINUE)


def _no_name(f):
    f.displayData = wfp.FWPM_DISPLAY_DATA0()


#: F.21's order after the filter pointer: name, flags, layer, sublayer, provider, weight,
#: conditions, action, then the duplicate key (tested separately: it needs a filter in place).
ORDER = [
    (_no_name, wfp.FWP_E_NULL_DISPLAY_NAME),
    (_bad_flags, wfp.FWP_E_INVALID_FLAGS),
    (_bad_layer, wfp.FWP_E_LAYER_NOT_FOUND),
    (_bad_sublayer, wfp.FWP_E_SUBLAYER_NOT_FOUND),
    (_bad_provider, wfp.FWP_E_PROVIDER_NOT_FOUND),
    (_bad_weight, wfp.FWP_E_INVALID_WEIGHT),
    (_bad_condition, wfp.FWP_E_CONDITION_NOT_FOUND),
    (_bad_action, wfp.FWP_E_INVALID_ACTION_TYPE),
]


@pytest.mark.parametrize("i", range(len(ORDER)), ids=[f.__name__ for f, _ in ORDER])
def test_each_fault_alone(bfe, h, i):
    flt = good()
    ORDER[i][0](flt)
    assert bfe.FwpmFilterAdd0(h, flt, None) == (ORDER[i][1], None)
    assert all_filters(bfe, h) == []


@pytest.mark.parametrize("i", range(len(ORDER)), ids=[f.__name__ for f, _ in ORDER])
def test_earlier_fault_wins_over_every_later_one(bfe, h, i):
    for later, _ in ORDER[i + 1:]:
        flt = good()
        ORDER[i][0](flt)
        later(flt)
        assert bfe.FwpmFilterAdd0(h, flt, None) == (ORDER[i][1], None), later.__name__
    assert all_filters(bfe, h) == []


def test_duplicate_key_is_last(bfe, h):
    key = uuid.uuid4()
    fid = add_filter(bfe, h, good(filterKey=key))
    before = all_filters(bfe, h)
    assert bfe.FwpmFilterAdd0(h, good(filterKey=key), None) == (wfp.FWP_E_ALREADY_EXISTS, None)
    # an action fault comes before the duplicate key (F.21's order)
    flt = good(filterKey=key)
    _bad_action(flt)
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_INVALID_ACTION_TYPE, None)
    assert all_filters(bfe, h) == before
    # the failures consumed no id (F.19)
    assert add_filter(bfe, h, good()) == fid + 1


def test_layer_not_found_vs_incompatible(bfe, h):
    # a known layer outside the 28 of layer_conditions (F.21)
    for layer in (wfp.FWPM_LAYER_STREAM_V4, wfp.FWPM_LAYER_IKEEXT_V4):
        flt = plain_filter("outbound", BLOCK)
        flt.layerKey = layer
        assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_INCOMPATIBLE_LAYER, None)
    flt = plain_filter("outbound", BLOCK)
    flt.layerKey = wfp.GUID_NULL
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_LAYER_NOT_FOUND, None)
    assert all_filters(bfe, h) == []


def test_sublayers_and_providers(bfe, h):
    # a built-in sublayer and a built-in provider are accepted (F.20, F.21)
    fid = add_filter(bfe, h, good(subLayerKey=wfp.FWPM_SUBLAYER_IPSEC_TUNNEL,
                                  providerKey=wfp.FWPM_PROVIDER_IKEEXT))
    st, got = bfe.FwpmFilterGetById0(h, fid)
    assert st == OK
    assert got.subLayerKey == wfp.FWPM_SUBLAYER_IPSEC_TUNNEL
    assert got.providerKey == wfp.FWPM_PROVIDER_IKEEXT


def test_provider_context_is_not_implemented(bfe, h):
    flt = good(flags=wfp.FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT, providerContextKey=uuid.uuid4())
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_PROVIDER_CONTEXT_NOT_FOUND, None)
    assert all_filters(bfe, h) == []


@pytest.mark.parametrize("weight", [
    val(wfp.FWP_UINT8, uint8=16), val(wfp.FWP_UINT8, uint8=255),
    val(wfp.FWP_UINT32, uint32=5), val(wfp.FWP_UINT16, uint16=1),
    val(wfp.FWP_UINT64, uint64=1 << 64), val(wfp.FWP_UINT64, uint64=None),
    val(wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=bytes(16)),
])
def test_invalid_weights(bfe, h, weight):
    assert bfe.FwpmFilterAdd0(h, good(weight=weight), None) == (wfp.FWP_E_INVALID_WEIGHT, None)
    assert all_filters(bfe, h) == []


# ------------------------------------------------------------------- F.15 flags
@pytest.mark.parametrize("flags", [
    wfp.FWPM_FILTER_FLAG_PERSISTENT | wfp.FWPM_FILTER_FLAG_BOOTTIME,
    wfp.FWPM_FILTER_FLAG_DISABLED,
    wfp.FWPM_FILTER_FLAG_PERSISTENT | wfp.FWPM_FILTER_FLAG_DISABLED,
    0x80, 0x100, 0x4000, 0x8000, 0x80000000,
])
def test_invalid_flags(bfe, h, flags):
    assert bfe.FwpmFilterAdd0(h, good(flags=flags), None) == (wfp.FWP_E_INVALID_FLAGS, None)
    assert all_filters(bfe, h) == []


def test_permit_if_callout_unregistered_needs_a_callout_action(bfe, h):
    flag = wfp.FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED
    for action in (BLOCK, PERMIT):
        flt = plain_filter("outbound", action, flags=flag)
        assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_INVALID_FLAGS, None)
    assert all_filters(bfe, h) == []
    add_filter(bfe, h, good(flags=flag))


@pytest.mark.parametrize("flags", [
    0, wfp.FWPM_FILTER_FLAG_PERSISTENT, wfp.FWPM_FILTER_FLAG_BOOTTIME,
    wfp.FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT, wfp.FWPM_FILTER_FLAG_INDEXED,
    wfp.FWPM_FILTER_FLAG_PERSISTENT | wfp.FWPM_FILTER_FLAG_INDEXED
    | wfp.FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT | wfp.FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED,
])
def test_valid_flags_are_stored(bfe, h, flags):
    fid = add_filter(bfe, h, good(flags=flags))
    st, got = bfe.FwpmFilterGetById0(h, fid)
    assert st == OK and got.flags == flags


# ------------------------------------------------------------------- F.21 actions and callouts
def test_action_errors(bfe, h):
    for atype in (wfp.FWP_ACTION_CONTINUE, wfp.FWP_ACTION_NONE, wfp.FWP_ACTION_NONE_NO_MATCH, 0,
                  0x1003):
        flt = plain_filter("outbound", atype)
        assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_INVALID_ACTION_TYPE, None), atype
    flt = good()
    flt.action.calloutKey = UNKNOWN
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_CALLOUT_NOT_FOUND, None)
    flt = good()
    flt.action.calloutKey = None
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_CALLOUT_NOT_FOUND, None)
    # an outbound callout at the inbound layer, a V6 callout at a V4 layer, a forward callout
    for callout in (wfp.FWPM_CALLOUT_IPSEC_OUTBOUND_TRANSPORT_V4,
                    wfp.FWPM_CALLOUT_IPSEC_INBOUND_TRANSPORT_V6,
                    wfp.FWPM_CALLOUT_IPSEC_FORWARD_INBOUND_TUNNEL_V4,
                    wfp.FWPM_CALLOUT_IPSEC_ALE_CONNECT_V4):
        flt = ipsec_filter("inbound", addr_conditions(A4, B4))
        flt.action.calloutKey = callout
        assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_INCOMPATIBLE_LAYER, None), callout
    # an IPsec callout cannot inspect
    flt = good()
    flt.action.type = wfp.FWP_ACTION_CALLOUT_INSPECTION
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_ACTION_INCOMPATIBLE_WITH_LAYER, None)
    assert all_filters(bfe, h) == []


def test_callout_at_its_own_layers(bfe, h):
    # tunnel callouts apply at the transport layer too (C.7.4); ALE_CONNECT at ALE_AUTH_CONNECT
    add_filter(bfe, h, ipsec_filter("outbound", addr_conditions(A4, B4), tunnel=True))
    add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(A4, B4), tunnel=True))
    flt = wfp.FWPM_FILTER0(displayData=wfp.FWPM_DISPLAY_DATA0(name="ale"),
                           layerKey=wfp.FWPM_LAYER_ALE_AUTH_CONNECT_V4,
                           action=wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_CALLOUT_TERMINATING,
                                                   calloutKey=wfp.FWPM_CALLOUT_IPSEC_ALE_CONNECT_V4))
    add_filter(bfe, h, flt)
    assert len(all_filters(bfe, h)) == 3


def test_sd_and_non_filter_argument(bfe, h):
    assert bfe.FwpmFilterAdd0(h, good(), b"\x01\x00") == (wfp.ERROR_NOT_SUPPORTED, None)
    assert bfe.FwpmFilterAdd0(h, "a filter", None) == (wfp.FWP_E_INVALID_PARAMETER, None)
    assert all_filters(bfe, h) == []


# =================================================================== F.17: condition errors
def _try_conditions(bfe, h, conds, v6=False, direction="outbound"):
    flt = plain_filter(direction, BLOCK, conds, v6=v6)
    return bfe.FwpmFilterAdd0(h, flt, None)


@pytest.mark.parametrize("field", [
    UNKNOWN,
    wfp.FWPM_CONDITION_INTERFACE_TYPE,  # listed at the layer, not supported here (F.17)
    wfp.FWPM_CONDITION_INTERFACE_INDEX,
    wfp.FWPM_CONDITION_SUB_INTERFACE_INDEX,
    wfp.FWPM_CONDITION_TUNNEL_TYPE,
    wfp.FWPM_CONDITION_CURRENT_PROFILE_ID,
    wfp.FWPM_CONDITION_IP_DESTINATION_ADDRESS_TYPE,
    wfp.FWPM_CONDITION_ALE_APP_ID,  # a condition of another layer
    wfp.FWPM_CONDITION_IP_SOURCE_ADDRESS,
])
def test_condition_not_found(bfe, h, field):
    assert _try_conditions(bfe, h, [cond(field, EQ, v_u32(1))]) == \
        (wfp.FWP_E_CONDITION_NOT_FOUND, None)
    assert all_filters(bfe, h) == []


def test_condition_checks_in_order(bfe, h):
    # an unknown field with a bad match type: the field is checked first
    assert _try_conditions(bfe, h, [cond(UNKNOWN, 99, None)]) == \
        (wfp.FWP_E_CONDITION_NOT_FOUND, None)
    # a bad match type with a wrong data type: the match type first
    assert _try_conditions(bfe, h, [cond(REMOTE, wfp.FWP_MATCH_TYPE_MAX, v_u8(1))]) == \
        (wfp.FWP_E_INVALID_ENUMERATOR, None)
    # a wrong data type with a wrong match type: the data type first
    assert _try_conditions(bfe, h, [cond(REMOTE, wfp.FWP_MATCH_FLAGS_ALL_SET, v_u16(1))]) == \
        (wfp.FWP_E_TYPE_MISMATCH, None)
    # array order: the first bad condition decides
    assert _try_conditions(bfe, h, [cond(REMOTE, EQ, v_u16(1)), cond(UNKNOWN, EQ, v_u32(1))]) \
        == (wfp.FWP_E_TYPE_MISMATCH, None)
    assert _try_conditions(bfe, h, [cond(UNKNOWN, EQ, v_u32(1)), cond(REMOTE, EQ, v_u16(1))]) \
        == (wfp.FWP_E_CONDITION_NOT_FOUND, None)
    assert all_filters(bfe, h) == []


@pytest.mark.parametrize("match", [wfp.FWP_MATCH_TYPE_MAX, 12, 1000])
def test_invalid_match_enumerator(bfe, h, match):
    assert _try_conditions(bfe, h, [cond(REMOTE, match, v_ip4(B4))]) == \
        (wfp.FWP_E_INVALID_ENUMERATOR, None)


@pytest.mark.parametrize("conds,v6", [
    ([cond(REMOTE, EQ, v_u16(1))], False),
    ([cond(REMOTE, EQ, v_ip6("2001:db8::2"))], False),  # a V6 address at a V4 layer
    ([cond(REMOTE, EQ, v_ip4(B4))], True),  # a V4 type at a V6 layer
    ([cond(REMOTE, EQ, v_mask4(B4, 0xFFFFFF00))], True),
    ([cond(REMOTE, EQ, v_mask6("2001:db8::", 32))], False),
    ([cond(PROTO, EQ, v_u16(17))], False),
    ([cond(RPORT, EQ, v_u8(80))], False),
    ([cond(LPORT, EQ, v_u32(80))], False),
    ([cond(wfp.FWPM_CONDITION_FLAGS, wfp.FWP_MATCH_FLAGS_ALL_SET, v_u16(1))], False),
    ([cond(wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS_TYPE, EQ, v_u32(1))], False),
    ([cond(wfp.FWPM_CONDITION_IP_LOCAL_INTERFACE, EQ, v_u32(1))], False),
    # range bounds of different types, or of the wrong type for the field
    ([cond(RPORT, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT16, uint16=1),
                                               val(wfp.FWP_UINT32, uint32=9)))], False),
    ([cond(RPORT, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT32, uint32=1),
                                               val(wfp.FWP_UINT32, uint32=9)))], False),
    ([cond(REMOTE, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT32, uint32=1),
                                                val(wfp.FWP_UINT32, uint32=9)))], True),
])
def test_type_mismatch(bfe, h, conds, v6):
    assert _try_conditions(bfe, h, conds, v6=v6) == (wfp.FWP_E_TYPE_MISMATCH, None)
    assert all_filters(bfe, h) == []


@pytest.mark.parametrize("conds", [
    [cond(REMOTE, wfp.FWP_MATCH_GREATER, v_mask4(B4, 0xFFFFFF00))],
    [cond(REMOTE, wfp.FWP_MATCH_RANGE, v_ip4(B4))],
    [cond(REMOTE, wfp.FWP_MATCH_FLAGS_ANY_SET, v_ip4(B4))],
    [cond(REMOTE, EQ, v_range(val(wfp.FWP_UINT32, uint32=1), val(wfp.FWP_UINT32, uint32=9)))],
    [cond(PROTO, wfp.FWP_MATCH_EQUAL_CASE_INSENSITIVE, v_u8(17))],
    [cond(wfp.FWPM_CONDITION_FLAGS, EQ, v_u32(1))],
    [cond(wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS_TYPE, wfp.FWP_MATCH_GREATER, v_u8(1))],
])
def test_match_type_mismatch(bfe, h, conds):
    assert _try_conditions(bfe, h, conds) == (wfp.FWP_E_MATCH_TYPE_MISMATCH, None)
    assert all_filters(bfe, h) == []


def test_match_type_mismatch_v6_mask(bfe, h):
    assert _try_conditions(bfe, h, [cond(REMOTE, wfp.FWP_MATCH_LESS, v_mask6("2001:db8::", 32))],
                           v6=True) == (wfp.FWP_E_MATCH_TYPE_MISMATCH, None)


@pytest.mark.parametrize("value,v6", [
    (v_mask4(B4, 0xFF00FF00), False),
    (v_mask4(B4, 0x00FFFFFF), False),
    (v_mask4(B4, 0xFFFFFFFE ^ 0x100), False),
    (v_mask6("2001:db8::", 129), True),
    (v_mask6("2001:db8::", 255), True),
])
def test_invalid_net_mask(bfe, h, value, v6):
    assert _try_conditions(bfe, h, [cond(REMOTE, EQ, value)], v6=v6) == \
        (wfp.FWP_E_INVALID_NET_MASK, None)
    assert all_filters(bfe, h) == []


def test_valid_masks(bfe, h):
    for mask in (0, 0x80000000, 0xFFFFFF00, 0xFFFFFFFF):
        assert _try_conditions(bfe, h, [cond(REMOTE, EQ, v_mask4(B4, mask))])[0] == OK
    for plen in (0, 1, 64, 128):
        assert _try_conditions(bfe, h, [cond(REMOTE, NE, v_mask6("2001:db8::", plen))],
                               v6=True)[0] == OK


@pytest.mark.parametrize("field,low,high,v6", [
    (RPORT, val(wfp.FWP_UINT16, uint16=9), val(wfp.FWP_UINT16, uint16=8), False),
    (PROTO, val(wfp.FWP_UINT8, uint8=17), val(wfp.FWP_UINT8, uint8=6), False),
    (REMOTE, val(wfp.FWP_UINT32, uint32=10), val(wfp.FWP_UINT32, uint32=9), False),
    (REMOTE, val(wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=bytes(15) + b"\x02"),
     val(wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=bytes(15) + b"\x01"), True),
])
def test_invalid_range(bfe, h, field, low, high, v6):
    assert _try_conditions(bfe, h, [cond(field, wfp.FWP_MATCH_RANGE, v_range(low, high))],
                           v6=v6) == (wfp.FWP_E_INVALID_RANGE, None)
    assert all_filters(bfe, h) == []


def test_null_pointers_in_conditions(bfe, h):
    flt = plain_filter("outbound", BLOCK)
    flt.numFilterConditions = 2
    flt.filterCondition = None
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_NULL_POINTER, None)
    assert _try_conditions(bfe, h, [None]) == (wfp.FWP_E_NULL_POINTER, None)
    assert _try_conditions(bfe, h, [cond(REMOTE, EQ, None)]) == (wfp.FWP_E_NULL_POINTER, None)
    mask = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_V4_ADDR_MASK, v4AddrMask=None)
    assert _try_conditions(bfe, h, [cond(REMOTE, EQ, mask)]) == (wfp.FWP_E_NULL_POINTER, None)
    rng = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_RANGE_TYPE, rangeValue=None)
    assert _try_conditions(bfe, h, [cond(RPORT, wfp.FWP_MATCH_RANGE, rng)]) == \
        (wfp.FWP_E_NULL_POINTER, None)
    assert all_filters(bfe, h) == []


def test_condition_count_must_agree(bfe, h):
    flt = plain_filter("outbound", BLOCK, addr_conditions(A4, B4))
    flt.numFilterConditions = 3
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_INVALID_PARAMETER, None)
    flt.numFilterConditions = 2
    assert bfe.FwpmFilterAdd0(h, flt, None)[0] == OK


def test_every_supported_condition_is_accepted(bfe, h):
    conds = [
        cond(LOCAL, EQ, v_ip4(A4)), cond(REMOTE, NE, v_mask4(B4, 0xFFFF0000)),
        cond(PROTO, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT8, uint8=6),
                                                 val(wfp.FWP_UINT8, uint8=17))),
        cond(LPORT, wfp.FWP_MATCH_GREATER_OR_EQUAL, v_u16(1024)),
        cond(RPORT, wfp.FWP_MATCH_LESS, v_u16(1024)),
        cond(wfp.FWPM_CONDITION_ICMP_TYPE, EQ, v_u16(8)),  # an alias of IP_LOCAL_PORT (HDR)
        cond(wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS_TYPE, EQ, v_u8(1)),
        cond(wfp.FWPM_CONDITION_IP_LOCAL_INTERFACE, NE, wfp.FWP_CONDITION_VALUE0(
            type=wfp.FWP_UINT64, uint64=7)),
        cond(wfp.FWPM_CONDITION_FLAGS, wfp.FWP_MATCH_FLAGS_NONE_SET, v_u32(1)),
    ]
    for direction in ("outbound", "inbound"):
        fid = add_filter(bfe, h, plain_filter(direction, BLOCK, conds))
        st, got = bfe.FwpmFilterGetById0(h, fid)
        assert st == OK and got.filterCondition == conds


# =================================================================== F.19: ids and keys, Get
def test_ids_start_at_0x10000_and_failures_consume_none(bfe, h):
    assert add_filter(bfe, h, good()) == 0x10000
    assert bfe.FwpmFilterAdd0(h, good(flags=0x20), None) == (wfp.FWP_E_INVALID_FLAGS, None)
    assert add_filter(bfe, h, good()) == 0x10001
    assert add_filter(bfe, h, plain_filter("inbound", PERMIT)) == 0x10002
    # deleting does not give an id back
    assert bfe.FwpmFilterDeleteById0(h, 0x10002) == OK
    assert add_filter(bfe, h, good()) == 0x10003


def test_zero_key_gets_a_random_v4_guid(bfe, h):
    keys = set()
    for _ in range(3):
        st, got = bfe.FwpmFilterGetById0(h, add_filter(bfe, h, good()))
        assert st == OK and got.filterKey.version == 4
        keys.add(got.filterKey)
    assert len(keys) == 3


def test_get_returns_the_fields_as_given(bfe, h):
    key = uuid.uuid4()
    conds = [cond(LOCAL, EQ, v_ip4(A4)), cond(RPORT, EQ, v_u16(500)),
             cond(REMOTE, EQ, v_mask4(B4, 0xFFFFFF00))]
    flt = wfp.FWPM_FILTER0(
        filterKey=key, displayData=wfp.FWPM_DISPLAY_DATA0(name="n", description="d"),
        flags=wfp.FWPM_FILTER_FLAG_INDEXED, providerKey=wfp.FWPM_PROVIDER_IKEEXT,
        providerData=wfp.FWP_BYTE_BLOB(size=3, data=b"abc"),
        layerKey=wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4, weight=val(wfp.FWP_UINT8, uint8=3),
        filterCondition=conds, action=wfp.FWPM_ACTION0(type=BLOCK), rawContext=0x1234,
        filterId=999, effectiveWeight=val(wfp.FWP_UINT64, uint64=1))  # ignored on add
    given = wfp.types.clone(flt)
    fid = add_filter(bfe, h, flt)
    assert flt == given  # the caller's structure is not touched
    want = wfp.types.clone(given)
    want.filterId = fid
    want.numFilterConditions = 3
    want.subLayerKey = wfp.FWPM_SUBLAYER_UNIVERSAL  # F.20: zero means the universal sublayer
    want.effectiveWeight = val(wfp.FWP_UINT64, uint64=(3 << 60) | auto(3, fid))
    assert bfe.FwpmFilterGetById0(h, fid) == (OK, want)
    assert bfe.FwpmFilterGetByKey0(h, key) == (OK, want)
    # the caller's copy is its own: changing it (or what Get returned) changes nothing stored
    flt.filterCondition[0].conditionValue.uint32 = 1
    _, got = bfe.FwpmFilterGetById0(h, fid)
    got.displayData.name = "changed"
    got.filterCondition.clear()
    assert bfe.FwpmFilterGetById0(h, fid) == (OK, want)
    assert bfe.FwpmFreeMemory0(got) is None


def test_get_errors(bfe, h):
    fid = add_filter(bfe, h, good())
    assert bfe.FwpmFilterGetById0(h, fid + 1) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert bfe.FwpmFilterGetById0(h, 0) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert bfe.FwpmFilterGetByKey0(h, uuid.uuid4()) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert bfe.FwpmFilterGetByKey0(h, None) == (wfp.FWP_E_NULL_POINTER, None)
    assert bfe.FwpmFilterGetById0(h, -1) == (wfp.FWP_E_OUT_OF_BOUNDS, None)
    assert bfe.FwpmFilterGetById0(h, "x") == (wfp.FWP_E_INVALID_PARAMETER, None)
    assert bfe.FwpmFilterGetById0(0xDEAD, fid) == (wfp.ERROR_INVALID_HANDLE, None)


# ------------------------------------------------------------------- F.20: weights
def test_effective_weights(bfe, h):
    f_empty = add_filter(bfe, h, good())  # FWP_EMPTY, two condition fields
    f_none = add_filter(bfe, h, plain_filter("outbound", PERMIT))  # no conditions
    f_r0 = add_filter(bfe, h, good(weight=val(wfp.FWP_UINT8, uint8=0)))
    f_r12 = add_filter(bfe, h, good(weight=val(wfp.FWP_UINT8,
                                               uint8=wfp.FWPM_WEIGHT_RANGE_IKE_EXEMPTIONS)))
    f_r15 = add_filter(bfe, h, plain_filter("outbound", PERMIT, [cond(RPORT, EQ, v_u16(1)),
                                                                 cond(RPORT, EQ, v_u16(2))],
                                            weight=val(wfp.FWP_UINT8, uint8=15)))
    f_64 = add_filter(bfe, h, good(weight=val(wfp.FWP_UINT64, uint64=0xFEDCBA9876543210)))
    f_64z = add_filter(bfe, h, good(weight=val(wfp.FWP_UINT64, uint64=0)))
    want = {
        f_empty: (2 << 52) | (AUTO_LOW - 0x10000),
        f_none: AUTO_LOW - 0x10001,
        f_r0: (2 << 52) | (AUTO_LOW - 0x10002),
        f_r12: (12 << 60) | (2 << 52) | (AUTO_LOW - 0x10003),
        f_r15: (15 << 60) | (1 << 52) | (AUTO_LOW - 0x10004),  # one distinct field
        f_64: 0xFEDCBA9876543210,
        f_64z: 0,
    }
    for fid, weight in want.items():
        st, got = bfe.FwpmFilterGetById0(h, fid)
        assert st == OK
        assert got.effectiveWeight == val(wfp.FWP_UINT64, uint64=weight), hex(fid)


# =================================================================== delete
def test_delete_by_id_and_by_key(bfe, h):
    key = uuid.uuid4()
    f1 = add_filter(bfe, h, good())
    f2 = add_filter(bfe, h, good(filterKey=key))
    assert bfe.FwpmFilterDeleteById0(h, f1) == OK
    assert bfe.FwpmFilterDeleteById0(h, f1) == wfp.FWP_E_FILTER_NOT_FOUND
    assert bfe.FwpmFilterGetById0(h, f1) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert bfe.FwpmFilterDeleteByKey0(h, uuid.uuid4()) == wfp.FWP_E_FILTER_NOT_FOUND
    assert bfe.FwpmFilterDeleteByKey0(h, None) == wfp.FWP_E_NULL_POINTER
    assert [f.filterId for f in all_filters(bfe, h)] == [f2]
    assert bfe.FwpmFilterDeleteByKey0(h, key) == OK
    assert bfe.FwpmFilterGetByKey0(h, key) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert all_filters(bfe, h) == []
    # the key is free again
    add_filter(bfe, h, good(filterKey=key))


def test_delete_in_use_by_sa_context(bfe, h):
    fin, fout = ipsec_pair(bfe, h)
    ctx = create_context(bfe, h, fout)
    st, _spi = bfe.IPsecSaContextGetSpi1(h, ctx, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(A4, B4, fin),
        ipVersion=wfp.FWP_IP_VERSION_V4))
    assert st == OK
    before = all_filters(bfe, h)
    key_out = before[1].filterKey
    assert bfe.FwpmFilterDeleteById0(h, fout) == wfp.FWP_E_IN_USE
    assert bfe.FwpmFilterDeleteByKey0(h, key_out) == wfp.FWP_E_IN_USE
    assert bfe.FwpmFilterDeleteById0(h, fin) == wfp.FWP_E_IN_USE  # GetSpi named it
    assert all_filters(bfe, h) == before
    # expiring still references it (F.16: the linger counts)
    assert bfe.IPsecSaContextExpire0(h, ctx) == OK
    assert bfe.FwpmFilterDeleteById0(h, fout) == wfp.FWP_E_IN_USE
    assert bfe.IPsecSaContextDeleteById0(h, ctx) == OK
    assert bfe.FwpmFilterDeleteById0(h, fout) == OK
    assert bfe.FwpmFilterDeleteById0(h, fin) == OK
    assert all_filters(bfe, h) == []


# =================================================================== enumeration (F.23)
def _enum(bfe, h, tpl, n=1000):
    st, eh = bfe.FwpmFilterCreateEnumHandle0(h, tpl)
    assert st == OK, hex(st)
    st, entries, count = bfe.FwpmFilterEnum0(h, eh, n)
    assert st == OK and count == len(entries)
    assert bfe.FwpmFilterDestroyEnumHandle0(h, eh) == OK
    return [e.filterId for e in entries]


def tpl(**kw: Any) -> wfp.FWPM_FILTER_ENUM_TEMPLATE0:
    kw.setdefault("actionMask", ALL_ACTIONS)
    return wfp.FWPM_FILTER_ENUM_TEMPLATE0(**kw)


@pytest.fixture
def population(bfe, h):
    """Filters at several layers, actions, providers and weights."""
    f = {}
    f["out_ipsec"] = add_filter(bfe, h, good(weight=val(wfp.FWP_UINT64, uint64=50)))
    f["in_ipsec"] = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(A4, B4)))
    f["out_block_port"] = add_filter(bfe, h, plain_filter(
        "outbound", BLOCK, [cond(RPORT, EQ, v_u16(23))], weight=val(wfp.FWP_UINT64, uint64=90),
        providerKey=wfp.FWPM_PROVIDER_IKEEXT))
    f["out_permit"] = add_filter(bfe, h, plain_filter(
        "outbound", PERMIT, [cond(REMOTE, EQ, v_ip4(B4))],
        weight=val(wfp.FWP_UINT64, uint64=70)))
    f["v6_block"] = add_filter(bfe, h, plain_filter("outbound", BLOCK, v6=True))
    f["boot"] = add_filter(bfe, h, plain_filter("outbound", BLOCK,
                                                flags=wfp.FWPM_FILTER_FLAG_BOOTTIME))
    return f


def test_enum_all_and_by_layer(bfe, h, population):
    p = population
    everything = sorted(v for k, v in p.items() if k != "boot")
    assert _enum(bfe, h, None) == everything  # NULL template: all but boot-time
    assert _enum(bfe, h, tpl()) == everything
    out4 = tpl(layerKey=wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4)
    assert _enum(bfe, h, out4) == [p["out_ipsec"], p["out_block_port"], p["out_permit"]]
    assert _enum(bfe, h, tpl(layerKey=wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V6)) == [p["v6_block"]]
    assert _enum(bfe, h, tpl(layerKey=wfp.FWPM_LAYER_INBOUND_TRANSPORT_V6)) == []
    assert _enum(bfe, h, tpl(providerKey=wfp.FWPM_PROVIDER_IKEEXT)) == [p["out_block_port"]]


def test_enum_boottime_flags(bfe, h, population):
    p = population
    everything = sorted(p.values())
    assert _enum(bfe, h, tpl(flags=wfp.FWP_FILTER_ENUM_FLAG_INCLUDE_BOOTTIME)) == everything
    assert _enum(bfe, h, tpl(flags=wfp.FWP_FILTER_ENUM_FLAG_BOOTTIME_ONLY)) == [p["boot"]]
    assert _enum(bfe, h, tpl(flags=wfp.FWP_FILTER_ENUM_FLAG_BOOTTIME_ONLY
                             | wfp.FWP_FILTER_ENUM_FLAG_INCLUDE_BOOTTIME)) == [p["boot"]]


def test_enum_sorted_and_best_terminating(bfe, h, population):
    p = population
    out4 = wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4
    # weights 90 (block), 70 (permit), 50 (ipsec callout)
    assert _enum(bfe, h, tpl(layerKey=out4, flags=wfp.FWP_FILTER_ENUM_FLAG_SORTED)) == \
        [p["out_block_port"], p["out_permit"], p["out_ipsec"]]
    assert _enum(bfe, h, tpl(layerKey=out4,
                             flags=wfp.FWP_FILTER_ENUM_FLAG_BEST_TERMINATING_MATCH)) == \
        [p["out_block_port"]]
    assert _enum(bfe, h, tpl(layerKey=wfp.FWPM_LAYER_INBOUND_TRANSPORT_V6,
                             flags=wfp.FWP_FILTER_ENUM_FLAG_BEST_TERMINATING_MATCH)) == []


def test_enum_action_mask(bfe, h, population):
    p = population
    assert _enum(bfe, h, tpl(actionMask=0)) == []
    # "shares a bit": BLOCK 0x1001 and CALLOUT_TERMINATING 0x5003 share bit 0x1, PERMIT 0x1002
    # does not (C.7.1)
    assert _enum(bfe, h, tpl(actionMask=0x1)) == \
        [p["out_ipsec"], p["in_ipsec"], p["out_block_port"], p["v6_block"]]
    assert _enum(bfe, h, tpl(actionMask=0x2)) == [p["out_ipsec"], p["in_ipsec"], p["out_permit"]]
    assert _enum(bfe, h, tpl(actionMask=wfp.FWP_ACTION_FLAG_NON_TERMINATING)) == []
    terminating = _enum(bfe, h, tpl(actionMask=wfp.FWP_ACTION_FLAG_TERMINATING))
    assert terminating == sorted(v for k, v in p.items() if k != "boot")
    callouts = _enum(bfe, h, tpl(actionMask=wfp.FWP_ACTION_FLAG_CALLOUT,
                                 calloutKey=wfp.FWPM_CALLOUT_IPSEC_INBOUND_TRANSPORT_V4))
    assert callouts == [p["in_ipsec"]]
    assert _enum(bfe, h, tpl(actionMask=wfp.FWP_ACTION_FLAG_CALLOUT,
                             calloutKey=wfp.FWPM_CALLOUT_IPSEC_OUTBOUND_TUNNEL_V4)) == []


def test_enum_condition_templates(bfe, h, population):
    p = population
    other = add_filter(bfe, h, plain_filter("outbound", BLOCK,
                                            [cond(REMOTE, EQ, v_ip4("203.0.113.9"))]))
    masked = add_filter(bfe, h, plain_filter("outbound", BLOCK,
                                             [cond(REMOTE, EQ, v_mask4(B4, 0xFFFFFF00))]))
    remote_b = [cond(REMOTE, EQ, v_ip4(B4))]
    # FULLY_CONTAINED: the filter's conditions on REMOTE equal the template's
    full = tpl(enumType=wfp.FWP_FILTER_ENUM_FULLY_CONTAINED, filterCondition=remote_b)
    assert _enum(bfe, h, full) == [p["out_ipsec"], p["in_ipsec"], p["out_permit"]]
    # OVERLAPPING: also the filters with no REMOTE condition
    over = tpl(enumType=wfp.FWP_FILTER_ENUM_OVERLAPPING, filterCondition=remote_b)
    assert _enum(bfe, h, over) == [p["out_ipsec"], p["in_ipsec"], p["out_block_port"],
                                   p["out_permit"], p["v6_block"]]
    assert other not in _enum(bfe, h, over) and masked not in _enum(bfe, h, over)
    both = addr_conditions(A4, B4)
    assert _enum(bfe, h, tpl(enumType=wfp.FWP_FILTER_ENUM_FULLY_CONTAINED,
                             filterCondition=both)) == [p["out_ipsec"], p["in_ipsec"]]
    assert _enum(bfe, h, tpl(enumType=wfp.FWP_FILTER_ENUM_OVERLAPPING, filterCondition=both)) \
        == [p["out_ipsec"], p["in_ipsec"], p["out_block_port"], p["out_permit"], p["v6_block"]]
    assert _enum(bfe, h, tpl(enumType=wfp.FWP_FILTER_ENUM_FULLY_CONTAINED, filterCondition=[
        cond(REMOTE, EQ, v_mask4(B4, 0xFFFFFF00))])) == [masked]


def test_enum_errors_change_nothing(bfe, h, population):
    before = all_filters(bfe, h)
    bad = [
        (tpl(layerKey=UNKNOWN), wfp.FWP_E_LAYER_NOT_FOUND),
        (tpl(enumType=wfp.FWP_FILTER_ENUM_TYPE_MAX), wfp.FWP_E_INVALID_ENUMERATOR),
        (tpl(flags=0x20), wfp.FWP_E_INVALID_FLAGS),
        (tpl(flags=0x80000000), wfp.FWP_E_INVALID_FLAGS),
        (tpl(actionMask=wfp.FWP_ACTION_FLAG_CALLOUT), wfp.FWP_E_NULL_POINTER),
        (tpl(numFilterConditions=1, filterCondition=None), wfp.FWP_E_NULL_POINTER),
        (tpl(filterCondition=[cond(REMOTE, EQ, v_ip4(B4)), cond(REMOTE, EQ, v_ip4(B4))]),
         wfp.FWP_E_DUPLICATE_CONDITION),
    ]
    for t, status in bad:
        assert bfe.FwpmFilterCreateEnumHandle0(h, t) == (status, None), t
    assert all_filters(bfe, h) == before


def test_enum_paging_and_snapshot(bfe, h):
    ids = [add_filter(bfe, h, good()) for _ in range(7)]
    st, eh = bfe.FwpmFilterCreateEnumHandle0(h, None)
    assert st == OK
    late = add_filter(bfe, h, good())  # after the snapshot: not returned
    assert bfe.FwpmFilterDeleteById0(h, ids[0]) == OK  # deleted after: still returned
    got = []
    st, entries, n = bfe.FwpmFilterEnum0(h, eh, 3)
    assert (st, n) == (OK, 3)
    got += entries
    st, entries, n = bfe.FwpmFilterEnum0(h, eh, 3)
    assert (st, n) == (OK, 3)
    got += entries
    st, entries, n = bfe.FwpmFilterEnum0(h, eh, 3)
    assert (st, n) == (OK, 1)  # fewer than asked: exhausted
    got += entries
    assert bfe.FwpmFilterEnum0(h, eh, 3) == (OK, [], 0)
    assert [e.filterId for e in got] == ids
    assert late not in [e.filterId for e in got]
    assert bfe.FwpmFilterEnum0(h, eh, 0) == (OK, [], 0)
    assert bfe.FwpmFilterDestroyEnumHandle0(h, eh) == OK
    assert bfe.FwpmFilterEnum0(h, eh, 3) == (wfp.ERROR_INVALID_HANDLE, None, None)
    assert bfe.FwpmFilterDestroyEnumHandle0(h, eh) == wfp.ERROR_INVALID_HANDLE


def test_enum_handle_belongs_to_its_session(bfe, h):
    add_filter(bfe, h, good())
    other = open_engine(bfe)
    st, eh = bfe.FwpmFilterCreateEnumHandle0(h, None)
    assert st == OK
    assert bfe.FwpmFilterEnum0(other, eh, 10) == (wfp.ERROR_INVALID_HANDLE, None, None)
    assert bfe.FwpmFilterDestroyEnumHandle0(other, eh) == wfp.ERROR_INVALID_HANDLE
    assert bfe.FwpmFilterEnum0(h, 424242, 10) == (wfp.ERROR_INVALID_HANDLE, None, None)
    # a context enum handle is not a filter enum handle
    st, ch = bfe.IPsecSaContextCreateEnumHandle0(h, None)
    assert st == OK
    assert bfe.FwpmFilterEnum0(h, ch, 10) == (wfp.ERROR_INVALID_HANDLE, None, None)
    # the handle still works for its owner
    st, _entries, n = bfe.FwpmFilterEnum0(h, eh, 10)
    assert (st, n) == (OK, 1)
    # and dies with its session
    assert bfe.FwpmEngineClose0(h) == OK
    h2 = open_engine(bfe)
    assert bfe.FwpmFilterEnum0(h2, eh, 10) == (wfp.ERROR_INVALID_HANDLE, None, None)


# =================================================================== change notifications
class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[Any, int, Any, int]] = []
        self.threads: set[int] = set()

    def __call__(self, context: Any, change: Any) -> None:
        self.threads.add(threading.get_ident())
        self.changes.append((context, change.changeType, change.filterKey, change.filterId))


def test_subscribe_add_and_delete(bfe, h):
    rec = Recorder()
    sub = wfp.FWPM_FILTER_SUBSCRIPTION0()
    st, ch = bfe.FwpmFilterSubscribeChanges0(h, sub, rec, "ctx")
    assert st == OK and ch
    key = uuid.uuid4()
    fid = add_filter(bfe, h, good(filterKey=key))
    assert bfe.FwpmFilterDeleteById0(h, fid) == OK
    bfe.flush_notifications()
    assert rec.changes == [("ctx", wfp.FWPM_CHANGE_ADD, key, fid),
                           ("ctx", wfp.FWPM_CHANGE_DELETE, key, fid)]
    assert threading.get_ident() not in rec.threads  # a worker thread (F.13)
    # a failed add notifies nothing
    assert bfe.FwpmFilterAdd0(h, good(flags=0x20), None)[0] == wfp.FWP_E_INVALID_FLAGS
    assert bfe.FwpmFilterUnsubscribeChanges0(h, ch) == OK
    add_filter(bfe, h, good())
    bfe.flush_notifications()
    assert len(rec.changes) == 2
    assert bfe.FwpmFilterUnsubscribeChanges0(h, ch) == wfp.ERROR_INVALID_HANDLE
    assert bfe.FwpmFilterUnsubscribeChanges0(h, None) == OK  # NULL: no-op


@pytest.mark.parametrize("flags,kinds", [
    (wfp.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_ADD, [wfp.FWPM_CHANGE_ADD]),
    (wfp.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_DELETE, [wfp.FWPM_CHANGE_DELETE]),
    (0, [wfp.FWPM_CHANGE_ADD, wfp.FWPM_CHANGE_DELETE]),
])
def test_subscribe_flags(bfe, h, flags, kinds):
    rec = Recorder()
    st, _ = bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(flags=flags), rec,
                                            None)
    assert st == OK
    fid = add_filter(bfe, h, good())
    assert bfe.FwpmFilterDeleteById0(h, fid) == OK
    bfe.flush_notifications()
    assert [c[1] for c in rec.changes] == kinds


def test_subscribe_template_selects(bfe, h):
    rec = Recorder()
    sub = wfp.FWPM_FILTER_SUBSCRIPTION0(
        enumTemplate=tpl(layerKey=wfp.FWPM_LAYER_INBOUND_TRANSPORT_V4))
    assert bfe.FwpmFilterSubscribeChanges0(h, sub, rec, None)[0] == OK
    add_filter(bfe, h, good())
    fin = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(A4, B4)))
    bfe.flush_notifications()
    assert [c[3] for c in rec.changes] == [fin]


def test_subscribe_errors_and_subscriptions_get(bfe, h):
    rec = Recorder()
    assert bfe.FwpmFilterSubscribeChanges0(h, None, rec, None) == (wfp.FWP_E_NULL_POINTER, None)
    sub = wfp.FWPM_FILTER_SUBSCRIPTION0()
    assert bfe.FwpmFilterSubscribeChanges0(h, sub, None, None) == (wfp.FWP_E_NULL_POINTER, None)
    assert bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(flags=4), rec,
                                           None) == (wfp.FWP_E_INVALID_FLAGS, None)
    bad_tpl = wfp.FWPM_FILTER_SUBSCRIPTION0(enumTemplate=tpl(layerKey=UNKNOWN))
    assert bfe.FwpmFilterSubscribeChanges0(h, bad_tpl, rec, None) == \
        (wfp.FWP_E_LAYER_NOT_FOUND, None)
    assert bfe.FwpmFilterSubscriptionsGet0(h) == (OK, [], 0)
    other = open_engine(bfe)
    st, ch = bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(
        flags=wfp.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_ADD), rec, None)
    assert st == OK
    st, entries, n = bfe.FwpmFilterSubscriptionsGet0(other)
    assert (st, n) == (OK, 1)
    assert entries[0].flags == wfp.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_ADD
    assert entries[0].sessionKey != wfp.GUID_NULL
    # another session cannot cancel it
    assert bfe.FwpmFilterUnsubscribeChanges0(other, ch) == wfp.ERROR_INVALID_HANDLE
    # subscriptions die with their session (B.3)
    assert bfe.FwpmEngineClose0(h) == OK
    assert bfe.FwpmFilterSubscriptionsGet0(other) == (OK, [], 0)
    add_filter(bfe, other, good())
    bfe.flush_notifications()
    assert rec.changes == []


def test_unsubscribe_from_inside_the_callback(bfe, h):
    done = threading.Event()
    holder: dict[str, int] = {}

    def cb(context, change):
        holder["status"] = bfe.FwpmFilterUnsubscribeChanges0(h, holder["handle"])
        done.set()

    st, holder["handle"] = bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(),
                                                           cb, None)
    assert st == OK
    add_filter(bfe, h, good())
    assert done.wait(5)
    assert holder["status"] == OK
    assert bfe.FwpmFilterSubscriptionsGet0(h) == (OK, [], 0)


# =================================================================== classification (F.17, F.20)
def test_no_filter_passes_in_clear(bfe, h):
    p = udp4(A4, B4, b"x")
    assert bfe.outbound(p) == (p, None)
    assert bfe.inbound(p) == (p, None)


def test_block_and_permit(bfe, h):
    fid = add_filter(bfe, h, plain_filter("outbound", BLOCK, [cond(REMOTE, EQ, v_ip4(B4))]))
    assert sent(bfe) == DropReason.BLOCKED
    assert sent(bfe, dst="203.0.113.5") is None
    # an inbound packet from B4 is classified at the inbound layer: not affected
    assert bfe.inbound(udp4(B4, A4, b"in")).drop is None
    assert bfe.FwpmFilterDeleteById0(h, fid) == OK
    assert sent(bfe) is None
    add_filter(bfe, h, plain_filter("inbound", BLOCK, [cond(REMOTE, EQ, v_ip4(B4))]))
    assert bfe.inbound(udp4(B4, A4, b"in")).drop == DropReason.BLOCKED
    assert bfe.inbound(udp4("203.0.113.5", A4, b"in")).drop is None
    assert sent(bfe) is None


def test_higher_weight_wins(bfe, h):
    remote = [cond(REMOTE, EQ, v_ip4(B4))]
    add_filter(bfe, h, plain_filter("outbound", BLOCK, remote,
                                    weight=val(wfp.FWP_UINT64, uint64=10)))
    permit = add_filter(bfe, h, plain_filter("outbound", PERMIT, remote,
                                             weight=val(wfp.FWP_UINT64, uint64=20)))
    assert sent(bfe) is None
    assert bfe.FwpmFilterDeleteById0(h, permit) == OK
    add_filter(bfe, h, plain_filter("outbound", PERMIT, remote,
                                    weight=val(wfp.FWP_UINT64, uint64=5)))
    assert sent(bfe) == DropReason.BLOCKED


def test_weight_ranges_beat_automatic_weights(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, addr_conditions(A4, B4)))
    add_filter(bfe, h, plain_filter("outbound", PERMIT, weight=val(wfp.FWP_UINT8, uint8=1)))
    assert sent(bfe) is None  # range 1 above range 0 whatever the conditions


def test_equal_weights_lower_id_wins(bfe, h):
    w = val(wfp.FWP_UINT64, uint64=7)
    first = add_filter(bfe, h, plain_filter("outbound", BLOCK, weight=w))
    add_filter(bfe, h, plain_filter("outbound", PERMIT, weight=w))
    assert sent(bfe) == DropReason.BLOCKED
    assert bfe.FwpmFilterDeleteById0(h, first) == OK
    add_filter(bfe, h, plain_filter("outbound", BLOCK, weight=w))
    assert sent(bfe) is None  # the PERMIT is older now


def test_automatic_weight_prefers_more_fields(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [cond(REMOTE, EQ, v_ip4(B4))]))
    add_filter(bfe, h, plain_filter("outbound", PERMIT, addr_conditions(A4, B4)))
    assert sent(bfe) is None
    assert sent(bfe, src="192.0.2.99") == DropReason.BLOCKED


def test_masks(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK,
                                    [cond(REMOTE, EQ, v_mask4("198.51.100.77", 0xFFFFFF00))]))
    assert sent(bfe, dst="198.51.100.2") == DropReason.BLOCKED
    assert sent(bfe, dst="198.51.100.255") == DropReason.BLOCKED
    assert sent(bfe, dst="198.51.101.2") is None
    add_filter(bfe, h, plain_filter("outbound", BLOCK,
                                    [cond(LOCAL, NE, v_mask4("192.0.2.0", 0xFFFFFFF0))]))
    assert sent(bfe, src="192.0.2.15", dst="203.0.113.1") is None
    assert sent(bfe, src="192.0.2.16", dst="203.0.113.1") == DropReason.BLOCKED


def test_address_and_port_ranges(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [
        cond(REMOTE, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT32, uint32=0xC6336405),
                                                  val(wfp.FWP_UINT32, uint32=0xC6336409))),
        cond(RPORT, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT16, uint16=1000),
                                                 val(wfp.FWP_UINT16, uint16=1999))),
    ]))
    assert sent(bfe, dst="198.51.100.5", dport=1000) == DropReason.BLOCKED
    assert sent(bfe, dst="198.51.100.9", dport=1999) == DropReason.BLOCKED
    assert sent(bfe, dst="198.51.100.7", dport=1500) == DropReason.BLOCKED
    assert sent(bfe, dst="198.51.100.4", dport=1500) is None
    assert sent(bfe, dst="198.51.100.10", dport=1500) is None
    assert sent(bfe, dst="198.51.100.7", dport=999) is None
    assert sent(bfe, dst="198.51.100.7", dport=2000) is None


def test_wide_ranges_are_exact(bfe, h):
    # ranges wider than the classifier's index (many prefixes, thousands of ports)
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [
        cond(REMOTE, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT32, uint32=0x01020305),
                                                  val(wfp.FWP_UINT32, uint32=0xFEDCBA97))),
        cond(LPORT, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT16, uint16=3),
                                                 val(wfp.FWP_UINT16, uint16=60001))),
    ]))
    assert sent(bfe, dst="1.2.3.5", sport=3) == DropReason.BLOCKED
    assert sent(bfe, dst="254.220.186.151", sport=60001) == DropReason.BLOCKED
    assert sent(bfe, dst="1.2.3.4", sport=5000) is None
    assert sent(bfe, dst="254.220.186.152", sport=5000) is None
    assert sent(bfe, dst="100.0.0.1", sport=2) is None
    assert sent(bfe, dst="100.0.0.1", sport=60002) is None


@pytest.mark.parametrize("match,blocked,passed", [
    (wfp.FWP_MATCH_EQUAL, [6000], [5999, 6001]),
    (wfp.FWP_MATCH_NOT_EQUAL, [5999, 6001], [6000]),
    (wfp.FWP_MATCH_GREATER, [6001, 65535], [6000, 1]),
    (wfp.FWP_MATCH_LESS, [5999, 1], [6000, 6001]),
    (wfp.FWP_MATCH_GREATER_OR_EQUAL, [6000, 6001], [5999]),
    (wfp.FWP_MATCH_LESS_OR_EQUAL, [6000, 5999], [6001]),
])
def test_scalar_match_types(bfe, h, match, blocked, passed):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [cond(RPORT, match, v_u16(6000))]))
    for port in blocked:
        assert sent(bfe, dport=port) == DropReason.BLOCKED, port
    for port in passed:
        assert sent(bfe, dport=port) is None, port


def test_scalar_address_comparisons(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK,
                                    [cond(REMOTE, wfp.FWP_MATCH_GREATER, v_ip4("198.51.100.2"))]))
    assert sent(bfe, dst="198.51.100.3") == DropReason.BLOCKED
    assert sent(bfe, dst="198.51.100.2") is None
    assert sent(bfe, dst="10.0.0.1") is None


def test_same_field_conditions_are_ored(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [
        cond(RPORT, EQ, v_u16(6000)),
        cond(LOCAL, EQ, v_ip4(A4)),
        cond(RPORT, EQ, v_u16(7000)),  # not consecutive: still ORed (F.17)
        cond(PROTO, EQ, v_u8(17)),
    ]))
    assert sent(bfe, dport=6000) == DropReason.BLOCKED
    assert sent(bfe, dport=7000) == DropReason.BLOCKED
    assert sent(bfe, dport=8000) is None
    assert sent(bfe, src="192.0.2.2", dport=6000) is None  # different fields are ANDed


def test_protocol_condition(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [cond(PROTO, EQ, v_u8(1))]))
    assert bfe.outbound(icmp4(A4, B4, 8, 0)).drop == DropReason.BLOCKED
    assert sent(bfe) is None


def test_ipv6(bfe, h):
    b6 = "2001:db8:1::2"
    add_filter(bfe, h, plain_filter("outbound", BLOCK,
                                    [cond(REMOTE, EQ, v_mask6("2001:db8:1::", 48))], v6=True))
    assert bfe.outbound(udp6("2001:db8::1", b6, b"x")).drop == DropReason.BLOCKED
    assert bfe.outbound(udp6("2001:db8::1", "2001:db8:2::2", b"x")).drop is None
    assert sent(bfe) is None  # the V4 layer has no filter
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [
        cond(REMOTE, wfp.FWP_MATCH_RANGE, v_range(
            val(wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=bytes.fromhex("20010db8000200000000000000000001")),
            val(wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=bytes.fromhex("20010db8000200000000000000000009")))),
        cond(RPORT, EQ, v_u16(53))], v6=True))
    assert bfe.outbound(udp6("2001:db8::1", "2001:db8:2::5", b"x", dport=53)).drop == \
        DropReason.BLOCKED
    assert bfe.outbound(udp6("2001:db8::1", "2001:db8:2::a", b"x", dport=53)).drop is None
    assert bfe.outbound(udp6("2001:db8::1", "2001:db8:2::5", b"x", dport=54)).drop is None
    add_filter(bfe, h, plain_filter("inbound", BLOCK, [cond(REMOTE, EQ, v_ip6("2001:db8:3::3"))],
                                    v6=True))
    assert bfe.inbound(udp6("2001:db8:3::3", "2001:db8::1", b"x")).drop == DropReason.BLOCKED
    assert bfe.inbound(udp6("2001:db8:3::4", "2001:db8::1", b"x")).drop is None


def test_icmp_type_and_code_are_ports(bfe, h):
    # F.17: outbound, the local port is the ICMP type and the remote port the code
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [
        cond(wfp.FWPM_CONDITION_ICMP_TYPE, EQ, v_u16(8)),
        cond(wfp.FWPM_CONDITION_ICMP_CODE, EQ, v_u16(0))]))
    assert bfe.outbound(icmp4(A4, B4, 8, 0)).drop == DropReason.BLOCKED
    assert bfe.outbound(icmp4(A4, B4, 0, 0)).drop is None
    assert bfe.outbound(icmp4(A4, B4, 8, 1)).drop is None
    # the same condition written as ports; inbound too
    add_filter(bfe, h, plain_filter("inbound", BLOCK, [cond(LPORT, EQ, v_u16(3)),
                                                       cond(RPORT, EQ, v_u16(4))]))
    assert bfe.inbound(icmp4(B4, A4, 3, 4)).drop == DropReason.BLOCKED
    assert bfe.inbound(icmp4(B4, A4, 3, 3)).drop is None
    assert bfe.inbound(udp4(B4, A4, b"x", sport=4, dport=3)).drop == DropReason.BLOCKED


def test_port_condition_never_matches_a_portless_protocol(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [cond(RPORT, NE, v_u16(1))]))
    # GRE (47) carries no ports: any port condition is false (F.17)
    assert bfe.outbound(ipv4_packet(A4, B4, 47, b"\x00\x00\x08\x00")).drop is None
    assert sent(bfe, dport=2) == DropReason.BLOCKED


def test_loopback_flag(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [
        cond(wfp.FWPM_CONDITION_FLAGS, wfp.FWP_MATCH_FLAGS_ALL_SET,
             v_u32(wfp.FWP_CONDITION_FLAG_IS_LOOPBACK))]))
    assert sent(bfe, src="127.0.0.1", dst="127.0.0.2") == DropReason.BLOCKED
    assert sent(bfe) is None
    add_filter(bfe, h, plain_filter("inbound", BLOCK, [
        cond(wfp.FWPM_CONDITION_FLAGS, wfp.FWP_MATCH_FLAGS_NONE_SET,
             v_u32(wfp.FWP_CONDITION_FLAG_IS_LOOPBACK))]))
    assert bfe.inbound(udp4(B4, A4, b"x")).drop == DropReason.BLOCKED
    assert bfe.inbound(udp4("127.0.0.1", "127.0.0.1", b"x")).drop is None


def test_ipsec_filters_without_context(bfe, h):
    ipsec_pair(bfe, h)
    # F.20: an outbound IPsec filter with no established context blocks (nothing negotiates)
    assert sent(bfe) == DropReason.NO_POLICY
    # an inbound IPsec filter drops clear text
    assert bfe.inbound(udp4(B4, A4, b"x")).drop == DropReason.CLEAR_TEXT
    assert sent(bfe, dst="203.0.113.1") is None
    # a higher-weight PERMIT (an exemption) lets it through in clear
    add_filter(bfe, h, plain_filter("outbound", PERMIT, [cond(RPORT, EQ, v_u16(500))],
                                    weight=val(wfp.FWP_UINT8,
                                               uint8=wfp.FWPM_WEIGHT_RANGE_IKE_EXEMPTIONS)))
    assert sent(bfe, dport=500) is None
    assert sent(bfe, dport=501) == DropReason.NO_POLICY


def test_silent_drop_callout(bfe, h):
    """A non-IPsec callout at the transport layer (C.7.4 lists only IPsec roles): it drops."""
    for v6 in (False, True):
        flt = plain_filter("outbound", wfp.FWP_ACTION_CALLOUT_TERMINATING,
                           [cond(RPORT, EQ, v_u16(9))], v6=v6)
        flt.action.calloutKey = (wfp.FWPM_CALLOUT_WFP_TRANSPORT_LAYER_V6_SILENT_DROP if v6
                                 else wfp.FWPM_CALLOUT_WFP_TRANSPORT_LAYER_V4_SILENT_DROP)
        add_filter(bfe, h, flt)
    assert sent(bfe, dport=9) == DropReason.BLOCKED
    assert sent(bfe, dport=10) is None
    assert bfe.outbound(udp6("2001:db8::1", "2001:db8::2", b"x", dport=9)).drop == \
        DropReason.BLOCKED
    flt = plain_filter("outbound", wfp.FWP_ACTION_CALLOUT_TERMINATING)
    flt.action.calloutKey = wfp.FWPM_CALLOUT_WFP_TRANSPORT_LAYER_V6_SILENT_DROP
    assert bfe.FwpmFilterAdd0(h, flt, None) == (wfp.FWP_E_INCOMPATIBLE_LAYER, None)


def test_boottime_filters_are_stored_not_enforced(bfe, h):
    fid = add_filter(bfe, h, plain_filter("outbound", BLOCK,
                                          flags=wfp.FWPM_FILTER_FLAG_BOOTTIME))
    st, got = bfe.FwpmFilterGetById0(h, fid)
    assert st == OK and got.flags == wfp.FWPM_FILTER_FLAG_BOOTTIME
    assert sent(bfe) is None


def test_persistent_filters_are_enforced(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK, flags=wfp.FWPM_FILTER_FLAG_PERSISTENT))
    assert sent(bfe) == DropReason.BLOCKED


def test_filters_at_other_layers_do_not_classify_transport_traffic(bfe, h):
    for layer in (wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4_DISCARD,
                  wfp.FWPM_LAYER_OUTBOUND_IPPACKET_V4):
        flt = plain_filter("outbound", BLOCK)
        flt.layerKey = layer
        add_filter(bfe, h, flt)
    assert sent(bfe) is None


def test_deleted_filter_stops_classifying(bfe, h):
    key = uuid.uuid4()
    add_filter(bfe, h, plain_filter("outbound", BLOCK, filterKey=key))
    assert sent(bfe) == DropReason.BLOCKED
    assert bfe.FwpmFilterDeleteByKey0(h, key) == OK
    assert sent(bfe) is None


def test_many_filters_classify_like_a_linear_scan(bfe, h):
    """Random filters against random packets: the engine's verdict equals a straightforward
    evaluation of F.17/F.20 written here (weights given explicitly, so the order is known)."""
    import random

    rnd = random.Random(11)
    rules = []
    for i in range(60):
        conds = []
        if rnd.random() < 0.7:
            net = rnd.choice([0xC6336400, 0xC0000200, 0x0A000000])
            plen = rnd.choice([8, 16, 24, 28, 32])
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            conds.append(("remote", "mask", (net & mask, mask)))
        if rnd.random() < 0.5:
            lo = rnd.randrange(0, 9000)
            conds.append(("dport", "range", (lo, lo + rnd.randrange(0, 3000))))
        if rnd.random() < 0.3:
            conds.append(("sport", "ne", rnd.randrange(4990, 5010)))
        action = rnd.choice([BLOCK, PERMIT])
        weight = rnd.randrange(0, 40)
        wconds = []
        for field, kind, arg in conds:
            if kind == "mask":
                wconds.append(cond(REMOTE, EQ, wfp.FWP_CONDITION_VALUE0(
                    type=wfp.FWP_V4_ADDR_MASK,
                    v4AddrMask=wfp.FWP_V4_ADDR_AND_MASK(addr=arg[0], mask=arg[1]))))
            elif kind == "range":
                wconds.append(cond(RPORT, wfp.FWP_MATCH_RANGE, v_range(
                    val(wfp.FWP_UINT16, uint16=arg[0]), val(wfp.FWP_UINT16, uint16=arg[1]))))
            else:
                wconds.append(cond(LPORT, NE, v_u16(arg)))
        fid = add_filter(bfe, h, plain_filter("outbound", action, wconds,
                                              weight=val(wfp.FWP_UINT64, uint64=weight)))
        rules.append((weight, fid, action, conds))
    rules.sort(key=lambda r: (-r[0], r[1]))

    def expected(dst: int, sport: int, dport: int) -> Any:
        for _, _, action, conds in rules:
            ok = True
            for field, kind, arg in conds:
                if kind == "mask":
                    ok = dst & arg[1] == arg[0]
                elif kind == "range":
                    ok = arg[0] <= dport <= arg[1]
                else:
                    ok = sport != arg
                if not ok:
                    break
            if ok:
                return DropReason.BLOCKED if action == BLOCK else None
        return None

    import ipaddress
    for _ in range(300):
        dst = rnd.choice([0xC6336400, 0xC0000200, 0x0A000000, 0x0B000000]) | rnd.randrange(256)
        sport, dport = rnd.randrange(4990, 5010), rnd.randrange(0, 12000)
        got = sent(bfe, dst=str(ipaddress.IPv4Address(dst)), sport=sport, dport=dport)
        assert got == expected(dst, sport, dport), (hex(dst), sport, dport)


def test_zero_conditions_match_everything(bfe, h):
    add_filter(bfe, h, plain_filter("outbound", BLOCK))
    assert sent(bfe) == DropReason.BLOCKED
    assert bfe.outbound(icmp4(A4, B4, 8, 0)).drop == DropReason.BLOCKED
    assert bfe.outbound(udp6("2001:db8::1", "2001:db8::2", b"x")).drop is None  # V6 layer


def test_get_returns_a_fresh_copy_each_time(bfe, h):
    fid = add_filter(bfe, h, good())
    _, a = bfe.FwpmFilterGetById0(h, fid)
    _, b = bfe.FwpmFilterGetById0(h, fid)
    assert a == b and a is not b
    assert a.filterCondition is not b.filterCondition
    assert isinstance(a, wfp.FWPM_FILTER0)


# =================================================================== garbage never raises
@pytest.mark.parametrize("change,status", [
    (lambda f: setattr(f, "layerKey", []), wfp.FWP_E_LAYER_NOT_FOUND),
    (lambda f: setattr(f, "layerKey", str(wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4)),
     wfp.FWP_E_LAYER_NOT_FOUND),  # GUIDs are uuid.UUID (contract), never their text
    (lambda f: setattr(f, "subLayerKey", {}), wfp.FWP_E_SUBLAYER_NOT_FOUND),
    (lambda f: setattr(f, "providerKey", []), wfp.FWP_E_PROVIDER_NOT_FOUND),
    (lambda f: setattr(f.action, "type", []), wfp.FWP_E_INVALID_ACTION_TYPE),
    (lambda f: setattr(f.action, "type", "0x1001"), wfp.FWP_E_INVALID_ACTION_TYPE),
    (lambda f: setattr(f.action, "calloutKey", []), wfp.FWP_E_CALLOUT_NOT_FOUND),
    (lambda f: setattr(f.filterCondition[0], "fieldKey", []), wfp.FWP_E_CONDITION_NOT_FOUND),
    (lambda f: setattr(f.filterCondition[0], "fieldKey", str(REMOTE)),
     wfp.FWP_E_CONDITION_NOT_FOUND),
])
def test_unhashable_or_wrongly_typed_guids_are_statuses(bfe, h, change, status):
    flt = good()
    change(flt)
    assert bfe.FwpmFilterAdd0(h, flt, None) == (status, None)
    assert all_filters(bfe, h) == []


@pytest.mark.parametrize("conds", [
    # F.17: the match type is checked before the range's bounds
    [cond(RPORT, EQ, v_range(val(wfp.FWP_UINT16, uint16=9), val(wfp.FWP_UINT16, uint16=8)))],
    [cond(RPORT, EQ, v_range(val(wfp.FWP_UINT16, uint16=1), val(wfp.FWP_UINT32, uint32=8)))],
    [cond(PROTO, wfp.FWP_MATCH_LESS, v_range(val(wfp.FWP_UINT8, uint8=9),
                                             val(wfp.FWP_UINT8, uint8=8)))],
    [cond(REMOTE, NE, v_range(val(wfp.FWP_UINT32, uint32=9), val(wfp.FWP_UINT32, uint32=8)))],
    [cond(REMOTE, NE, v_range(val(wfp.FWP_UINT32, uint32=1), val(wfp.FWP_UINT16, uint16=8)))],
])
def test_range_match_type_is_checked_before_its_bounds(bfe, h, conds):
    assert _try_conditions(bfe, h, conds) == (wfp.FWP_E_MATCH_TYPE_MISMATCH, None)


@pytest.mark.parametrize("call,status", [
    pytest.param(lambda b, h: b.FwpmFilterGetByKey0(h, [])[0], wfp.FWP_E_INVALID_PARAMETER,
                 id="GetByKey-list"),
    pytest.param(lambda b, h: b.FwpmFilterCreateEnumHandle0(h, "garbage")[0],
                 wfp.FWP_E_INVALID_PARAMETER,
                 id="CreateEnumHandle-str"),
    pytest.param(lambda b, h: b.FwpmFilterCreateEnumHandle0(h, tpl(layerKey=[]))[0],
                 wfp.FWP_E_LAYER_NOT_FOUND,
                 id="CreateEnumHandle-layerKey-list"),
    pytest.param(lambda b, h: b.FwpmFilterCreateEnumHandle0(h, tpl(filterCondition="ab"))[0],
                 wfp.FWP_E_INVALID_PARAMETER,
                 id="CreateEnumHandle-conditions-str"),
    pytest.param(lambda b, h: b.FwpmFilterSubscribeChanges0(h, "garbage", lambda c, ch: None,
                                                            None)[0],
                 wfp.FWP_E_INVALID_PARAMETER,
                 id="SubscribeChanges-str"),
])
def test_enum_and_subscribe_garbage_is_a_status(bfe, h, call, status):
    assert call(bfe, h) == status


# =================================================================== a reference evaluator
_OPS = {
    wfp.FWP_MATCH_EQUAL: lambda x, v: x == v, wfp.FWP_MATCH_NOT_EQUAL: lambda x, v: x != v,
    wfp.FWP_MATCH_GREATER: lambda x, v: x > v, wfp.FWP_MATCH_LESS: lambda x, v: x < v,
    wfp.FWP_MATCH_GREATER_OR_EQUAL: lambda x, v: x >= v,
    wfp.FWP_MATCH_LESS_OR_EQUAL: lambda x, v: x <= v,
}


def _random_condition(rnd: Any, v6: bool) -> tuple[Any, Any]:
    """(WFP condition, reference predicate on the packet's (local, remote, proto, lport, rport,
    flags) tuple) for one random condition of F.17's table."""
    import ipaddress

    width = 128 if v6 else 32
    pools = ([int(ipaddress.IPv6Address(a)) for a in ("2001:db8::", "2001:db8:1::", "fe80::")]
             if v6 else [0xC0000200, 0xC6336400, 0x7F000000, 0x0A000000])
    kind = rnd.choice(["local", "remote", "proto", "lport", "rport", "flags"])
    idx = {"local": 0, "remote": 1, "proto": 2, "lport": 3, "rport": 4, "flags": 5}[kind]
    field = {"local": LOCAL, "remote": REMOTE, "proto": PROTO, "lport": LPORT, "rport": RPORT,
             "flags": wfp.FWPM_CONDITION_FLAGS}[kind]
    if kind == "flags":
        match = rnd.choice([wfp.FWP_MATCH_FLAGS_ALL_SET, wfp.FWP_MATCH_FLAGS_ANY_SET,
                            wfp.FWP_MATCH_FLAGS_NONE_SET])
        bits = wfp.FWP_CONDITION_FLAG_IS_LOOPBACK
        pred = {wfp.FWP_MATCH_FLAGS_ALL_SET: lambda x: x & bits == bits,
                wfp.FWP_MATCH_FLAGS_ANY_SET: lambda x: bool(x & bits),
                wfp.FWP_MATCH_FLAGS_NONE_SET: lambda x: not x & bits}[match]
        return cond(field, match, v_u32(bits)), lambda p: pred(p[idx])
    if kind in ("local", "remote"):
        base = rnd.choice(pools) | rnd.randrange(16)
        shape = rnd.choice(["scalar", "mask", "range"])
        if shape == "scalar":
            match = rnd.choice(list(_OPS))
            value = (wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_BYTE_ARRAY16_TYPE,
                                              byteArray16=base.to_bytes(16, "big"))
                     if v6 else v_u32(base))
            op = _OPS[match]
            return cond(field, match, value), lambda p: op(p[idx], base)
        if shape == "mask":
            plen = rnd.choice([0, 1, 8, 24, 28, width])
            mask = ((1 << width) - 1) ^ ((1 << (width - plen)) - 1)
            match = rnd.choice([EQ, NE])
            if v6:
                value = wfp.FWP_CONDITION_VALUE0(
                    type=wfp.FWP_V6_ADDR_MASK, v6AddrMask=wfp.FWP_V6_ADDR_AND_MASK(
                        addr=base.to_bytes(16, "big"), prefixLength=plen))
            else:
                value = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_V4_ADDR_MASK,
                                                 v4AddrMask=wfp.FWP_V4_ADDR_AND_MASK(
                                                     addr=base, mask=mask))
            net = base & mask
            if match == EQ:
                return cond(field, match, value), lambda p: p[idx] & mask == net
            return cond(field, match, value), lambda p: p[idx] & mask != net
        hi = base + rnd.randrange(0, 1 << rnd.choice([2, 8, 20]))
        hi = min(hi, (1 << width) - 1)
        if v6:
            low = val(wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=base.to_bytes(16, "big"))
            high = val(wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=hi.to_bytes(16, "big"))
        else:
            low, high = val(wfp.FWP_UINT32, uint32=base), val(wfp.FWP_UINT32, uint32=hi)
        return (cond(field, wfp.FWP_MATCH_RANGE, v_range(low, high)),
                lambda p: base <= p[idx] <= hi)
    bits, t, attr = (8, wfp.FWP_UINT8, "uint8") if kind == "proto" else \
        (16, wfp.FWP_UINT16, "uint16")
    pool = [1, 17, 47, 58] if kind == "proto" else [0, 3, 8, 500, 5000, 6000, 65535]
    v = rnd.choice(pool) + rnd.choice([0, 0, 1, -1])
    v = max(0, min(v, (1 << bits) - 1))
    if rnd.random() < 0.3:
        hi = min(v + rnd.randrange(0, 2000), (1 << bits) - 1)
        value = v_range(val(t, **{attr: v}), val(t, **{attr: hi}))

        def in_range(p: Any, lo: int = v, hi: int = hi) -> bool:
            return p[idx] is not None and lo <= p[idx] <= hi
        return cond(field, wfp.FWP_MATCH_RANGE, value), in_range
    match = rnd.choice(list(_OPS))
    op = _OPS[match]
    value = wfp.FWP_CONDITION_VALUE0(type=t, **{attr: v})
    return cond(field, match, value), lambda p: p[idx] is not None and op(p[idx], v)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_random_filters_against_a_reference_evaluator(bfe, h, v6, direction):
    """Random filters of every F.17 shape against random UDP, ICMP and port-less packets: the
    verdict equals F.17 (same field ORed, fields ANDed) and F.20 (weight, then id) evaluated
    here from scratch."""
    import ipaddress
    import random

    from .helpers import ipv4_packet

    rnd = random.Random(2011 + v6 * 2 + (direction == "inbound"))
    rules = []
    for _ in range(70):
        parts = [_random_condition(rnd, v6) for _ in range(rnd.choice([0, 1, 1, 2, 2, 3]))]
        action = rnd.choice([BLOCK, PERMIT])
        weight = rnd.randrange(0, 12)
        fid = add_filter(bfe, h, plain_filter(direction, action, [c for c, _ in parts], v6=v6,
                                              weight=val(wfp.FWP_UINT64, uint64=weight)))
        by_field: dict[Any, list[Any]] = {}
        for c, pred in parts:
            by_field.setdefault(c.fieldKey, []).append(pred)
        rules.append((-weight, fid, action, list(by_field.values())))
    rules.sort(key=lambda r: (r[0], r[1]))

    def expected(view: tuple[Any, ...]) -> Any:
        for _, _, action, fields in rules:
            if all(any(pred(view) for pred in preds) for preds in fields):
                return DropReason.BLOCKED if action == BLOCK else None
        return None

    addrs = (["2001:db8::1", "2001:db8::5", "2001:db8:1::3", "fe80::9", "::1", "2001:db8::f"]
             if v6 else ["192.0.2.1", "192.0.2.9", "198.51.100.2", "198.51.100.200", "127.0.0.1",
                         "10.0.0.3", "192.0.2.17"])
    for _ in range(250):
        here, there = rnd.choice(addrs), rnd.choice(addrs)
        src, dst = (here, there) if direction == "outbound" else (there, here)
        kind = rnd.choice(["udp", "udp", "icmp", "other"]) if not v6 else "udp"
        sport, dport = rnd.choice([0, 3, 8, 500, 4999, 5000, 6000, 65535]), \
            rnd.choice([0, 3, 8, 499, 500, 6000, 6001])
        if kind == "udp":
            pkt = (udp6 if v6 else udp4)(src, dst, b"x", sport=sport, dport=dport)
            proto = 17
            lport, rport = (sport, dport) if direction == "outbound" else (dport, sport)
        elif kind == "icmp":
            icmp_type, code = rnd.choice([0, 3, 8]), rnd.choice([0, 1, 3])
            pkt, proto, lport, rport = icmp4(src, dst, icmp_type, code), 1, icmp_type, code
        else:
            pkt, proto, lport, rport = ipv4_packet(src, dst, 47, b"\0\0\x08\0"), 47, None, None
        loop = any(ipaddress.ip_address(a).is_loopback for a in (src, dst))
        view = (int(ipaddress.ip_address(here)), int(ipaddress.ip_address(there)), proto,
                lport, rport, wfp.FWP_CONDITION_FLAG_IS_LOOPBACK if loop else 0)
        got = (bfe.outbound(pkt) if direction == "outbound" else bfe.inbound(pkt)).drop
        assert got == expected(view), (kind, src, dst, sport, dport)


def test_create_reports_the_cached_inbound_filter(bfe, h):
    """F.16: the lowest-id live inbound IPsec filter with the same set of conditions."""
    conds = addr_conditions(A4, B4)
    add_filter(bfe, h, plain_filter("inbound", PERMIT, conds))  # not an IPsec filter
    add_filter(bfe, h, ipsec_filter("inbound", conds[:1]))  # a subset
    first = add_filter(bfe, h, ipsec_filter("inbound", list(reversed(conds))))  # order ignored
    add_filter(bfe, h, ipsec_filter("inbound", conds))
    fout = add_filter(bfe, h, ipsec_filter("outbound", conds))
    st, cached, ctx = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    assert (st, cached) == (OK, first)
    assert bfe.IPsecSaContextDeleteById0(h, ctx) == OK
    assert bfe.FwpmFilterDeleteById0(h, first) == OK
    st, cached, _ = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    assert (st, cached) == (OK, first + 1)


def test_unsubscribe_waits_for_a_running_callback(bfe, h):
    import time

    started, finished = threading.Event(), threading.Event()

    def slow(context: Any, change: Any) -> None:
        started.set()
        time.sleep(0.3)
        finished.set()

    st, ch = bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(), slow, None)
    assert st == OK
    add_filter(bfe, h, good())
    assert started.wait(5)
    assert bfe.FwpmFilterUnsubscribeChanges0(h, ch) == OK
    assert finished.is_set()  # C.3: Unsubscribe blocks until the running callback returns


def test_more_enum_template_and_paging_arguments(bfe, h):
    fid = add_filter(bfe, h, good())
    # INCLUDE_DISABLED is a documented bit (no filter is ever disabled here)
    assert _enum(bfe, h, tpl(flags=wfp.FWP_FILTER_ENUM_FLAG_INCLUDE_DISABLED)) == [fid]
    bad_count = tpl(filterCondition=[cond(REMOTE, EQ, v_ip4(B4))], numFilterConditions=2)
    assert bfe.FwpmFilterCreateEnumHandle0(h, bad_count) == (wfp.FWP_E_INVALID_PARAMETER, None)
    st, eh = bfe.FwpmFilterCreateEnumHandle0(h, None)
    assert st == OK
    assert bfe.FwpmFilterEnum0(h, eh, -1) == (wfp.FWP_E_OUT_OF_BOUNDS, None, None)
    assert bfe.FwpmFilterEnum0(h, eh, 1 << 32) == (wfp.FWP_E_OUT_OF_BOUNDS, None, None)
    assert bfe.FwpmFilterEnum0(h, eh, None) == (wfp.FWP_E_INVALID_PARAMETER, None, None)
    # the failed calls did not move the position
    st, entries, n = bfe.FwpmFilterEnum0(h, eh, 0xFFFFFFFF)
    assert (st, n) == (OK, 1) and entries[0].filterId == fid


def test_traffic_does_not_wait_for_the_transaction_lock(bfe, h):
    import time

    add_filter(bfe, h, plain_filter("outbound", BLOCK, [cond(RPORT, EQ, v_u16(23))]))
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    t0 = time.monotonic()
    assert sent(bfe, dport=23) == DropReason.BLOCKED
    assert sent(bfe, dport=24) is None
    assert time.monotonic() - t0 < 0.5
    assert bfe.FwpmTransactionCommit0(h) == OK


def test_icmpv6_type_and_code_are_ports(bfe, h):
    from .helpers import icmp6

    a6, b6 = "2001:db8::1", "2001:db8:1::2"
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [
        cond(wfp.FWPM_CONDITION_ICMP_TYPE, EQ, v_u16(128)),  # echo request
        cond(wfp.FWPM_CONDITION_ICMP_CODE, EQ, v_u16(0))], v6=True))
    add_filter(bfe, h, plain_filter("inbound", BLOCK, [
        cond(PROTO, EQ, v_u8(58)), cond(LPORT, EQ, v_u16(1)),
        cond(RPORT, wfp.FWP_MATCH_RANGE, v_range(val(wfp.FWP_UINT16, uint16=3),
                                                 val(wfp.FWP_UINT16, uint16=4)))], v6=True))
    assert bfe.outbound(icmp6(a6, b6, 128, 0)).drop == DropReason.BLOCKED
    assert bfe.outbound(icmp6(a6, b6, 129, 0)).drop is None
    assert bfe.outbound(icmp6(a6, b6, 128, 1)).drop is None
    assert bfe.inbound(icmp6(b6, a6, 1, 4)).drop == DropReason.BLOCKED
    assert bfe.inbound(icmp6(b6, a6, 1, 2)).drop is None
    assert bfe.inbound(icmp6(b6, a6, 2, 3)).drop is None
    # ICMP_TYPE/CODE *are* the port conditions (HDR aliases): UDP ports 128/0 match as well
    assert bfe.outbound(udp6(a6, b6, b"x", sport=128, dport=0)).drop == DropReason.BLOCKED


def test_inspection_callouts_continue(bfe, h):
    """F.20 step 3: CALLOUT_INSPECTION runs and the walk continues to the next filter."""
    insp = plain_filter("outbound", wfp.FWP_ACTION_CALLOUT_INSPECTION,
                        weight=val(wfp.FWP_UINT64, uint64=100))
    insp.action.calloutKey = wfp.FWPM_CALLOUT_WFP_TRANSPORT_LAYER_V4_SILENT_DROP
    add_filter(bfe, h, insp)
    assert sent(bfe) is None  # nothing after it: permit
    add_filter(bfe, h, plain_filter("outbound", BLOCK, [cond(RPORT, EQ, v_u16(6000))],
                                    weight=val(wfp.FWP_UINT64, uint64=1)))
    assert sent(bfe) == DropReason.BLOCKED
    assert sent(bfe, dport=6001) is None


def test_a_raising_callback_does_not_stop_the_others(bfe, h, caplog):
    rec = Recorder()

    def broken(context: Any, change: Any) -> None:
        raise RuntimeError("subscriber bug")

    for cb in (broken, rec, broken):
        assert bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(), cb,
                                               None)[0] == OK
    fids = [add_filter(bfe, h, good()) for _ in range(2)]
    bfe.flush_notifications()
    assert [c[3] for c in rec.changes] == fids


def test_add_and_delete_in_one_transaction_notify_at_commit_in_order(bfe, h):
    rec = Recorder()
    assert bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(), rec,
                                           None)[0] == OK
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    fid = add_filter(bfe, h, plain_filter("outbound", BLOCK))
    assert bfe.FwpmFilterDeleteById0(h, fid) == OK
    bfe.flush_notifications()
    assert rec.changes == []
    assert bfe.FwpmTransactionCommit0(h) == OK
    bfe.flush_notifications()
    assert [(c[1], c[3]) for c in rec.changes] == [(wfp.FWPM_CHANGE_ADD, fid),
                                                   (wfp.FWPM_CHANGE_DELETE, fid)]
    assert sent(bfe) is None
    assert all_filters(bfe, h) == []


def test_filter_in_use_until_the_expire_linger_ends():
    """F.16: a context in the expire linger (F.8: 60 s) still references its filters; once the
    linger is over the context is gone and the filters can be deleted."""
    now = [500.0]
    bfe = wfp.Engine(clock=lambda: now[0])
    try:
        h = open_engine(bfe)
        fin, fout = ipsec_pair(bfe, h)
        ctx = create_context(bfe, h, fout)
        assert bfe.IPsecSaContextExpire0(h, ctx) == OK
        now[0] += 59
        assert bfe.FwpmFilterDeleteById0(h, fout) == wfp.FWP_E_IN_USE
        now[0] += 2
        assert bfe.FwpmFilterDeleteById0(h, fout) == OK
        assert bfe.FwpmFilterDeleteById0(h, fin) == OK
        assert bfe.IPsecSaContextGetById1(h, ctx) == (wfp.FWP_E_NOT_FOUND, None)
    finally:
        bfe.close()


def test_verdicts_follow_every_change(bfe, h):
    """Filters come and go (implicitly, in committed and in aborted transactions) while the
    same few flows are sent again and again: after every change each flow's verdict is the
    reference evaluator's for the filters in force, so no remembered decision outlives a
    change."""
    import ipaddress
    import random

    rnd = random.Random(4711)
    live: dict[int, tuple[int, int, list[list[Any]]]] = {}
    flows = [(src, dst, sp, dp) for src in ("192.0.2.1", "192.0.2.9")
             for dst in ("198.51.100.2", "198.51.100.200", "10.0.0.3")
             for sp, dp in ((5000, 6000), (500, 500), (8, 3))]

    def new_rule() -> tuple[wfp.FWPM_FILTER0, tuple[int, int, list[list[Any]]]]:
        parts = [_random_condition(rnd, False) for _ in range(rnd.choice([0, 1, 2]))]
        action, weight = rnd.choice([BLOCK, PERMIT]), rnd.randrange(0, 8)
        by_field: dict[Any, list[Any]] = {}
        for c, pred in parts:
            by_field.setdefault(c.fieldKey, []).append(pred)
        flt = plain_filter("outbound", action, [c for c, _ in parts],
                           weight=val(wfp.FWP_UINT64, uint64=weight))
        return flt, (weight, action, list(by_field.values()))

    def check() -> None:
        order = sorted(live.items(), key=lambda kv: (-kv[1][0], kv[0]))
        for src, dst, sp, dp in flows:
            view = (int(ipaddress.IPv4Address(src)), int(ipaddress.IPv4Address(dst)), 17, sp,
                    dp, 0)
            want = None
            for _, (_, action, fields) in order:
                if all(any(pred(view) for pred in preds) for preds in fields):
                    want = DropReason.BLOCKED if action == BLOCK else None
                    break
            for _ in range(2):  # the second packet of the flow may come from a cache
                assert sent(bfe, src, dst, sport=sp, dport=dp) == want, (src, dst, sp, dp)

    for step in range(60):
        op = rnd.choice(["add", "add", "delete", "txn"])
        if op == "add":
            flt, rule = new_rule()
            live[add_filter(bfe, h, flt)] = rule
        elif op == "delete" and live:
            fid = rnd.choice(sorted(live))
            assert bfe.FwpmFilterDeleteById0(h, fid) == OK
            del live[fid]
        elif op == "txn":
            assert bfe.FwpmTransactionBegin0(h, 0) == OK
            pending = dict(live)
            flt, rule = new_rule()
            pending[add_filter(bfe, h, flt)] = rule
            if live:
                fid = rnd.choice(sorted(live))
                assert bfe.FwpmFilterDeleteById0(h, fid) == OK
                del pending[fid]
            check()  # traffic still sees the state before the transaction
            if rnd.random() < 0.5:
                assert bfe.FwpmTransactionCommit0(h) == OK
                live = pending
            else:
                assert bfe.FwpmTransactionAbort0(h) == OK
        check()
