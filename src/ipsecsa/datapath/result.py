"""The verdict every data-path call returns: the output bytes, or the reason they were dropped.

``Result`` is a tuple subclass so that constructing one costs a single tuple allocation on the
per-packet path, and so that callers may unpack it (``packet, drop = sa.protect(p)``).
Drop results carry no packet and are interned: one immutable instance per reason.
"""

from __future__ import annotations

from typing import Self

from ipsecsa.errors import DropReason


class Result(tuple):
    """``(packet, drop)``: ``packet`` is the output bytes (None when dropped or consumed),
    ``drop`` the :class:`DropReason` (None when the packet was delivered)."""

    __slots__ = ()

    def __new__(cls, packet: bytes | None, drop: DropReason | None = None) -> Self:
        return tuple.__new__(cls, (packet, drop))

    @property
    def packet(self) -> bytes | None:
        return self[0]

    @property
    def drop(self) -> DropReason | None:
        return self[1]

    @property
    def ok(self) -> bool:
        """True when a packet was delivered (False for drops and for a held fragment)."""
        return self[0] is not None

    def __repr__(self) -> str:
        if self[1] is not None:
            return f"Result(drop={self[1].name})"
        return f"Result(packet=<{len(self[0])} bytes>)"


#: One interned drop result per reason; the data path returns these, never builds new ones.
DROPPED: dict[DropReason, Result] = {reason: Result(None, reason) for reason in DropReason}


def delivered(packet: bytes) -> Result:
    """A delivered packet (the fast constructor used on the per-packet path)."""
    return tuple.__new__(Result, (packet, None))


#: The verdict for a fragment held until its datagram is complete: neither delivered nor dropped.
HELD = Result(None, None)
