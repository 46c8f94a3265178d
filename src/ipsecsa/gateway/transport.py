"""The gateway's network side: ESP in UDP (RFC 3948) on a bound UDP socket, or raw ESP (IP
protocol 50) where the process may open raw sockets.

Both carry the outer TOS / traffic class per packet in ancillary data (``IP_TOS`` / ``IPV6_TCLASS``
on send, ``IP_RECVTOS`` / ``IPV6_RECVTCLASS`` on receipt), because the DSCP and the ECN field of
the outer header are the data path's to decide (RFC 4301 §5.1.2.1, RFC 6040). Path-MTU discovery is
turned off on the sockets (``IP_PMTUDISC_DONT``): whether an oversized inner packet may be
fragmented is decided by the gateway on the inner header (and answered with ICMP when not); what
it does send, the kernel fragments when it must.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from ipsecsa.gateway.core import Address

# --- specification constants (Linux uapi: in.h, in6.h) -----------------------------------------
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IP_MTU = 14
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DONT = 0
IPV6_MTU = 24
IPPROTO_ESP = 50

# --- implementation constants ------------------------------------------------------------------
#: Socket buffers: enough for a burst of a few thousand full-size packets while the loop is busy.
SOCKET_BUFFER = 4 * 1024 * 1024
RECV_SIZE = 65535

_INT = struct.Struct("i")


class TransportError(OSError):
    """The socket could not be opened or bound; the message says why in one line."""


class _Socket:
    """What both transports share: batch receive with the TOS, batch send with it."""

    def __init__(self, sock: socket.socket, v6: bool) -> None:
        self.sock = sock
        self.v6 = v6
        if v6:
            self._tos_level, self._tos_opt = socket.IPPROTO_IPV6, socket.IPV6_TCLASS
        else:
            self._tos_level, self._tos_opt = socket.IPPROTO_IP, socket.IP_TOS
        self._anc = socket.CMSG_SPACE(4)
        self._cmsg: dict[int, list[tuple[int, int, bytes]]] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def _tune(self) -> None:
        s = self.sock
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
        if self.v6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)

    def recv_batch(self, limit: int) -> list[tuple[bytes, Address, int]]:
        """Up to ``limit`` datagrams ready now: (payload, source address, TOS/traffic class)."""
        out: list[tuple[bytes, Address, int]] = []
        recvmsg, anc, flags = self.sock.recvmsg, self._anc, socket.MSG_DONTWAIT
        try:
            while len(out) < limit:
                data, ancdata, _f, addr = recvmsg(RECV_SIZE, anc, flags)
                tos = 0
                for _lvl, _opt, value in ancdata:
                    tos = value[0] if len(value) == 1 else _INT.unpack_from(value)[0] & 0xFF
                out.append((data, addr, tos))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            # ECONNREFUSED and friends: an ICMP error about an earlier datagram. Not fatal.
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise
        return out

    def send_batch(self, items: list[tuple[bytes | memoryview, int, Address]]) -> int:
        """Send (payload, TOS, address) datagrams; returns how many failed (counted, not raised:
        a full queue or an unreachable peer is a lost packet, as on a wire)."""
        failed = 0
        sock = self.sock
        sendto, sendmsg = sock.sendto, sock.sendmsg
        for data, tos, addr in items:
            try:
                if tos:
                    cmsg = self._cmsg.get(tos)
                    if cmsg is None:
                        cmsg = self._cmsg[tos] = [(self._tos_level, self._tos_opt,
                                                   _INT.pack(tos))]
                    sendmsg([data], cmsg, 0, addr)
                else:
                    sendto(data, addr)
            except OSError:
                failed += 1
        return failed

    def close(self) -> None:
        self.sock.close()


class UdpTransport(_Socket):
    """ESP in UDP on ``local:port`` (blocking sends: a full socket buffer slows the sender down
    instead of dropping; receives never block)."""

    def __init__(self, local: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
        v6 = local.version == 6
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        super().__init__(sock, v6)
        try:
            self._tune()
            sock.bind((str(local), port))
        except OSError as exc:
            sock.close()
            raise TransportError(exc.errno, f"cannot bind UDP {_fmt(local, port)}: "
                                            f"{exc.strerror}") from None


class RawEspTransport(_Socket):
    """ESP as IP protocol 50 through a raw socket bound to ``local`` (needs CAP_NET_RAW).

    An IPv4 raw socket delivers the whole packet, header included; an IPv6 one the payload only
    (RFC 3542 §3), which the core puts its header back on."""

    def __init__(self, local: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        v6 = local.version == 6
        try:
            sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                                 IPPROTO_ESP)
        except OSError as exc:
            hint = " (needs CAP_NET_RAW)" if exc.errno == errno.EPERM else ""
            raise TransportError(exc.errno, f"cannot open a raw ESP socket: "
                                            f"{exc.strerror}{hint}") from None
        super().__init__(sock, v6)
        try:
            self._tune()
            sock.bind((str(local), 0))
        except OSError as exc:
            sock.close()
            raise TransportError(exc.errno, f"cannot bind raw ESP to {local}: "
                                            f"{exc.strerror}") from None


def path_mtu(local: ipaddress.IPv4Address | ipaddress.IPv6Address,
             peer: ipaddress.IPv4Address | ipaddress.IPv6Address, default: int) -> int:
    """The MTU of the route from ``local`` to ``peer`` as the kernel knows it now (interface MTU
    or a learnt path MTU), read from a connected UDP socket; ``default`` if there is no route."""
    v6 = peer.version == 6
    try:
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((str(local), 0))
            s.connect((str(peer), 9))
            return s.getsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
                                IPV6_MTU if v6 else IP_MTU)
    except OSError:
        return default


def _fmt(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


__all__ = ["RawEspTransport", "TransportError", "UdpTransport", "path_mtu"]
