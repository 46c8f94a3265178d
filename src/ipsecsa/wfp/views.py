"""JSON-friendly views of SA contexts: an ipsecsa extension (``Engine.sa_context_view``).

``IPSEC_SA_CONTEXT1`` has no life-cycle state and no per-context counters, and its transform ids
cannot name most algorithms. The view says what a person or a service needs: the state, the
host pair, both SPIs, the filters, and per SA its algorithms by canonical name, its sequence
number and its counters (packets, bytes, drops by :class:`~ipsecsa.errors.DropReason` value).
Plain dicts of str, int, float, bool, None and lists, so ``json.dumps`` takes them as they are.
Keys never appear in a view.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ipsecsa.wfp.contexts import SaContext


def sa_view(sa: Any) -> dict[str, Any]:
    """One data-path SA (or a :class:`.stored.StoredSa`): what it is and what it has done."""
    cfg = sa.config
    counters = sa.counters
    encap = cfg.encapsulation
    view: dict[str, Any] = {
        "spi": sa.spi,
        "protocol": cfg.protocol,
        "mode": cfg.mode,
        "encryption": cfg.encryption.name if cfg.encryption is not None else None,
        "integrity": cfg.integrity.name if cfg.integrity is not None else None,
        "esn": cfg.esn,
        "encapsulation": None if encap is None else {"type": "udp", "sport": encap.sport,
                                                     "dport": encap.dport},
        "seq": sa.seq,
        "state": sa.state.value,
        "packets": counters.packets,
        "bytes": counters.bytes,
        "drops": {reason.value: n for reason, n in sorted(counters.drops.items(),
                                                          key=lambda kv: kv[0].value)},
    }
    if cfg.direction == "inbound":
        view["replay_window"] = cfg.replay_window
    return view


def context_view(ctx: SaContext, now: float, inbound_sas: Any, outbound_sas: Any
                 ) -> dict[str, Any]:
    """One SA context (read under the engine's state lock; counters under the context's).
    ``inbound_sas``/``outbound_sas``: its SAs each way, a Bundle or, for a reopened context's
    SAs not built yet, what their stored form says (:func:`.stored.side`); None for none."""
    with ctx.lock:
        inbound = [sa_view(sa) for sa in inbound_sas.sas] if inbound_sas is not None else []
        outbound = [sa_view(sa) for sa in outbound_sas.sas] if outbound_sas is not None else []
    ends = [t for t in (ctx.deadline, ctx.linger_until) if t is not None]
    return {
        "id": ctx.id,
        "state": ctx.state.value,
        "ip_version": ctx.version,
        "mode": "tunnel" if ctx.tunnel else "transport",
        "local": str(ipaddress.ip_address(ctx.local)),
        "remote": str(ipaddress.ip_address(ctx.remote)),
        "inbound_spi": ctx.spi,
        "outbound_spi": outbound[0]["spi"] if outbound else None,
        "inbound_filter": ctx.inbound_filter or None,
        "outbound_filter": ctx.outbound_filter,
        "udp_encapsulation": None if ctx.udp_encap is None else {
            "local_port": ctx.udp_encap[0], "remote_port": ctx.udp_encap[1]},
        "seconds_left": max(0.0, min(ends) - now) if ends else None,
        "inbound": inbound,
        "outbound": outbound,
    }
