"""ipsecsa.wfp.types: the structure dataclasses against the Windows layouts, and their rules.

Field names and order are checked against src/ipsecsa/data/windows-layouts-x64.json (``structs``)
and windows-wfp-filters.json (``layouts``), read here directly with the contract's flattening of
anonymous unions, so the generated module cannot drift from the compiled Windows headers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.wfp import types as T

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "ipsecsa" / "data"

KEY = bytes(range(0xA0, 0xB4))  # 20 recognisable bytes: must never show up in any repr


def _json_structs() -> dict[str, dict[str, Any]]:
    layouts = json.loads((DATA / "windows-layouts-x64.json").read_text(encoding="utf-8"))
    filters = json.loads((DATA / "windows-wfp-filters.json").read_text(encoding="utf-8"))
    out = {n: s for n, s in layouts["structs"].items()
           if n.startswith(("FWP", "IPSEC", "SEC_WINNT")) and n not in ("IPSEC_CRYPTO_MODULE_ID",)}
    out.update({n: s for n, s in filters["layouts"].items() if s.get("kind") == "structs"})
    return out


JSON_STRUCTS = _json_structs()


def _flat(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in fields:
        out.extend(f["members"] if f["kind"] == "union" else [f])
    return out


@pytest.mark.parametrize("name", sorted(JSON_STRUCTS))
def test_fields_match_json(name: str) -> None:
    cls = getattr(wfp, name)
    assert dataclasses.is_dataclass(cls)
    expected = [f["name"] for f in _flat(JSON_STRUCTS[name]["fields"])]
    assert [f.name for f in dataclasses.fields(cls)] == expected


def test_the_contract_structures_exist() -> None:
    named = ["FWPM_SESSION0", "FWPM_FILTER0", "FWPM_FILTER_CONDITION0", "FWP_CONDITION_VALUE0",
             "FWP_VALUE0", "FWPM_ACTION0", "FWPM_DISPLAY_DATA0", "FWP_V4_ADDR_AND_MASK",
             "FWP_RANGE0", "IPSEC_TRAFFIC1", "IPSEC_GETSPI1", "IPSEC_SA_BUNDLE1", "IPSEC_SA0",
             "IPSEC_SA_AUTH_INFORMATION0", "IPSEC_SA_CIPHER_INFORMATION0",
             "IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0", "IPSEC_SA_LIFETIME0", "FWP_BYTE_BLOB",
             "IPSEC_V4_UDP_ENCAPSULATION0", "IPSEC_SA_CONTEXT1", "IPSEC_SA_CONTEXT_SUBSCRIPTION0",
             "IPSEC_SA_CONTEXT_CHANGE0", "SEC_WINNT_AUTH_IDENTITY_W",
             "FWPM_FILTER_ENUM_TEMPLATE0", "FWPM_FILTER_SUBSCRIPTION0", "FWPM_FILTER_CHANGE0"]
    for name in named:
        assert name in T.STRUCT_NAMES and name in wfp.__all__, name
    assert set(T.STRUCT_NAMES) == set(JSON_STRUCTS)
    assert not any(n.startswith(("NDIS", "OFFLOAD")) for n in T.STRUCT_NAMES)


def test_flattened_unions() -> None:
    names = [f.name for f in dataclasses.fields(wfp.FWP_VALUE0)]
    assert names[:5] == ["type", "uint8", "uint16", "uint32", "uint64"]
    assert {"byteArray16", "byteBlob", "sid", "sd", "tokenInformation",
            "tokenAccessInformation", "unicodeString", "byteArray6", "float32",
            "double64"} <= set(names)
    assert [f.name for f in dataclasses.fields(wfp.FWPM_ACTION0)] == [
        "type", "filterType", "calloutKey"]
    traffic = {f.name for f in dataclasses.fields(wfp.IPSEC_TRAFFIC1)}
    assert {"localV4Address", "localV6Address", "remoteV4Address", "remoteV6Address",
            "ipsecFilterId", "tunnelPolicyId"} <= traffic
    cond = {f.name for f in dataclasses.fields(wfp.FWP_CONDITION_VALUE0)}
    assert {"v4AddrMask", "v6AddrMask", "rangeValue"} <= cond


@pytest.mark.parametrize("name", sorted(JSON_STRUCTS))
def test_every_field_has_a_zero_default(name: str) -> None:
    cls = getattr(wfp, name)
    obj = cls()
    by_name = {f["name"]: f for f in _flat(JSON_STRUCTS[name]["fields"])}
    counted = {lst for _, lst in T.count_pairs(cls)}
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        spec = by_name[f.name]
        if f.name in counted:
            assert value in ([], b"", None), (name, f.name, value)
        elif spec["kind"] in ("uint", "int", "enum"):
            assert value == 0 and type(value) is int
        elif spec["kind"] == "float":
            assert value == 0.0
        elif spec["kind"] == "array":
            assert value == bytes(spec["count"])
        elif spec["kind"] == "pointer":
            assert value is None, (name, f.name)
        elif spec["type"] == "GUID":
            assert value == uuid.UUID(int=0)
        else:  # an embedded structure: a zeroed instance of its class
            assert type(value).__name__ == spec["type"]
            assert value == type(value)()
        # Every field is a keyword argument.
        cls(**{f.name: value})
    # Mutable defaults are never shared between instances.
    a, b = cls(), cls()
    for f in dataclasses.fields(cls):
        va = getattr(a, f.name)
        if isinstance(va, (list, T.WfpStruct)):
            assert va is not getattr(b, f.name), (name, f.name)


def test_counts_are_beside_their_lists() -> None:
    for name in T.STRUCT_NAMES:
        cls = getattr(wfp, name)
        flat = {f["name"]: f for f in _flat(JSON_STRUCTS[name]["fields"])}
        for count_field, list_field in T.count_pairs(cls):
            assert flat[count_field]["kind"] == "uint", (name, count_field)
            assert flat[list_field]["kind"] == "pointer", (name, list_field)


def test_contract_examples() -> None:
    v = wfp.FWP_VALUE0(type=wfp.FWP_UINT64, uint64=5)
    assert v.uint64 == 5 and v.type == wfp.FWP_UINT64
    mask = wfp.FWP_V4_ADDR_AND_MASK(addr=0xC0A80000, mask=0xFFFF0000)
    c = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_V4_ADDR_MASK, v4AddrMask=mask)
    assert c.v4AddrMask is mask and mask.mask == 0xFFFF0000
    assert wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT8, uint8=17).uint8 == 17
    assert wfp.FWP_VALUE0(type=wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=bytes(16)).byteArray16
    action = wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_CALLOUT_TERMINATING,
                              calloutKey=wfp.FWPM_CALLOUT_IPSEC_OUTBOUND_TRANSPORT_V4)
    assert action.filterType == uuid.UUID(int=0)
    flt = wfp.FWPM_FILTER0(
        displayData=wfp.FWPM_DISPLAY_DATA0(name="out", description="manual keying"),
        layerKey=wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4, action=action,
        filterCondition=[wfp.FWPM_FILTER_CONDITION0(
            fieldKey=wfp.FWPM_CONDITION_IP_REMOTE_ADDRESS, matchType=wfp.FWP_MATCH_EQUAL,
            conditionValue=wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=0x0A000002))])
    assert T.effective_count(flt, "filterCondition") == 1
    # Built step by step, like a C struct after memset(0).
    step = wfp.FWPM_FILTER0()
    step.displayData.name = "out"
    step.layerKey = wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4
    step.action.type = wfp.FWP_ACTION_CALLOUT_TERMINATING
    step.action.calloutKey = wfp.FWPM_CALLOUT_IPSEC_OUTBOUND_TRANSPORT_V4
    step.displayData.description = "manual keying"
    step.filterCondition.append(copy.deepcopy(flt.filterCondition[0]))
    assert step == flt
    traffic = wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_V6, localV6Address=bytes(15) + b"\1",
                                 trafficType=wfp.IPSEC_TRAFFIC_TYPE_TUNNEL, tunnelPolicyId=7)
    assert traffic.localV4Address == 0 and traffic.ipsecFilterId == 0


def _context_with_keys() -> wfp.IPSEC_SA_CONTEXT1:
    sa = wfp.IPSEC_SA0(
        spi=0xC0000001, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
        espAuthAndCipherInformation=wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
            saCipherInformation=wfp.IPSEC_SA_CIPHER_INFORMATION0(
                cipherTransform=wfp.IPSEC_CIPHER_TRANSFORM0(
                    cipherTransformId=wfp.IPSEC_CIPHER_TRANSFORM_ID_AES_128),
                cipherKey=wfp.FWP_BYTE_BLOB(size=16, data=KEY[:16])),
            saAuthInformation=wfp.IPSEC_SA_AUTH_INFORMATION0(
                authTransform=wfp.IPSEC_AUTH_TRANSFORM0(
                    authTransformId=wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96),
                authKey=wfp.FWP_BYTE_BLOB(data=KEY))))
    bundle = wfp.IPSEC_SA_BUNDLE1(saList=[sa], ipVersion=wfp.FWP_IP_VERSION_V4)
    details = wfp.IPSEC_SA_DETAILS1(saDirection=wfp.FWP_DIRECTION_OUTBOUND, saBundle=bundle)
    return wfp.IPSEC_SA_CONTEXT1(saContextId=42, outboundSa=details,
                                 inboundSa=copy.deepcopy(details))


def _assert_no_key(text: str) -> None:
    assert KEY.hex() not in text.lower()
    assert KEY[:16].hex() not in text.lower()
    for chunk in (repr(KEY[:4])[2:-1], repr(KEY[4:8])[2:-1], "\\xa0\\xa1", "\\xb0\\xb1"):
        assert chunk not in text, chunk


def test_byte_blob_repr_shows_size_not_data() -> None:
    blob = wfp.FWP_BYTE_BLOB(size=20, data=KEY)
    for text in (repr(blob), str(blob), f"{blob}", f"{blob!r}", repr([blob])):
        _assert_no_key(text)
        assert "size=20" in text and "<20 bytes>" in text
    assert repr(wfp.FWP_BYTE_BLOB()) == "FWP_BYTE_BLOB(size=0, data=<0 bytes>)"


def test_context_repr_and_exception_messages_hide_keys() -> None:
    ctx = _context_with_keys()
    text = repr(ctx)
    assert "saContextId=42" in text and "spi=3221225473" in text and "<20 bytes>" in text
    _assert_no_key(text)
    _assert_no_key(str(ctx))
    _assert_no_key(repr(T.clone(ctx)))
    try:
        raise ValueError(f"rejected {ctx}")
    except ValueError as exc:
        _assert_no_key(str(exc))
        _assert_no_key("".join(traceback.format_exception(exc)))
    err = T.CountMismatchError("IPSEC_SA_BUNDLE1", "numSAs", "saList", 2, 1)
    _assert_no_key(str(err))


def test_every_struct_uses_the_redacting_repr() -> None:
    # A dataclass-generated __repr__ on any struct would print nested blobs' raw data.
    for name in T.STRUCT_NAMES:
        assert getattr(wfp, name).__repr__ is T.WfpStruct.__repr__, name


def test_password_never_in_repr() -> None:
    ident = wfp.SEC_WINNT_AUTH_IDENTITY_W(User="alice", Domain="LAB", Password="hunter2",
                                          Flags=wfp.SEC_WINNT_AUTH_IDENTITY_UNICODE)
    for text in (repr(ident), str(ident), repr([ident])):
        assert "hunter2" not in text
        assert "User='alice'" in text and "Domain='LAB'" in text
        assert "Password=<redacted>" in text
    assert "Password=None" in repr(wfp.SEC_WINNT_AUTH_IDENTITY_W(User="bob"))


def test_equality_mutability_and_deepcopy() -> None:
    ctx = _context_with_keys()
    twin = T.clone(ctx)
    assert twin == ctx and twin is not ctx
    assert twin.outboundSa is not ctx.outboundSa
    assert twin.outboundSa is not None and ctx.outboundSa is not None
    twin.outboundSa.saBundle.saList[0].spi = 0xC0000002
    assert ctx.outboundSa.saBundle.saList[0].spi == 0xC0000001
    assert twin != ctx
    assert copy.deepcopy(ctx) == ctx
    assert T.clone([ctx, ctx]) == [ctx, ctx]


def test_transform_ids_are_frozen_values() -> None:
    tid = wfp.IPSEC_AUTH_TRANSFORM_ID0(authType=wfp.IPSEC_AUTH_SHA_1, authConfig=1)
    assert tid == wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96
    assert {tid: "sha1"}[wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96] == "sha1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96.authConfig = 2  # type: ignore[misc]
    assert wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96.authConfig == 1


def test_effective_count_rules() -> None:
    bundle = wfp.IPSEC_SA_BUNDLE1(saList=[wfp.IPSEC_SA0(), wfp.IPSEC_SA0()])
    assert T.effective_count(bundle, "saList") == 2  # 0 -> from the list
    bundle.numSAs = 2
    assert T.effective_count(bundle, "saList") == 2
    bundle.numSAs = 1
    with pytest.raises(T.CountMismatchError) as info:
        T.effective_count(bundle, "saList")
    err = info.value
    assert (err.struct, err.count_field, err.list_field, err.count, err.actual) == (
        "IPSEC_SA_BUNDLE1", "numSAs", "saList", 1, 2)
    assert "IPSEC_SA_BUNDLE1.numSAs = 1" in str(err)
    assert isinstance(err, ValueError)
    with pytest.raises(KeyError):
        T.effective_count(bundle, "flags")
    assert T.effective_count(wfp.FWP_BYTE_BLOB(data=KEY), "data") == 20
    with pytest.raises(T.CountMismatchError):
        T.effective_count(wfp.FWP_BYTE_BLOB(size=16, data=KEY), "data")
    # A non-zero count with a NULL list disagrees (0 elements).
    with pytest.raises(T.CountMismatchError):
        null_list = wfp.FWPM_FILTER0(numFilterConditions=1)
        null_list.filterCondition = None  # type: ignore[assignment]
        T.effective_count(null_list, "filterCondition")
    # SEC_WINNT_AUTH_IDENTITY_W lengths count UTF-16 code units, as C does.
    ident = wfp.SEC_WINNT_AUTH_IDENTITY_W(User="a\U0001F600", UserLength=3)
    assert T.effective_count(ident, "User") == 3


def test_check_counts_walks_nested_structures() -> None:
    ctx = _context_with_keys()
    T.check_counts(ctx)  # all counts 0 or right
    assert ctx.inboundSa is not None
    sa = ctx.inboundSa.saBundle.saList[0]
    assert sa.espAuthAndCipherInformation is not None
    sa.espAuthAndCipherInformation.saAuthInformation.authKey.size = 19
    with pytest.raises(T.CountMismatchError) as info:
        T.check_counts(ctx)
    assert (info.value.struct, info.value.count_field, info.value.actual) == (
        "FWP_BYTE_BLOB", "size", 20)
    _assert_no_key(str(info.value))
    flt = wfp.FWPM_FILTER0(numFilterConditions=2, filterCondition=[wfp.FWPM_FILTER_CONDITION0()])
    with pytest.raises(T.CountMismatchError):
        T.check_counts(flt)


def test_clone_shares_only_immutable_values() -> None:
    ctx = _context_with_keys()
    twin = copy.deepcopy(ctx)  # goes through WfpStruct.__deepcopy__, like clone()
    assert twin == ctx
    assert ctx.outboundSa is not None and twin.outboundSa is not None
    a, b = ctx.outboundSa.saBundle, twin.outboundSa.saBundle
    assert a.saList is not b.saList and a.saList[0] is not b.saList[0]
    assert a.lifetime is not b.lifetime
    assert a.saLookupContext is b.saLookupContext  # a UUID: immutable, shared
    info_a = a.saList[0].espAuthAndCipherInformation
    info_b = b.saList[0].espAuthAndCipherInformation
    assert info_a is not None and info_b is not None
    # Frozen transform ids are values: shared, never copied.
    assert (info_a.saAuthInformation.authTransform.authTransformId
            is info_b.saAuthInformation.authTransform.authTransformId)
    assert info_a.saAuthInformation.authKey is not info_b.saAuthInformation.authKey
    # A mutable value of another type (a caller's bytearray key) is copied, not shared.
    blob = wfp.FWP_BYTE_BLOB(data=bytearray(KEY))  # type: ignore[arg-type]
    copied = T.clone(blob)
    blob.data[0] ^= 0xFF  # type: ignore[index]
    assert copied.data == KEY
    assert T.clone(None) is None and T.clone(7) == 7
    assert T.clone([ctx]) == [ctx] and T.clone([ctx])[0] is not ctx


def test_package_exports_every_structure_once() -> None:
    for name in T.__all__:
        assert getattr(wfp, name) is getattr(T, name), name
    assert len(wfp.__all__) == len(set(wfp.__all__))
    assert wfp.GUID_NULL == wfp.IID_NULL == uuid.UUID(int=0)
    assert wfp.clone is T.clone and wfp.types is T


def test_callback_types() -> None:
    seen: list[tuple[object, wfp.IPSEC_SA_CONTEXT_CHANGE0]] = []

    def on_change(context: object, change: wfp.IPSEC_SA_CONTEXT_CHANGE0) -> None:
        seen.append((context, change))

    callback: wfp.IPSEC_SA_CONTEXT_CALLBACK0 = on_change
    callback("ctx", wfp.IPSEC_SA_CONTEXT_CHANGE0(changeType=wfp.IPSEC_SA_CONTEXT_EVENT_ADD))
    assert seen[0][1].changeType == wfp.IPSEC_SA_CONTEXT_EVENT_ADD
    assert "FWPM_FILTER_CHANGE_CALLBACK0" in wfp.__all__
