"""SA life cycle: the state table, lifetimes (soft/hard x bytes/packets/seconds, both
directions) with an injected clock, timers, sequence-number exhaustion, delete and direction.

Semantics under test (``ipsecsa.datapath.lifetime``): a hard packet limit of N lets exactly N
packets through; the packet that reaches a byte limit is still carried; time limits fire at
``installed + seconds``, on traffic or on ``handle_timer``.
"""

from __future__ import annotations

import itertools

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ipsecsa import SecurityAssociation
from ipsecsa.datapath.events import (
    HardLifetimeExpired,
    LifetimeKind,
    SequenceNumberExhausted,
    SoftLifetimeExpired,
)
from ipsecsa.datapath.state import TRANSITIONS, SaState, SaTrigger, next_state
from ipsecsa.errors import DirectionError, DropReason, IpsecsaError, SaStateError

#: Every test here runs on the Python reference and on the native fast path (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

T0 = 1000.0
SPI = 0xC0000202
KEY = "00112233445566778899aabbccddeeff" + "01020304"
V4 = ("192.0.2.1", "198.51.100.7")
V6 = ("2001:db8::1", "2001:db8:ffff::7")


# ================================================================ the state table


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(SaState, SaTrigger)))
def test_every_state_trigger_pair(state: SaState, trigger: SaTrigger) -> None:
    if (state, trigger) in TRANSITIONS:
        assert next_state(state, trigger) is TRANSITIONS[(state, trigger)]
    else:
        with pytest.raises(SaStateError) as info:
            next_state(state, trigger)
        assert trigger.value in str(info.value) and state.value in str(info.value)


def test_table_shape() -> None:
    """Dead is final; larval only installs or dies; every state but dead can be deleted."""
    assert not [k for k in TRANSITIONS if k[0] is SaState.DEAD]
    assert {t for s, t in TRANSITIONS if s is SaState.LARVAL} == {SaTrigger.INSTALL,
                                                                  SaTrigger.DELETE}
    for state in (SaState.LARVAL, SaState.MATURE, SaState.DYING):
        assert TRANSITIONS[(state, SaTrigger.DELETE)] is SaState.DEAD
    assert all(v in SaState for v in TRANSITIONS.values())


# ================================================================ helpers

#: (mode, outer family, encapsulation) variants the lifetime tests run through.
SHAPES = [("transport", 4, False), ("tunnel", 6, False), ("tunnel", 4, True),
          ("transport", 6, True)]


def sa_dict(direction: str, mode: str = "transport", family: int = 4, encap: bool = False,
            **kw) -> dict:
    src, dst = V4 if family == 4 else V6
    obj = {"spi": SPI, "protocol": "esp", "mode": mode, "direction": direction,
           "src": src, "dst": dst, "encryption": {"algorithm": "aes-gcm-16", "key": KEY}}
    if encap:
        obj["encapsulation"] = {"type": "udp", "sport": 4500, "dport": 4500}
    obj.update(kw)
    return obj


def make(direction: str, shape=SHAPES[0], now: float = T0, **kw) -> SecurityAssociation:
    mode, family, encap = shape
    return SecurityAssociation.from_dict(sa_dict(direction, mode, family, encap, **kw), now=now)


def packet(shape, size: int = 100) -> bytes:
    """An inner packet of exactly ``size`` bytes for this shape's family."""
    _, family, _ = shape
    if family == 4:
        hdr = IP(src=V4[0], dst=V4[1]) / UDP(sport=1, dport=2)
        return bytes(hdr / Raw(bytes(size - 28)))
    hdr = IPv6(src=V6[0], dst=V6[1]) / UDP(sport=1, dport=2)
    return bytes(hdr / Raw(bytes(size - 48)))


class Link:
    """Drives one direction of an SA under test; the other end has no lifetimes."""

    def __init__(self, direction: str, shape, **kw) -> None:
        self.direction = direction
        self.shape = shape
        if direction == "outbound":
            self.sa = make("outbound", shape, **kw)
            self.peer = make("inbound", shape)
        else:
            self.sa = make("inbound", shape, **kw)
            self.peer = make("outbound", shape)

    def send(self, size: int = 100, now: float | None = None):
        pkt = packet(self.shape, size)
        if self.direction == "outbound":
            res = self.sa.protect(pkt, now)
            if res.ok:
                assert self.peer.unprotect(res.packet).packet == pkt
            return res
        prot = self.peer.protect(pkt, now)
        assert prot.ok
        res = self.sa.unprotect(prot.packet, now)
        if res.ok:
            assert res.packet == pkt
        return res


def kinds(events) -> list[tuple[type, object]]:
    return [(type(e), getattr(e, "kind", None)) for e in events]


