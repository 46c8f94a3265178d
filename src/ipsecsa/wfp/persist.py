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

from ipsecsa.store.codec import compact, decode, dumps
from ipsecsa.wfp.contexts import LAZY_FIELDS, CtxState, SaContext

#: Outbound sequence numbers reserved (and synced to disk) ahead of use, per SA. At a crash at
#: most this many numbers are skipped, never reused. Measured in docs/PERFORMANCE.md.
SEQ_BLOCK = 4096
#: Filter and SA-context ids reserved ahead on disk: the stored counters are written once per
#: this many ids (a crash skips up to this many; ids are never reused).
ID_BLOCK = 1024
#: Inbound packets between two checkpoints of a context's replay edge and counters.
CHECKPOINT_PACKETS = 1024


def to_wall(clock: Callable[[], float], t: float | None) -> float | None:
    return None if t is None else time.time() + (t - clock())


def from_wall(clock: Callable[[], float], t: float | None) -> float | None:
    return None if t is None else clock() + (t - time.time())


def context_rows(ctx: SaContext, clock: Callable[[], float]) -> tuple[str, bytes]:
    """(body JSON without keys, secret JSON with keys) of a context.

    A context is written whole at every change of state, but its structures (traffic, the
    bundles as given, the SA descriptions) are set once and never change: their JSON is made
    once and kept on the context (``ctx.encoded``), and only the small changing part is
    written anew. Sequence numbers and counters live in the store's SA-state rows, which
    override the ``seq`` of the descriptions on load."""
    body = {
        "state": ctx.state.value, "version1": ctx.version1, "version": ctx.version,
        "tunnel": ctx.tunnel, "local": ctx.local.hex(), "remote": ctx.remote.hex(),
        "outbound_filter": ctx.outbound_filter, "inbound_filter": ctx.inbound_filter,
        "udp_encap": list(ctx.udp_encap) if ctx.udp_encap else None, "spi": ctx.spi,
        "created": to_wall(clock, ctx.created),
        "inbound_added": to_wall(clock, ctx.inbound_added),
        "outbound_added": to_wall(clock, ctx.outbound_added),
        "deadline": to_wall(clock, ctx.deadline), "idle_seconds": ctx.idle_seconds,
        "last_used": to_wall(clock, ctx.last_used),
        "linger_until": to_wall(clock, ctx.linger_until), "limited": ctx.limited,
    }
    parts = [compact(body)[:-1]]
    state = vars(ctx)
    for name in ("traffic", "getspi_traffic", "udp_struct"):
        parts.append(f',"{name}":{_part(ctx, name, state.get(name, UNLOADED))}')
    secret = "".join((
        '{"inbound_given":', _part(ctx, "inbound_given", state.get("inbound_given", UNLOADED)),
        ',"outbound_given":', _part(ctx, "outbound_given",
                                    state.get("outbound_given", UNLOADED)),
        ',"inbound_sas":', _cached(ctx, "inbound_sas", ctx.inbound_bundle, _sas_text),
        ',"outbound_sas":', _cached(ctx, "outbound_sas", ctx.outbound_bundle, _sas_text), "}"))
    return "".join(parts) + "}", secret.encode()


#: Stands for a deferred part of a reopened context (still in ``ctx.lazy``, never read).
UNLOADED = object()


def _cached(ctx: SaContext, name: str, value: Any, make: Callable[[Any], str]) -> str:
    """The JSON of one of ``ctx``'s set-once parts, made again (``make(value)``) only when
    the object it is made from was replaced (compared by identity: the engine replaces, never
    mutates, what it stores; Update0, which does change the given bundles in place, drops
    their cached text). Each part is cached apart, so adding the outbound bundle does not
    encode the inbound one again."""
    cached = ctx.encoded.get(name)
    if cached is not None and cached[0] is value:
        return cached[1]
    text = make(value)
    ctx.encoded[name] = (value, text)
    return text


def _part(ctx: SaContext, name: str, value: Any) -> str:
    """A structure part's JSON: as stored while it is deferred (never read since reopen),
    else encoded (once: see :func:`_cached`)."""
    if value is UNLOADED:
        return ctx.lazy[name]  # type: ignore[no-any-return]
    return _cached(ctx, name, value, _structure_text)


def _structure_text(value: Any) -> str:
    return "null" if value is None else dumps(value)


def _sas_text(bundle: Any) -> str:
    """The SA descriptions of a bundle (keys included: this is the secret column)."""
    return "null" if bundle is None else compact([sa.to_dict() for sa in bundle.sas])


def context_from_rows(cid: int, body_text: str, secret_text: bytes,
                      clock: Callable[[], float]) -> tuple[SaContext, dict[str, Any]]:
    """The context (without its SAs) and its secret part (SA descriptions, given bundles).
    The structures among LAZY_FIELDS stay in stored form until first read."""
    b = json.loads(body_text)
    s = json.loads(secret_text)
    ctx = SaContext(
        cid, CtxState(b["state"]), b["version1"], None, b["version"],
        b["tunnel"], bytes.fromhex(b["local"]), bytes.fromhex(b["remote"]),
        b["outbound_filter"], from_wall(clock, b["created"]) or clock(),
        inbound_filter=b["inbound_filter"],
        udp_encap=tuple(b["udp_encap"]) if b["udp_encap"] else None,  # type: ignore[arg-type]
        spi=b["spi"],
        inbound_added=from_wall(clock, b["inbound_added"]),
        outbound_added=from_wall(clock, b["outbound_added"]),
        deadline=from_wall(clock, b["deadline"]), idle_seconds=b["idle_seconds"],
        last_used=from_wall(clock, b["last_used"]) or clock(),
        linger_until=from_wall(clock, b["linger_until"]), limited=b["limited"])
    for name in LAZY_FIELDS:
        stored = b[name] if name in b else s[name]
        if stored is None:
            setattr(ctx, name, None)
        else:  # kept as compact JSON text: a fifth of the memory of the parsed form
            ctx.defer(name, compact(stored))
    return ctx, s


def filter_body(stored: Any) -> str:
    return dumps(stored)


def filter_from_body(body: str) -> Any:
    return decode(body)
