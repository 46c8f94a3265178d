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

from ipsecsa.store.codec import compact, decode, dumps, loads_u64
from ipsecsa.wfp.contexts import UNBUILT, AddedSas, CtxState, SaContext

#: Outbound sequence numbers reserved (and synced to disk) ahead of use, per SA: the first
#: block. A context whose block lasted less than SEQ_BLOCK_FAST_SECONDS reserves twice as many
#: next time, up to SEQ_BLOCK_MAX (so a fast sender syncs a few times a second, not per 4,096
#: packets); one that lasted more than SEQ_BLOCK_SLOW_SECONDS halves it again, down to
#: SEQ_BLOCK. At a crash at most one block per SA is skipped, never reused. Measured in
#: docs/PERFORMANCE.md.
SEQ_BLOCK = 4096
SEQ_BLOCK_MAX = 1 << 18
SEQ_BLOCK_FAST_SECONDS = 0.5
SEQ_BLOCK_SLOW_SECONDS = 10.0
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
    override the ``seq`` of the descriptions on load.

    The body is two JSON objects on two lines: the scalars a reopen reads at once (with
    ``in_sas``/``out_sas``, the protocols of each direction's SAs, null for none, so that the
    SAs are installed unbuilt without reading the secret column), then the structures it keeps
    in stored form until they are read (traffic, GetSpi's traffic and UDP encapsulation). JSON
    never holds a raw newline, so the split is exact; a body of one line is an older row."""
    off = time.time() - clock()  # the engine's clock -> wall-clock seconds (to_wall)
    t0, t1, t2, t3, t4, t5 = (ctx.created, ctx.inbound_added, ctx.outbound_added,
                              ctx.deadline, ctx.last_used, ctx.linger_until)
    body = {
        "state": ctx.state._value_, "version1": ctx.version1, "version": ctx.version,
        "tunnel": ctx.tunnel, "local": ctx.local.hex(), "remote": ctx.remote.hex(),
        "outbound_filter": ctx.outbound_filter, "inbound_filter": ctx.inbound_filter,
        "udp_encap": list(ctx.udp_encap) if ctx.udp_encap else None, "spi": ctx.spi,
        "created": None if t0 is None else t0 + off,
        "inbound_added": None if t1 is None else t1 + off,
        "outbound_added": None if t2 is None else t2 + off,
        "deadline": None if t3 is None else t3 + off, "idle_seconds": ctx.idle_seconds,
        "last_used": None if t4 is None else t4 + off, "linger_until": None if t5 is None else t5 + off,
        "limited": ctx.limited,
    }
    state = vars(ctx)
    inbound = state.get("inbound_bundle", UNBUILT)
    outbound = state.get("outbound_bundle", UNBUILT)
    head = compact(body)[:-1]
    tail = ",".join([f'"{name}":{_part(ctx, name, state.get(name, UNBUILT))}'
                     for name in BODY_LAZY])
    text = (f'{head},"in_sas":{_protocols(ctx, "inbound", inbound)},"out_sas":'
            f'{_protocols(ctx, "outbound", outbound)}}}\n{{{tail}}}')
    return text, _secret(ctx, state, inbound, outbound)


def _secret(ctx: SaContext, state: dict[str, Any], inbound: Any, outbound: Any) -> bytes:
    """The secret column's bytes: made again only when one of its four parts changed (a
    context is written at each step of its life; its keys are set once per direction)."""
    parts = (_part(ctx, "inbound_given", state.get("inbound_given", UNBUILT)),
             _part(ctx, "outbound_given", state.get("outbound_given", UNBUILT)),
             _sas_part(ctx, "inbound", inbound), _sas_part(ctx, "outbound", outbound))
    cached = ctx.encoded.get("secret")
    if cached is not None and cached[0] == parts:  # the same texts (tuples compare their
        return cached[1]  # members by identity first)
    text = "".join(('{"inbound_given":', parts[0], ',"outbound_given":', parts[1],
                    ',"inbound_sas":', parts[2], ',"outbound_sas":', parts[3], "}")).encode()
    ctx.encoded["secret"] = (parts, text)
    return text


#: The LAZY_FIELDS the body holds (its second line); the others are in the secret column.
BODY_LAZY = ("traffic", "getspi_traffic", "udp_struct")


def _cached(ctx: SaContext, name: str, value: Any, make: Callable[[Any], str]) -> str:
    """The JSON of one of ``ctx``'s set-once parts, made again (``make(value)``) only when
    the object it is made from was replaced (compared by identity: the engine replaces, never
    mutates, what it stores; Update0, which does change the given bundles in place, drops
    their cached text). Each part is cached apart, so adding the outbound bundle does not
    encode the inbound one again. A part still in stored form (a reopened context's) is
    cached under the stored row's text, which is as unique."""
    cached = ctx.encoded.get(name)
    if cached is not None and cached[0] is value:
        return cached[1]
    text = make(value)
    ctx.encoded[name] = (value, text)
    return text


def _part(ctx: SaContext, name: str, value: Any) -> str:
    """A structure part's JSON: as stored while it is deferred (never read since reopen),
    else encoded (once: see :func:`_cached`)."""
    if value is UNBUILT:
        stored = ctx.lazy.get(name)
        if stored is not None:
            return _cached(ctx, name, stored, lambda text: _member(text, name))
        value = getattr(ctx, name)  # rebuilt (by a packet's thread) since it was looked at
    return _cached(ctx, name, value, _structure_text)


def _structure_text(value: Any) -> str:
    return "null" if value is None else dumps(value)


def _sas_part(ctx: SaContext, direction: str, bundle: Any) -> str:
    """The SA descriptions of one direction (keys included: this is the secret column): while
    they are not built, as stored or as the Add described them (the SAs they build are the
    same, and have done nothing yet), else made from the SAs (``seq`` at its current value)."""
    name = f"{direction}_sas"
    if bundle is UNBUILT:
        stored = ctx.lazy.get(name)
        if type(stored) is AddedSas:
            return _cached(ctx, name, stored, lambda added: compact(list(added.descriptions)))
        if stored is not None:
            return _cached(ctx, name, stored, lambda text: _member(text, name))
        bundle = ctx.built(f"{direction}_bundle")  # built (by a packet's thread) meanwhile
    return _cached(ctx, name, bundle, _sas_text)


def _sas_text(bundle: Any) -> str:
    return "null" if bundle is None else compact([sa.to_dict() for sa in bundle.sas])


def _protocols(ctx: SaContext, direction: str, bundle: Any) -> str:
    """``in_sas``/``out_sas``: the protocols of the direction's SAs, ESP first (null: none)."""
    name = f"{direction}_sas"
    if bundle is UNBUILT:
        stored = ctx.lazy.get(name)
        if type(stored) is AddedSas:
            return _cached(ctx, f"{direction}_protocols", stored, lambda added: compact(
                [d["protocol"] for d in added.descriptions]))
        if stored is not None:
            return _cached(ctx, f"{direction}_protocols", stored, lambda text: compact(
                [d["protocol"] for d in json.loads(text)[name]]))
        bundle = ctx.built(f"{direction}_bundle")
    if bundle is None:
        return "null"
    return compact([sa.PROTOCOL for sa in bundle.sas])


def _member(stored: str, name: str) -> str:
    """The compact JSON of member ``name`` of the stored row ``stored`` (plain JSON: the
    text comes back as it was written)."""
    return compact(json.loads(stored)[name])


def context_from_rows(cid: int, body_text: str, secret_text: str, clock: Callable[[], float]
                      ) -> tuple[SaContext, tuple[list[str] | None, list[str] | None]]:
    """The context, without its SAs, and the protocols of its inbound and outbound SAs (None:
    no SAs that way). Nothing of the secret column is parsed: the structures among
    LAZY_FIELDS stay in stored form until first read, and the SAs until first needed (the
    engine defers them, :meth:`SaContext.defer_sas`)."""
    head, newline, lazy_text = body_text.partition("\n")
    b = loads_u64(head)  # ids, SPI, ports, times: nothing wider than 64 bits
    shift = clock() - time.time()  # wall-clock seconds -> the engine's clock (from_wall)

    def back(t: float | None) -> float | None:
        return None if t is None else t + shift

    values = {
        "id": cid, "state": CtxState(b["state"]), "version1": b["version1"],
        "version": b["version"], "tunnel": b["tunnel"], "local": bytes.fromhex(b["local"]),
        "remote": bytes.fromhex(b["remote"]), "outbound_filter": b["outbound_filter"],
        "created": back(b["created"]) or clock(), "inbound_filter": b["inbound_filter"],
        "udp_encap": tuple(b["udp_encap"]) if b["udp_encap"] else None, "spi": b["spi"],
        "inbound_added": back(b["inbound_added"]),
        "outbound_added": back(b["outbound_added"]), "deadline": back(b["deadline"]),
        "idle_seconds": b["idle_seconds"], "last_used": back(b["last_used"]) or clock(),
        "linger_until": back(b["linger_until"]), "limited": b["limited"]}
    # The bundles as given are in the secret column; the traffic structures on the body's
    # second line (an older row: in its one line, already parsed). Neither is parsed here.
    lazy = {"inbound_given": secret_text, "outbound_given": secret_text}
    for name in BODY_LAZY:
        if newline:
            lazy[name] = lazy_text
        elif b[name] is None:
            values[name] = None
        else:
            lazy[name] = body_text
    ctx = SaContext.restored(values, lazy)
    if "in_sas" in b:
        protocols = b["in_sas"], b["out_sas"]
    else:  # written before in_sas/out_sas: read the descriptions
        s = json.loads(secret_text)
        protocols = tuple(None if s[k] is None else [d["protocol"] for d in s[k]]
                          for k in ("inbound_sas", "outbound_sas"))  # type: ignore[assignment]
    return ctx, protocols


def filter_body(stored: Any) -> str:
    return dumps(stored)


def filter_from_body(body: str) -> Any:
    return decode(body)
