"""The compiled NDIS layouts and constants against windows-layouts-x64.json (package data, src/ipsecsa/data/).

Nothing here restates a number: sizes, offsets and bit positions come from the layouts' own field
tables (ipsecsa.ndis.structs.LAYOUTS) and are compared with the JSON, read at test time.
"""

from __future__ import annotations

import enum
from typing import Any

import pytest

from ipsecsa.data import windows_layouts
from ipsecsa.ndis import codec, constants, structs
from ipsecsa.ndis.codec import FieldInfo, StructLayout, UnionLayout

#: The structures this package must encode (the ones the brief names), plus v2 readiness.
REQUIRED = [
    "OFFLOAD_ALGO_INFO",
    "OFFLOAD_SECURITY_ASSOCIATION",
    "OFFLOAD_IPSEC_ADD_SA",
    "OFFLOAD_IPSEC_ADD_UDPESP_SA",
    "OFFLOAD_IPSEC_DELETE_SA",
    "OFFLOAD_IPSEC_DELETE_UDPESP_SA",
    "OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY",
    "NDIS_IPSEC_OFFLOAD_V1",
    "NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO",
    "NDIS_IPSEC_OFFLOAD_V2",
    "NDIS_OBJECT_HEADER",
]

#: JSON constant families constants.py must cover completely (prefix match), and single names.
CONSTANT_FAMILIES = [
    "OID_",
    "CRYPTO_",
    "NDIS_ENCAPSULATION_",
    "NDIS_OFFLOAD_PARAMETERS_IPSECV1_",
    "NDIS_OFFLOAD_PARAMETERS_IPSECV2_",
    "IPSEC_OFFLOAD_V2_AUTHENTICATION_",
    "IPSEC_OFFLOAD_V2_ENCRYPTION_",
    "OFFLOAD_",
]
CONSTANT_NAMES = [
    "NDIS_OFFLOAD_SUPPORTED",
    "NDIS_OFFLOAD_NOT_SUPPORTED",
    "NDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG",
] + [f"NDIS_STATUS_{s}" for s in [
    "SUCCESS", "PENDING", "INVALID_OID", "NOT_SUPPORTED", "BUFFER_TOO_SHORT", "INVALID_LENGTH",
    "INVALID_DATA", "NOT_ACCEPTED", "REQUEST_ABORTED", "RESOURCES", "FAILURE", "INVALID_PARAMETER",
]]
#: JSON enums whose every value constants.py must define.
ENUMS = ["OFFLOAD_OPERATION_E", "OFFLOAD_CONF_ALGO", "OFFLOAD_INTEGRITY_ALGO", "UDP_ENCAP_TYPE"]
UDPESP_FLAG_SUFFIXES = ("_UDPESP_ENCAPTYPE_IKE", "_UDPESP_ENCAPTYPE_OTHER",
                        "_TUN_ENCAPTYPE_IKE", "_TUN_ENCAPTYPE_OTHER")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return windows_layouts()  # package data: src/ipsecsa/data/README.md


# --- structures ----------------------------------------------------------------------------------


def _compare_fields(where: str, fields: list[FieldInfo], jfields: list[dict[str, Any]]) -> int:
    """Assert our members equal the JSON's, recursively; return how many were compared."""
    assert [f.name for f in fields] == [j["name"] for j in jfields], where
    compared = 0
    for f, j in zip(fields, jfields, strict=True):
        at = f"{where}.{f.name}"
        assert (f.offset, f.size) == (j["offset"], j["size"]), at
        assert f.c_type == j["type"], at
        assert f.bit_offset == j.get("bit_offset"), at
        assert f.bit_size == j.get("bit_size"), at
        if j["kind"] == "array":
            assert (f.count, f.element_size) == (j["count"], j["element_size"]), at
            if f.layout is not None:
                assert f.layout.name == j["element_type"], at
        if j["kind"] in ("struct", "union"):
            assert f.layout is not None, at
            if "members" in j:  # anonymous: members inline, offsets relative to the field
                compared += _compare_fields(at, f.layout.fields, j["members"])
            else:  # a named type, checked as its own JSON entry
                assert f.layout.name == j["type"], at
        compared += 1
    return compared


