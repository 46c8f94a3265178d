"""What the Pythonic API returns: frozen, JSON-friendly snapshots (``to_dict()``).

They are made from the engine's ``sa_context_view`` (:mod:`ipsecsa.wfp.views`), field for field,
so the API adds no state of its own. Keys never appear in them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SaInfo:
    """One SA of a context: what it is (algorithms by canonical name) and what it has done.

    ``seq``: outbound, the last sequence number sent; inbound, the highest received.
    ``drops``: packets dropped on this SA, by ``DropReason`` value (``"replay"``, ...).
    ``replay_window`` is None for an outbound SA.
    """

    spi: int
    protocol: str
    mode: str
    encryption: str | None
    integrity: str | None
    esn: bool
    encapsulation: dict[str, Any] | None
    seq: int
    state: str
    packets: int
    bytes: int
    drops: dict[str, int]
    replay_window: int | None = None

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> SaInfo:
        return cls(**view)


@dataclass(frozen=True)
class ContextInfo:
    """One SA context.

    ``state`` is ``"created"``, ``"spi_assigned"``, ``"inbound"``, ``"established"`` or
    ``"expiring"`` (the table of ``ipsecsa.wfp.contexts``). ``inbound``/``outbound`` are the
    SAs of each side, ESP first (empty before the side is added, and ``outbound`` after
    expire). ``seconds_left``: until the hard lifetime, or the end of the expire linger; None
    without either.
    """

    id: int
    state: str
    ip_version: int
    mode: str
    local: str
    remote: str
    inbound_spi: int | None
    outbound_spi: int | None
    inbound_filter: int | None
    outbound_filter: int
    udp_encapsulation: dict[str, int] | None
    seconds_left: float | None
    inbound: tuple[SaInfo, ...]
    outbound: tuple[SaInfo, ...]

    @property
    def packets_in(self) -> int:
        """Packets received through the context (its outermost inbound SA's count)."""
        return self.inbound[-1].packets if self.inbound else 0

    @property
    def packets_out(self) -> int:
        """Packets sent through the context (its first outbound SA's count)."""
        return self.outbound[0].packets if self.outbound else 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["inbound"] = [sa.to_dict() for sa in self.inbound]
        out["outbound"] = [sa.to_dict() for sa in self.outbound]
        return out

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> ContextInfo:
        fields = dict(view)
        fields["inbound"] = tuple(SaInfo.from_view(v) for v in view["inbound"])
        fields["outbound"] = tuple(SaInfo.from_view(v) for v in view["outbound"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class ContextEvent:
    """An SA context appeared (``"added"``: Create) or disappeared (``"deleted"``: delete, the
    end of an expire linger, a lifetime) -- IPSEC_SA_CONTEXT_EVENT_ADD/DELETE; or, only for
    subscriptions made with ``states=True``, changed state (``"changed"``: SPI set, a side
    added, expired by a call, a lifetime or a hard limit; ipsecsa's
    IPSECSA_SA_CONTEXT_EVENT_STATE)."""

    kind: str
    context_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "context_id": self.context_id}


@dataclass(frozen=True, slots=True)
class FilterEvent:
    """A filter was added (``"added"``) or deleted (``"deleted"``) -- FWPM_CHANGE_ADD/DELETE of
    FwpmFilterSubscribeChanges0; delivered only to streams and subscriptions made with
    ``filters=True``. ``key`` is the filter's GUID as text."""

    kind: str
    filter_id: int
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "filter_id": self.filter_id, "key": self.key}
