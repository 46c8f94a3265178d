"""ipsecsa.wfp.unions: discriminator -> member tables against the layouts JSON.

The member names of each anonymous union come from src/ipsecsa/data/windows-layouts-x64.json
(``unions``); the type -> member pairing is the MIDL switch of fwptypes.idl and reference C.4/C.7.2.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from ipsecsa import wfp
from ipsecsa.wfp import unions as U

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = json.loads((ROOT / "src/ipsecsa/data/windows-layouts-x64.json").read_text("utf-8"))


def _union_members(key: str) -> list[str]:
    return [m["name"] for m in LAYOUTS["unions"][key]["members"]]


def test_tables_cover_every_union_member_once() -> None:
    assert list(U.VALUE_MEMBERS.values()) == _union_members("FWP_VALUE0::anonymous_union@8")
    assert list(U.CONDITION_VALUE_MEMBERS.values()) == _union_members(
        "FWP_CONDITION_VALUE0::anonymous_union@8")
    assert list(U.SA_MEMBERS.values()) == _union_members("IPSEC_SA0::anonymous_union@8")
    assert list(U.SA_TRANSFORM_MEMBERS.values()) == _union_members(
        "IPSEC_SA_TRANSFORM0::anonymous_union@8")
    # Every data type below the single-type max except EMPTY has a member, and nothing else.
    singles = {v for v in wfp.FWP_DATA_TYPE if 0 < v < wfp.FWP_SINGLE_DATA_TYPE_MAX}
    assert set(U.VALUE_MEMBERS) == singles
    assert set(U.SA_MEMBERS) == {v for v in wfp.IPSEC_TRANSFORM_TYPE
                                 if v < wfp.IPSEC_TRANSFORM_TYPE_MAX}


def test_value_members() -> None:
    v = wfp.FWP_VALUE0(type=wfp.FWP_UINT64, uint64=5, uint8=9)
    assert U.selected_member(v) == "uint64" and U.selected(v) == 5
    assert U.selected(wfp.FWP_VALUE0()) is None  # FWP_EMPTY
    cond = wfp.FWP_CONDITION_VALUE0(
        type=wfp.FWP_V4_ADDR_MASK, v4AddrMask=wfp.FWP_V4_ADDR_AND_MASK(addr=1, mask=2))
    assert U.selected_member(cond) == "v4AddrMask"
    # Condition-only types are not FWP_VALUE0 types; unknown types select nothing.
    with pytest.raises(U.UnionSelectorError) as info:
        U.selected_member(wfp.FWP_VALUE0(type=wfp.FWP_RANGE_TYPE))
    assert (info.value.struct, info.value.field, info.value.value) == (
        "FWP_VALUE0", "type", wfp.FWP_RANGE_TYPE)
    with pytest.raises(U.UnionSelectorError):
        U.selected_member(wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_DATA_TYPE_MAX))
    with pytest.raises(TypeError):
        U.selected_member(wfp.IPSEC_SA_LIFETIME0())


def test_same_value_ignores_stale_members() -> None:
    a = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT16, uint16=500, uint32=7)
    b = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT16, uint16=500)
    assert a != b and U.same_value(a, b)
    assert not U.same_value(a, wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT16, uint16=501))
    assert not U.same_value(a, wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=500))

    def rng(low: int, high: int, stale: int) -> wfp.FWP_CONDITION_VALUE0:
        return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_RANGE_TYPE, rangeValue=wfp.FWP_RANGE0(
            valueLow=wfp.FWP_VALUE0(type=wfp.FWP_UINT16, uint16=low, uint8=stale),
            valueHigh=wfp.FWP_VALUE0(type=wfp.FWP_UINT16, uint16=high)))

    assert U.same_value(rng(1, 9, 0), rng(1, 9, 3))
    assert not U.same_value(rng(1, 9, 0), rng(1, 8, 0))


def test_sa_transform_action_and_filter_members() -> None:
    sa = wfp.IPSEC_SA0(saTransformType=wfp.IPSEC_TRANSFORM_AH,
                       ahInformation=wfp.IPSEC_SA_AUTH_INFORMATION0())
    assert U.selected_member(sa) == "ahInformation" and U.selected(sa) is sa.ahInformation
    with pytest.raises(U.UnionSelectorError):
        U.selected_member(wfp.IPSEC_SA0())  # 0 is no IPSEC_TRANSFORM_TYPE
    t = wfp.IPSEC_SA_TRANSFORM0(ipsecTransformType=wfp.IPSEC_TRANSFORM_ESP_CIPHER)
    assert U.selected_member(t) == "espCipherTransform"
    key = uuid.uuid4()
    act = wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_CALLOUT_INSPECTION, calloutKey=key)
    assert U.selected(act) == key
    assert U.selected_member(wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_BLOCK)) == "filterType"
    flt = wfp.FWPM_FILTER0(rawContext=3)
    assert U.selected(flt) == 3
    flt.flags = wfp.FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT
    assert U.selected_member(flt) == "providerContextKey"


def test_traffic_members() -> None:
    t = wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_V6,
                           trafficType=wfp.IPSEC_TRAFFIC_TYPE_TUNNEL)
    assert U.traffic_members(t) == ("localV6Address", "remoteV6Address", "tunnelPolicyId")
    assert U.traffic_members(wfp.IPSEC_TRAFFIC0()) == (
        "localV4Address", "remoteV4Address", "ipsecFilterId")
    with pytest.raises(U.UnionSelectorError):
        U.traffic_members(wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_NONE))
    with pytest.raises(U.UnionSelectorError):
        U.traffic_members(wfp.IPSEC_TRAFFIC1(trafficType=wfp.IPSEC_TRAFFIC_TYPE_MAX))