@pytest.mark.parametrize("name", REQUIRED)
def test_required_layouts_exist(name: str) -> None:
    assert name in structs.LAYOUTS


@pytest.mark.parametrize("name", sorted(structs.LAYOUTS))
def test_layout_matches_json(spec: dict[str, Any], name: str) -> None:
    layout = structs.LAYOUTS[name]
    jstruct = spec["structs"][name]
    assert layout.size == jstruct["size"]
    assert layout.align == jstruct["align"]
    assert _compare_fields(name, layout.fields, jstruct["fields"]) >= len(jstruct["fields"])
    if layout.flexible is None:
        assert layout.fixed_size == layout.size
        assert layout._struct.size == layout.size


def _walk(layout: StructLayout | UnionLayout):
    for f in layout.fields:
        yield f
        if f.layout is not None:
            yield from _walk(f.layout)


def test_unions_match_json_union_table(spec: dict[str, Any]) -> None:
    seen = 0
    for name, layout in structs.LAYOUTS.items():
        for f in layout.fields:
            if f.kind != "union":
                continue
            assert isinstance(f.layout, UnionLayout)
            junion = spec["unions"][f"{name}::anonymous_union@{f.offset}"]
            assert (f.layout.size, f.layout.align) == (junion["size"], junion["align"])
            _compare_fields(f"{name}.union", f.layout.fields, junion["members"])
            seen += 1
    assert seen == 1  # NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO


@pytest.mark.parametrize("name,keymat_offset_field", [
    ("OFFLOAD_IPSEC_ADD_SA", "ADD_SA_KEYMAT_OFFSET"),
    ("OFFLOAD_IPSEC_ADD_UDPESP_SA", "ADD_UDPESP_SA_KEYMAT_OFFSET"),
])
def test_keymat_is_flexible_and_fixed_part_ends_at_it(
        spec: dict[str, Any], name: str, keymat_offset_field: str) -> None:
    layout = structs.LAYOUTS[name]
    jkeymat = spec["structs"][name]["fields"][-1]
    assert jkeymat["name"] == "KeyMat"
    assert layout.flexible is not None and layout.flexible.name == "KeyMat"
    assert layout.fixed_size == jkeymat["offset"] == getattr(structs, keymat_offset_field)
    assert layout._struct.size == jkeymat["offset"]
    assert layout.size > layout.fixed_size  # sizeof counts KeyMat[1] and the tail padding


@pytest.mark.parametrize("name,member,constant", [
    ("OFFLOAD_IPSEC_ADD_SA", "OffloadHandle", "ADD_SA_OFFLOAD_HANDLE_OFFSET"),
    ("OFFLOAD_IPSEC_ADD_UDPESP_SA", "OffloadHandle", "ADD_UDPESP_SA_OFFLOAD_HANDLE_OFFSET"),
    ("OFFLOAD_IPSEC_ADD_UDPESP_SA", "EncapTypeEntryOffldHandle",
     "ADD_UDPESP_SA_ENTRY_HANDLE_OFFSET"),
])
def test_handle_offsets_derived_from_the_layouts(
        spec: dict[str, Any], name: str, member: str, constant: str) -> None:
    """The out-parameters the miniport writes and the transport reads (one definition)."""
    joffset = next(f["offset"] for f in spec["structs"][name]["fields"] if f["name"] == member)
    assert getattr(structs, constant) == joffset == structs.offset_of(structs.LAYOUTS[name],
                                                                      member)
    with pytest.raises(KeyError):
        structs.offset_of(structs.LAYOUTS[name], "NoSuchMember")


def test_scalar_types_match_json_typedefs(spec: dict[str, Any]) -> None:
    typedefs = spec["typedefs"]
    for scalar in (codec.IPADDR, codec.IPMASK, codec.SPI_TYPE, codec.NDIS_HANDLE):
        jt = typedefs[scalar.c_type]
        assert (scalar.size, scalar.align) == (jt["size"], jt["align"]), scalar.c_type


