"""ipsecsa: a userspace IPsec security-association engine.

The public API in one place::

    sa = ipsecsa.SecurityAssociation.from_dict({...})   # one object of sa-format.md
    result = sa.protect(ip_packet)                     # Result(packet, drop)
    sas = ipsecsa.load_sas("sas.json")
"""

from ipsecsa.datapath import (
    HardLifetimeExpired,
    LifetimeKind,
    Result,
    SaCounters,
    SaEvent,
    SaState,
    SecurityAssociation,
    SequenceNumberExhausted,
    SoftLifetimeExpired,
)
from ipsecsa.errors import (
    ConfigError,
    DropReason,
    IpsecsaError,
    KeyLengthError,
    SaStateError,
    UnknownAlgorithmError,
)
from ipsecsa.loader import load_sas

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DropReason",
    "HardLifetimeExpired",
    "IpsecsaError",
    "KeyLengthError",
    "LifetimeKind",
    "Result",
    "SaCounters",
    "SaEvent",
    "SaState",
    "SaStateError",
    "SecurityAssociation",
    "SequenceNumberExhausted",
    "SoftLifetimeExpired",
    "UnknownAlgorithmError",
    "load_sas",
]
