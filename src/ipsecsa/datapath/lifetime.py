"""Soft and hard lifetimes (RFC 4301 §4.4.2.1) folded into thresholds checked once per packet.

The per-packet cost must be two integer comparisons, so the limits are folded into "marks": the
next packet count and byte count at which *something* happens (a soft event or the hard end).
Only when a mark is crossed does :meth:`LifetimeMarks.crossed` do the slow work of finding out
what happened. Time limits are deadlines measured from the moment the SA was installed.

Semantics (ours; RFC 4301 leaves the exact edge open):
* packets: a hard limit of N lets exactly N packets through; the (N+1)-th is refused;
* bytes: the packet that reaches or crosses the hard byte limit is still carried, then the SA is
  dead (as Linux XFRM does) — refusing it would make the limit depend on packet sizes;
* seconds: traffic at or after ``installed + hard`` is refused; a soft event fires at
  ``installed + soft``, on the first packet or timer call at or after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ipsecsa.datapath.events import LifetimeKind

INF = math.inf


@dataclass(frozen=True, slots=True)
class Limits:
    """One set of limits; None means no limit in that dimension."""

    bytes: int | None = None
    packets: int | None = None
    seconds: float | None = None

    @classmethod
    def of(cls, obj: object) -> Limits:
        """Accept any object with bytes/packets/seconds attributes (the config's Lifetime)."""
        if obj is None:
            return NO_LIMITS
        limits = cls(getattr(obj, "bytes", None), getattr(obj, "packets", None),
                     getattr(obj, "seconds", None))
        return NO_LIMITS if limits == NO_LIMITS else limits


#: The shared "no limit at all" (most SAs): immutable, so one object serves every SA.
NO_LIMITS = Limits()


def _lim(value: float | None) -> float:
    return INF if value is None else value


def _first_reached(limits: Limits, deadline: float, packets: int, nbytes: int,
                   now: float | None) -> LifetimeKind | None:
    """Which limit of ``limits`` the counts (or the clock, against ``deadline``) have reached,
    checked in the order packets, bytes, seconds; None if none."""
    if limits.packets is not None and packets >= limits.packets:
        return LifetimeKind.PACKETS
    if limits.bytes is not None and nbytes >= limits.bytes:
        return LifetimeKind.BYTES
    if now is not None and now >= deadline:
        return LifetimeKind.SECONDS
    return None


class LifetimeMarks:
    """Tracks which soft/hard limits have fired and the next thresholds to watch."""

    __slots__ = (
        "byte_mark",
        "hard",
        "hard_deadline",
        "hard_fired",
        "installed",
        "packet_mark",
        "soft",
        "soft_deadline",
        "soft_fired",
    )

    def __init__(self, soft: Limits, hard: Limits, installed: float) -> None:
        self.soft = soft
        self.hard = hard
        self.installed = installed
        self.soft_fired: LifetimeKind | None = None
        self.hard_fired: LifetimeKind | None = None
        self.soft_deadline = installed + _lim(soft.seconds)
        self.hard_deadline = installed + _lim(hard.seconds)
        self.packet_mark = INF
        self.byte_mark = INF
        self._recompute()

    @property
    def timed(self) -> bool:
        """Whether any time limit exists (only then does the data path need a clock)."""
        return self.soft_deadline != INF or self.hard_deadline != INF

    def _recompute(self) -> None:
        soft_p = INF if self.soft_fired else _lim(self.soft.packets)
        soft_b = INF if self.soft_fired else _lim(self.soft.bytes)
        self.packet_mark = min(soft_p, _lim(self.hard.packets))
        self.byte_mark = min(soft_b, _lim(self.hard.bytes))

    def crossed(self, packets: int, nbytes: int, now: float | None
                ) -> tuple[LifetimeKind | None, LifetimeKind | None]:
        """Called when a mark may have been crossed; returns (soft_now, hard_now): the kinds
        that fired *on this call* (None when nothing new fired)."""
        soft_now = hard_now = None
        if self.hard_fired is None:
            hard_now = self.hard_fired = _first_reached(self.hard, self.hard_deadline, packets,
                                                        nbytes, now)
        if self.soft_fired is None and self.hard_fired is None:
            soft_now = self.soft_fired = _first_reached(self.soft, self.soft_deadline, packets,
                                                        nbytes, now)
        self._recompute()
        return soft_now, hard_now

    def next_deadline(self) -> float | None:
        """The next clock value at which a time limit fires, or None."""
        if self.hard_fired is not None:
            return None
        t = self.hard_deadline if self.soft_fired else min(self.soft_deadline, self.hard_deadline)
        return None if t == INF else t



class _Unlimited(LifetimeMarks):
    """The marks of an SA with no limits at all, shared by every such SA: its thresholds are
    infinite, so ``crossed`` is never called and nothing in it ever changes."""

    __slots__ = ()

    def crossed(self, packets: int, nbytes: int, now: float | None
                ) -> tuple[LifetimeKind | None, LifetimeKind | None]:
        return None, None


UNLIMITED = _Unlimited(NO_LIMITS, NO_LIMITS, 0.0)


def lifetime_marks(soft: Limits, hard: Limits, installed: float) -> LifetimeMarks:
    """The marks for an SA: the shared :data:`UNLIMITED` when it has no limits at all."""
    if soft is NO_LIMITS and hard is NO_LIMITS:
        return UNLIMITED
    return LifetimeMarks(soft, hard, installed)
