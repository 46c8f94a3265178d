"""The engine's internal way of leaving a call early with a DWORD status.

The Windows-faithful methods never raise for bad arguments: they return the status. Inside,
validation raises :class:`Fail` and the method boundary turns it into the return value, so each
rule is written once, in its order, without threading status codes through every helper.
"""

from __future__ import annotations


class Fail(Exception):
    """Stop the current call with ``status``; ``detail`` is for logs (never holds a key).

    ``field`` names the parameter or structure field at fault (``"id"``, ``"inboundSpi"``,
    ``"descriptions[0].encryption.key"``) when the check knows it, else ``""``. The Windows
    methods still return the bare status; the engine keeps the last failure per thread
    (:meth:`ipsecsa.wfp.Engine.last_failure`) for the Pythonic API's typed errors.
    """

    def __init__(self, status: int, detail: str = "", field: str = "") -> None:
        super().__init__(f"0x{status:08X} {detail}")
        self.status = status
        self.detail = detail
        self.field = field
