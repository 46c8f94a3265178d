"""The gateway's sans-IO core: packets from the TUN become datagrams for the peer, datagrams from
the peer become packets for the TUN.

Nothing here touches a file descriptor. The I/O edge (:mod:`ipsecsa.gateway.loop`) reads what is
ready, hands it over in batches, and performs what comes back: :class:`Output` lists the datagrams
to send (payload, outer TOS / traffic class, address) and the packets to write into the TUN. A
test can therefore drive two cores back to back with no TUN, socket or clock of its own.

The data path works on whole IP packets: outbound, the SA builds the outer IP (and UDP) header
and the core hands the socket what follows it (the kernel writes its own headers); inbound, the
core puts back in front of the UDP payload the outer IP/UDP header it arrived with — source and
ports from the socket, the TOS from ``IP_RECVTOS`` so that RFC 6040 ECN decapsulation sees the
real codepoint — so that exactly the checks a wire packet gets (SPI lookup by destination, UDP
length, anti-replay, ICV, selectors) apply.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ipsecsa.datapath.result import Result
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import DropReason, MalformedPacket
from ipsecsa.gateway.mtu import DEFAULT_PATH_MTU, max_inner, outer_header_len, tun_mtu_for
from ipsecsa.packet.checksum import fold16, ones_sum, pseudo_header_sum
from ipsecsa.packet.icmp import IPV6_MIN_MTU, frag_needed_v4, packet_too_big_v6
from ipsecsa.packet.natt import KEEPALIVE, NON_ESP_MARKER
from ipsecsa.sad.database import SaDatabase

log = logging.getLogger("ipsecsa.gateway")

# --- specification constants -------------------------------------------------------------------
PROTO_UDP = 17
PROTO_ESP = 50
NATT_PORT = 4500  # RFC 3948 §2

# --- implementation constants ------------------------------------------------------------------
#: Default idle time after which a NAT-T keepalive goes to a peer (RFC 3948 §4 suggests 20 s).
KEEPALIVE_INTERVAL = 20.0
#: How often SA timers (time lifetimes) and the peer list are looked at.
HOUSEKEEPING_INTERVAL = 1.0
#: ICMP errors we originate per second at most (a flood of oversized packets must not turn the
#: gateway into an ICMP generator; RFC 4443 §2.4 (f) asks for a limit).
ICMP_PER_SECOND = 100
#: TTL written into the outer header the core puts back in front of a received datagram (the
#: socket does not report the real one and the data path does not use it).
RECEIVED_TTL = 64
#: Source addresses remembered in their packed form.
_ADDR_CACHE_MAX = 1024

TRANSPORTS = ("udp", "raw")

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_SPI_SEQ = struct.Struct("!II")

Address = tuple  # what socket.sendto takes: (host, port) or (host, port, flowinfo, scope)


class Output(NamedTuple):
    """What the edge has to do: ``net`` = (payload, TOS or traffic class, address) datagrams for
    the peer; ``tun`` = IP packets for the TUN."""

    net: list[tuple[bytes | memoryview, int, Address]]
    tun: list[bytes]


class _Edge(NamedTuple):
    """A received datagram that may show its peer moved (see ``GatewayCore._roam``)."""

    pos: int  # in the batch
    src: Address  # where it came from, as the socket said
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address  # the peer as the SAs name it
    configured: tuple[str, int]  # where the SAs say the peer is
    spi: int
    seq: int  # the packet's sequence number (low 32 bits)
    top: int  # the SA's highest sequence number received before this batch


@dataclass(slots=True)
class GatewayCounters:
    """Counters of the gateway itself (each SA keeps its own)."""

    tun_rx: int = 0
    tun_tx: int = 0
    net_rx: int = 0
    net_tx: int = 0
    keepalive_rx: int = 0
    keepalive_tx: int = 0
    ike_rx: int = 0
    icmp_tx: int = 0
    #: Datagrams the socket refused, packets the TUN refused (kept apart: with two threads,
    #: each counter has one writer).
    send_errors: int = 0
    tun_errors: int = 0
    #: Times a peer was found at a new address or port (NAT roaming, see ``from_net``).
    peer_moved: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


@dataclass(slots=True)
class _Route:
    """Where the packets of one outbound SA go, computed once per SA (and per path MTU)."""

    addr: Address | None  # None: the SA cannot be carried by this transport
    strip: int  # bytes of outer header the kernel writes instead of us
    limit: int  # largest inner packet that fits the path
    v6_outer: bool


class _Budget:
    """At most ``per_second`` of something a second (ICMP errors, roaming checks)."""

    __slots__ = ("left", "per_second", "second")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.second = 0.0
        self.left = per_second

    def take(self, now: float) -> bool:
        if now - self.second >= 1.0:
            self.second, self.left = now, self.per_second
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def _sa_entry(sa: SecurityAssociation, installed: bool) -> dict:
    c = sa.counters
    return {
        "spi": f"0x{sa.spi:08x}",
        "protocol": sa.PROTOCOL,
        "direction": sa.direction,
        "src": str(sa.config.src),
        "dst": str(sa.config.dst),
        "state": sa.state.value,
        "installed": installed,
        "packets": c.packets,
        "bytes": c.bytes,
        "seq": sa.seq,
        "drops": {r.value: n for r, n in sorted(c.drops.items(), key=lambda i: i[0].value)},
    }


class GatewayCore:
    """The gateway's packet logic over an SA database (see the module docstring).

    ``local`` is the address the gateway's socket is bound to; inbound SAs are found by it (it is
    the destination of the packets the peer sends). ``port`` is the UDP port (ESP-in-UDP,
    RFC 3948). ``peer`` replaces every outbound SA's ``dst`` as the address datagrams go to.
    ``transport`` is ``"udp"`` (ESP in UDP on ``port``) or ``"raw"`` (ESP as IP protocol 50).
    """

    #: Whether peers that move are followed (NAT roaming, :meth:`_roam`).
    ROAMING = True

    def __init__(self, sad: SaDatabase, *, local: str | ipaddress.IPv4Address |
                 ipaddress.IPv6Address, port: int = NATT_PORT,
                 peer: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
                 transport: str = "udp", keepalive: float = KEEPALIVE_INTERVAL,
                 path_mtu: int = DEFAULT_PATH_MTU) -> None:
        self.sad = sad
        self._setup(local, port, peer, transport, keepalive, path_mtu)

    def _setup(self, local: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
               peer: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None,
               transport: str, keepalive: float, path_mtu: int) -> None:
        """Everything but the source of SAs (shared with the engine-backed core)."""
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.local = ipaddress.ip_address(local)
        self.peer = ipaddress.ip_address(peer) if peer is not None else None
        if self.peer is not None and self.peer.version != self.local.version:
            raise ValueError(f"peer {self.peer} and local address {self.local} are of "
                             "different families")
        self.port = port
        self.transport = transport
        self.keepalive = keepalive
        self.path_mtu = path_mtu
        self.v6 = self.local.version == 6
        self.counters = GatewayCounters()
        #: Packets dropped before an SA was known (no policy, unparsable), by reason.
        self.drops: dict[DropReason, int] = {}
        self._routes: dict[SecurityAssociation, _Route] = {}
        self._addr_cache: dict[str, bytes] = {}
        self._last_tx: dict[Address, float] = {}
        self._peers: set[Address] = set()
        self._icmp = _Budget(ICMP_PER_SECOND)
        #: NAT roaming: where a peer (by the address the SAs name) was last seen sending
        #: authenticated ESP from, when that differs from what the SAs say. Written by the
        #: receiving thread only; the sending thread reads it when it makes a route.
        self._moved: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, Address] = {}
        #: Sources whose datagrams need no roaming check (each matched its peer's address).
        self._sources: set[Address] = set()
        self._retired: list[dict] = []
        self._next_housekeeping = 0.0
        #: The earliest keepalive due as of the last :meth:`handle_timer` (None: no peer).
        #: Traffic since then only makes the true one later, so waking at this one is safe.
        self._next_keepalive: float | None = None
        self._local_b = self.local.packed
        # The constant part of the checksum of the IPv4 header put back on received datagrams.
        proto = PROTO_UDP if transport == "udp" else PROTO_ESP
        self._rx_proto = proto
        self._v4_sum = (0x45 << 8) + (RECEIVED_TTL << 8) + proto + (
            sum(struct.unpack("!HH", self._local_b)) if not self.v6 else 0)

    # ----------------------------------------------------------------- accounting
    def _drop(self, reason: DropReason) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def retire(self, sa: SecurityAssociation) -> None:
        """Keep the final counters of an SA taken out of the database (a rekey's old SA), so
        that statistics still show what it carried."""
        self._retired.append(_sa_entry(sa, installed=False))
        self._routes.pop(sa, None)

    def stats(self) -> dict:
        """Counters of the gateway, of every installed SA and of retired ones (no key material)."""
        sas = [_sa_entry(sa, installed=True) for _h, _d, bundle in self.sad for sa in bundle.sas]
        drops = {r.value: n for r, n in self.drops.items()}
        for r, n in self.sad.drops.items():
            drops[r.value] = drops.get(r.value, 0) + n
        return {"gateway": {**self.counters.as_dict(), "path_mtu": self.path_mtu,
                            "transport": self.transport, "local": str(self.local),
                            "port": self.port},
                "drops": dict(sorted(drops.items())),
                "sas": sas + self._retired}

    # ----------------------------------------------------------------- outbound
    def set_path_mtu(self, mtu: int) -> None:
        """The MTU of the route to the peer changed (or was learnt): recompute the limits."""
        if mtu != self.path_mtu:
            log.info("path MTU %d -> %d", self.path_mtu, mtu)
            self.path_mtu = mtu
            self._routes.clear()

    def route_of(self, sa: SecurityAssociation) -> _Route:
        """Where ``sa``'s packets go (cached per SA)."""
        route = self._routes.get(sa)
        if route is None:
            route = self._routes[sa] = self._make_route(sa)
        return route

    def _make_route(self, sa: SecurityAssociation) -> _Route:
        c = sa.config
        v6 = c.dst.version == 6
        problem = None
        if sa.PROTOCOL != "esp" or sa.mode != "tunnel":
            problem = "the gateway carries tunnel-mode ESP SAs only"
        elif v6 != self.v6:
            problem = f"its outer addresses are not of the family of {self.local}"
        elif self.transport == "udp" and c.encapsulation is None:
            problem = "it has no UDP encapsulation and the transport is udp"
        elif self.transport == "raw" and c.encapsulation is not None:
            problem = "it is UDP-encapsulated and the transport is raw"
        if problem is not None:
            log.error("SA 0x%08x cannot be carried: %s", sa.spi, problem)
            return _Route(None, 0, 0, v6)
        host = str(self.peer if self.peer is not None else c.dst)
        port = c.encapsulation.dport if c.encapsulation is not None else 0
        addr: Address = (host, port, 0, 0) if v6 else (host, port)
        addr = self._moved.get(c.dst, addr)
        strip = outer_header_len(sa) if self.transport == "udp" else (40 if v6 else 20)
        return _Route(addr, strip, max_inner(sa, self.path_mtu), v6)

    def from_tun(self, packets: Iterable[bytes], now: float | None = None) -> Output:
        """Classify, protect and address a batch of packets the host routed into the TUN.

        Consecutive packets of one SA (a flow's burst) are protected with one ``protect_batch``
        call, the SA's batch entry point (which a native engine may accelerate); sequence
        numbers follow the order the TUN delivered them in."""
        if now is None:
            now = time.monotonic()
        net: list[tuple[bytes | memoryview, int, Address]] = []
        tun: list[bytes] = []
        classify = self.sad.classify
        routes = self._routes
        run: list[bytes] = []
        run_sa: SecurityAssociation | None = None
        run_route: _Route | None = None
        n = 0
        for pkt in packets:
            n += 1
            try:
                bundle = classify(pkt)
            except MalformedPacket as exc:
                self._drop(exc.reason)
                continue
            if bundle is None:
                self._drop(DropReason.NO_POLICY)
                continue
            sa = bundle.sas[0]
            route = routes.get(sa)
            if route is None:
                route = self.route_of(sa)
            if route.addr is None or len(bundle.sas) != 1:
                self._drop(DropReason.SA_UNUSABLE)
                continue
            if len(pkt) > route.limit and self._too_big(pkt, route.limit, now, tun):
                continue
            if sa is not run_sa:
                if run:
                    self._protect_run(run_sa, run_route, run, now, net)  # type: ignore[arg-type]
                run, run_sa, run_route = [pkt], sa, route
            else:
                run.append(pkt)
        if run:
            self._protect_run(run_sa, run_route, run, now, net)  # type: ignore[arg-type]
        self.counters.tun_rx += n
        return Output(net, tun)

    def _protect_run(self, sa: SecurityAssociation, route: _Route, run: list[bytes], now: float,
                     net: list[tuple[bytes | memoryview, int, Address]]) -> None:
        strip, addr, v6 = route.strip, route.addr, route.v6_outer
        assert addr is not None
        sent = False
        for out, _reason in sa.protect_batch(run, now):
            if out is None:
                continue  # counted by the SA under its drop reason
            tos = (out[0] & 15) << 4 | out[1] >> 4 if v6 else out[1]
            net.append((memoryview(out)[strip:], tos, addr))
            sent = True
        if sent:
            self._last_tx[addr] = now

    def _too_big(self, pkt: bytes, limit: int, now: float, tun: list[bytes]) -> bool:
        """A packet larger than what fits the path: True (and an ICMP error queued for the TUN)
        if it may not be fragmented; False if the outer packet may be fragmented instead."""
        version = pkt[0] >> 4
        if version == 4:
            if not pkt[6] & 0x40:  # DF clear: the kernel fragments the outer packet
                return False
            icmp = frag_needed_v4(pkt, limit) if self._icmp.take(now) else None
        elif version == 6:
            # Routers never fragment IPv6; the tunnel entry is the source of the outer packet
            # and may, but only for packets the host could not have sent smaller (RFC 8200 §5).
            if len(pkt) <= IPV6_MIN_MTU:
                return False
            icmp = packet_too_big_v6(pkt, limit) if self._icmp.take(now) else None
        else:
            return False  # malformed: protect() will say so
        self._drop(DropReason.TOO_BIG)
        if icmp is not None:
            tun.append(icmp)
            self.counters.icmp_tx += 1
        return True

    # ----------------------------------------------------------------- inbound
    def _packed(self, host: str) -> bytes:
        b = self._addr_cache.get(host)
        if b is None:
            if len(self._addr_cache) >= _ADDR_CACHE_MAX:
                self._addr_cache.clear()
            b = self._addr_cache[host] = socket.inet_pton(
                socket.AF_INET6 if self.v6 else socket.AF_INET, host.split("%")[0])
        return b

    def from_net(self, datagrams: Iterable[tuple[bytes, Address, int]],
                 now: float | None = None) -> Output:
        """Check and unprotect a batch of received datagrams: (payload, source address, TOS or
        traffic class). For the udp transport the payload is the UDP payload; for raw, the IPv4
        packet (header included, as an IPv4 raw socket delivers it) or the IPv6 payload (ESP)."""
        if now is None:
            now = time.monotonic()
        pkts: list[bytes] = []
        udp = self.transport == "udp"
        counters = self.counters
        sources = self._sources
        roams = udp and self.ROAMING
        roaming: list[tuple[int, Address, bytes]] | None = None
        n = 0
        for payload, addr, tos in datagrams:
            n += 1
            if udp:
                size = len(payload)
                if size == 1 and payload[0] == 0xFF:
                    counters.keepalive_rx += 1  # RFC 3948 §2.3: consumed here
                    continue
                if size >= 4 and payload[:4] == NON_ESP_MARKER:
                    counters.ike_rx += 1  # IKE (RFC 3948 §2.2): not ours to answer
                    continue
                if roams and addr not in sources and size >= 8:
                    if roaming is None:
                        roaming = []
                    roaming.append((len(pkts), addr, payload[:8]))
                pkts.append(self._outer_udp(payload, addr, tos))
            elif self.v6:
                pkts.append(_V6.pack(6 << 28 | tos << 20, len(payload), PROTO_ESP, RECEIVED_TTL,
                                     self._packed(addr[0]), self._local_b) + payload)
            else:
                pkts.append(payload)
        edges = self._edges(roaming) if roaming else None
        results = self._unprotect(pkts, now) if pkts else []
        tun = [inner for inner, _reason in results if inner is not None]
        if edges:
            self._roam(edges, results)
        counters.net_rx += n
        counters.tun_tx += len(tun)
        return Output([], tun)

    def _unprotect(self, pkts: list[bytes], now: float) -> list[Result]:
        """The results of a batch of received ESP packets (outer headers as on the wire): one
        ``inbound_batch`` call, which groups the packets per SA for ``unprotect_batch`` (the
        native fast path's batch entry). Drops are counted by the SA or the database."""
        return self.sad.inbound_batch(pkts, now)

    # ----------------------------------------------------------------- NAT roaming
    def _edges(self, roaming: list[tuple[int, Address, bytes]]) -> list[_Edge]:
        """For datagrams from a source not yet known to be its peer's: what :meth:`_roam` needs
        once the batch is unprotected (the window edge is read before)."""
        out = []
        tops: dict[int, int] = {}
        for i, src, head in roaming:
            spi, seq = _SPI_SEQ.unpack(head)
            sa = self.sad.lookup_inbound(spi, PROTO_ESP, self._local_b)
            if sa is None or sa.config.encapsulation is None:
                continue
            top = tops.get(id(sa))
            if top is None:
                top = tops[id(sa)] = sa.seq
            host = str(self.peer if self.peer is not None else sa.config.src)
            out.append(_Edge(i, src, sa.config.src, (host, sa.config.encapsulation.sport), spi,
                             seq, top))
        return out

    def _forget_routes(self) -> None:
        """A peer moved: routes are made again (with :attr:`_moved`) from the next packet."""
        self._routes = {}

    def _roam(self, edges: list[_Edge], results: list[Result]) -> None:
        """Follow a peer that moved (a NAT rebinding its mapping, a mobile host).

        As the Linux kernel does for ESP in UDP (``xfrm`` reports a new mapping only then) and
        as RFC 3948 / RFC 7296 §2.23 ask: the new address and port are taken only from a packet
        that its SA authenticated (ICV good, not a replay) and whose sequence number is beyond
        the right edge of the window as it was before the packet — a captured old packet
        replayed from elsewhere cannot redirect the tunnel. The outbound SAs towards that peer
        (whose ``dst`` is the inbound SA's ``src``) then send to where it was seen."""
        for i, src, peer, configured, spi, seq, top in edges:
            if results[i][0] is None:
                continue  # not authenticated (or a replay): proves nothing
            expected = self._moved.get(peer, configured)
            if (expected[0], expected[1]) == (src[0], src[1]):
                self._sources.add(src)  # as the socket reports it: one probe per datagram
                continue
            if (seq - top) & 0xFFFFFFFF >= 0x80000000 or seq == top & 0xFFFFFFFF:
                continue  # authenticated but inside the window: an old packet
            new: Address = (src[0], src[1], 0, 0) if self.v6 else (src[0], src[1])
            log.warning("peer %s moved: %s port %d -> %s port %d (SA 0x%08x, seq %d)", peer,
                        expected[0], expected[1], src[0], src[1], spi, seq)
            self._moved[peer] = new
            self._sources = {src}
            self._forget_routes()
            self.counters.peer_moved += 1

    def _outer_udp(self, payload: bytes, addr: Address, tos: int) -> bytes:
        """The IP/UDP header the datagram arrived with, put back in front of its payload."""
        src = self._packed(addr[0])
        ulen = 8 + len(payload)
        if not self.v6:
            total = 20 + ulen
            s = self._v4_sum + tos + total + (src[0] << 8 | src[1]) + (src[2] << 8 | src[3])
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            # RFC 3948 §2.1: the UDP checksum of ESP-in-UDP over IPv4 may be zero (the kernel
            # verified the real one before delivering the datagram).
            return (_V4.pack(0x45, tos, total, 0, 0, RECEIVED_TTL, PROTO_UDP, ~s & 0xFFFF, src,
                             self._local_b)
                    + _UDP.pack(addr[1], self.port, ulen, 0) + payload)
        # IPv6 requires the UDP checksum (RFC 8200 §8.1) and the data path checks it.
        s = ones_sum(payload, pseudo_header_sum(src, self._local_b, PROTO_UDP, ulen)
                     + addr[1] + self.port + ulen)
        c = ~fold16(s) & 0xFFFF or 0xFFFF
        return (_V6.pack(6 << 28 | tos << 20, ulen, PROTO_UDP, RECEIVED_TTL, src, self._local_b)
                + _UDP.pack(addr[1], self.port, ulen, c) + payload)

    # ----------------------------------------------------------------- peers
    def current_peers(self) -> set[Address]:
        """The addresses datagrams go to now (one per peer and port): keepalives go there."""
        peers: set[Address] = set()
        for _h, direction, bundle in self.sad:
            if direction == "outbound":
                route = self.route_of(bundle.sas[0])
                if route.addr is not None:
                    peers.add(route.addr)
        return peers

    def peer_hosts(self) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The peers' addresses (whose route MTU bounds the tunnel's)."""
        if self.peer is not None:
            return {self.peer}
        return {bundle.sas[0].config.dst for _h, d, bundle in self.sad if d == "outbound"}

    def tun_mtu(self) -> int:
        """The TUN MTU that lets every packet through every outbound SA unfragmented."""
        return tun_mtu_for([b.sas[0] for _h, d, b in self.sad if d == "outbound"],
                           self.path_mtu)

    def close(self) -> None:
        """Release what the core holds beyond its own memory (nothing here; the engine's core
        cancels its event subscription)."""

    # ----------------------------------------------------------------- timers
    def next_timer(self) -> float:
        """When :meth:`handle_timer` has work next (housekeeping runs every second). Called on
        every wake-up of the loop, so it looks at no peer: the keepalive due is the one
        :meth:`handle_timer` computed (possibly early, never late)."""
        due = self._next_housekeeping
        if self._next_keepalive is not None and self._next_keepalive < due:
            due = self._next_keepalive
        return due

    def sa_timers(self, now: float, direction: str | None = None) -> None:
        """Time-based SA work (lifetimes) of the SAs of ``direction`` (None: all), and their
        events logged. Split by direction so that each SA's timers run in the thread that
        carries its packets when the edge runs the two directions in two threads."""
        for _h, d, bundle in self.sad:
            if direction is None or d == direction:
                for sa in bundle.sas:
                    sa.handle_timer(now)
                    for event in sa.drain_events():
                        log.warning("SA 0x%08x: %s", sa.spi, type(event).__name__)

    def handle_timer(self, now: float | None = None, *,
                     sa_direction: str | None = None) -> Output:
        """SA lifetimes (of ``sa_direction``'s SAs, None: all), the list of peers, and NAT-T
        keepalives to peers idle for ``keepalive`` seconds (RFC 3948 §2.3: one 0xFF octet)."""
        if now is None:
            now = time.monotonic()
        net: list[tuple[bytes | memoryview, int, Address]] = []
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
            self.sa_timers(now, sa_direction)
            peers = self.current_peers()
            if peers is not self._peers:  # the same set: no peer came (O(changes) housekeeping)
                for addr in peers - self._peers:
                    self._last_tx.setdefault(addr, now)  # a new peer is idle from now
                self._peers = peers
        if self.keepalive > 0 and self.transport == "udp":
            keepalive = self.keepalive
            nxt: float | None = None
            for addr in self._peers:
                last = self._last_tx.get(addr, now)
                if now - last >= keepalive:
                    net.append((KEEPALIVE, 0, addr))
                    self._last_tx[addr] = last = now
                    self.counters.keepalive_tx += 1
                if nxt is None or last + keepalive < nxt:
                    nxt = last + keepalive
            self._next_keepalive = nxt
        return Output(net, [])


__all__ = ["KEEPALIVE_INTERVAL", "TRANSPORTS", "GatewayCore", "GatewayCounters", "Output"]
