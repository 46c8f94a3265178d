"""The gateway's core over the SA-context engine (``ipsecsa serve --tun``), not over a bare SA
database.

Why the engine and not its SA database: in the engine, what is protected is decided by the
filters (reference F.20: an outbound packet is classified at the transport layer and the IPsec
filter it matches names the SA contexts that may carry it); the engine's SA database only indexes
the inbound SAs by SPI. Going through :meth:`ipsecsa.api.Engine.outbound` and
:meth:`~ipsecsa.api.Engine.inbound` — the host stack's own entry points — gives the gateway
exactly the engine's semantics with nothing repeated here: a context created through the API
carries traffic from its ``established`` state on; an expired context stops sending at once and
receives for its linger; a deleted one neither sends nor receives from the next packet on (the
engine's flow cache is invalidated by every change); sequence numbers are reserved in the
engine's store before use, so a restarted service never repeats one; lifetimes and the engine's
statistics count the gateway's packets.

What differs from :class:`~ipsecsa.gateway.core.GatewayCore`:

* where a datagram goes is read from the outer header the engine built (destination address and,
  for ESP in UDP, the destination port): the context's remote address and encapsulation port;
* the path-MTU check happens after protection, from the size of the packet the engine built
  (the engine does not say which SA it will use before it uses it); a DF packet too big is then
  dropped and answered with ICMP, its sequence number unused on the wire (a gap is harmless to
  the peer's anti-replay window). The limit reported is conservative by up to one cipher block;
* NAT roaming (:meth:`GatewayCore._roam`'s rule) finds the context by the packet's SPI and its
  window edge through the engine's API (at most :data:`ROAM_CHECKS_PER_SECOND` lookups a
  second); the new address is kept here, the context keeps the one it was made with;
* packets the engine lets through in clear (no IPsec filter covers them), or hands back
  unchanged inbound (not ESP for one of its contexts), are dropped: the TUN and the socket carry
  tunnel traffic only;
* housekeeping costs what changed, not what exists. The peers (keepalives go to them), the
  peers' hosts (whose route MTU bounds the tunnel's) and the inbound SPI -> context map (NAT
  roaming) are kept from the engine's SA-context events, with state changes
  (``subscribe(states=True)``: SPI set, a side added, Expire called, a lifetime or a hard limit
  reached) as well as additions and deletions. The contexts are listed once at start and again
  only when events may have been lost (the engine's notification queue overflowed, the engine
  answered an error); each event costs one ``context(id)`` read, at the next housekeeping pass
  (so a change reaches the peer set within a second or two). The engine's timers are run by
  :meth:`ipsecsa.api.Engine.run_timers`, which reads nothing. A principal without the right to
  subscribe falls back to listing every pass (logged once).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from ipsecsa.api.errors import NotFound, WfpError
from ipsecsa.datapath.result import DROPPED, Result
from ipsecsa.errors import DropReason
from ipsecsa.gateway.core import (
    _SPI_SEQ,
    KEEPALIVE_INTERVAL,
    NATT_PORT,
    Address,
    GatewayCore,
    Output,
    _Budget,
    _Edge,
)
from ipsecsa.gateway.mtu import (
    DEFAULT_PATH_MTU,
    ESP_TRAILER_LEN,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    MIN_TUN_MTU,
    UDP_HEADER_LEN,
)
from ipsecsa.packet.natt import ESP_HEADER_LEN

if TYPE_CHECKING:
    from ipsecsa.api import Engine, Subscription

log = logging.getLogger("ipsecsa.gateway")

# --- implementation constants ------------------------------------------------------------------
#: The largest ESP overhead of an SA the engine accepts, less the outer headers: IV (16, CBC),
#: the most padding a 16-byte block needs, the trailer, and the longest ICV (32, HMAC-SHA-512
#: truncated to 256 bits). The TUN is created for it: contexts come and go while it exists.
WORST_ESP_OVERHEAD = ESP_HEADER_LEN + 16 + 15 + ESP_TRAILER_LEN + 32
#: The most an inner packet's limit derived from one protected packet can be too high by: the
#: padding to the cipher's block that a smaller packet needs less of.
_PAD_SLACK = 15

_ESTABLISHED = ("established", "expiring")
#: Context lookups per second for NAT roaming checks (datagrams from unverified sources).
ROAM_CHECKS_PER_SECOND = 100

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Tracked(NamedTuple):
    """What the gateway keeps of one context: its inbound SPI, where its traffic goes (outer
    destination, UDP port; None unless it is established, can send and suits the gateway) and
    its remote host (None if of the other family)."""

    spi: int | None
    peer: tuple[bytes, int] | None
    host: IpAddress | None


class EngineGatewayCore(GatewayCore):
    """:class:`GatewayCore` over an :class:`ipsecsa.api.Engine` (see the module docstring).

    ``peer``, ``transport``, ``port``, ``keepalive``: as for :class:`GatewayCore`. Contexts whose
    outer family is not ``local``'s, or whose encapsulation does not suit the transport (UDP
    encapsulation on ``port`` for ``udp``, none for ``raw``), have their packets dropped and
    counted (``sa_unusable``)."""

    #: A peer that moves is followed here, in the gateway: the engine's context keeps the
    #: remote address it was made with (its outer header is replaced by the socket's anyway).
    ROAMING = True

    def __init__(self, engine: Engine, *, local: str | ipaddress.IPv4Address |
                 ipaddress.IPv6Address, port: int = NATT_PORT,
                 peer: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
                 transport: str = "udp", keepalive: float = KEEPALIVE_INTERVAL,
                 path_mtu: int = DEFAULT_PATH_MTU) -> None:
        self.engine = engine
        self._setup(local, port, peer, transport, keepalive, path_mtu)
        #: (outer destination, UDP destination port) -> where the socket sends it.
        self._dests: dict[tuple[bytes, int], Address] = {}
        #: Inbound SPI -> context id, kept with the peer list from the engine's events.
        self._spi_ctx: dict[int, int] = {}
        #: Context id -> what it contributes to the maps below (see :meth:`_refresh`).
        self._tracked: dict[int, _Tracked] = {}
        self._peer_keys: collections.Counter[tuple[bytes, int]] = collections.Counter()
        self._hosts: collections.Counter[IpAddress] = collections.Counter()
        #: Where each peer's datagrams go (kept with ``_peer_keys``; made again after a move).
        self._peer_addr: dict[tuple[bytes, int], Address] = {}
        self._readdress = False
        #: The peers' addresses as last handed out (None: to make again); replaced, never
        #: changed in place, so the set :meth:`GatewayCore.handle_timer` compares with stays.
        self._peer_addrs: set[Address] | None = None
        #: Ids of contexts that changed since the last refresh (appended by the engine's
        #: notification thread, read by the housekeeping thread).
        self._dirty: collections.deque[int] = collections.deque()
        self._subscription: Subscription | None = None
        self._subscribe_refused = False
        self._resync = True
        self._events_dropped = 0
        #: Context lookups for roaming checks this second (a flood of datagrams from unknown
        #: sources must not turn into a flood of engine calls).
        self._roam_budget = _Budget(ROAM_CHECKS_PER_SECOND)

    # ----------------------------------------------------------------- outbound
    def from_tun(self, packets: Iterable[bytes], now: float | None = None) -> Output:
        """Each packet through the engine's outbound path; what it protected goes to the address
        in the outer header it built."""
        if now is None:
            now = time.monotonic()
        net: list[tuple[bytes | memoryview, int, Address]] = []
        tun: list[bytes] = []
        outbound = self.engine.outbound
        udp = self.transport == "udp"
        v6 = self.v6
        n = 0
        for pkt in packets:
            n += 1
            out, reason = outbound(pkt)
            if out is None:
                if reason is not None and reason is not DropReason.NO_POLICY:
                    continue  # counted by the engine (blocked, an SA's drop)
                self._drop(DropReason.NO_POLICY)
                continue
            if out is pkt or len(out) < 28 or (out[0] >> 4 == 6) != v6:
                # Passed in clear, or a context of the other family: nothing to send it to.
                self._drop(DropReason.NO_POLICY if out is pkt else DropReason.SA_UNUSABLE)
                continue
            if v6:
                hlen, proto, dst = IPV6_HEADER_LEN, out[6], out[24:40]
            else:
                hlen, proto, dst = (out[0] & 15) << 2, out[9], out[16:20]
            if udp:
                if proto != 17:
                    self._drop(DropReason.SA_UNUSABLE)
                    continue
                dport = out[hlen + 2] << 8 | out[hlen + 3]
                strip = hlen + UDP_HEADER_LEN
            else:
                if proto != 50:
                    self._drop(DropReason.SA_UNUSABLE)
                    continue
                dport, strip = 0, hlen
            if len(out) > self.path_mtu:
                limit = self.path_mtu - (len(out) - len(pkt)) - _PAD_SLACK
                if self._too_big(pkt, max(limit, MIN_TUN_MTU), now, tun):
                    continue
            addr = self._dests.get((dst, dport))
            if addr is None:
                addr = self._dest(dst, dport)
            tos = (out[0] & 15) << 4 | out[1] >> 4 if v6 else out[1]
            net.append((memoryview(out)[strip:], tos, addr))
            self._last_tx[addr] = now
        self.counters.tun_rx += n
        return Output(net, tun)

    def _dest(self, dst: bytes, dport: int) -> Address:
        peer = ipaddress.ip_address(dst)
        host = str(self.peer if self.peer is not None else peer)
        addr: Address = (host, dport, 0, 0) if self.v6 else (host, dport)
        addr = self._moved.get(peer, addr)
        if len(self._dests) >= 1024:
            self._dests.clear()
        self._dests[(dst, dport)] = addr
        return addr

    # ----------------------------------------------------------------- inbound
    def _unprotect(self, pkts: list[bytes], now: float) -> list[Result]:
        """Each packet through the engine's inbound path (which finds the context by SPI, checks
        anti-replay and ICV, then the inner packet against the context's inbound filter)."""
        inbound = self.engine.inbound
        out: list[Result] = []
        for pkt in pkts:
            res = inbound(pkt)
            if res[0] is pkt:  # not ESP of a context: the engine passed it as clear text
                self._drop(DropReason.CLEAR_TEXT)
                res = DROPPED[DropReason.CLEAR_TEXT]
            out.append(res)
        return out

    # ----------------------------------------------------------------- NAT roaming
    def _forget_routes(self) -> None:
        self._dests = {}
        self._readdress = True  # a peer moved: the housekeeping thread makes them again

    def _edges(self, roaming: list[tuple[int, Address, bytes]]) -> list[_Edge]:
        """As :meth:`GatewayCore._edges`, with the context found by its inbound SPI and its
        window edge read from the engine (one context lookup per context and batch, at most
        :data:`ROAM_CHECKS_PER_SECOND` a second)."""
        out = []
        infos: dict[int, Any] = {}
        now = time.monotonic()
        for i, src, head in roaming:
            spi, seq = _SPI_SEQ.unpack(head)
            ctx_id = self._spi_ctx.get(spi)
            if ctx_id is None:
                continue  # unknown, or newer than the last refresh: checked again later
            info = infos.get(ctx_id)
            if info is None:
                if not self._roam_budget.take(now):
                    continue
                try:
                    info = infos[ctx_id] = self.engine.context(ctx_id)
                except WfpError:  # deleted meanwhile, or the engine closing: nothing to follow
                    continue
            encap = info.udp_encapsulation
            if not info.inbound or encap is None or info.inbound_spi != spi:
                continue
            peer = ipaddress.ip_address(info.remote)
            host = str(self.peer if self.peer is not None else peer)
            out.append(_Edge(i, src, peer, (host, encap["remote_port"]), spi, seq,
                             info.inbound[-1].seq))
        return out

    # ----------------------------------------------------------------- peers, MTU, timers
    def _contexts(self) -> list[Any]:
        try:
            return self.engine.contexts()
        except Exception:  # noqa: BLE001 - the engine closing under us: no contexts
            return []

    def _usable(self, ctx: Any) -> bool:
        if ctx.mode != "tunnel" or ctx.ip_version != self.local.version:
            return False
        encap = ctx.udp_encapsulation
        if self.transport == "udp":
            return encap is not None and encap["local_port"] == self.port
        return encap is None

    def _subscribe(self) -> None:
        """Subscribe to the engine's context events (once); a refusal is logged once and the
        contexts are listed on every refresh instead."""
        if self._subscription is not None or self._subscribe_refused:
            return
        try:
            self._subscription = self.engine.subscribe(self._changed, states=True)
        except WfpError as exc:
            self._subscribe_refused = True
            log.warning("no subscription to SA-context events (%s): the gateway lists every "
                        "context each second instead", exc)
        self._resync = True

    def _changed(self, event: Any) -> None:
        """On the engine's notification thread: note the context, read it at the next refresh
        (never calls the engine, so it cannot hold up other subscribers)."""
        self._dirty.append(event.context_id)

    def _refresh(self) -> None:
        """Bring the peers, hosts and SPI map up to date: from the contexts named by events
        since the last refresh, or from a full listing at start and whenever events may have
        been lost."""
        self._subscribe()
        dropped = self.engine.events_dropped
        if dropped != self._events_dropped:
            self._events_dropped = dropped
            self._resync = True
        if self._resync or self._subscription is None:
            self._dirty.clear()  # what changes from here on is read again after the listing
            self._resync = False
            self._track_all(self._contexts())
            return
        dirty = self._dirty
        seen: set[int] = set()
        while dirty:
            ctx_id = dirty.popleft()
            if ctx_id in seen:
                continue
            seen.add(ctx_id)
            try:
                info = self.engine.context(ctx_id)
            except NotFound:
                self._untrack(ctx_id)
                continue
            except WfpError:  # the engine closing, or failing: read everything next time
                self._resync = True
                return
            self._track(info)

    def _track_all(self, contexts: list[Any]) -> None:
        self._tracked = {}
        self._spi_ctx = {}
        self._peer_keys = collections.Counter()
        self._hosts = collections.Counter()
        self._peer_addr = {}
        self._peer_addrs = None
        for ctx in contexts:
            self._track(ctx)

    def _track(self, ctx: Any) -> None:
        """Record what context ``ctx`` (a :class:`ContextInfo`) contributes, replacing what it
        contributed before."""
        self._untrack(ctx.id)
        remote = ipaddress.ip_address(ctx.remote)
        peer = None
        if ctx.state in _ESTABLISHED and ctx.outbound and self._usable(ctx):
            port = ctx.udp_encapsulation["remote_port"] if ctx.udp_encapsulation else 0
            peer = (remote.packed, port)
            if not self._peer_keys[peer]:
                self._peer_addr[peer] = self._dests.get(peer) or self._dest(*peer)
                self._peer_addrs = None
            self._peer_keys[peer] += 1
        host = remote if ctx.ip_version == self.local.version else None
        if host is not None:
            self._hosts[host] += 1
        if ctx.inbound_spi is not None:
            self._spi_ctx[ctx.inbound_spi] = ctx.id
        self._tracked[ctx.id] = _Tracked(ctx.inbound_spi, peer, host)

    def _untrack(self, ctx_id: int) -> None:
        old = self._tracked.pop(ctx_id, None)
        if old is None:
            return
        if old.spi is not None and self._spi_ctx.get(old.spi) == ctx_id:
            del self._spi_ctx[old.spi]
        if old.peer is not None:
            self._peer_keys[old.peer] -= 1
            if self._peer_keys[old.peer] <= 0:
                del self._peer_keys[old.peer]
                del self._peer_addr[old.peer]
                self._peer_addrs = None
        if old.host is not None:
            self._hosts[old.host] -= 1
            if self._hosts[old.host] <= 0:
                del self._hosts[old.host]

    def current_peers(self) -> set[Address]:
        """The addresses of the peers of the established contexts that suit the gateway:
        kept from events (see the module docstring). A new set only when a peer came or went
        (a copy, at C speed) or moved (each peer's address made again)."""
        self._refresh()
        if self._readdress:
            self._readdress = False
            self._peer_addr = {k: self._dest(*k) for k in self._peer_addr}
            self._peer_addrs = None
        if self._peer_addrs is None:
            self._peer_addrs = set(self._peer_addr.values())
        return self._peer_addrs

    def peer_hosts(self) -> set[IpAddress]:
        if self.peer is not None:
            return {self.peer}
        self._refresh()
        return set(self._hosts)

    def tun_mtu(self) -> int:
        """Room for the largest ESP overhead of any SA: contexts come and go under the TUN."""
        outer = (IPV6_HEADER_LEN if self.v6 else IPV4_HEADER_LEN) + (
            UDP_HEADER_LEN if self.transport == "udp" else 0)
        return max(MIN_TUN_MTU, self.path_mtu - outer - WORST_ESP_OVERHEAD)

    def sa_timers(self, now: float, direction: str | None = None) -> None:
        """The engine runs its own timers (lifetimes, lingers) on every call;
        :meth:`~ipsecsa.api.Engine.run_timers` is the call that does only that, so an idle
        context still expires on time, at no cost unless a timer is due."""
        try:
            self.engine.run_timers()
        except WfpError:
            pass  # the engine closing under us: nothing left to expire

    def close(self) -> None:
        """Cancel the subscription to the engine's events."""
        sub, self._subscription = self._subscription, None
        if sub is not None:
            try:
                sub.cancel()
            except WfpError:
                pass  # the engine is closing: the subscription goes with it

    # ----------------------------------------------------------------- statistics
    def stats(self) -> dict:
        """The gateway's counters, its own drops, and per SA of every context the engine's
        counters (which include packets the engine carried for others).

        On demand only (SIGUSR1, exit, the service's stop), never per second: it lists every
        context, which costs about 60 us per context (a view and a ContextInfo each; some 5 s
        for 100,000) and holds the engine's lock while the views are made."""
        sas = []
        for ctx in self._contexts():
            for direction, side in (("inbound", ctx.inbound), ("outbound", ctx.outbound)):
                for sa in side:
                    sas.append({"context": ctx.id, "spi": f"0x{sa.spi:08x}",
                                "protocol": sa.protocol, "direction": direction,
                                "src": ctx.remote if direction == "inbound" else ctx.local,
                                "dst": ctx.local if direction == "inbound" else ctx.remote,
                                "state": sa.state, "installed": True, "packets": sa.packets,
                                "bytes": sa.bytes, "seq": sa.seq, "drops": dict(sa.drops)})
        return {"gateway": {**self.counters.as_dict(), "path_mtu": self.path_mtu,
                            "transport": self.transport, "local": str(self.local),
                            "port": self.port, "engine": True},
                "drops": dict(sorted((r.value, n) for r, n in self.drops.items())),
                "sas": sas}


__all__ = ["WORST_ESP_OVERHEAD", "EngineGatewayCore"]
