"""The gateway's network side: ESP in UDP (RFC 3948) on a bound UDP socket, or raw ESP (IP
protocol 50) where the process may open raw sockets.

Both carry the outer TOS / traffic class per packet in ancillary data (``IP_TOS`` / ``IPV6_TCLASS``
on send, ``IP_RECVTOS`` / ``IPV6_RECVTCLASS`` on receipt), because the DSCP and the ECN field of
the outer header are the data path's to decide (RFC 4301 §5.1.2.1, RFC 6040). Path-MTU discovery is
turned off on the sockets (``IP_PMTUDISC_DONT``): whether an oversized inner packet may be
fragmented is decided by the gateway on the inner header (and answered with ICMP when not); what
it does send, the kernel fragments when it must.

The UDP transport uses the kernel's UDP segmentation offload where it has it (Linux 4.18+), as
wireguard-go does: a train of datagrams of one size to one peer with one TOS leaves in a single
``sendmsg`` with ``UDP_SEGMENT`` (the kernel, or the NIC, cuts it into the same datagrams), and
``UDP_GRO`` hands a train that arrived together up in one ``recvmsg`` with its segment size. On the
wire nothing changes; per-datagram kernel work and system calls drop by the train's length.
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
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: linux/udp.h: the most segments one UDP_SEGMENT send may carry.
UDP_MAX_SEGMENTS = 64

# --- implementation constants ------------------------------------------------------------------
#: Socket buffers: enough for a burst of a few thousand full-size packets while the loop is busy.
SOCKET_BUFFER = 4 * 1024 * 1024
RECV_SIZE = 65535
#: Largest train sent in one UDP_SEGMENT send (under the 65507-byte IPv4 UDP payload limit).
GSO_MAX_BYTES = 65000

_INT = struct.Struct("i")
_U16 = struct.Struct("H")


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
        self._anc = socket.CMSG_SPACE(4) * 2
        self._cmsg: dict[int, list[tuple[int, int, bytes]]] = {}
        #: Largest datagram sent in a UDP_SEGMENT train (0: no segmentation offload); the owner
        #: sets it to what fits the path MTU, since a segment is never fragmented.
        self.max_segment = 0
        self.gso = False
        self.gro = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def _tune(self) -> None:
        s = self.sock
        # The *FORCE variants pass net.core.[rw]mem_max (CAP_NET_ADMIN, which the gateway has for
        # its TUN anyway): the defaults cap a buffer at ~208 KiB, a handful of GRO trains.
        for force, opt in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
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
                tos = seg = 0
                for lvl, opt, value in ancdata:
                    if lvl == SOL_UDP and opt == UDP_GRO:
                        seg = _INT.unpack_from(value)[0]
                    else:
                        tos = value[0] if len(value) == 1 else _INT.unpack_from(value)[0] & 0xFF
                if seg and len(data) > seg:  # a GRO train: the datagrams it was made of
                    out.extend((data[i:i + seg], addr, tos) for i in range(0, len(data), seg))
                else:
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
        n = len(items)
        i = 0
        while i < n:
            data, tos, addr = items[i]
            size = len(data)
            j = i + 1
            if self.gso and size <= self.max_segment:
                # A train: same peer and TOS, same size, only the last one may be shorter.
                end, total = min(n, i + UDP_MAX_SEGMENTS), size
                while j < end:
                    d2, t2, a2 = items[j]
                    s2 = len(d2)
                    if t2 != tos or a2 != addr or s2 > size or total + s2 > GSO_MAX_BYTES:
                        break
                    total += s2
                    j += 1
                    if s2 < size:
                        break
            try:
                if j - i > 1:
                    cmsg = [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
                    if tos:
                        cmsg.append((self._tos_level, self._tos_opt, _INT.pack(tos)))
                    try:
                        sendmsg([b"".join([d for d, _t, _a in items[i:j]])], cmsg, 0, addr)
                    except OSError as exc:
                        if exc.errno not in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                            raise
                        # The route's device cannot segment after all: one by one from now.
                        self.gso = False
                        j = i + 1
                        continue
                elif tos:
                    one = self._cmsg.get(tos)
                    if one is None:
                        one = self._cmsg[tos] = [(self._tos_level, self._tos_opt,
                                                  _INT.pack(tos))]
                    sendmsg([data], one, 0, addr)
                else:
                    sendto(data, addr)
            except OSError:
                failed += j - i
            i = j
        return failed

    def close(self) -> None:
        self.sock.close()


class UdpTransport(_Socket):
    """ESP in UDP on ``local:port`` (blocking sends: a full socket buffer slows the sender down
    instead of dropping; receives never block)."""

    def __init__(self, local: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, *,
                 offload: bool = True) -> None:
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
        if not offload:
            return
        try:  # segmentation offload where the kernel has it; plain datagrams otherwise
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
            self.gso = True
        except OSError:
            pass
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = True
        except OSError:
            pass


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
