"""A Linux TUN device: created through ``/dev/net/tun`` (``TUNSETIFF`` with ``IFF_TUN |
IFF_NO_PI``: each read and write is one bare IP packet), its MTU and up flag set with the
``SIOC*IF*`` ioctls on an ordinary socket.

The device is not persistent: it disappears when its file descriptor is closed, so a gateway that
exits (or dies) leaves nothing behind. Addresses and routes are the administrator's, as with
WireGuard; the gateway only brings the link up.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from typing import Self

# --- specification constants (linux/if_tun.h, linux/sockios.h, linux/if.h) ----------------------
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
IFF_UP = 0x1
IFNAMSIZ = 16
TUN_PATH = "/dev/net/tun"

# --- implementation constants ------------------------------------------------------------------
#: Read buffer: the largest IP packet, so an MTU raised by the administrator is followed.
READ_SIZE = 65535

_IFREQ_FLAGS = struct.Struct("16sH22x")
_IFREQ_INT = struct.Struct("16si20x")


class TunError(OSError):
    """The TUN device could not be created or configured; the message says why in one line."""


def check_name(name: str) -> bytes:
    """The interface name as the kernel takes it; ValueError for names it would refuse."""
    raw = name.encode("ascii", "replace")
    if not name or len(raw) >= IFNAMSIZ or name in (".", "..") or any(
            ch in name for ch in "/: \t\n%") or not name.isprintable():
        raise ValueError(f"invalid interface name {name!r} (1-{IFNAMSIZ - 1} characters, no '/', "
                         "':', '%' or whitespace)")
    return raw


class Tun:
    """An open TUN device (non-blocking reads). Close it to remove the device."""

    def __init__(self, name: str, *, mtu: int | None = None, up: bool = True) -> None:
        raw = check_name(name)
        # Asked of the kernel in this process's network namespace (/sys/class/net may show
        # another one when the namespace was entered without remounting /sys).
        try:
            socket.if_nametoindex(name)
        except OSError:
            pass
        else:
            raise TunError(errno.EEXIST, f"cannot create TUN {name}: a network interface of "
                                         "that name already exists")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(exc.errno, f"cannot open {TUN_PATH}: {exc.strerror}") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(raw, IFF_TUN | IFF_NO_PI))
        except OSError as exc:
            os.close(fd)
            hint = " (needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            raise TunError(exc.errno, f"cannot create TUN {name}: {exc.strerror}{hint}") from None
        self.fd = fd
        self.name = name
        self._raw = raw
        try:
            if mtu is not None:
                self.mtu = mtu
            if up:
                self.set_up()
        except OSError as exc:
            self.close()
            raise TunError(exc.errno, f"cannot configure TUN {name}: {exc.strerror}") from None

    def _ioctl(self, request: int, arg: bytes) -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            return fcntl.ioctl(s.fileno(), request, arg)

    @property
    def mtu(self) -> int:
        """The device's MTU as it is now (the administrator may have changed it)."""
        return _IFREQ_INT.unpack(self._ioctl(SIOCGIFMTU, _IFREQ_INT.pack(self._raw, 0)))[1]

    @mtu.setter
    def mtu(self, value: int) -> None:
        self._ioctl(SIOCSIFMTU, _IFREQ_INT.pack(self._raw, value))

    def set_up(self) -> None:
        flags = _IFREQ_FLAGS.unpack(self._ioctl(SIOCGIFFLAGS, _IFREQ_FLAGS.pack(self._raw, 0)))[1]
        self._ioctl(SIOCSIFFLAGS, _IFREQ_FLAGS.pack(self._raw, flags | IFF_UP))

    def read_batch(self, limit: int) -> list[bytes]:
        """Up to ``limit`` packets that are ready now (possibly none)."""
        out: list[bytes] = []
        read, fd = os.read, self.fd
        try:
            while len(out) < limit:
                out.append(read(fd, READ_SIZE))
        except BlockingIOError:
            pass
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        """Write packets; returns how many the kernel refused (counted, not raised: a packet
        the host's stack rejects is that stack's business)."""
        failed = 0
        write, fd = os.write, self.fd
        for p in packets:
            try:
                write(fd, p)
            except OSError:
                failed += 1
        return failed

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Tun", "TunError", "check_name"]