def test_enum_typed_members_have_the_json_enum_size(spec: dict[str, Any]) -> None:
    checked = 0
    for layout in structs.LAYOUTS.values():
        for f in _walk(layout):
            if f.c_type in spec["enums"]:
                assert f.size == spec["enums"][f.c_type]["underlying_size"]
                checked += 1
    assert checked >= 3  # Operation (in SecAssoc) and UdpEncapType


def test_bitfields_fit_their_storage_units() -> None:
    for layout in structs.LAYOUTS.values():
        for f in _walk(layout):
            if f.kind == "bits":
                assert f.bit_offset is not None and f.bit_size is not None
                assert f.bit_offset + f.bit_size <= 8 * f.size


# --- constants -----------------------------------------------------------------------------------


def _json_value(spec: dict[str, Any], name: str) -> int | None:
    if name in spec["constants"]:
        return int(spec["constants"][name]["decimal"])
    for jenum in spec["enums"].values():
        if name in jenum["values"]:
            return int(jenum["values"][name])
    return None


def _required_names(spec: dict[str, Any]) -> set[str]:
    names = {n for n in spec["constants"] if n.startswith(tuple(CONSTANT_FAMILIES))}
    names |= {n for n in spec["constants"]
              if n.startswith("IPSEC_") and n.endswith(UDPESP_FLAG_SUFFIXES)}
    names |= set(CONSTANT_NAMES)
    for e in ENUMS:
        names |= set(spec["enums"][e]["values"])
    return names


def test_every_required_json_constant_is_defined_with_its_value(spec: dict[str, Any]) -> None:
    required = _required_names(spec)
    assert len(required) > 60
    missing = sorted(required - set(constants.BY_WINDOWS_NAME))
    assert not missing, missing
    for name in sorted(required):
        assert constants.BY_WINDOWS_NAME[name] == _json_value(spec, name), name


def test_every_defined_constant_equals_json(spec: dict[str, Any]) -> None:
    for name, value in constants.BY_WINDOWS_NAME.items():
        expected = _json_value(spec, name)
        if expected is None:
            assert name in constants.NOT_IN_LAYOUTS_JSON, f"{name} is not in the JSON"
        else:
            assert value == expected, name


def test_not_in_json_list_is_honest(spec: dict[str, Any]) -> None:
    for name in constants.NOT_IN_LAYOUTS_JSON:
        assert _json_value(spec, name) is None


@pytest.mark.parametrize("family", [
    constants.Oid, constants.NdisStatus, constants.OffloadOperation, constants.OffloadConf,
    constants.OffloadIntegrity, constants.OffloadSaFlags, constants.UdpEncapType,
    constants.UdpEspCapability, constants.CryptoStatus, constants.NdisEncapsulation,
    constants.OffloadSupport, constants.OffloadParametersIpsecV1,
    constants.OffloadParametersIpsecV2, constants.IpsecOffloadV2Authentication,
    constants.IpsecOffloadV2Encryption,
])
def test_each_member_has_a_windows_name(family: type[enum.Enum]) -> None:
    for member in family.__members__.values():
        name = constants.windows_name(member)
        assert constants.BY_WINDOWS_NAME[name] == member.value, name


def test_brief_spot_values_agree_with_json(spec: dict[str, Any]) -> None:
    """A few numbers as the reference prints them, to catch a JSON/reference divergence."""
    c = constants
    assert c.Oid.TCP_TASK_IPSEC_ADD_SA == 0xFC010202 == _json_value(spec, "OID_TCP_TASK_IPSEC_ADD_SA")
    assert c.OFFLOAD_MAX_SAS == 3 == _json_value(spec, "OFFLOAD_MAX_SAS")
    assert c.OffloadConf.THREE_DES == 3 == _json_value(spec, "OFFLOAD_IPSEC_CONF_3_DES")
    assert c.CryptoStatus.INVALID_PROTOCOL == 7 == _json_value(spec, "CRYPTO_INVALID_PROTOCOL")
    assert c.NdisStatus.INVALID_LENGTH.signed == spec["constants"][
        "NDIS_STATUS_INVALID_LENGTH"]["signed_value"]
