"""SA-context events through the Pythonic API: ``events()`` as an iterator and
``subscribe(callback)``; both see contexts appear and disappear (delete, end of the linger)."""

from __future__ import annotations

import threading

import pytest

from ipsecsa import api, wfp
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


def test_filter_events_with_filters_true_in_order_with_context_events() -> None:
    """``events(filters=True)``: the filters create_context makes appear before its context,
    and go after it when delete() removes them; without ``filters`` none is delivered."""
    with api.Engine() as engine, engine.events(timeout=2.0, filters=True) as events, \
            engine.events(timeout=0.2) as contexts_only:
        ab, ba = pair()
        ctx = engine.create_context(outbound=ab, inbound=ba)
        engine.delete(ctx.id)
        engine.flush_events()
        got = list(events)
        kinds = [(type(e).__name__, e.kind) for e in got]
        assert kinds == [("FilterEvent", "added"), ("FilterEvent", "added"),
                         ("ContextEvent", "added"), ("ContextEvent", "deleted"),
                         ("FilterEvent", "deleted"), ("FilterEvent", "deleted")]
        filter_ids = {e.filter_id for e in got if isinstance(e, api.FilterEvent)}
        assert filter_ids == {ctx.outbound_filter, ctx.inbound_filter}
        first = got[0]
        assert isinstance(first, api.FilterEvent)
        assert first.to_dict() == {"kind": "added", "filter_id": first.filter_id,
                                   "key": first.key}
        assert [type(e) for e in contexts_only] == [api.ContextEvent, api.ContextEvent]


def test_filter_events_need_the_subscribe_right_on_filters() -> None:
    with api.Engine() as engine:
        engine.grant("LAB\\bob", api_rights("ipsec_sa_db"), "ipsec_sa_db")
        bob = engine.session("LAB\\bob")
        with bob.events(timeout=0.1):  # contexts only: allowed
            pass
        try:
            bob.events(filters=True)
        except api.AccessDenied as exc:
            assert exc.status == wfp.ERROR_ACCESS_DENIED
        else:
            raise AssertionError("filter events without FWPM_ACTRL_SUBSCRIBE on filters")
        bob.close()


def api_rights(_container: str) -> int:
    return wfp.FWPM_ACTRL_SUBSCRIBE | wfp.FWPM_ACTRL_READ | wfp.FWPM_ACTRL_ENUM


def test_state_changes_only_for_subscriptions_that_ask() -> None:
    """``states=True``: a ``"changed"`` event for each step that changes a context's state
    (SPI set, each side added, expired by a lifetime when ``run_timers`` lets the engine run
    its timers, expired by a call); a plain subscription sees additions and deletions only."""
    clock = Clock()
    with api.Engine(clock=clock) as engine, engine.events(timeout=0.2, states=True) as states, \
            engine.events(timeout=0.2) as plain:
        ab, ba = pair(lifetime={"hard": {"seconds": 10}})
        timed = engine.create_context(outbound=ab, inbound=ba)
        ab, ba = pair(0x3003, 0x4004)
        called = engine.create_context(outbound=ab, inbound=ba)
        clock.now = 11.0
        engine.run_timers()  # reads nothing: only lets the lifetime end
        assert engine.context(timed.id).state == "expiring"
        engine.expire(called.id)
        engine.flush_events()
        changed = [api.ContextEvent("changed", timed.id)] * 3
        assert list(states) == [api.ContextEvent("added", timed.id), *changed,
                                api.ContextEvent("added", called.id),
                                *[api.ContextEvent("changed", called.id)] * 3,
                                api.ContextEvent("changed", timed.id),
                                api.ContextEvent("changed", called.id)]
        assert list(plain) == [api.ContextEvent("added", timed.id),
                               api.ContextEvent("added", called.id)]
        assert engine.events_dropped == 0


def test_run_timers_on_a_closed_engine_raises() -> None:
    engine = api.Engine()
    engine.close()
    with pytest.raises(api.EngineClosed):
        engine.run_timers()
