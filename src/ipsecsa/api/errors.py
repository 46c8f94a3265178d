"""Typed exceptions of the Pythonic API: the engine's DWORD statuses as classes people catch.

One class per family of FWP_E_* (and Win32) statuses that callers handle differently; every one
is a :class:`WfpError` and carries ``status`` (the exact value the Windows-faithful method
returned), ``status_name`` (``"FWP_E_NOT_FOUND"``), ``field`` (the argument or description field
at fault, ``"outbound.encryption.key"``, or ``""`` when the engine does not know) and ``message``
(never key material). ``to_dict()`` is what the service sends over HTTP.

The mapping is a table (:data:`CLASS_OF`); a status not in it raises :class:`WfpError` itself.
"""

from __future__ import annotations

from typing import Any

from ipsecsa.errors import IpsecsaError
from ipsecsa.wfp import constants as C


def status_name(status: int) -> str:
    """The Windows name of a status (``FWP_E_*``, ``ERROR_*``, ``EPT_S_*``), or its hex."""
    return _NAMES.get(status, f"0x{status:08X}")


class WfpError(IpsecsaError):
    """An engine call failed with ``status``; ``field`` names what was wrong, if known."""

    def __init__(self, status: int, message: str = "", field: str = "") -> None:
        self.status = status
        self.status_name = status_name(status)
        self.field = field
        self.message = message or self.status_name
        where = f" [{field}]" if field else ""
        super().__init__(f"{self.status_name} (0x{status:08X}){where}: {self.message}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: status, status_name, field, message."""
        return {"status": self.status, "status_name": self.status_name, "field": self.field,
                "message": self.message}


class NotFound(WfpError, LookupError):
    """No such SA context, filter, layer, callout, provider or sublayer (FWP_E_*_NOT_FOUND)."""


class AlreadyExists(WfpError):
    """The SPI, key or session key is in use (FWP_E_ALREADY_EXISTS)."""


class AccessDenied(WfpError, PermissionError):
    """The session's principal lacks the right (ERROR_ACCESS_DENIED)."""


class InvalidArgument(WfpError, ValueError):
    """An argument or SA description is invalid: FWP_E_INVALID_PARAMETER, NULL_POINTER,
    INVALID_ENUMERATOR/FLAGS, OUT_OF_BOUNDS, RESERVED, the transform and condition errors."""


class TrafficMismatch(InvalidArgument):
    """The SAs or the inbound traffic are not those of the context's host pair, mode or UDP
    encapsulation (FWP_E_TRAFFIC_MISMATCH)."""


class InvalidState(WfpError):
    """The operation is not allowed in the SA context's state (FWP_E_INCOMPATIBLE_SA_STATE)."""


class InUse(WfpError):
    """An SA context still names the filter (FWP_E_IN_USE)."""


class TransactionError(WfpError):
    """A transaction rule was broken: FWP_E_TXN_IN_PROGRESS (SA-context calls refuse explicit
    transactions), NO_TXN_IN_PROGRESS, TXN_ABORTED (over an hour), INCOMPATIBLE_TXN (a write in
    a read-only transaction)."""


class Timeout(WfpError, TimeoutError):
    """Another session held the transaction lock too long (FWP_E_TIMEOUT)."""


class SessionError(WfpError):
    """Not allowed in this (dynamic) session: FWP_E_DYNAMIC_SESSION_IN_PROGRESS, WRONG_SESSION;
    or the session handle is gone (ERROR_INVALID_HANDLE)."""


class NotSupported(WfpError):
    """Something Windows has that ipsecsa does not implement (ERROR_NOT_SUPPORTED)."""


class EngineClosed(WfpError):
    """The engine was closed (EPT_S_NOT_REGISTERED: the BFE is not running)."""


_FAMILIES: dict[type[WfpError], tuple[int, ...]] = {
    NotFound: (C.FWP_E_NOT_FOUND, C.FWP_E_FILTER_NOT_FOUND, C.FWP_E_LAYER_NOT_FOUND,
               C.FWP_E_CALLOUT_NOT_FOUND, C.FWP_E_CONDITION_NOT_FOUND,
               C.FWP_E_PROVIDER_NOT_FOUND, C.FWP_E_PROVIDER_CONTEXT_NOT_FOUND,
               C.FWP_E_SUBLAYER_NOT_FOUND, C.ERROR_NOT_FOUND),
    AlreadyExists: (C.FWP_E_ALREADY_EXISTS, C.ERROR_ALREADY_EXISTS),
    AccessDenied: (C.ERROR_ACCESS_DENIED,),
    InvalidArgument: (
        C.FWP_E_INVALID_PARAMETER, C.ERROR_INVALID_PARAMETER, C.FWP_E_NULL_POINTER,
        C.FWP_E_INVALID_ENUMERATOR, C.FWP_E_INVALID_FLAGS, C.FWP_E_INVALID_NET_MASK,
        C.FWP_E_INVALID_RANGE, C.FWP_E_INVALID_INTERVAL, C.FWP_E_ZERO_LENGTH_ARRAY,
        C.FWP_E_NULL_DISPLAY_NAME, C.FWP_E_INVALID_ACTION_TYPE, C.FWP_E_INVALID_WEIGHT,
        C.FWP_E_MATCH_TYPE_MISMATCH, C.FWP_E_TYPE_MISMATCH, C.FWP_E_OUT_OF_BOUNDS,
        C.FWP_E_RESERVED, C.FWP_E_DUPLICATE_CONDITION, C.FWP_E_INCOMPATIBLE_LAYER,
        C.FWP_E_ACTION_INCOMPATIBLE_WITH_LAYER, C.FWP_E_LIFETIME_MISMATCH,
        C.FWP_E_INVALID_AUTH_TRANSFORM, C.FWP_E_INVALID_CIPHER_TRANSFORM,
        C.FWP_E_INCOMPATIBLE_CIPHER_TRANSFORM, C.FWP_E_INVALID_TRANSFORM_COMBINATION,
        C.FWP_E_NEVER_MATCH, C.FWP_E_BUILTIN_OBJECT),
    TrafficMismatch: (C.FWP_E_TRAFFIC_MISMATCH,),
    InvalidState: (C.FWP_E_INCOMPATIBLE_SA_STATE,),
    InUse: (C.FWP_E_IN_USE,),
    TransactionError: (C.FWP_E_TXN_IN_PROGRESS, C.FWP_E_NO_TXN_IN_PROGRESS,
                       C.FWP_E_TXN_ABORTED, C.FWP_E_INCOMPATIBLE_TXN, C.FWP_E_SESSION_ABORTED),
    Timeout: (C.FWP_E_TIMEOUT, C.ERROR_TIMEOUT),
    SessionError: (C.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, C.FWP_E_WRONG_SESSION,
                   C.ERROR_INVALID_HANDLE),
    NotSupported: (C.ERROR_NOT_SUPPORTED,),
    EngineClosed: (C.EPT_S_NOT_REGISTERED,),
}

#: Status -> the exception class raised for it.
CLASS_OF: dict[int, type[WfpError]] = {
    status: cls for cls, statuses in _FAMILIES.items() for status in statuses}

# ERROR_ACCESS_DENIED and RPC_S_ACCESS_DENIED share a value: the first name wins.
_NAMES: dict[int, str] = {}
for _name, _value in C.ERRORS.items():
    _NAMES.setdefault(_value, _name)


def error_for(status: int, message: str = "", field: str = "") -> WfpError:
    """The typed exception for ``status``."""
    return CLASS_OF.get(status, WfpError)(status, message, field)
