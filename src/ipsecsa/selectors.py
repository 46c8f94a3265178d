"""Traffic selectors: which packets an SA carries (RFC 4301 §4.4.1.1).

The semantics are those of the NDIS IPsec offload filter fields: every field that is zero (or an
absent prefix) is a wildcard. A selector is matched on the hot path (inbound policy check after
decapsulation, RFC 4301 §5.2), so everything that can be derived from it is derived once, at
construction: each prefix becomes an integer network and mask, and a match is a handful of integer
operations on the packet's address bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipsecsa.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Specification limits (IANA protocol numbers are 8 bits, transport ports 16 bits).
MAX_PROTOCOL = 255
MAX_PORT = 65535

_KEYS = frozenset({"src", "dst", "protocol", "sport", "dport"})


class FlowLike(Protocol):
    """What :func:`selectors_match` needs of a flow (``ipsecsa.packet.flow.Flow`` has it)."""

    # Read-only members, so frozen dataclasses and named tuples qualify.
    @property
    def version(self) -> int: ...
    @property
    def src(self) -> bytes: ...
    @property
    def dst(self) -> bytes: ...
    @property
    def protocol(self) -> int: ...
    @property
    def sport(self) -> int: ...
    @property
    def dport(self) -> int: ...


def _is_int(value: object) -> bool:
    # bool is an int subclass; JSON true is never a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_prefix(value: object, name: str) -> Network | None:
    if value is None:
        return None
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(value)
    if not isinstance(value, str):
        raise ConfigError(name, "must be an address prefix string such as \"10.0.0.0/8\"")
    try:
        # strict: "10.1.2.3/8" is far more often a typo than a wish for 10.0.0.0/8.
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(name, f"not a valid address prefix ({exc})") from None


def _check_range(value: object, name: str, maximum: int) -> int:
    if not _is_int(value):
        raise ConfigError(name, "must be an integer")
    assert isinstance(value, int)
    if not 0 <= value <= maximum:
        raise ConfigError(name, f"must be between 0 (any) and {maximum}")
    return value


def _net_mask(net: Network | None) -> tuple[int, int]:
    if net is None:
        return 0, 0
    return int(net.network_address), int(net.netmask)


@dataclass(frozen=True, slots=True)
class Selector:
    """One traffic selector; ``None`` prefixes and zero protocol/ports are wildcards.

    ``src``/``dst`` are the addresses of the packet *inside* the SA (the inner packet in tunnel
    mode), as seen in the direction the SA carries traffic.
    """

    src: Network | None = None
    dst: Network | None = None
    protocol: int = 0
    sport: int = 0
    dport: int = 0
    # Precomputed match state (derived, not part of identity).
    _version: int = field(init=False, repr=False, compare=False, default=0)
    _src_net: int = field(init=False, repr=False, compare=False, default=0)
    _src_mask: int = field(init=False, repr=False, compare=False, default=0)
    _dst_net: int = field(init=False, repr=False, compare=False, default=0)
    _dst_mask: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        src = _parse_prefix(self.src, "src")
        dst = _parse_prefix(self.dst, "dst")
        if src is not None and dst is not None and src.version != dst.version:
            raise ConfigError("dst", f"address family (IPv{dst.version}) differs from src's "
                                     f"(IPv{src.version})")
        _check_range(self.protocol, "protocol", MAX_PROTOCOL)
        _check_range(self.sport, "sport", MAX_PORT)
        _check_range(self.dport, "dport", MAX_PORT)
        setattr_ = object.__setattr__
        setattr_(self, "src", src)
        setattr_(self, "dst", dst)
        version = src.version if src is not None else dst.version if dst is not None else 0
        setattr_(self, "_version", version)
        src_net, src_mask = _net_mask(src)
        dst_net, dst_mask = _net_mask(dst)
        setattr_(self, "_src_net", src_net)
        setattr_(self, "_src_mask", src_mask)
        setattr_(self, "_dst_net", dst_net)
        setattr_(self, "_dst_mask", dst_mask)

    @property
    def version(self) -> int:
        """4 or 6 when the selector names a prefix, 0 when it matches either family."""
        return self._version

    @classmethod
    def from_dict(cls, obj: Any) -> Selector:
        """Build from the sa-format object ``{"src", "dst", "protocol", "sport", "dport"}``.

        A bare address is a host prefix. Errors name the key (``"dport"``); the caller prefixes
        the position (``"selectors[1].dport"``).
        """
        if not isinstance(obj, dict):
            raise ConfigError("", "a selector must be an object")
        for key in obj:
            if key not in _KEYS:
                raise ConfigError(str(key), "unknown key")
        for name in ("src", "dst"):
            if name in obj and not isinstance(obj[name], str):
                raise ConfigError(name, "must be an address prefix string such as \"10.0.0.0/8\"")
        return cls(
            src=obj.get("src"),
            dst=obj.get("dst"),
            protocol=obj.get("protocol", 0),
            sport=obj.get("sport", 0),
            dport=obj.get("dport", 0),
        )

    def to_dict(self) -> dict[str, Any]:
        """The sa-format object; wildcard fields are left out (absent means any)."""
        out: dict[str, Any] = {}
        if self.src is not None:
            out["src"] = str(self.src)
        if self.dst is not None:
            out["dst"] = str(self.dst)
        for name in ("protocol", "sport", "dport"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    def matches(self, version: int, src: bytes, dst: bytes, protocol: int, sport: int,
                dport: int) -> bool:
        """Whether a packet's flow falls within this selector.

        Addresses are raw network-order bytes (4 or 16), as the data path carries them.
        """
        if self._version and version != self._version:
            return False
        if self.protocol and protocol != self.protocol:
            return False
        if self.sport and sport != self.sport:
            return False
        if self.dport and dport != self.dport:
            return False
        if self._src_mask and int.from_bytes(src, "big") & self._src_mask != self._src_net:
            return False
        return not self._dst_mask or int.from_bytes(dst, "big") & self._dst_mask == self._dst_net


def selectors_match(selectors: tuple[Selector, ...], flow: FlowLike) -> bool:
    """Whether ``flow`` is covered by any of ``selectors``; an empty tuple covers everything."""
    if not selectors:
        return True
    version, src, dst = flow.version, flow.src, flow.dst
    protocol, sport, dport = flow.protocol, flow.sport, flow.dport
    return any(s.matches(version, src, dst, protocol, sport, dport) for s in selectors)


__all__ = ["FlowLike", "Selector", "selectors_match"]
