"""The engine's objects ↔ store rows (issue 12: durable state; ipsecsa's choice, not Windows').

What is kept: static, persistent and boot-time filters with their ids and keys; SA contexts in
every state with their SAs (descriptions with keys: the store's secret column), their
structures as the caller gave them, and their per-SA hot state (sequence-number reservation,
counters, replay edge); grants; the id counters. Dynamic objects are not kept.

Times: the engine's clock is monotonic (or injected) and means nothing after a restart, so
every time is stored as wall-clock seconds (``time.time()``) and converted back on load. A
lifetime therefore keeps running while the engine is down: a restart never extends an SA's
life.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from ipsecsa.store.codec import decode, encode, from_jsonable, to_jsonable
from ipsecsa.wfp.contexts import CtxState, SaContext

#: Outbound sequence numbers reserved (and synced to disk) ahead of use, per SA. At a crash at
#: most this many numbers are skipped, never reused. Measured in docs/PERFORMANCE.md.
SEQ_BLOCK = 4096
#: Inbound packets between two checkpoints of a context's replay edge and counters.
CHECKPOINT_PACKETS = 1024


def to_wall(clock: Callable[[], float], t: float | None) -> float | None:
    return None if t is None else time.time() + (t - clock())


def from_wall(clock: Callable[[], float], t: float | None) -> float | None:
    return None if t is None else clock() + (t - time.time())


def context_rows(ctx: SaContext, clock: Callable[[], float]) -> tuple[str, bytes]:
    """(body JSON without keys, secret JSON with keys) of a context."""
    body = {
        "state": ctx.state.value, "version1": ctx.version1, "version": ctx.version,
        "tunnel": ctx.tunnel, "local": ctx.local.hex(), "remote": ctx.remote.hex(),
        "outbound_filter": ctx.outbound_filter, "inbound_filter": ctx.inbound_filter,
        "traffic": to_jsonable(ctx.traffic), "getspi_traffic": to_jsonable(ctx.getspi_traffic),
        "udp_encap": list(ctx.udp_encap) if ctx.udp_encap else None,
        "udp_struct": to_jsonable(ctx.udp_struct), "spi": ctx.spi,
        "created": to_wall(clock, ctx.created),
        "inbound_added": to_wall(clock, ctx.inbound_added),
        "outbound_added": to_wall(clock, ctx.outbound_added),
        "deadline": to_wall(clock, ctx.deadline), "idle_seconds": ctx.idle_seconds,
        "last_used": to_wall(clock, ctx.last_used),
        "linger_until": to_wall(clock, ctx.linger_until), "limited": ctx.limited,
    }
    secret = {
        "inbound_given": to_jsonable(ctx.inbound_given),
        "outbound_given": to_jsonable(ctx.outbound_given),
        "inbound_sas": [sa.to_dict() for sa in ctx.inbound_bundle.sas]
        if ctx.inbound_bundle is not None else None,
        "outbound_sas": [sa.to_dict() for sa in ctx.outbound_bundle.sas]
        if ctx.outbound_bundle is not None else None,
    }
    return (json.dumps(body, separators=(",", ":")),
            json.dumps(secret, separators=(",", ":")).encode())


def context_from_rows(cid: int, body_text: str, secret_text: bytes,
                      clock: Callable[[], float]) -> tuple[SaContext, dict[str, Any]]:
    """The context (without its SAs) and its secret part (SA descriptions, given bundles)."""
    b = json.loads(body_text)
    s = json.loads(secret_text)
    ctx = SaContext(
        cid, CtxState(b["state"]), b["version1"], from_jsonable(b["traffic"]), b["version"],
        b["tunnel"], bytes.fromhex(b["local"]), bytes.fromhex(b["remote"]),
        b["outbound_filter"], from_wall(clock, b["created"]) or clock(),
        inbound_filter=b["inbound_filter"], getspi_traffic=from_jsonable(b["getspi_traffic"]),
        udp_encap=tuple(b["udp_encap"]) if b["udp_encap"] else None,  # type: ignore[arg-type]
        udp_struct=from_jsonable(b["udp_struct"]), spi=b["spi"],
        inbound_given=from_jsonable(s["inbound_given"]),
        outbound_given=from_jsonable(s["outbound_given"]),
        inbound_added=from_wall(clock, b["inbound_added"]),
        outbound_added=from_wall(clock, b["outbound_added"]),
        deadline=from_wall(clock, b["deadline"]), idle_seconds=b["idle_seconds"],
        last_used=from_wall(clock, b["last_used"]) or clock(),
        linger_until=from_wall(clock, b["linger_until"]), limited=b["limited"])
    return ctx, s


def filter_body(stored: Any) -> str:
    return encode(stored)


def filter_from_body(body: str) -> Any:
    return decode(body)
