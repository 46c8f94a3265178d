"""The gateway as a running thing: a TUN device, a socket, and an epoll loop between them and the
sans-IO :class:`~ipsecsa.gateway.core.GatewayCore`.

One thread does everything, in batches: when the TUN is readable, every packet ready (up to a
batch) is read, protected by the core and sent; when the socket is readable, likewise the other
way. Timers (keepalives, SA lifetimes, MTU changes) run between batches. With ``threads=2`` the
two directions run in two threads (the way strongSwan's libipsec splits its work): the calling
thread reads the TUN, protects and sends, and runs the outbound SAs' timers, keepalives and
:meth:`Gateway.call_soon` work; a second thread receives, unprotects, writes the TUN and runs the
inbound SAs' timers. With ``threads=3`` (the default) a third thread writes the receiving
thread's packets into the TUN (:class:`_TunWriter`), so that unprotecting the next batch overlaps
the kernel's work on this one. Each SA is used by one thread only; the SA database is thread-safe;
each counter has one writer. The interpreter lock still runs one thread's Python code at a time, so
what the second thread buys is overlap of system calls and OpenSSL with the other direction's
Python work (measured in docs/PERFORMANCE.md). :meth:`Gateway.stop` and
:meth:`Gateway.call_soon` may be called from any thread or from a signal handler: they queue the
work and wake the loop through a socket pair, so a stop takes effect within one loop turn.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from ipsecsa.gateway.core import (
    HOUSEKEEPING_INTERVAL,
    KEEPALIVE_INTERVAL,
    NATT_PORT,
    GatewayCore,
    Output,
)
from ipsecsa.gateway.mtu import DEFAULT_PATH_MTU
from ipsecsa.gateway.transport import RawEspTransport, UdpTransport, path_mtu
from ipsecsa.gateway.tun import Tun
from ipsecsa.sad.database import SaDatabase

if TYPE_CHECKING:
    from ipsecsa.api import Engine

log = logging.getLogger("ipsecsa.gateway")

# --- implementation constants ------------------------------------------------------------------
#: Packets taken from the TUN or the socket per turn before the other side gets its turn.
BATCH = 64
#: Batches of inner packets that may wait for the TUN writer thread (``threads=3``).
WRITER_QUEUE = 16
#: How often the TUN's MTU and the route MTU to the peers are read back.
MTU_POLL_INTERVAL = 2.0


class Gateway:
    """A userspace IPsec gateway: the TUN ``tun``, ESP to the peers of ``sad``'s outbound SAs.

    ``sad`` may be changed while the gateway runs (SAs added, replaced, deleted): each packet is
    classified and looked up afresh, so a change takes effect at once. Use as a context manager,
    or :meth:`open` / :meth:`run` / :meth:`close`::

        with Gateway(sad, tun="ipsec0", local="192.0.2.1") as gw:
            gw.run()            # until gw.stop() (another thread, a signal handler)

    ``sad`` may also be an :class:`ipsecsa.api.Engine` (what ``ipsecsa serve --tun`` attaches
    to): packets then go through the engine's filters and SA contexts
    (:mod:`ipsecsa.gateway.enginecore`), so contexts created, expired or deleted through the API
    take effect from the next packet on.

    ``mtu`` fixes the TUN's MTU; by default it is computed from the outbound SAs' overhead and the
    MTU of the route to their peers (:func:`ipsecsa.gateway.mtu.tun_mtu_for`). ``offload=False``
    turns off UDP segmentation offload (see :mod:`ipsecsa.gateway.transport`); ``threads=1``
    runs both directions in the calling thread, ``threads=2`` in two, ``threads=3`` (default)
    adds a TUN writer thread (see the module docstring).
    """

    def __init__(self, sad: SaDatabase | Engine, *, tun: str, local: str | ipaddress.IPv4Address |
                 ipaddress.IPv6Address, port: int = NATT_PORT,
                 peer: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
                 transport: str = "udp", keepalive: float = KEEPALIVE_INTERVAL,
                 mtu: int | None = None, batch: int = BATCH, offload: bool = True,
                 threads: int = 3) -> None:
        if threads not in (1, 2, 3):
            raise ValueError(f"threads is 1, 2 or 3, not {threads}")
        if isinstance(sad, SaDatabase):
            self.core = GatewayCore(sad, local=local, port=port, peer=peer, transport=transport,
                                    keepalive=keepalive)
        else:
            from ipsecsa.gateway.enginecore import EngineGatewayCore

            self.core = EngineGatewayCore(sad, local=local, port=port, peer=peer,
                                          transport=transport, keepalive=keepalive)
        self.sad = sad
        self.tun_name = tun
        self.mtu = mtu
        self.batch = batch
        self.offload = offload
        self.threads = threads
        self._rx_thread: threading.Thread | None = None
        self._writer: _TunWriter | None = None
        self._rx_wake_r, self._rx_wake_w = socket.socketpair()
        self._rx_wake_r.setblocking(False)
        self._rx_wake_w.setblocking(False)
        self.tun: Tun | None = None
        self.net: UdpTransport | RawEspTransport | None = None
        self.tun_mtu = 0
        self._calls: collections.deque[Callable[[], Any]] = collections.deque()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ----------------------------------------------------------------- setup
    def _route_mtu(self) -> int:
        mtus = [path_mtu(self.core.local, host, DEFAULT_PATH_MTU) for host in self.core.peer_hosts()]
        return min(mtus) if mtus else DEFAULT_PATH_MTU

    def open(self) -> Gateway:
        """Create the TUN, then bind the socket (raises TunError / TransportError)."""
        core = self.core
        core.set_path_mtu(self._route_mtu())
        mtu = self.mtu if self.mtu is not None else core.tun_mtu()
        self.tun = Tun(self.tun_name, mtu=mtu)
        self.tun_mtu = mtu
        try:
            if core.transport == "udp":
                self.net = UdpTransport(core.local, core.port, offload=self.offload)
            else:
                self.net = RawEspTransport(core.local)
        except OSError:
            self.tun.close()
            self.tun = None
            raise
        self._size_segments()
        log.info("TUN %s (MTU %d) up; ESP over %s on %s port %d; path MTU %d", self.tun_name,
                 mtu, core.transport, core.local, core.port, core.path_mtu)
        return self

    def close(self) -> None:
        """Close the socket and the TUN (which removes the device), and the core's hold on its
        engine."""
        self.core.close()
        if self.net is not None:
            self.net.close()
            self.net = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        for s in (self._wake_r, self._wake_w, self._rx_wake_r, self._rx_wake_w):
            s.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- control (any thread)
    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from another thread or a signal handler)."""
        self._stopping = True
        self._wake()

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the loop's thread between two batches (safe from a signal handler)."""
        self._calls.append(fn)
        self._wake()

    def _wake(self) -> None:
        for w in (self._wake_w, self._rx_wake_w):
            try:
                w.send(b"\0")
            except OSError:
                pass  # already awake (buffer full) or closing

    def stats(self) -> dict:
        """The core's statistics plus the TUN's MTU."""
        s = self.core.stats()
        s["gateway"]["tun"] = self.tun_name
        s["gateway"]["tun_mtu"] = self.tun_mtu
        return s

    # ----------------------------------------------------------------- the loop
    def _perform(self, out: Output) -> None:
        """Send and write what the core asked for (the sending thread's counters)."""
        counters = self.core.counters
        net, tun = self.net, self.tun
        assert net is not None and tun is not None
        if out.net:
            failed = net.send_batch(out.net)
            counters.net_tx += len(out.net) - failed
            counters.send_errors += failed
        if out.tun:  # ICMP errors only (from_net's packets are written where they arise)
            counters.icmp_tx -= tun.write_batch(out.tun)  # one the TUN refused was not sent

    def _run_inbound(self) -> None:
        """The receiving thread (``threads=2``): socket -> core -> TUN, inbound SA timers."""
        tun, net, core = self.tun, self.net, self.core
        assert tun is not None and net is not None
        sel = selectors.DefaultSelector()
        sel.register(net.fileno(), selectors.EVENT_READ, "net")
        sel.register(self._rx_wake_r, selectors.EVENT_READ, "wake")
        batch = self.batch
        writer = self._writer
        next_timer = time.monotonic() + HOUSEKEEPING_INTERVAL
        try:
            while not self._stopping:
                now = time.monotonic()
                if now >= next_timer:
                    next_timer = now + HOUSEKEEPING_INTERVAL
                    core.sa_timers(now, "inbound")
                for key, _ev in sel.select(next_timer - now):
                    if key.data == "net":
                        grams = net.recv_batch(batch)
                        if grams:
                            out = core.from_net(grams)
                            if out.tun:
                                if writer is not None:
                                    writer.put(out.tun)
                                else:
                                    core.counters.tun_errors += tun.write_batch(out.tun)
                    else:
                        _drain(self._rx_wake_r)
        except Exception:  # pragma: no cover - a bug: stop the gateway rather than go deaf
            log.exception("receiving thread failed; stopping")
            self.stop()
        finally:
            sel.close()

    def _size_segments(self) -> None:
        """Datagrams batched with UDP segmentation offload must each fit the path unfragmented."""
        if self.net is not None:
            self.net.max_segment = self.core.path_mtu - (48 if self.core.v6 else 28)

    def _poll_mtu(self) -> None:
        assert self.tun is not None
        self.core.set_path_mtu(self._route_mtu())
        self._size_segments()
        try:
            mtu = self.tun.mtu
        except OSError:
            return
        if mtu != self.tun_mtu:
            log.info("TUN %s MTU changed %d -> %d (following it)", self.tun_name, self.tun_mtu,
                     mtu)
            self.tun_mtu = mtu

    def run(self) -> None:
        """Carry traffic until :meth:`stop`. Opens the gateway first if needed."""
        if self.tun is None:
            self.open()
        tun, net, core = self.tun, self.net, self.core
        assert tun is not None and net is not None
        sel = selectors.DefaultSelector()
        sel.register(tun.fd, selectors.EVENT_READ, "tun")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sa_direction = None
        if self.threads == 3:
            self._writer = _TunWriter(tun, core.counters)
        if self.threads >= 2:
            sa_direction = "outbound"
            self._rx_thread = threading.Thread(target=self._run_inbound, name="ipsecsa-rx",
                                               daemon=True)
            self._rx_thread.start()
        else:
            sel.register(net.fileno(), selectors.EVENT_READ, "net")
        batch = self.batch
        next_mtu_poll = time.monotonic() + MTU_POLL_INTERVAL
        try:
            while not self._stopping:
                now = time.monotonic()
                due = min(core.next_timer(), next_mtu_poll)
                if now >= due:
                    if now >= next_mtu_poll:
                        next_mtu_poll = now + MTU_POLL_INTERVAL
                        self._poll_mtu()
                    self._perform(core.handle_timer(now, sa_direction=sa_direction))
                    continue
                for key, _ev in sel.select(due - now):
                    what = key.data
                    if what == "tun":
                        pkts = tun.read_batch(batch)
                        if pkts:
                            self._perform(core.from_tun(pkts))
                    elif what == "net":
                        grams = net.recv_batch(batch)
                        if grams:
                            out = core.from_net(grams)
                            core.counters.tun_errors += tun.write_batch(out.tun)
                    else:
                        _drain(self._wake_r)
                while self._calls:
                    self._calls.popleft()()
        finally:
            self._stopping = True
            self._wake()
            if self._rx_thread is not None:
                self._rx_thread.join()
                self._rx_thread = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            sel.close()


class _TunWriter:
    """The third thread of ``threads=3``: writes the receiving thread's inner packets into the
    TUN, so that the receiving thread unprotects the next batch while the kernel takes this one
    (a TUN write is one system call per packet, which releases the interpreter lock, and on the
    receiving side of a TCP transfer it is where the host's stack does its work). At most
    :data:`WRITER_QUEUE` batches wait; beyond that the receiving thread waits (back-pressure, as
    a full socket buffer gives the sender), so memory stays bounded. Order is kept: one writer.
    ``tun_errors`` is this thread's counter only."""

    def __init__(self, tun: Tun, counters: Any) -> None:
        self._tun = tun
        self._counters = counters
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(WRITER_QUEUE)
        self._thread = threading.Thread(target=self._run, name="ipsecsa-tun-writer",
                                        daemon=True)
        self._thread.start()

    def put(self, packets: list[bytes]) -> None:
        self._queue.put(packets)

    def _run(self) -> None:
        get, write, counters = self._queue.get, self._tun.write_batch, self._counters
        while (packets := get()) is not None:
            counters.tun_errors += write(packets)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


__all__ = ["BATCH", "Gateway"]
