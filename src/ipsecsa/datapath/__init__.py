"""The data path: security associations (ESP, AH), anti-replay, lifetimes, counters, events."""

from ipsecsa.datapath.events import (
    HardLifetimeExpired,
    LifetimeKind,
    SaEvent,
    SequenceNumberExhausted,
    SoftLifetimeExpired,
)
from ipsecsa.datapath.result import Result
from ipsecsa.datapath.sa import SaCounters, SecurityAssociation
from ipsecsa.datapath.state import SaState

__all__ = [
    "HardLifetimeExpired",
    "LifetimeKind",
    "Result",
    "SaCounters",
    "SaEvent",
    "SaState",
    "SecurityAssociation",
    "SequenceNumberExhausted",
    "SoftLifetimeExpired",
]
