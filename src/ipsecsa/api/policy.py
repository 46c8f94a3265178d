"""The IPsec filters an SA context needs, made from its SA descriptions.

An SA context names an outbound IPsec filter (Create) and an inbound one (GetSpi/SetSpi). Here
they are derived from the SAs: in transport mode the host pair plus the selector's protocol and
ports; in tunnel mode the selector's inner prefixes, protocol and ports (reference F.22: the
tunnel filter's conditions are the inner selectors). Building the ``FWPM_FILTER0`` is all this
module does; the engine validates and classifies it like any other filter.

Filters made for contexts get a key derived from what they match (:attr:`FilterSpec.key`), so
contexts for the same traffic share one filter pair (a rekeyed context and the one it replaces
both name it, and the engine sends by the newest established), and the name :data:`MARKER`, by
which the API knows it may delete them once no context names them.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any

from ipsecsa import wfp

#: displayData.name of the filters the API makes for contexts (and deletes when unused).
MARKER = "ipsecsa.api context filter"
_NAMESPACE = uuid.UUID("6f3a0d52-3b1e-4c41-9a57-5b0a4e0c1a12")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FilterSpec:
    """One IPsec filter at a transport layer: direction, IP version, transport or tunnel, and
    its conditions from the host's point of view (None or 0: any)."""

    direction: str  # "inbound" | "outbound"
    version: int
    tunnel: bool
    local: Network | None = None
    remote: Network | None = None
    protocol: int = 0
    local_port: int = 0
    remote_port: int = 0

    @property
    def key(self) -> uuid.UUID:
        """A filter key that is the same for the same traffic, in this and every process."""
        return uuid.uuid5(_NAMESPACE, repr((self.direction, self.version, self.tunnel,
                                            str(self.local), str(self.remote), self.protocol,
                                            self.local_port, self.remote_port)))

    def describe(self) -> str:
        kind = "tunnel" if self.tunnel else "transport"
        return (f"{self.direction} {kind} {self.local or 'any'} -> {self.remote or 'any'} "
                f"protocol {self.protocol or 'any'} ports {self.local_port or 'any'} -> "
                f"{self.remote_port or 'any'}")

    def to_filter(self, name: str, key: uuid.UUID | None = None) -> Any:
        v = f"V{self.version}"
        d = self.direction.upper()
        conditions = []
        for field, net in (("IP_LOCAL_ADDRESS", self.local), ("IP_REMOTE_ADDRESS", self.remote)):
            if net is not None:
                conditions.append(_condition(field, _address(net)))
        if self.protocol:
            conditions.append(_condition("IP_PROTOCOL", wfp.FWP_CONDITION_VALUE0(
                type=wfp.FWP_UINT8, uint8=self.protocol)))
        for field, port in (("IP_LOCAL_PORT", self.local_port),
                            ("IP_REMOTE_PORT", self.remote_port)):
            if port:
                conditions.append(_condition(field, wfp.FWP_CONDITION_VALUE0(
                    type=wfp.FWP_UINT16, uint16=port)))
        return wfp.FWPM_FILTER0(
            filterKey=key or wfp.GUID_NULL, displayData=wfp.FWPM_DISPLAY_DATA0(name=name,
                                                              description=self.describe()),
            layerKey=getattr(wfp, f"FWPM_LAYER_{d}_TRANSPORT_{v}"),
            filterCondition=conditions,
            action=wfp.FWPM_ACTION0(
                type=wfp.FWP_ACTION_CALLOUT_TERMINATING,
                calloutKey=getattr(wfp, f"FWPM_CALLOUT_IPSEC_{d}_"
                                        f"{'TUNNEL' if self.tunnel else 'TRANSPORT'}_{v}")))


def _condition(field: str, value: Any) -> Any:
    return wfp.FWPM_FILTER_CONDITION0(fieldKey=getattr(wfp, f"FWPM_CONDITION_{field}"),
                                      matchType=wfp.FWP_MATCH_EQUAL, conditionValue=value)


def _address(net: Network) -> Any:
    if net.version == 4:
        if net.prefixlen == 32:
            return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32,
                                            uint32=int(net.network_address))
        return wfp.FWP_CONDITION_VALUE0(
            type=wfp.FWP_V4_ADDR_MASK,
            v4AddrMask=wfp.FWP_V4_ADDR_AND_MASK(addr=int(net.network_address),
                                                mask=int(net.netmask)))
    if net.prefixlen == 128:
        return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_BYTE_ARRAY16_TYPE,
                                        byteArray16=net.network_address.packed)
    return wfp.FWP_CONDITION_VALUE0(
        type=wfp.FWP_V6_ADDR_MASK,
        v6AddrMask=wfp.FWP_V6_ADDR_AND_MASK(addr=net.network_address.packed,
                                            prefixLength=net.prefixlen))


def host(address: Any) -> Network:
    """A host prefix (/32 or /128) for an address."""
    return ipaddress.ip_network(address)


def context_filters(outbound: Any, inbound: Any) -> tuple[FilterSpec, FilterSpec]:
    """The (inbound, outbound) filter pair for a context whose first outbound and inbound SAs
    are ``outbound`` and ``inbound`` (validated ``SaConfig``; at most one selector each, checked
    by the caller). Outbound, the SA's src side is local; inbound, its dst side is."""
    tunnel = outbound.mode == "tunnel"
    version = outbound.src.version
    specs = []
    for direction, cfg in (("inbound", inbound), ("outbound", outbound)):
        sel = cfg.selectors[0] if cfg.selectors else None
        out = direction == "outbound"
        if tunnel:
            src = sel.src if sel is not None else None
            dst = sel.dst if sel is not None else None
        else:
            src, dst = host(cfg.src), host(cfg.dst)
        sport = sel.sport if sel is not None else 0
        dport = sel.dport if sel is not None else 0
        specs.append(FilterSpec(
            direction, version, tunnel,
            local=src if out else dst, remote=dst if out else src,
            protocol=sel.protocol if sel is not None else 0,
            local_port=sport if out else dport, remote_port=dport if out else sport))
    return specs[0], specs[1]
