"""ipsecsa.service: the long-lived process that owns the SA database (``ipsecsa serve``).

One :class:`ipsecsa.api.Engine` with a durable database, behind an authenticated HTTP/JSON API
(FastAPI on uvicorn) on a Unix socket and optionally TCP. See ``docs/service.md``.
"""

from __future__ import annotations

from ipsecsa.service.paths import default_database, default_socket, default_token_file

__all__ = ["default_database", "default_socket", "default_token_file"]
