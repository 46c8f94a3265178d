"""ipsecsa.ndis: NDIS IPsec task offload v1 — structures, a model miniport, and the transport.

* :mod:`ipsecsa.ndis.constants`, :mod:`ipsecsa.ndis.structs`: Windows values and x64 layouts.
* :class:`Miniport`: the NIC side (OIDs, capabilities, per-packet crypto step).
* :class:`OffloadTransport`: the transport side (ADD/DELETE requests, binding SAs to a NIC).
"""

from ipsecsa.ndis.constants import CryptoStatus, NdisStatus, Oid
from ipsecsa.ndis.miniport import (
    Miniport,
    MiniportStats,
    OffloadedSa,
    OidRequestInfo,
    ParserEntry,
)
from ipsecsa.ndis.structs import NblInfoReceive, StructError
from ipsecsa.ndis.transport import (
    NotOffloadableError,
    OffloadError,
    OffloadTransport,
    UnknownHandleError,
    build_add_request,
)

__all__ = [
    "CryptoStatus",
    "Miniport",
    "MiniportStats",
    "NblInfoReceive",
    "NdisStatus",
    "NotOffloadableError",
    "OffloadError",
    "OffloadTransport",
    "OffloadedSa",
    "Oid",
    "OidRequestInfo",
    "ParserEntry",
    "StructError",
    "UnknownHandleError",
    "build_add_request",
]
