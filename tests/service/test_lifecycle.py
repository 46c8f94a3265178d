"""The service's life: the first start writes the admin token 0600, a restart keeps contexts,
counters, tokens and grants, SIGTERM and SIGINT stop it with status 0 (also with an event
stream open and requests in flight), SIGKILL loses nothing that was acknowledged, a second
service on the same socket is refused, a stale socket is replaced. Real processes, real
signals."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from ipsecsa import api
from ipsecsa.client import Unauthorized
from tests.service.server import A, B, Server, pair, udp_packet


def test_first_start_files_and_restart_keeps_everything(fresh: Server) -> None:
    fresh.start()
    assert stat.S_IMODE(fresh.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.socket.stat().st_mode) == 0o600
    store = fresh.db.parent / (fresh.db.name + ".tokens.json")
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    admin = fresh.admin_token
    assert admin not in store.read_text()  # hashed
    out, inb = pair(1)
    with fresh.client() as c:
        ctx = c.create_context(outbound=out, inbound=inb)
        wire = c.outbound(udp_packet(A, B))
        assert wire.drop is None
        alice = c.create_token("alice", "read,enum")
        gone = c.create_token("gone", "all")
        c.revoke_token(gone["id"])
    assert fresh.stop() == 0
    assert not fresh.socket.exists()
    log = fresh.log.read_text()
    assert "event=started" in log and "event=stopped" in log
    assert admin not in log and out["encryption"]["key"] not in log

    fresh.start()
    assert fresh.admin_token == admin  # not rewritten
    with fresh.client() as c:
        again = c.context(ctx.id)
        assert again.state == "established" and again.packets_out == 1
        assert again.outbound_spi == out["spi"]
        second = c.outbound(udp_packet(A, B))
        assert second.drop is None and second.packet != wire.packet
    with fresh.client(alice["token"]) as a:
        assert [x.id for x in a.contexts()] == [ctx.id]
        with pytest.raises(api.AccessDenied):
            a.delete(ctx.id)
    with fresh.client(gone["token"]) as g, pytest.raises(Unauthorized):
        g.contexts()
    assert fresh.stop(signal.SIGINT) == 0


def test_sigterm_with_stream_and_requests_in_flight(fresh: Server) -> None:
    fresh.start()
    stop = threading.Event()
    errors: list[BaseException] = []
    done = {"n": 0}

    def load() -> None:
        try:
            with fresh.client() as c:
                while not stop.is_set():
                    c.contexts()
                    done["n"] += 1
        except BaseException as exc:  # noqa: BLE001 - the service going away ends the loop
            errors.append(exc)

    def watch() -> None:
        try:
            with fresh.client() as c:
                for _ in c.events():
                    pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)] + [threading.Thread(
        target=watch)]
    for t in threads:
        t.start()
    # Requests really in flight: wait for the first answers (a loaded machine may take more
    # than a second to serve one), then a little more load before the signal.
    deadline = time.monotonic() + 30
    while done["n"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    started = time.monotonic()
    assert fresh.stop() == 0
    assert time.monotonic() - started < 15
    stop.set()
    for t in threads:
        t.join(10)
    assert done["n"] > 0
    assert "event=stopped" in fresh.log.read_text()


def test_sigkill_then_restart_keeps_acknowledged(fresh: Server) -> None:
    fresh.start()
    made: list[int] = []
    with fresh.client() as c:
        for n in range(1, 6):
            out, inb = pair(10 + n)
            made.append(c.create_context(outbound=out, inbound=inb).id)
        c.delete(made.pop(0))
    assert fresh.stop(signal.SIGKILL) == -signal.SIGKILL
    assert fresh.socket.exists()  # left behind: the next start replaces it
    fresh.start()
    with fresh.client() as c:
        assert sorted(x.id for x in c.contexts()) == made


def test_second_service_on_same_socket_refused(fresh: Server) -> None:
    fresh.start()
    result = subprocess.run(
        [sys.executable, "-m", "ipsecsa", "serve", "--db", str(fresh.root / "other.db"),
         "--socket", str(fresh.socket)], capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 1
    assert "another ipsecsa service is listening" in result.stderr
    with fresh.client() as c:
        assert c.health()


def test_tcp_port_in_use_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ipsecsa", "serve", "--db", str(tmp_path / "db"),
             "--socket", str(tmp_path / "s"), "--http", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ipsecsa: error: --http")
    assert "Traceback" not in result.stderr
