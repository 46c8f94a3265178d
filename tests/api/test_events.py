"""SA-context events through the Pythonic API: ``events()`` as an iterator and
``subscribe(callback)``; both see contexts appear and disappear (delete, end of the linger)."""

from __future__ import annotations

import threading

from ipsecsa import api
from tests.api.helpers import pair


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_events_iterator_sees_add_and_delete() -> None:
    with api.Engine() as engine, engine.events(timeout=2.0) as events:
        ab, ba = pair()
        ctx = engine.create_context(outbound=ab, inbound=ba)
        engine.delete(ctx.id)
        got = [next(events), next(events)]
        assert got == [api.ContextEvent("added", ctx.id), api.ContextEvent("deleted", ctx.id)]
        assert got[0].to_dict() == {"kind": "added", "context_id": ctx.id}
        assert events.get(timeout=0.05) is None  # nothing more
    assert list(events) == []  # closed: iteration ends


def test_iteration_stops_after_the_timeout() -> None:
    with api.Engine() as engine, engine.events(timeout=0.05) as events:
        assert list(events) == []


def test_subscribe_callback_and_cancel() -> None:
    clock = Clock()
    seen: list[api.ContextEvent] = []
    done = threading.Event()

    def callback(event: api.ContextEvent) -> None:
        seen.append(event)
        if len(seen) == 2:
            done.set()

    with api.Engine(clock=clock) as engine:
        sub = engine.subscribe(callback)
        ab, ba = pair()
        ctx = engine.create_context(outbound=ab, inbound=ba)
        engine.expire(ctx.id)
        clock.now += 61  # the linger ends: the context disappears by itself
        engine.contexts()
        assert done.wait(5)
        assert seen == [api.ContextEvent("added", ctx.id), api.ContextEvent("deleted", ctx.id)]
        sub.cancel()
        sub.cancel()  # idempotent
        engine.create_context(outbound=ab, inbound=ba)
        engine.flush_events()
        assert len(seen) == 2  # cancelled: no more calls


def test_callback_may_call_the_engine() -> None:
    with api.Engine() as engine:
        states: list[str] = []
        done = threading.Event()

        def callback(event: api.ContextEvent) -> None:
            if event.kind == "added":
                states.append(engine.context(event.context_id).state)
                done.set()

        with engine.subscribe(callback):
            ab, ba = pair()
            engine.create_context(outbound=ab, inbound=ba)
            assert done.wait(5)
        assert states and states[0] in ("created", "spi_assigned", "inbound", "established")
