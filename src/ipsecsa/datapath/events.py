"""Events the data path raises: frozen, slotted, queued on the SA and drained by the owner.

They are never callbacks from the hot path (STYLE practice 6): a packet call appends an event to
the SA's queue and returns; the service, an IKE daemon or a test drains the queue when it likes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class LifetimeKind(enum.Enum):
    """Which dimension of a lifetime ran out."""

    BYTES = "bytes"
    PACKETS = "packets"
    SECONDS = "seconds"


@dataclass(frozen=True, slots=True)
class SaEvent:
    """Base of every SA event. ``spi`` names the SA; ``at`` is the clock value it happened at."""

    spi: int
    at: float

    def __post_init__(self) -> None:
        if not 0 <= self.spi <= 0xFFFFFFFF:
            raise ValueError(f"spi out of range: {self.spi}")


@dataclass(frozen=True, slots=True)
class SoftLifetimeExpired(SaEvent):
    """The soft limit was reached: time to rekey. The SA keeps working."""

    kind: LifetimeKind


@dataclass(frozen=True, slots=True)
class HardLifetimeExpired(SaEvent):
    """The hard limit was reached: the SA refuses all further traffic."""

    kind: LifetimeKind


@dataclass(frozen=True, slots=True)
class SequenceNumberExhausted(SaEvent):
    """The outbound sequence number space is used up (RFC 4303 §3.3.3 forbids cycling):
    the SA is dead and a new one must replace it."""

    last_seq: int
