"""The HTTP/JSON API of the service: FastAPI routes over one :class:`ipsecsa.api.Engine`.

Why FastAPI (on Starlette and uvicorn): request bodies are declared as pydantic models, so
malformed JSON, unknown fields and wrong types are refused before any handler runs, with the
field named in the error, and the OpenAPI 3 document at ``/openapi.json`` is generated from the
same declarations, so it cannot drift from the code. Nothing here parses HTTP by hand.

No rule of the engine is repeated here. Each request runs in an engine session whose identity is
the token's principal (``SEC_WINNT_AUTH_IDENTITY_W(User=principal)``), and the service grants
each principal its tokens' ``FWPM_ACTRL_*`` rights with ``engine.grant``; when the principal
lacks a right, the engine answers ``ERROR_ACCESS_DENIED`` and the service says 403. The service's
own check is authentication (401) and, for managing tokens, ``WRITE_DAC`` (changing who may do
what is changing the DACL).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ipsecsa import api
from ipsecsa.api.views import ContextInfo
from ipsecsa.service.logs import log
from ipsecsa.service.metrics import ServiceMetrics
from ipsecsa.service.rights import MANAGE_TOKENS, RightsError, parse_rights
from ipsecsa.service.tokens import TokenError, TokenRecord, TokenStore
from ipsecsa.wfp import constants as C

#: Largest request body accepted: 16 MiB (1,024 packets of 12 KiB in base64; a batch of larger
#: packets is split by the caller).
MAX_BODY = 16 * 1024 * 1024
#: Most packets in one POST /v1/packets.
MAX_BATCH = 1024
#: Seconds between keep-alive comments on the event stream.
KEEPALIVE = 15.0

_HTTP_STATUS: dict[type[api.WfpError], int] = {
    api.NotFound: 404,
    api.AlreadyExists: 409,
    api.AccessDenied: 403,
    api.InvalidArgument: 400,
    api.InvalidState: 409,
    api.InUse: 409,
    api.TransactionError: 409,
    api.SessionError: 409,
    api.Timeout: 503,
    api.NotSupported: 400,
    api.EngineClosed: 503,
}


def http_status(err: api.WfpError) -> int:
    for cls in type(err).__mro__:
        if cls in _HTTP_STATUS:
            return _HTTP_STATUS[cls]  # type: ignore[index]
    return 500


def error_body(status_name: str, message: str, field: str = "", status: int = 0) -> dict[str, Any]:
    """The one error shape of the API (the same four keys as ``api.WfpError.to_dict()``)."""
    return {"error": {"status": status, "status_name": status_name, "field": field,
                      "message": message}}


# ---------------------------------------------------------------- request bodies
class _Body(BaseModel):
    """Strict: unknown fields and wrong JSON types are refused, naming the field."""

    model_config = ConfigDict(extra="forbid", strict=True)


SaBundle = dict[str, Any] | list[dict[str, Any]]


class CreateContext(_Body):
    """A whole SA context from two SA descriptions (``spec/sa-format.md``): this host sends with
    ``outbound`` and receives with ``inbound``; a list is a bundle, ESP then AH."""

    outbound: SaBundle
    inbound: SaBundle


class NewContext(_Body):
    """IPsecSaContextCreate1: the first step of the step-by-step path."""

    local: str
    remote: str
    outbound_filter: int = Field(ge=1)
    mode: Literal["transport", "tunnel"] = "transport"


class Encapsulation(_Body):
    local_port: int = Field(ge=1, le=65535)
    remote_port: int = Field(ge=1, le=65535)


class SpiRequest(_Body):
    """IPsecSaContextGetSpi1 (no ``spi``: the engine allocates one) or SetSpi0 (``spi``)."""

    inbound_filter: int = Field(ge=1)
    spi: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    encapsulation: Encapsulation | None = None


class AddSa(_Body):
    """The SA(s) of one side: one description, or ESP then AH."""

    sa: SaBundle


class FilterRequest(_Body):
    """An IPsec filter for the step-by-step path (``local``/``remote``: address or prefix)."""

    direction: Literal["inbound", "outbound"]
    local: str | None = None
    remote: str | None = None
    protocol: int = Field(default=0, ge=0, le=255)
    local_port: int = Field(default=0, ge=0, le=65535)
    remote_port: int = Field(default=0, ge=0, le=65535)
    mode: Literal["transport", "tunnel"] = "transport"
    ip_version: Literal[4, 6] | None = None
    name: str = Field(default="ipsecsa.api filter", min_length=1, max_length=256)


class PacketBatch(_Body):
    """IP packets (base64) the host sends (``outbound``) or receives (``inbound``)."""

    direction: Literal["outbound", "inbound"]
    packets: list[str] = Field(max_length=MAX_BATCH)


class TokenRequest(_Body):
    """A new token: ``rights`` is a comma-separated list (or a list) of FWPM_ACTRL_* names,
    with or without the prefix, or ``all``."""

    principal: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    rights: str | list[str]


# ---------------------------------------------------------------- responses
class SpiResponse(BaseModel):
    spi: int


class FilterResponse(BaseModel):
    filter_id: int


class PacketResult(BaseModel):
    packet: str | None = Field(description="The output packet (base64), or null if dropped")
    drop: str | None = Field(description="The DropReason, or null if delivered")


class PacketResults(BaseModel):
    results: list[PacketResult]


class TokenCreated(BaseModel):
    id: str
    principal: str
    rights: list[str]
    token: str


class TokenInfo(BaseModel):
    id: str
    principal: str
    rights: list[str]
    mask: int
    created: float


class Whoami(BaseModel):
    principal: str
    rights: list[str]
    token_id: str


class ErrorDetail(BaseModel):
    status: int = Field(description="The engine's status code (0 for errors of the service)")
    status_name: str = Field(description="FWP_E_NOT_FOUND, INVALID_REQUEST, UNAUTHORIZED, ...")
    field: str = Field(description="The field at fault: inbound.encryption.key, packets[3]")
    message: str


class ErrorBody(BaseModel):
    """Every error answer of the API (docs/service.md, Errors)."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: The error answers any operation may give, declared in the OpenAPI document so that a client
