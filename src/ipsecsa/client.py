"""``ipsecsa.client``: the service's operations from Python, named as in :mod:`ipsecsa.api`.

::

    from ipsecsa.client import Client

    with Client() as service:                        # the default socket and admin token
        ctx = service.create_context(outbound=out_sa, inbound=in_sa)
        print(service.contexts())
        service.delete(ctx.id)

The same calls return the same views (:class:`ipsecsa.api.ContextInfo`) and raise the same typed
errors (:class:`ipsecsa.api.NotFound`, ``AccessDenied``, ... rebuilt from the service's answer,
with its status, field and message), so code written against ``ipsecsa.api`` runs against the
service. It talks HTTP with httpx over the Unix socket (default) or TCP (``url=``).

Where the service is: ``url`` / ``socket``, else ``IPSECSA_URL`` (``http://HOST:PORT`` or
``unix:/path``), else the default socket. The token: ``token``, else ``IPSECSA_TOKEN``, else
``token_file`` (or ``IPSECSA_TOKEN_FILE``), else the administrator token file beside the default
database if it is readable.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import httpx

from ipsecsa import api
from ipsecsa.api.views import ContextEvent, ContextInfo
from ipsecsa.datapath.result import Result
from ipsecsa.errors import DropReason, IpsecsaError
from ipsecsa.service import paths

__all__ = ["Client", "Forbidden", "ServiceError", "ServiceUnavailable", "Unauthorized"]


class ServiceError(IpsecsaError):
    """The service refused a request for a reason that is not an engine status (401, a bad
    request body, ...): ``http_status``, ``status_name``, ``field``, ``message``."""

    def __init__(self, http_status: int, status_name: str, message: str, field: str = "") -> None:
        self.http_status = http_status
        self.status_name = status_name
        self.message = message
        self.field = field
        super().__init__(message)


class Unauthorized(ServiceError):
    """401: no token, or one the service does not know (revoked, mistyped)."""


class Forbidden(ServiceError, PermissionError):
    """403 for a service-level right (managing tokens needs WRITE_DAC)."""


class ServiceUnavailable(IpsecsaError, ConnectionError):
    """Nothing answers where the service should be."""

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(f"no ipsecsa service at {where}; start it with `ipsecsa serve`")


def _where(url: str | None, socket: str | None) -> tuple[str, str | None]:
    """(base URL, Unix socket path or None), from the arguments, the environment, defaults."""
    if url is None and socket is None:
        env = os.environ.get("IPSECSA_URL")
        if env:
            if env.startswith("unix:"):
                socket = env[len("unix:"):].removeprefix("//")
            else:
                url = env
    if url is not None:
        return url.rstrip("/"), None
    return "http://ipsecsa", str(socket or paths.default_socket())


def _token(token: str | None, token_file: str | None) -> str | None:
    if token:
        return token
    env = os.environ.get("IPSECSA_TOKEN")
    if env:
        return env.strip()
    path = token_file or os.environ.get("IPSECSA_TOKEN_FILE")
    if path:
        return Path(path).read_text("utf-8").strip()
    default = paths.default_token_file()
    try:
        return default.read_text("utf-8").strip()
    except OSError:
        return None


def _encoded(packet: bytes) -> str:
    return base64.b64encode(packet).decode("ascii")


class Client:
    """A connection to the service (a context manager; ``close()``)."""

    def __init__(self, url: str | None = None, *, socket: str | None = None,
                 token: str | None = None, token_file: str | None = None,
                 timeout: float = 30.0) -> None:
        self.base_url, self.socket = _where(url, socket)
        self.where = self.socket if self.socket is not None else self.base_url
        self._token = _token(token, token_file)
        # No TLS on the Unix socket or a plain http:// URL, so no SSL context: httpx would
        # otherwise build a verifying one (loading the CA bundle) per client, 20-70 ms of CPU
        # with the GIL held. Fifty threads each opening a client spent seconds on it while the
        # service idled: the "collapse" at 50 clients of the first benchmark
        # (docs/PERFORMANCE.md). A transport given explicitly also means no proxy taken from
        # the environment, which is right for a plain-HTTP API that carries a bearer token. An
        # https:// URL (a TLS proxy in front of the service) keeps httpx's defaults.
        transport = None
        if self.socket is not None:
            transport = httpx.HTTPTransport(uds=self.socket, verify=False)
        elif self.base_url.startswith("http://"):
            transport = httpx.HTTPTransport(verify=False)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._http = httpx.Client(base_url=self.base_url, transport=transport, headers=headers,
                                  timeout=timeout)

    # ---------------------------------------------------------------- plumbing
    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One call; errors become the typed exceptions. Public for tools and tests."""
        try:
            response = self._http.request(method, path, json=body)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as exc:
            raise ServiceUnavailable(self.where) from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        return self.request(method, path, body).json()

    # ---------------------------------------------------------------- SA contexts
    def create_context(self, *, outbound: Any, inbound: Any) -> ContextInfo:
        return ContextInfo.from_view(self._json("POST", "/v1/contexts",
                                                {"outbound": outbound, "inbound": inbound}))

    def new_context(self, *, local: str, remote: str, outbound_filter: int,
                    mode: str = "transport") -> ContextInfo:
        return ContextInfo.from_view(self._json("POST", "/v1/contexts/new", {
            "local": local, "remote": remote, "outbound_filter": outbound_filter, "mode": mode}))

    def get_spi(self, context_id: int, *, inbound_filter: int,
                encapsulation: dict[str, int] | None = None) -> int:
        return int(self._json("POST", f"/v1/contexts/{int(context_id)}/spi", {
            "inbound_filter": inbound_filter, "encapsulation": encapsulation})["spi"])

    def set_spi(self, context_id: int, spi: int, *, inbound_filter: int,
                encapsulation: dict[str, int] | None = None) -> None:
        self._json("POST", f"/v1/contexts/{int(context_id)}/spi", {
            "inbound_filter": inbound_filter, "spi": spi, "encapsulation": encapsulation})

    def add_inbound(self, context_id: int, sa: Any) -> ContextInfo:
        return ContextInfo.from_view(self._json("POST", f"/v1/contexts/{int(context_id)}/inbound",
                                                {"sa": sa}))

    def add_outbound(self, context_id: int, sa: Any) -> ContextInfo:
        return ContextInfo.from_view(self._json(
            "POST", f"/v1/contexts/{int(context_id)}/outbound", {"sa": sa}))

    def expire(self, context_id: int) -> None:
        self.request("POST", f"/v1/contexts/{int(context_id)}/expire")

    def delete(self, context_id: int) -> None:
        self.request("DELETE", f"/v1/contexts/{int(context_id)}")

    def context(self, context_id: int) -> ContextInfo:
        return ContextInfo.from_view(self._json("GET", f"/v1/contexts/{int(context_id)}"))

    def contexts(self) -> list[ContextInfo]:
        return [ContextInfo.from_view(v) for v in self._json("GET", "/v1/contexts")]

    def statistics(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/statistics"))

    def add_ipsec_filter(self, direction: str, *, local: Any = None, remote: Any = None,
                         protocol: int = 0, local_port: int = 0, remote_port: int = 0,
                         mode: str = "transport", ip_version: int | None = None,
                         name: str = "ipsecsa.api filter") -> int:
        return int(self._json("POST", "/v1/filters", {
            "direction": direction, "local": None if local is None else str(local),
            "remote": None if remote is None else str(remote), "protocol": protocol,
            "local_port": local_port, "remote_port": remote_port, "mode": mode,
            "ip_version": ip_version, "name": name})["filter_id"])

    def delete_filter(self, filter_id: int) -> None:
        self.request("DELETE", f"/v1/filters/{int(filter_id)}")

    # ---------------------------------------------------------------- traffic
    def send(self, direction: str, packets: list[bytes]) -> list[Result]:
        """A batch through the host's data path: ``direction`` ``"outbound"`` or
        ``"inbound"``; one :class:`Result` per packet, in order."""
        answer = self._json("POST", "/v1/packets", {
            "direction": direction, "packets": [_encoded(p) for p in packets]})
        return [Result(None if r["packet"] is None else base64.b64decode(r["packet"]),
                       None if r["drop"] is None else DropReason(r["drop"]))
                for r in answer["results"]]

    def outbound(self, packet: bytes) -> Result:
        return self.send("outbound", [packet])[0]

    def inbound(self, packet: bytes) -> Result:
        return self.send("inbound", [packet])[0]

    # ---------------------------------------------------------------- events
    def events(self, *, timeout: float | None = None) -> Iterator[ContextEvent]:
        """SA-context events from now on (server-sent events); with ``timeout``, the iteration
        ends when none came for that long. Ends when the service stops."""
        read_timeout = httpx.Timeout(self._http.timeout.connect, read=timeout)
        try:
            with self._http.stream("GET", "/v1/events", timeout=read_timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                kind = None
                try:
                    for line in response.iter_lines():
                        if line.startswith("event:"):
                            kind = line[6:].strip()
                        elif line.startswith("data:") and kind is not None:
                            data = json.loads(line[5:])
                            yield ContextEvent(data["kind"], int(data["context_id"]))
                            kind = None
                except httpx.ReadTimeout:
                    return
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise ServiceUnavailable(self.where) from exc

    # ---------------------------------------------------------------- tokens
    def create_token(self, principal: str, rights: str | list[str]) -> dict[str, Any]:
        """A new token (``token`` in the answer: shown this once)."""
        return dict(self._json("POST", "/v1/tokens", {"principal": principal, "rights": rights}))

    def tokens(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/tokens"))

    def revoke_token(self, token_id: str) -> None:
        self.request("DELETE", f"/v1/tokens/{token_id}")

    def whoami(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/whoami"))

    def metrics(self) -> str:
        return self.request("GET", "/metrics").text

    def health(self) -> bool:
        return bool(self._json("GET", "/v1/health")["status"] == "ok")

    # ---------------------------------------------------------------- life
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error(response: httpx.Response) -> Exception:
    """The typed exception for an error answer: an engine status as its ``api`` class."""
    try:
        err = response.json()["error"]
        status, name = int(err.get("status") or 0), str(err.get("status_name", ""))
        message, field = str(err.get("message", "")), str(err.get("field", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        status, name, message, field = 0, "HTTP_ERROR", response.text[:200], ""
    if status:
        return api.error_for(status, message, field)
    if response.status_code == 401:
        return Unauthorized(401, name, message, field)
    if response.status_code == 403:
        return Forbidden(403, name, message, field)
    return ServiceError(response.status_code, name, message, field)
