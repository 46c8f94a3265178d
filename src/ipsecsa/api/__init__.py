"""ipsecsa.api: the Pythonic face of the SA-context engine (issue 12). See ``docs/api.md``.

``from ipsecsa import api``::

    with api.Engine() as engine:                  # or api.open(database=None)
        ctx = engine.create_context(outbound=out_sa, inbound=in_sa)
        engine.outbound(packet)
        engine.delete(ctx.id)

One implementation under two faces: everything here calls :class:`ipsecsa.wfp.Engine` and
raises its statuses as typed exceptions (:class:`WfpError` and its subclasses).
"""

from __future__ import annotations

from ipsecsa.api.engine import Engine, EventStream, Session, Subscription, Transaction, open
from ipsecsa.api.errors import (
    AccessDenied,
    AlreadyExists,
    EngineClosed,
    InUse,
    InvalidArgument,
    InvalidState,
    NotFound,
    NotSupported,
    SessionError,
    Timeout,
    TrafficMismatch,
    TransactionError,
    WfpError,
    error_for,
    status_name,
)
from ipsecsa.api.views import ContextEvent, ContextInfo, FilterEvent, SaInfo

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "ContextEvent",
    "ContextInfo",
    "Engine",
    "EngineClosed",
    "EventStream",
    "FilterEvent",
    "InUse",
    "InvalidArgument",
    "InvalidState",
    "NotFound",
    "NotSupported",
    "SaInfo",
    "Session",
    "SessionError",
    "Subscription",
    "Timeout",
    "TrafficMismatch",
    "Transaction",
    "TransactionError",
    "WfpError",
    "error_for",
    "open",
    "status_name",
]