#: generated from it knows their shape (FastAPI's own 422 schema is replaced: ours is this one).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed JSON, an invalid SA description or argument, bad base64"),
    401: _error("No token, or one the service does not know"),
    403: _error("The principal lacks the right (the engine's ERROR_ACCESS_DENIED)"),
    404: _error("No such context, filter or token"),
    405: _error("The path does not take this method"),
    409: _error("An SPI in use, an incompatible state, an object in use"),
    413: _error("A body over 16 MiB"),
    422: _error("A schema error: unknown field, wrong type, missing field, out of range"),
    503: _error("The engine is closing, or timed out waiting for a transaction"),
}


class Service:
    """What the routes share: the engine, the tokens, a session per principal, the metrics."""

    def __init__(self, engine: api.Engine, tokens: TokenStore) -> None:
        self.engine = engine
        self.tokens = tokens
        self.metrics = ServiceMetrics(engine)
        self.stopping = threading.Event()
        self._sessions: dict[str, api.Session] = {}
        self._sessions_lock = threading.Lock()
        self._grant_lock = threading.Lock()

    def session(self, principal: str) -> api.Session:
        """The engine session of ``principal`` (one per principal, shared by its requests: the
        API's operations each run in their own implicit transaction)."""
        key = principal.casefold()
        with self._sessions_lock:
            found = self._sessions.get(key)
            if found is None:
                found = self.engine.session(principal, name=f"ipsecsa.service {principal}")
                self._sessions[key] = found
            return found

    def sync_grants(self, principal: str) -> None:
        """Make the engine's entry for ``principal`` the union of its tokens' rights (grant the
        new bits first, then revoke the rest: no moment with fewer rights than both)."""
        with self._grant_lock:
            mask = self.tokens.rights_of(principal)
            if mask:
                self.engine.grant(principal, mask, "engine")
            rest = C.FWPM_GENERIC_ALL & ~mask
            if rest:
                self.engine.revoke(principal, rest, "engine")

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            try:
                session.close()
            except api.WfpError:
                pass


