"""The built-in WFP objects this engine knows, by GUID: layers, sublayers, callouts, conditions,
providers (``data/windows-wfp-filters.json``, HDR), and what each IPsec callout and layer means
for this engine (reference C.7.4, C.7.5, F.17, F.21, F.22).

Derived once at import from the data file, so the tables cannot drift from the GUID constants
:mod:`ipsecsa.wfp.constants` exports (both come from the same file).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@cache
def _data() -> dict[str, Any]:
    text = resources.files("ipsecsa.data").joinpath("windows-wfp-filters.json").read_text("utf-8")
    return json.loads(text)


def _guids(section: str, prefer: frozenset[str] = frozenset()) -> dict[uuid.UUID, str]:
    """GUID -> name. Some names are ``#define`` aliases of others (HDR: FWPM_CONDITION_ICMP_TYPE
    is FWPM_CONDITION_IP_LOCAL_PORT, FWPM_CONDITION_INTERFACE_LUID is IP_LOCAL_INTERFACE, ...):
    a GUID keeps the first name the data file gives it, or a name in ``prefer`` (the names the
    layer tables use), so an alias never hides the name the rules are written against."""
    out: dict[uuid.UUID, str] = {}
    for name, text in _data()[section].items():
        g = uuid.UUID(text)
        if g not in out or (name in prefer and out[g] not in prefer):
            out[g] = name
    return out


_LISTED_CONDITIONS = frozenset(n for names in _data()["layer_conditions"].values() for n in names)
LAYERS: dict[uuid.UUID, str] = _guids("layers")
SUBLAYERS: dict[uuid.UUID, str] = _guids("sublayers")
CALLOUTS: dict[uuid.UUID, str] = _guids("callouts")
CONDITIONS: dict[uuid.UUID, str] = _guids("conditions", _LISTED_CONDITIONS)
PROVIDERS: dict[uuid.UUID, str] = _guids("providers")
#: Every name, aliases included, to its GUID.
GUID_OF: dict[str, uuid.UUID] = {name: uuid.UUID(text) for section in ("layers", "sublayers",
                                                                         "callouts", "conditions",
                                                                         "providers")
                                 for name, text in _data()[section].items()}
#: The 28 layers filters may be added at (F.21), each with the condition names it accepts.
LAYER_CONDITIONS: dict[str, frozenset[str]] = {
    layer: frozenset(names) for layer, names in _data()["layer_conditions"].items()
}

SUBLAYER_UNIVERSAL = GUID_OF["FWPM_SUBLAYER_UNIVERSAL"]


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """What a layer is: its name, IP version (4/6), direction, and whether packets are
    classified at it by this engine (only the transport layers carry traffic here)."""

    name: str
    version: int
    direction: str  # "inbound", "outbound", "forward" or "" (ALE and others)
    transport: bool  # an INBOUND/OUTBOUND_TRANSPORT layer (not _DISCARD): traffic passes here


def layer_info(name: str) -> LayerInfo:
    base = name.removesuffix("_DISCARD")
    version = 6 if base.endswith("_V6") else 4
    if "INBOUND" in base or "RECV_ACCEPT" in base:
        direction = "inbound"
    elif "OUTBOUND" in base or "CONNECT" in base:
        direction = "outbound"
    elif "FORWARD" in base:
        direction = "forward"
    else:
        direction = ""
    transport = base in ("FWPM_LAYER_INBOUND_TRANSPORT_V4", "FWPM_LAYER_INBOUND_TRANSPORT_V6",
                         "FWPM_LAYER_OUTBOUND_TRANSPORT_V4", "FWPM_LAYER_OUTBOUND_TRANSPORT_V6")
    return LayerInfo(name, version, direction, transport and name == base)


@dataclass(frozen=True, slots=True)
class CalloutInfo:
    """An IPsec callout: the layer it applies at (C.7.4, F.21) and its role."""

    name: str
    layer: str  # the layer name it must be used at
    ipsec: bool  # one of the FWPM_CALLOUT_IPSEC_* callouts
    role: str  # "transport", "tunnel" (the SA-context callouts) or "" (others)
    direction: str  # "inbound" / "outbound" for the transport and tunnel callouts


def _callout_info(name: str) -> CalloutInfo:
    v = "V6" if "_V6" in name else "V4"  # ..._V6 or ..._V6_SILENT_DROP
    ipsec = name.startswith("FWPM_CALLOUT_IPSEC_")
    rest = name.removeprefix("FWPM_CALLOUT_IPSEC_").removesuffix("_" + v)
    role = direction = ""
    if rest in ("INBOUND_TRANSPORT", "OUTBOUND_TRANSPORT", "INBOUND_TUNNEL", "OUTBOUND_TUNNEL"):
        direction, kind = rest.lower().split("_")
        role = kind
        layer = f"FWPM_LAYER_{direction.upper()}_TRANSPORT_{v}"
    elif rest.startswith("FORWARD_") or rest == "DOSP_FORWARD":
        layer = f"FWPM_LAYER_IPFORWARD_{v}"
    elif rest in ("INBOUND_INITIATE_SECURE", "INBOUND_TUNNEL_ALE_ACCEPT") or (
            "ACCEPT" in name and "CONNECT" not in name):
        layer = f"FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_{v}"
    elif "CONNECT" in name:
        layer = f"FWPM_LAYER_ALE_AUTH_CONNECT_{v}"
    elif "TRANSPORT_LAYER" in name:
        layer = f"FWPM_LAYER_OUTBOUND_TRANSPORT_{v}"
    else:  # listen / resource-assignment callouts: layers filters cannot be added at here
        layer = ""
    return CalloutInfo(name, layer, ipsec, role, direction)


CALLOUT_INFO: dict[uuid.UUID, CalloutInfo] = {g: _callout_info(n) for g, n in CALLOUTS.items()}
