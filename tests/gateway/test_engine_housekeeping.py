"""The engine gateway's housekeeping: the peer set, the peers' hosts and the inbound SPI ->
context map kept from the engine's SA-context events, checked against a full listing of the
contexts (what the gateway computed every second before), on a real in-memory engine with an
injected clock (no TUN, no socket: :class:`EngineGatewayCore` is sans-IO)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipsecsa import api
from ipsecsa.gateway.enginecore import EngineGatewayCore

A = "192.0.2.1"


def remote(i: int) -> str:
    return str(ipaddress.IPv4Address("198.51.100.1") + i)


def tunnel_sa(spi: int, src: str, dst: str, inner_src: str, inner_dst: str,
              port: int = 4500, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "spi": spi, "protocol": "esp", "mode": "tunnel", "src": src, "dst": dst,
        "encryption": {"algorithm": "aes-gcm-16", "key": os.urandom(20).hex()},
        "selectors": [{"src": inner_src, "dst": inner_dst}],
        "encapsulation": {"type": "udp", "sport": port, "dport": port}}
    d.update(extra)
    return d


def pair(i: int, spi: int | None = None, **extra: Any) -> dict[str, dict[str, Any]]:
    """Keyword arguments of create_context: a tunnel from A to peer ``i`` (its own inner
    network), inbound SPI ``spi`` (default 0x10000 + i)."""
    b, net = remote(i), f"10.{2 + i // 256}.{i % 256}.0/24"
    return {"outbound": tunnel_sa(0x80000000 + i, A, b, "10.1.0.0/24", net, **extra),
            "inbound": tunnel_sa(0x10000 + i if spi is None else spi, b, A, net, "10.1.0.0/24",
                                 **extra)}


def reference(core: EngineGatewayCore) -> tuple[set, dict[int, int], set]:
    """(peers, SPI map, hosts) from a full listing, by the rule the gateway used to apply to
    every context each second."""
    contexts = core.engine.contexts()
    spis = {c.inbound_spi: c.id for c in contexts if c.inbound_spi is not None}
    peers = set()
    for c in contexts:
        if c.state in ("established", "expiring") and c.outbound and core._usable(c):
            port = c.udp_encapsulation["remote_port"] if c.udp_encapsulation else 0
            peers.add(core._dest(ipaddress.ip_address(c.remote).packed, port))
    hosts = {ipaddress.ip_address(c.remote) for c in contexts
             if c.ip_version == core.local.version}
    return peers, spis, hosts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(clock: Clock) -> Iterator[api.Engine]:
    with api.Engine(clock=clock) as eng:
        yield eng


def housekeeping(core: EngineGatewayCore) -> tuple[set, dict[int, int], set]:
    """One pass as :meth:`handle_timer` makes it (timers, then the peers), with the events
    the timers caused delivered first so that the pass sees them (in the gateway they are
    seen by the next pass, a second later)."""
    core.sa_timers(0.0)
    core.engine.flush_events()
    return core.current_peers(), dict(core._spi_ctx), core.peer_hosts()


def test_peers_and_spis_follow_every_kind_of_change(engine: api.Engine, clock: Clock) -> None:
    first = engine.create_context(**pair(0))
    second = engine.create_context(**pair(1))
    core = EngineGatewayCore(engine, local=A)
    try:
        state = housekeeping(core)  # the initial listing
        assert state == reference(core)
        assert state[0] == {(remote(0), 4500), (remote(1), 4500)}

        lived = engine.create_context(**pair(2, lifetime={"hard": {"seconds": 30}}))
        b3 = pair(3)
        net3 = b3["inbound"]["selectors"][0]["src"]
        out_f = engine.add_ipsec_filter("outbound", local="10.1.0.0/24", remote=net3,
                                        mode="tunnel")
        in_f = engine.add_ipsec_filter("inbound", local="10.1.0.0/24", remote=net3,
                                       mode="tunnel")
        step = engine.new_context(local=A, remote=remote(3), outbound_filter=out_f,
                                  mode="tunnel")
        other_port = engine.create_context(**pair(4, port=4501))  # not this gateway's port
        state = housekeeping(core)
        assert state == reference(core)
        assert (remote(2), 4500) in state[0] and (remote(4), 4501) not in state[0]
        assert state[1][0x10004] == other_port.id and step.id in core._tracked

        # Step by step: the SPI is known before the context carries traffic.
        engine.set_spi(step.id, 0x10003, inbound_filter=in_f,
                       encapsulation={"local_port": 4500, "remote_port": 4500})
        state = housekeeping(core)
        assert state == reference(core) and state[1][0x10003] == step.id
        assert (remote(3), 4500) not in state[0]
        engine.add_inbound(step.id, b3["inbound"])
        state = housekeeping(core)
        assert state == reference(core) and (remote(3), 4500) not in state[0]
        engine.add_outbound(step.id, b3["outbound"])
        state = housekeeping(core)
        assert state == reference(core) and (remote(3), 4500) in state[0]

        engine.delete(first.id)  # delete
        engine.expire(second.id)  # Expire: no longer a peer, its SPI still received on
        state = housekeeping(core)
        assert state == reference(core)
        assert (remote(0), 4500) not in state[0] and 0x10000 not in state[1]
        assert (remote(1), 4500) not in state[0] and state[1][0x10001] == second.id

        clock.now += 31  # the hard lifetime of ``lived``: expired by the engine's timer
        state = housekeeping(core)
        assert state == reference(core)
        assert (remote(2), 4500) not in state[0] and state[1][0x10002] == lived.id

        clock.now += 30  # the linger of ``second`` ends (60 s after its Expire)
        state = housekeeping(core)
        assert state == reference(core) and 0x10001 not in state[1]
        assert ipaddress.ip_address(remote(1)) not in state[2]

        clock.now += 31  # and that of ``lived``
        state = housekeeping(core)
        assert state == reference(core) and 0x10002 not in state[1]

        again = engine.create_context(**pair(0))  # re-added: same SPI and peer, a new id
        state = housekeeping(core)
        assert state == reference(core)
        assert state[1][0x10000] == again.id != first.id and (remote(0), 4500) in state[0]
    finally:
        core.close()


def test_lost_events_lead_to_a_full_listing(engine: api.Engine) -> None:
    """When the engine says notifications were dropped, the next pass lists everything: a
    change whose event never arrived is not missed for good."""
    engine.create_context(**pair(0))
    core = EngineGatewayCore(engine, local=A)
    try:
        assert housekeeping(core) == reference(core)
        sub = core._subscription
        assert sub is not None
        sub.cancel()  # from here on no event reaches the gateway, as if all were dropped
        engine.create_context(**pair(1))
        assert housekeeping(core) != reference(core)
        engine.wfp._notifier.dropped += 1  # what the queue does when it overflows
        assert housekeeping(core) == reference(core)
    finally:
        core.close()


def test_a_change_is_seen_by_the_next_pass_of_handle_timer(engine: api.Engine,
                                                           clock: Clock) -> None:
    """Through :meth:`handle_timer` itself: an expiry by lifetime happens in one pass and
    reaches the peer set (and the keepalives) by the next."""
    engine.create_context(**pair(0, lifetime={"hard": {"seconds": 5}}))
    core = EngineGatewayCore(engine, local=A, keepalive=0)
    try:
        core.handle_timer(0.0)
        assert core._peers == {(remote(0), 4500)}
        clock.now += 6
        core.handle_timer(1.0)
        engine.flush_events()
        core.handle_timer(2.0)
        assert core._peers == set()
        assert engine.contexts()[0].state == "expiring"
    finally:
        core.close()


def counting(engine: api.Engine, name: str) -> list[int]:
    """Count the calls of ``engine.<name>`` (still calling the real method)."""
    calls = [0]
    real: Callable[..., Any] = getattr(engine, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    setattr(engine, name, wrapper)
    return calls


def test_housekeeping_does_not_list_every_context_each_second(engine: api.Engine,
                                                              clock: Clock) -> None:
    n = 2000
    for i in range(n):
        engine.create_context(**pair(i))
    listings = counting(engine, "contexts")
    reads = counting(engine, "context")
    core = EngineGatewayCore(engine, local=A)
    try:
        now = 0.0
        core.handle_timer(now)
        assert listings[0] == 1 and len(core._peers) == n  # the initial listing
        gone = engine.contexts()[7].id
        listings[0] -= 1
        engine.delete(gone)
        engine.create_context(**pair(n))
        reads[0] = 0  # the API's own reads in delete and create_context
        for _ in range(10):  # ten seconds of housekeeping
            now += 1.0
            clock.now += 1.0
            engine.flush_events()
            core.handle_timer(now)
        assert listings[0] == 1  # no listing after the first
        assert reads[0] == 2  # the created context and the deleted one, once each
        assert core._peers == reference(core)[0] and len(core._peers) == n
        assert core._spi_ctx == reference(core)[1]
    finally:
        core.close()


def test_a_peer_that_moved_is_readdressed(engine: api.Engine) -> None:
    """After NAT roaming moved a peer (:meth:`GatewayCore._roam` records it and forgets the
    routes), the next pass hands out its new address, with no listing."""
    engine.create_context(**pair(0))
    engine.create_context(**pair(1))
    core = EngineGatewayCore(engine, local=A)
    try:
        housekeeping(core)
        listings = counting(engine, "contexts")
        core._moved[ipaddress.ip_address(remote(0))] = ("203.0.113.9", 31000)
        core._forget_routes()
        peers = housekeeping(core)[0]
        assert listings[0] == 0
        assert peers == {("203.0.113.9", 31000), (remote(1), 4500)}
        assert peers == reference(core)[0]
    finally:
        core.close()
