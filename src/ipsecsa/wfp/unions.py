"""Which flattened union member a structure means, read from its discriminator.

In C the members of an anonymous union share storage and a discriminator says which one is
valid; here (:mod:`ipsecsa.wfp.types`) every member is its own field, so a structure can carry
stale values in the members not selected. Anything that interprets a structure (the engine's
argument checks, filter matching, "identical conditions" of reference F.16, enumeration
templates of F.23) must read only the selected member; these functions say which one it is.

Selectors (HDR unless noted):

* FWP_VALUE0 / FWP_CONDITION_VALUE0: ``type`` (FWP_DATA_TYPE), one member per type, as the MIDL
  ``[switch_is(type)]`` cases of fwptypes.idl. FWP_V4_ADDR_MASK, FWP_V6_ADDR_MASK and
  FWP_RANGE_TYPE exist only in FWP_CONDITION_VALUE0. FWP_EMPTY selects nothing.
* IPSEC_SA0: ``saTransformType`` (reference C.4 table); IPSEC_SA_TRANSFORM0 likewise.
* FWPM_ACTION0: ``calloutKey`` when ``type`` has FWP_ACTION_FLAG_CALLOUT, else ``filterType``
  (reference C.7.2, DOC).
* FWPM_FILTER0: ``providerContextKey`` when ``flags`` has FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT,
  else ``rawContext`` (C.7.2, DOC).
* IPSEC_TRAFFIC0/1: ``ipVersion`` picks the V4 or V6 addresses; ``trafficType`` picks
  ``ipsecFilterId`` (transport) or ``tunnelPolicyId`` (tunnel) (reference C.4, DOC).
"""

from __future__ import annotations

from . import constants as c
from .types import (
    FWP_CONDITION_VALUE0,
    FWP_RANGE0,
    FWP_VALUE0,
    FWPM_ACTION0,
    FWPM_FILTER0,
    IPSEC_SA0,
    IPSEC_SA_TRANSFORM0,
    IPSEC_TRAFFIC0,
    IPSEC_TRAFFIC1,
    WfpStruct,
)

__all__ = [
    "CONDITION_VALUE_MEMBERS",
    "SA_MEMBERS",
    "SA_TRANSFORM_MEMBERS",
    "VALUE_MEMBERS",
    "UnionSelectorError",
    "same_value",
    "selected",
    "selected_member",
    "traffic_members",
]

#: FWP_DATA_TYPE -> FWP_VALUE0 member (fwptypes.idl switch cases). FWP_EMPTY has none.
VALUE_MEMBERS: dict[int, str] = {
    c.FWP_UINT8: "uint8",
    c.FWP_UINT16: "uint16",
    c.FWP_UINT32: "uint32",
    c.FWP_UINT64: "uint64",
    c.FWP_INT8: "int8",
    c.FWP_INT16: "int16",
    c.FWP_INT32: "int32",
    c.FWP_INT64: "int64",
    c.FWP_FLOAT: "float32",
    c.FWP_DOUBLE: "double64",
    c.FWP_BYTE_ARRAY16_TYPE: "byteArray16",
    c.FWP_BYTE_BLOB_TYPE: "byteBlob",
    c.FWP_SID: "sid",
    c.FWP_SECURITY_DESCRIPTOR_TYPE: "sd",
    c.FWP_TOKEN_INFORMATION_TYPE: "tokenInformation",
    c.FWP_TOKEN_ACCESS_INFORMATION_TYPE: "tokenAccessInformation",
    c.FWP_UNICODE_STRING_TYPE: "unicodeString",
    c.FWP_BYTE_ARRAY6_TYPE: "byteArray6",
}

#: FWP_DATA_TYPE -> FWP_CONDITION_VALUE0 member: the FWP_VALUE0 ones plus the three condition types.
CONDITION_VALUE_MEMBERS: dict[int, str] = {
    **VALUE_MEMBERS,
    c.FWP_V4_ADDR_MASK: "v4AddrMask",
    c.FWP_V6_ADDR_MASK: "v6AddrMask",
    c.FWP_RANGE_TYPE: "rangeValue",
}

#: IPSEC_TRANSFORM_TYPE -> IPSEC_SA0 member (reference C.4).
SA_MEMBERS: dict[int, str] = {
    c.IPSEC_TRANSFORM_AH: "ahInformation",
    c.IPSEC_TRANSFORM_ESP_AUTH: "espAuthInformation",
    c.IPSEC_TRANSFORM_ESP_CIPHER: "espCipherInformation",
    c.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER: "espAuthAndCipherInformation",
    c.IPSEC_TRANSFORM_ESP_AUTH_FW: "espAuthFwInformation",
}

#: IPSEC_TRANSFORM_TYPE -> IPSEC_SA_TRANSFORM0 member (same order as IPSEC_SA0's union).
SA_TRANSFORM_MEMBERS: dict[int, str] = {
    c.IPSEC_TRANSFORM_AH: "ahTransform",
    c.IPSEC_TRANSFORM_ESP_AUTH: "espAuthTransform",
    c.IPSEC_TRANSFORM_ESP_CIPHER: "espCipherTransform",
    c.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER: "espAuthAndCipherTransform",
    c.IPSEC_TRANSFORM_ESP_AUTH_FW: "espAuthFwTransform",
}


