"""``ipsecsa serve``: open the durable engine, make the listening sockets, run uvicorn, stop.

The sockets are made here rather than by uvicorn so that the Unix socket is 0600 from the
moment it exists (bound under a umask), a stale socket of a dead service is replaced while a
live one is refused, and a TCP address in use is one clear error. SIGTERM and SIGINT stop the
service gracefully: no new connections, requests in flight finish (event streams end), then the
engine is closed (its store consistent) and the process exits with status 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from ipsecsa.errors import IpsecsaError
from ipsecsa.securefile import write_secret_file
from ipsecsa.service import paths
from ipsecsa.service.logs import log
from ipsecsa.service.rights import RIGHTS
from ipsecsa.service.tokens import ADMIN, TokenStore

#: Seconds the shutdown waits for requests in flight before closing their connections.
GRACE_SECONDS = 10


class ServeError(IpsecsaError):
    """The service cannot start (socket in use, bad address, unreadable database)."""


def parse_http(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServeError(f"--http {value!r}: HOST:PORT (for example 127.0.0.1:8080)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def unix_listener(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600; a stale one is replaced."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ServeError(f"{path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: a service that died
        else:
            raise ServeError(f"{path}: another ipsecsa service is listening there")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ServeError(f"{path}: cannot listen: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def tcp_listener(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"--http {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # The protocol number matters: asyncio turns Nagle off (TCP_NODELAY) only on accepted
    # sockets whose ``proto`` is IPPROTO_TCP, and a socket made with proto 0 passes 0 on to
    # them. With Nagle on, uvicorn's response (headers and body written separately) waited for
    # the client's delayed ACK: every request over TCP took 40 ms more (docs/PERFORMANCE.md).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"--http {host}:{port}: cannot listen: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def first_start_token(store: TokenStore, token_file: Path) -> str | None:
    """On the first start (no token store yet), make the administrator token (``all``) and
    write it to ``token_file``, 0600. Returns the token file's path, or None."""
    if store.existed:
        return None
    token, _ = store.create(ADMIN, RIGHTS["all"])
    token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret_file(token_file, (token + "\n").encode())
    return str(token_file)


def serve(database: str | None = None, socket_path: str | None = None, http: str | None = None,
          token_file: str | None = None, tun: str | None = None, local: Any = None,
          port: int = 4500, gateway: dict[str, Any] | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit status (0). With ``tun`` (and
    ``local``), a gateway on that TUN device carries the engine's contexts' traffic
    (:mod:`ipsecsa.service.gateway`); ``gateway`` holds the rest of its settings, the
    keywords of :class:`ipsecsa.gateway.Gateway` (peer, transport, keepalive, mtu, offload,
    threads)."""
    import uvicorn

    from ipsecsa import api
    from ipsecsa.service.app import Service, create_app

    db = Path(database) if database else paths.default_database()
    sock_path = Path(socket_path) if socket_path else paths.default_socket()
    tfile = Path(token_file) if token_file else paths.default_token_file(db)
    tcp = parse_http(http) if http else None
    if (tun is None) != (local is None):
        raise ServeError("--tun and --local go together (the TUN device and the address the "
                         "gateway's UDP socket binds)")

    db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    listeners = [unix_listener(sock_path)]
    try:
        if tcp is not None:
            listeners.append(tcp_listener(*tcp))
        engine = api.Engine(database=str(db))
    except BaseException:
        for s in listeners:
            s.close()
        with contextlib.suppress(OSError):
            sock_path.unlink()
        raise
    tokens = TokenStore(paths.token_store(db))
    written = first_start_token(tokens, tfile)
    service = Service(engine, tokens)
    for principal in {r.principal.casefold(): r.principal for r in tokens.records()}.values():
        service.sync_grants(principal)
    app = create_app(service)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not service.stopping.is_set():
                log("stopping", signal=signal.Signals(sig).name)
            service.stopping.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACE_SECONDS, server_header=False)
    server = _Server(config)
    # uvicorn re-raises the signal it caught once it has stopped; with these no-op handlers in
    # place beforehand, that re-raise returns instead of killing us, so we can close the engine.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    where: dict[str, Any] = {"socket": str(sock_path)}
    if tcp is not None:
        host, http_port = listeners[1].getsockname()[:2]  # not ``port``: the gateway's
        where["http"] = f"{host}:{http_port}"
    log("started", database=str(db), contexts=len(engine.contexts()), tokens=len(tokens.records()),
        **where, **({"admin_token_file": written} if written else {}))
    attached = contextlib.ExitStack()
    try:
        if tun is not None and local is not None:
            from ipsecsa.service.gateway import attached_gateway

            attached.enter_context(attached_gateway(engine, tun, local, port, **(gateway or {})))
        server.run(sockets=listeners)
    finally:
        attached.close()  # before the engine: no packet may reach a closed engine
        service.stopping.set()
        service.close()
        engine.close()
        for s in listeners:
            s.close()
        with contextlib.suppress(OSError):
            sock_path.unlink()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log("stopped")
    return 0


def _ignore(sig: int, frame: FrameType | None) -> None:
    """Stands in for the default action of a signal uvicorn already handled."""