DIRECTIONS = ["outbound", "inbound"]


# ================================================================ packet and byte limits


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_packet_limits(direction: str, shape) -> None:
    link = Link(direction, shape, lifetime={"soft": {"packets": 3}, "hard": {"packets": 5}})
    sa = link.sa
    for i in range(1, 6):
        assert link.send().ok, i
        events = sa.drain_events()
        if i == 3:
            assert kinds(events) == [(SoftLifetimeExpired, LifetimeKind.PACKETS)]
            assert events[0].spi == SPI
        elif i == 5:
            assert kinds(events) == [(HardLifetimeExpired, LifetimeKind.PACKETS)]
        else:
            assert events == []
        assert sa.state is (SaState.MATURE if i < 3 else SaState.DYING if i < 5
                            else SaState.DEAD)
    for _ in range(3):
        assert link.send().drop is DropReason.EXPIRED
    assert sa.drain_events() == []
    assert sa.counters.packets == 5
    assert sa.counters.drops == {DropReason.EXPIRED: 3}
    assert not sa.usable


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_exactly_n_packets_pass_a_hard_limit_of_n(direction: str, n: int) -> None:
    link = Link(direction, SHAPES[0], lifetime={"hard": {"packets": n}})
    passed = sum(1 for _ in range(n + 5) if link.send().ok)
    assert passed == n
    assert kinds(link.sa.drain_events()) == [(HardLifetimeExpired, LifetimeKind.PACKETS)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_byte_limits(direction: str, shape) -> None:
    link = Link(direction, shape, lifetime={"soft": {"bytes": 250}, "hard": {"bytes": 500}})
    sa = link.sa
    results = [link.send(100) for _ in range(7)]
    assert [r.ok for r in results] == [True] * 5 + [False] * 2  # the 5th reaches 500: carried
    assert all(r.drop is DropReason.EXPIRED for r in results[5:])
    assert kinds(sa.drain_events()) == [(SoftLifetimeExpired, LifetimeKind.BYTES),
                                        (HardLifetimeExpired, LifetimeKind.BYTES)]
    assert sa.counters.bytes == 500


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_soft_byte_event_fires_once_and_traffic_continues(direction: str) -> None:
    link = Link(direction, SHAPES[0], lifetime={"soft": {"bytes": 150}})
    assert link.send(100).ok and link.sa.drain_events() == []
    assert link.send(100).ok
    assert kinds(link.sa.drain_events()) == [(SoftLifetimeExpired, LifetimeKind.BYTES)]
    for _ in range(20):
        assert link.send(100).ok
    assert link.sa.drain_events() == []
    assert link.sa.state is SaState.DYING


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_soft_equal_to_hard_raises_only_hard(direction: str) -> None:
    link = Link(direction, SHAPES[0], lifetime={"soft": {"packets": 2}, "hard": {"packets": 2}})
    assert link.send().ok and link.send().ok
    assert kinds(link.sa.drain_events()) == [(HardLifetimeExpired, LifetimeKind.PACKETS)]
    assert link.send().drop is DropReason.EXPIRED


# ================================================================ time limits, traffic and timers


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_seconds_on_traffic(direction: str, shape) -> None:
    link = Link(direction, shape, lifetime={"soft": {"seconds": 10}, "hard": {"seconds": 20}})
    sa = link.sa
    assert link.send(now=T0 + 9.999).ok
    assert sa.drain_events() == []
    assert link.send(now=T0 + 10).ok  # soft at installed + 10: the packet still goes
    events = sa.drain_events()
    assert kinds(events) == [(SoftLifetimeExpired, LifetimeKind.SECONDS)]
    assert events[0].at == T0 + 10
    assert sa.state is SaState.DYING
    assert link.send(now=T0 + 15).ok and sa.drain_events() == []
    assert link.send(now=T0 + 20).drop is DropReason.EXPIRED  # at or after the hard deadline
    assert kinds(sa.drain_events()) == [(HardLifetimeExpired, LifetimeKind.SECONDS)]
    assert link.send(now=T0 + 25).drop is DropReason.EXPIRED
    assert sa.drain_events() == []


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_timers_fire_without_traffic(direction: str) -> None:
    sa = make(direction, lifetime={"soft": {"seconds": 10}, "hard": {"seconds": 20.5}})
    assert sa.next_timer() == T0 + 10
    sa.handle_timer(T0 + 5)
    assert sa.drain_events() == [] and sa.state is SaState.MATURE
    sa.handle_timer(T0 + 10)
    assert kinds(sa.drain_events()) == [(SoftLifetimeExpired, LifetimeKind.SECONDS)]
    assert sa.state is SaState.DYING
    assert sa.next_timer() == T0 + 20.5
    sa.handle_timer(T0 + 12)
    assert sa.drain_events() == []
    sa.handle_timer(T0 + 30)
    events = sa.drain_events()
    assert kinds(events) == [(HardLifetimeExpired, LifetimeKind.SECONDS)]
    assert events[0].at == T0 + 30
    assert sa.state is SaState.DEAD
    assert sa.next_timer() is None
    sa.handle_timer(T0 + 40)  # nothing more to do, and no error
    assert sa.drain_events() == []
    res = sa.protect(packet(SHAPES[0]), T0 + 41) if direction == "outbound" else \
        sa.unprotect(make("outbound").protect(packet(SHAPES[0])).packet, T0 + 41)
    assert res.drop is DropReason.EXPIRED


def test_soft_only_timer_then_none() -> None:
    sa = make("inbound", lifetime={"soft": {"seconds": 3}})
    assert sa.next_timer() == T0 + 3
    sa.handle_timer(T0 + 3)
    assert kinds(sa.drain_events()) == [(SoftLifetimeExpired, LifetimeKind.SECONDS)]
    assert sa.next_timer() is None and sa.usable
    sa.handle_timer(T0 + 1000)
    assert sa.drain_events() == []


def test_late_timer_past_both_deadlines_fires_hard_only() -> None:
    sa = make("outbound", lifetime={"soft": {"seconds": 10}, "hard": {"seconds": 20}})
    sa.handle_timer(T0 + 100)
    assert kinds(sa.drain_events()) == [(HardLifetimeExpired, LifetimeKind.SECONDS)]
    assert sa.state is SaState.DEAD


def test_no_time_limit_no_timer() -> None:
    sa = make("outbound", lifetime={"hard": {"packets": 10}})
    assert sa.next_timer() is None
    sa.handle_timer(T0 + 10**9)
    assert sa.drain_events() == [] and sa.usable


def test_time_limits_use_the_install_clock() -> None:
    sa = make("outbound", now=5000.0, lifetime={"hard": {"seconds": 1}})
    assert sa.next_timer() == 5001.0
    assert sa.protect(packet(SHAPES[0]), 5000.5).ok
    assert sa.protect(packet(SHAPES[0]), 5001.0).drop is DropReason.EXPIRED


# ================================================================ sequence-number exhaustion


def test_seq_exhaustion_two_packets_before_the_end() -> None:
    """seq is the last number used: from 2^32 - 3 two packets (2^32 - 2, 2^32 - 1) pass."""
    sa = make("outbound", seq=2**32 - 3)
    assert sa.protect(packet(SHAPES[0])).ok
    assert sa.drain_events() == []
    assert sa.protect(packet(SHAPES[0])).ok
    events = sa.drain_events()
    assert [type(e) for e in events] == [SequenceNumberExhausted]
    assert events[0].last_seq == 2**32 - 1 and events[0].spi == SPI
    assert sa.state is SaState.DEAD
    for _ in range(3):
        assert sa.protect(packet(SHAPES[0])).drop is DropReason.SEQ_EXHAUSTED
    assert sa.drain_events() == []  # one event only
    assert sa.counters.packets == 2
    assert sa.counters.drops == {DropReason.SEQ_EXHAUSTED: 3}
    assert sa.seq == 2**32 - 1


def test_seq_exhaustion_from_2_32_minus_2() -> None:
    """From 2^32 - 2 (the brief's starting point) exactly one number is left."""
    sa = make("outbound", seq=2**32 - 2)
    assert sa.protect(packet(SHAPES[0])).ok
    assert [type(e) for e in sa.drain_events()] == [SequenceNumberExhausted]
    assert sa.protect(packet(SHAPES[0])).drop is DropReason.SEQ_EXHAUSTED
    assert sa.drain_events() == []


@pytest.mark.parametrize("shape", SHAPES)
def test_seq_exhaustion_every_path(shape) -> None:
    sa = make("outbound", shape, seq=2**32 - 2)
    assert sa.protect(packet(shape)).ok
    assert sa.protect(packet(shape)).drop is DropReason.SEQ_EXHAUSTED
    assert [type(e) for e in sa.drain_events()] == [SequenceNumberExhausted]


def test_esn_exhaustion_at_2_64() -> None:
    sa = make("outbound", esn=True, seq=2**64 - 2)
    assert sa.protect(packet(SHAPES[0])).ok
    assert sa.protect(packet(SHAPES[0])).drop is DropReason.SEQ_EXHAUSTED
    assert [type(e) for e in sa.drain_events()] == [SequenceNumberExhausted]


def test_esn_does_not_exhaust_at_2_32() -> None:
    sa = make("outbound", esn=True, seq=2**32 - 2)
    for _ in range(4):
        assert sa.protect(packet(SHAPES[0])).ok
    assert sa.drain_events() == [] and sa.seq == 2**32 + 2


def test_exhausted_at_install() -> None:
    sa = make("outbound", seq=2**32 - 1)
    assert sa.state is SaState.DEAD
    assert [type(e) for e in sa.drain_events()] == [SequenceNumberExhausted]
    assert sa.protect(packet(SHAPES[0])).drop is DropReason.SEQ_EXHAUSTED


def test_inbound_sa_at_the_last_number_is_not_exhausted() -> None:
    """Exhaustion is a sender rule; an inbound SA whose window top is 2^32 - 1 just refuses."""
    sa = make("inbound", seq=2**32 - 1)
    assert sa.usable and sa.drain_events() == []


def test_hard_limit_and_exhaustion_on_the_same_packet() -> None:
    sa = make("outbound", seq=2**32 - 2, lifetime={"hard": {"packets": 1}})
    assert sa.protect(packet(SHAPES[0])).ok
    # Both facts are reported (each once): the hard limit and the last number used.
    assert [type(e) for e in sa.drain_events()] == [HardLifetimeExpired, SequenceNumberExhausted]
    # Dead by the hard limit first: the reason names the hard lifetime.
    assert sa.protect(packet(SHAPES[0])).drop is DropReason.EXPIRED


# ================================================================ delete and direction


@pytest.mark.parametrize("direction", [*DIRECTIONS, None])
def test_delete(direction: str | None) -> None:
    obj = sa_dict(direction or "outbound", lifetime={"soft": {"seconds": 5}})
    if direction is None:
        del obj["direction"]
    sa = SecurityAssociation.from_dict(obj, now=T0)
    peer = make("outbound")
    prot = peer.protect(packet(SHAPES[0])).packet
    sa.delete()
    assert sa.state is SaState.DEAD and not sa.usable
    if direction == "outbound":
        assert sa.protect(packet(SHAPES[0]), T0).drop is DropReason.SA_UNUSABLE
    else:
        assert sa.unprotect(prot, T0).drop is DropReason.SA_UNUSABLE
    assert sa.next_timer() is None
    sa.handle_timer(T0 + 100)
    assert sa.drain_events() == []  # a deleted SA raises no lifetime events
    sa.delete()  # idempotent
    assert sa.state is SaState.DEAD


def test_delete_a_dying_sa() -> None:
    sa = make("outbound", lifetime={"soft": {"packets": 1}})
    assert sa.protect(packet(SHAPES[0])).ok
    assert sa.state is SaState.DYING
    sa.delete()
    assert sa.protect(packet(SHAPES[0])).drop is DropReason.SA_UNUSABLE


def test_direction_is_enforced() -> None:
    inbound = make("inbound")
    outbound = make("outbound")
    prot = outbound.protect(packet(SHAPES[0])).packet
    # A caller mistake: a typed error naming the field, not a counted drop.
    with pytest.raises(DirectionError) as exc:
        inbound.protect(packet(SHAPES[0]))
    assert exc.value.field == "direction" and "inbound" in str(exc.value)
    with pytest.raises(DirectionError) as exc:
        outbound.unprotect(prot)
    assert exc.value.field == "direction" and "outbound" in str(exc.value)
    with pytest.raises(DirectionError):
        inbound.protect_batch([packet(SHAPES[0])])
    with pytest.raises(DirectionError):
        outbound.unprotect_batch([prot])
    assert inbound.counters.drops == {} and outbound.counters.drops == {}
    assert outbound.seq == 1  # the refused calls consumed nothing
    assert inbound.unprotect(prot).ok  # the refused call changed nothing
    # No direction (offline tools): may unprotect, may not protect.
    either = SecurityAssociation.from_dict({k: v for k, v in sa_dict("outbound").items()
                                            if k != "direction"})
    assert either.unprotect(prot).packet == packet(SHAPES[0])
    with pytest.raises(DirectionError) as exc:
        either.protect(packet(SHAPES[0]))
    assert exc.value.field == "direction" and "no direction" in str(exc.value)
    assert isinstance(exc.value, IpsecsaError)


def test_events_queue_is_drained_oldest_first() -> None:
    sa = make("outbound", seq=2**32 - 3,
              lifetime={"soft": {"packets": 1}, "hard": {"packets": 5}})
    sa.protect(packet(SHAPES[0]))
    sa.protect(packet(SHAPES[0]))
    assert [type(e) for e in sa.drain_events()] == [SoftLifetimeExpired, SequenceNumberExhausted]
    assert sa.drain_events() == []