class UnionSelectorError(ValueError):
    """A discriminator holds a value that selects no member of the union.

    ``struct`` and ``field`` name the discriminator, ``value`` is what it held. The engine maps
    this to the status the reference gives for the case (FWP_E_INVALID_ENUMERATOR for an enum out
    of range, FWP_E_TYPE_MISMATCH for a data type the structure does not carry, F.11/F.17).
    """

    def __init__(self, struct: str, field: str, value: int) -> None:
        self.struct = struct
        self.field = field
        self.value = value
        super().__init__(f"{struct}.{field} = {value} selects no union member")


def selected_member(obj: WfpStruct) -> str | None:
    """The name of the union member ``obj``'s discriminator selects (None for FWP_EMPTY).

    Handles the structures with one union: FWP_VALUE0, FWP_CONDITION_VALUE0, IPSEC_SA0,
    IPSEC_SA_TRANSFORM0, FWPM_ACTION0 and FWPM_FILTER0's context union. For IPSEC_TRAFFIC0/1,
    which have three, use :func:`traffic_members`.
    """
    if isinstance(obj, FWP_CONDITION_VALUE0):
        return _by_type(obj, CONDITION_VALUE_MEMBERS)
    if isinstance(obj, FWP_VALUE0):
        return _by_type(obj, VALUE_MEMBERS)
    if isinstance(obj, IPSEC_SA0):
        return _lookup(obj, "saTransformType", SA_MEMBERS)
    if isinstance(obj, IPSEC_SA_TRANSFORM0):
        return _lookup(obj, "ipsecTransformType", SA_TRANSFORM_MEMBERS)
    if isinstance(obj, FWPM_ACTION0):
        return "calloutKey" if obj.type & c.FWP_ACTION_FLAG_CALLOUT else "filterType"
    if isinstance(obj, FWPM_FILTER0):
        has_context = obj.flags & c.FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT
        return "providerContextKey" if has_context else "rawContext"
    raise TypeError(f"{type(obj).__name__} has no single discriminated union")


def selected(obj: WfpStruct) -> object:
    """The value of the selected member (None for FWP_EMPTY)."""
    member = selected_member(obj)
    return None if member is None else getattr(obj, member)


def traffic_members(traffic: IPSEC_TRAFFIC0 | IPSEC_TRAFFIC1) -> tuple[str, str, str]:
    """(local address, remote address, filter/policy id) member names of an IPSEC_TRAFFIC.

    ``ipVersion`` V4 -> ``localV4Address``/``remoteV4Address``, V6 -> the V6 members;
    ``trafficType`` TRANSPORT -> ``ipsecFilterId``, TUNNEL -> ``tunnelPolicyId``. Any other value
    (including FWP_IP_VERSION_NONE, which names no address) raises :class:`UnionSelectorError`.
    """
    name = type(traffic).__name__
    if traffic.ipVersion == c.FWP_IP_VERSION_V4:
        local, remote = "localV4Address", "remoteV4Address"
    elif traffic.ipVersion == c.FWP_IP_VERSION_V6:
        local, remote = "localV6Address", "remoteV6Address"
    else:
        raise UnionSelectorError(name, "ipVersion", traffic.ipVersion)
    if traffic.trafficType == c.IPSEC_TRAFFIC_TYPE_TRANSPORT:
        ident = "ipsecFilterId"
    elif traffic.trafficType == c.IPSEC_TRAFFIC_TYPE_TUNNEL:
        ident = "tunnelPolicyId"
    else:
        raise UnionSelectorError(name, "trafficType", traffic.trafficType)
    return local, remote, ident


def same_value(a: FWP_VALUE0 | FWP_CONDITION_VALUE0,
               b: FWP_VALUE0 | FWP_CONDITION_VALUE0) -> bool:
    """True when two values have the same type and equal *selected* members.

    Stale non-selected members are ignored, so two conditions a C caller would see as identical
    compare equal (reference F.16's "same set of (field, matchType, value)"). Range bounds are
    compared the same way; an unknown type raises :class:`UnionSelectorError`.
    """
    if a.type != b.type:
        return False
    va, vb = selected(a), selected(b)
    if isinstance(va, FWP_RANGE0) and isinstance(vb, FWP_RANGE0):
        return (same_value(va.valueLow, vb.valueLow)
                and same_value(va.valueHigh, vb.valueHigh))
    return va == vb


def _by_type(value: FWP_VALUE0 | FWP_CONDITION_VALUE0, table: dict[int, str]) -> str | None:
    if value.type == c.FWP_EMPTY:
        return None
    return _lookup(value, "type", table)


def _lookup(obj: WfpStruct, field: str, table: dict[int, str]) -> str:
    selector = getattr(obj, field)
    member = table.get(selector)
    if member is None:
        raise UnionSelectorError(type(obj).__name__, field, selector)
    return member