# Answers the service builds itself. FastAPI would validate a handler's return value against
# its response_model and then serialize it, in a worker thread; the views come from the engine
# and the packet results from the data path, so validating them again only costs time (for a
# batch of 64 packets more than the engine's work on them; docs/PERFORMANCE.md). The
# response_model stays on each route: it is what /openapi.json documents, and pydantic's
# serializer for that same type writes the body, so body and document cannot differ.
_CONTEXT = TypeAdapter(ContextInfo)
_CONTEXTS = TypeAdapter(list[ContextInfo])


def _view(info: ContextInfo, status: int = 200) -> Response:
    return Response(_CONTEXT.dump_json(info), status_code=status, media_type="application/json")


def _views(infos: list[ContextInfo]) -> Response:
    return Response(_CONTEXTS.dump_json(infos), media_type="application/json")


def _json_response(doc: Any) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")).encode(),
                    media_type="application/json")


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _FieldError(400, f"{field}: not base64", field) from None


class _FieldError(Exception):
    def __init__(self, status: int, message: str, field: str) -> None:
        self.status, self.message, self.field = status, message, field
        super().__init__(message)


def _loc(loc: tuple[Any, ...]) -> str:
    """A pydantic location as this API names fields: ``outbound.spi``, ``packets[3]``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part in ("dict[str,any]", "list[dict[str,any]]",
                                                "function-after[...]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


async def authenticated(request: Request) -> TokenRecord:
    """The token's record, or 401 (no Authorization: Bearer, or a token nobody issued).

    A coroutine on purpose: it is a hash and a dict lookup, and FastAPI runs a plain function
    dependency in a worker thread, one more thread handoff per request for nothing."""
    service: Service = request.app.state.service
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    record = service.tokens.lookup(token.strip()) if scheme.lower() == "bearer" else None
    if record is None:
        raise StarletteHTTPException(
            401, "a valid token is needed: Authorization: Bearer TOKEN" if header
            else "no credentials: send Authorization: Bearer TOKEN",
            headers={"WWW-Authenticate": 'Bearer realm="ipsecsa"'})
    request.state.principal = record.principal
    return record


Auth = Annotated[TokenRecord, Depends(authenticated)]


def create_app(service: Service) -> FastAPI:
    """The application: every route, the error handlers, the size limit, the metrics."""
    app = FastAPI(title="ipsecsa", version="1",
                  description="The ipsecsa service: SA contexts, packets, events, metrics. "
                              "Every call but /v1/health needs `Authorization: Bearer TOKEN`.",
                  responses=ERRORS)
    app.state.service = service
    metrics = service.metrics

    # -------------------------------------------------------------- errors
    @app.exception_handler(api.WfpError)
    async def _wfp_error(request: Request, err: api.WfpError) -> JSONResponse:
        return JSONResponse({"error": err.to_dict()}, status_code=http_status(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {
            "loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx") or {}
            return JSONResponse(error_body("MALFORMED_JSON", "malformed JSON: " + str(
                ctx.get("error", first.get("msg"))), "body"), status_code=400)
        field = _loc(tuple(first.get("loc", ())))
        message = f"{field or 'body'}: {first.get('msg')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        return JSONResponse(error_body("INVALID_REQUEST", message, field or "body"),
                            status_code=422)

    @app.exception_handler(_FieldError)
    async def _field_error(request: Request, err: _FieldError) -> JSONResponse:
        return JSONResponse(error_body("INVALID_REQUEST", err.message, err.field),
                            status_code=err.status)

    @app.exception_handler(RightsError)
    async def _rights_error(request: Request, err: RightsError) -> JSONResponse:
        return JSONResponse(error_body("INVALID_REQUEST", str(err), "rights"), status_code=400)

    @app.exception_handler(TokenError)
    async def _token_error(request: Request, err: TokenError) -> JSONResponse:
        return JSONResponse(error_body("NOT_FOUND", str(err), "token_id"), status_code=404)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        names = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                 405: "METHOD_NOT_ALLOWED", 413: "TOO_LARGE"}
        headers = dict(err.headers or {})
        if err.status_code == 405:
            headers["Allow"] = ", ".join(_allowed(request))
        return JSONResponse(error_body(names.get(err.status_code, "HTTP_ERROR"),
                                       str(err.detail)), status_code=err.status_code,
                            headers=headers)

    def ops(record: TokenRecord) -> api.Session:
        return service.session(record.principal)

    # -------------------------------------------------------------- routes
    @app.get("/v1/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness (no token needed): the service answers."""
        return {"status": "ok"}

    @app.get("/v1/whoami", tags=["service"], response_model=Whoami)
    def whoami(record: Auth) -> Whoami:
        """The principal and rights of the token used."""
        return Whoami(principal=record.principal, rights=record.public()["rights"],
                      token_id=record.id)

    @app.post("/v1/contexts", tags=["contexts"], status_code=201, response_model=ContextInfo)
    def create_context(body: CreateContext, record: Auth) -> Response:
        """Create, SetSpi, AddInbound, AddOutbound from two SA descriptions, with the IPsec
        filters the traffic needs (all undone on any failure)."""
        return _view(ops(record).create_context(outbound=body.outbound, inbound=body.inbound),
                     201)

    @app.get("/v1/contexts", tags=["contexts"], response_model=list[ContextInfo])
    def list_contexts(record: Auth) -> Response:
        """Every SA context with its state, SPIs and counters."""
        return _views(ops(record).contexts())

    @app.post("/v1/contexts/new", tags=["steps"], status_code=201, response_model=ContextInfo)
    def new_context(body: NewContext, record: Auth) -> Response:
        """IPsecSaContextCreate1 (state ``created``)."""
        return _view(ops(record).new_context(local=body.local, remote=body.remote,
                                             outbound_filter=body.outbound_filter,
                                             mode=body.mode), 201)

    @app.get("/v1/contexts/{context_id}", tags=["contexts"], response_model=ContextInfo)
    def get_context(context_id: int, record: Auth) -> Response:
        return _view(ops(record).context(context_id))

    @app.post("/v1/contexts/{context_id}/spi", tags=["steps"], response_model=SpiResponse)
    def spi(context_id: int, body: SpiRequest, record: Auth) -> SpiResponse:
        """GetSpi (no ``spi`` given: the engine picks one) or SetSpi (manual keying)."""
        session = ops(record)
        encap = None if body.encapsulation is None else body.encapsulation.model_dump()
        if body.spi is None:
            return SpiResponse(spi=session.get_spi(context_id, inbound_filter=body.inbound_filter,
                                                   encapsulation=encap))
        session.set_spi(context_id, body.spi, inbound_filter=body.inbound_filter,
                        encapsulation=encap)
        return SpiResponse(spi=body.spi)

    @app.post("/v1/contexts/{context_id}/inbound", tags=["steps"], response_model=ContextInfo)
    def add_inbound(context_id: int, body: AddSa, record: Auth) -> Response:
        return _view(ops(record).add_inbound(context_id, body.sa))

    @app.post("/v1/contexts/{context_id}/outbound", tags=["steps"], response_model=ContextInfo)
    def add_outbound(context_id: int, body: AddSa, record: Auth) -> Response:
        return _view(ops(record).add_outbound(context_id, body.sa))

    @app.post("/v1/contexts/{context_id}/expire", tags=["contexts"], status_code=204)
    def expire(context_id: int, record: Auth) -> Response:
        """Stop sending now; the inbound SA lingers 60 s for packets in flight."""
        ops(record).expire(context_id)
        return Response(status_code=204)

    @app.delete("/v1/contexts/{context_id}", tags=["contexts"], status_code=204)
    def delete(context_id: int, record: Auth) -> Response:
        ops(record).delete(context_id)
        return Response(status_code=204)

    @app.post("/v1/filters", tags=["steps"], status_code=201, response_model=FilterResponse)
    def add_filter(body: FilterRequest, record: Auth) -> FilterResponse:
        fid = ops(record).add_ipsec_filter(
            body.direction, local=body.local, remote=body.remote, protocol=body.protocol,
            local_port=body.local_port, remote_port=body.remote_port, mode=body.mode,
            ip_version=body.ip_version, name=body.name)
        return FilterResponse(filter_id=fid)

    @app.delete("/v1/filters/{filter_id}", tags=["steps"], status_code=204)
    def delete_filter(filter_id: int, record: Auth) -> Response:
        ops(record).delete_filter(filter_id)
        return Response(status_code=204)

    @app.get("/v1/statistics", tags=["contexts"])
    def statistics(record: Auth) -> dict[str, Any]:
        """IPsecGetStatistics1."""
        return ops(record).statistics()

    @app.post("/v1/packets", tags=["traffic"], response_model=PacketResults)
    def packets(body: PacketBatch, record: Auth) -> Response:
        """Send (``outbound``) or receive (``inbound``) a batch through the host's data path.
        Classification is open to every principal (reference D.2: Everyone holds CLASSIFY), as
        any process on a host may send traffic; a valid token is still needed."""
        decoded = [_b64(p, f"packets[{i}]") for i, p in enumerate(body.packets)]
        engine = service.engine
        # Outbound, the engine's batch entry point (each context's packets protected in one
        # native call); inbound has none yet, so packet by packet.
        answers = engine.outbound_batch(decoded) if body.direction == "outbound" \
            else [engine.inbound(p) for p in decoded]
        encode = base64.b64encode
        results = [{"packet": None if out is None else encode(out).decode("ascii"),
                    "drop": None if drop is None else drop.value} for out, drop in answers]
        return _json_response({"results": results})

    @app.get("/v1/events", tags=["events"],
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-sent events: `event: added|deleted`, "
                                             "`data: {\"kind\": ..., \"context_id\": N}`"}})
    async def events(record: Auth) -> StreamingResponse:
        """SA-context events from now on (IPSEC_SA_CONTEXT_EVENT_ADD/DELETE) as server-sent
        events. The subscription is made in the principal's session (SUBSCRIBE right)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[api.ContextEvent] = asyncio.Queue()

        def deliver(event: api.ContextEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        session = ops(record)
        subscription = await asyncio.to_thread(session.subscribe, deliver)
        return StreamingResponse(_stream(queue, subscription, service.stopping),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @app.get("/v1/tokens", tags=["tokens"], response_model=list[TokenInfo])
    def list_tokens(record: Auth) -> list[TokenInfo]:
        _may_manage(record)
        return [TokenInfo(**r.public()) for r in service.tokens.records()]

    @app.post("/v1/tokens", tags=["tokens"], status_code=201, response_model=TokenCreated)
    def create_token(body: TokenRequest, record: Auth) -> TokenCreated:
        """A token for ``principal`` with ``rights`` (shown once). Needs WRITE_DAC."""
        _may_manage(record)
        if body.principal.casefold() == "everyone":
            raise _FieldError(400, "principal: 'Everyone' is the engine's entry for all "
                                   "callers, not a principal a token can be", "principal")
        mask = parse_rights(body.rights)
        token, made = service.tokens.create(body.principal, mask)
        service.sync_grants(made.principal)
        log("token_created", id=made.id, principal=made.principal, by=record.principal)
        return TokenCreated(id=made.id, principal=made.principal,
                            rights=made.public()["rights"], token=token)

    @app.delete("/v1/tokens/{token_id}", tags=["tokens"], status_code=204)
    def revoke_token(token_id: str, record: Auth) -> Response:
        _may_manage(record)
        gone = service.tokens.revoke(token_id)
        service.sync_grants(gone.principal)
        log("token_revoked", id=gone.id, principal=gone.principal, by=record.principal)
        return Response(status_code=204)

    @app.get("/metrics", tags=["service"],
             responses={200: {"content": {"text/plain": {}},
                              "description": "Prometheus text exposition"}})
    def prometheus(record: Auth) -> Response:
        """Per-SA packets, bytes and drops by reason; contexts by state; request counts and
        latencies. Reading them is reading statistics: the READ_STATS right (the engine
        decides, through IPsecGetStatistics1 in the principal's session)."""
        ops(record).statistics()
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(Observe, metrics=metrics)
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app


class Observe:
    """Request counts, latencies and the ``event=request`` log line, taken when the response
    starts (for the event stream: when the stream opens, not when it ends).

    A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    BaseHTTPMiddleware runs the application in a task group and passes the response through a
    memory stream, which cost more server CPU per request than the engine's ``contexts()`` of
    one context (docs/PERFORMANCE.md, the service)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        done = False

        def record(status: int) -> None:
            nonlocal done
            done = True
            elapsed = time.perf_counter() - start
            path = getattr(scope.get("route"), "path", "(unmatched)")
            method = scope["method"]
            self.metrics.observe(method, path, status, elapsed)
            log("request", method=method, path=scope["path"], route=path, status=status,
                ms=round(elapsed * 1000, 2),
                principal=(scope.get("state") or {}).get("principal", "-"))

        async def observed(message: Any) -> None:
            if message["type"] == "http.response.start" and not done:
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except BaseException:
            if not done:
                record(500)  # the server's error handler answers 500 after us
            raise


class BodyLimit:
    """413 for a body over ``limit`` bytes: by its Content-Length before reading anything, and
    by counting as it arrives for a chunked body (which declares no length).

    After the 413 is written the rest of the body is read and thrown away (up to ``DRAIN_BYTES``
    and ``DRAIN_SECONDS``), as nginx's lingering close does: a server that closes a socket with
    unread data in it makes the kernel answer with a reset, and the reset can destroy the 413
    before the client has read it, so the client would see "connection reset" instead of the
    reason. A client that sent ``Expect: 100-continue`` has sent no body and none is read."""

    DRAIN_BYTES = 64 * 1024 * 1024
    DRAIN_SECONDS = 5.0

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        drain = headers.get(b"expect", b"").lower() != b"100-continue"
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send, receive if drain else None)
            return
        seen = 0
        over = False

        async def counted() -> Any:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request" and not over:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Stop reading: to the application the client went away mid-body, so no
                    # handler runs (a truncated body is never acted on); its error answer is
                    # replaced by the 413 below.
                    over = True
                    if not message.get("more_body", False):
                        drained.set()
                    return {"type": "http.disconnect"}
            return message

        drained = asyncio.Event()

        async def replaced(message: Any) -> None:
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send, None if drained.is_set() else receive)

        await self.app(scope, counted, replaced)

    async def _refuse(self, send: Any, receive: Any | None) -> None:
        """Write the 413; then, with ``receive``, read and discard what is left of the body
        before the response is complete (the server closes the connection when it is)."""
        body = json.dumps(error_body("TOO_LARGE", f"body: more than {self.limit} bytes",
                                     "body")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body, "more_body": receive is not None})
        if receive is None:
            return
        loop = asyncio.get_running_loop()
        deadline, left = loop.time() + self.DRAIN_SECONDS, self.DRAIN_BYTES
        while left > 0:
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except TimeoutError:
                break
            if message["type"] != "http.request":
                break
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _allowed(request: Request) -> list[str]:
    """The methods of the resource at the request's path, for a 405's ``Allow``. Starlette
    names only those of the first route whose path matched; a resource's methods are those of
    every route whose path matches, the most specific ones only (``/v1/contexts/new`` is that
    literal path, not ``/v1/contexts/{context_id}`` with the id "new")."""
    matched: list[tuple[int, set[str]]] = []
    for route in request.app.router.routes:
        match, child = route.matches(request.scope)
        if match is not Match.NONE:
            matched.append((len(child.get("path_params", {})), set(getattr(route, "methods",
                                                                           None) or ())))
    fewest = min((n for n, _ in matched), default=0)
    return sorted({m for n, methods in matched if n == fewest for m in methods})


def _may_manage(record: TokenRecord) -> None:
    if record.rights & MANAGE_TOKENS != MANAGE_TOKENS:
        raise StarletteHTTPException(403, f"{record.principal} may not manage tokens "
                                          "(needs WRITE_DAC, which 'all' includes)")


async def _stream(queue: asyncio.Queue[api.ContextEvent], subscription: api.Subscription,
                  stopping: threading.Event) -> AsyncIterator[bytes]:
    """The SSE body: one ``event:``/``data:`` block per event, a comment every KEEPALIVE
    seconds, and an end when the service stops (so a shutdown never waits on a watcher)."""
    try:
        yield b": subscribed\n\n"
        idle = 0.0
        while not stopping.is_set():
            try:
                event = await asyncio.wait_for(queue.get(), timeout=0.5)
            except TimeoutError:
                idle += 0.5
                if idle >= KEEPALIVE:
                    idle = 0.0
                    yield b": keepalive\n\n"
                continue
            idle = 0.0
            data = json.dumps(event.to_dict())
            yield f"event: {event.kind}\ndata: {data}\n\n".encode()
    finally:
        await asyncio.to_thread(subscription.cancel)
