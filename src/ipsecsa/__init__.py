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
from ipsecsa.datapath import native as _native
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


def info() -> dict[str, object]:
    """What this installation runs on: the version, whether the native ESP fast path is on
    (``native``) and, when it is off, why (``why_off``), and the libcrypto it uses."""
    import cryptography

    return {"version": __version__, "cryptography": cryptography.__version__, **_native.info()}

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
    "info",
    "load_sas",
]
