"""``ipsecsa serve --tun``: SA contexts created through the service's API carry live traffic.

Two network namespaces joined by a veth (see :mod:`.netns`). In A runs the service with a gateway
attached to its engine (``ipsecsa serve --tun ipsa0 --local 192.0.2.1``); its SA context is created
with the command line against the service's socket (``ipsecsa sa create --sa-file``), exactly as
an administrator or an IKE daemon would. In B runs a plain ``ipsecsa gateway`` with the mirror SA
file. The kernel's ping proves traffic flows; after ``ipsecsa sa expire`` nothing is sent any
more while the lingering inbound SA still receives; after ``ipsecsa sa delete`` nothing is carried
either way (the next packet finds no context); SIGTERM stops the service with status 0 and
removes the TUN. A second test moves B to another address and port (NAT roaming): the service's
gateway follows it.

Needs root, /dev/net/tun and iproute2 (CI runs as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .netns import (
    NET4,
    SITE4,
    TUN,
    WIRE4,
    Wire,
    configure_site,
    sa,
    skip_reason,
    start_gateway,
    stop,
    wait_for_link,
    wait_for_udp,
    write_sa_file,
)
from .test_netns import received

REASON = skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

SPI_AB, SPI_BA = 0x5E5E0001, 0x5E5E0002


def _cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPSECSA_")}
    res = subprocess.run([sys.executable, "-m", "ipsecsa", *args, "--socket",
                          str(root / "ipsecsa.sock"), "--token-file",
                          str(root / "admin.token")], capture_output=True, text=True,
                         timeout=60, env=env, check=False)
    if check:
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res


def _serve_with(tmp_path: Path, wire: Wire, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPSECSA_")}
    with open(tmp_path / "serve.log", "w") as err:
        return subprocess.Popen(
            wire.a.cmd(sys.executable, "-m", "ipsecsa", "serve", "--db",
                       str(tmp_path / "ipsecsa.db"), "--socket", str(tmp_path / "ipsecsa.sock"),
                       "--token-file", str(tmp_path / "admin.token"), "--tun", TUN,
                       "--local", WIRE4[0], *extra), stdout=subprocess.DEVNULL, stderr=err,
            env=env)


def _end(wire: Wire, *procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    wire.destroy()


def _serve_refused(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPSECSA_")}
    return subprocess.run([sys.executable, "-m", "ipsecsa", "serve", "--db",
                           str(tmp_path / "db"), "--socket", str(tmp_path / "s"), *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def _ping(ns: object, src: str, dst: str, count: int = 3) -> int:
    res = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "1", "-I", src, dst,  # type: ignore[attr-defined]
                 check=False, timeout=30)
    return received(res)


def test_contexts_created_through_the_api_carry_traffic(tmp_path: Path) -> None:
    keys: dict = {}
    # One selector per context (the API's rule): the IPv4 sites.
    a_sas = [sa(SPI_AB, "outbound", WIRE4[0], WIRE4[1], [NET4[0]], [NET4[1]], "aes-gcm-128", keys),
             sa(SPI_BA, "inbound", WIRE4[1], WIRE4[0], [NET4[1]], [NET4[0]], "aes-gcm-128", keys)]
    b_sas = [sa(SPI_BA, "outbound", WIRE4[1], WIRE4[0], [NET4[1]], [NET4[0]], "aes-gcm-128", keys),
             sa(SPI_AB, "inbound", WIRE4[0], WIRE4[1], [NET4[0]], [NET4[1]], "aes-gcm-128", keys)]
    a_file = write_sa_file(tmp_path / "a.json", a_sas)
    b_file = write_sa_file(tmp_path / "b.json", b_sas)
    wire = Wire.create("v")
    service = gateway = None
    try:
        service = _serve_with(tmp_path, wire)
        wait_for_link(wire.a, TUN, service, timeout=30)
        wait_for_udp(wire.a, 4500)
        configure_site(wire.a, 0)
        gateway = start_gateway(wire.b, b_file, WIRE4[1], log=tmp_path / "b.log")
        wait_for_link(wire.b, TUN, gateway)
        configure_site(wire.b, 1)
        deadline = time.monotonic() + 30
        while not (tmp_path / "ipsecsa.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        # No context yet: nothing is carried (the packets are dropped as no policy).
        assert _ping(wire.a, SITE4[0], SITE4[1], count=1) == 0

        created = json.loads(_cli(tmp_path, "sa", "create", "--sa-file", str(a_file),
                                  "--json").stdout)
        ctx = created["id"]
        assert created["state"] == "established"
        assert _ping(wire.a, SITE4[0], SITE4[1]) == 3
        assert _ping(wire.b, SITE4[1], SITE4[0]) == 3
        shown = json.loads(_cli(tmp_path, "sa", "show", str(ctx), "--json").stdout)
        assert shown["outbound"][0]["packets"] >= 6  # 3 requests, 3 replies
        assert shown["inbound"][0]["packets"] >= 6

        # Expired: it stops sending at once; its inbound SA lingers (reference: 60 s) and still
        # receives what is in flight — B's echo requests arrive, the replies are not sent.
        _cli(tmp_path, "sa", "expire", str(ctx))
        assert _ping(wire.a, SITE4[0], SITE4[1], count=2) == 0
        before = json.loads(_cli(tmp_path, "sa", "show", str(ctx), "--json").stdout)
        assert before["state"] == "expiring" and before["outbound"] == []
        assert _ping(wire.b, SITE4[1], SITE4[0], count=2) == 0
        after = json.loads(_cli(tmp_path, "sa", "show", str(ctx), "--json").stdout)
        assert after["inbound"][0]["packets"] == before["inbound"][0]["packets"] + 2

        _cli(tmp_path, "sa", "delete", str(ctx))
        # Deleted: the very next packets find no context, both ways.
        assert _ping(wire.a, SITE4[0], SITE4[1], count=2) == 0
        assert _ping(wire.b, SITE4[1], SITE4[0], count=2) == 0

        assert stop(service, timeout=15) == 0, (tmp_path / "serve.log").read_text()
        assert wire.a.run("ip", "link", "show", TUN, check=False).returncode != 0  # removed
        log = (tmp_path / "serve.log").read_text()
        assert "event=gateway_started" in log and "event=gateway_stopped" in log
        for key in keys.values():  # no key material in the service's log
            assert key[0] not in log
    finally:
        _end(wire, service, gateway)


def test_serve_tun_needs_local(tmp_path: Path) -> None:
    res = _serve_refused(tmp_path, "--tun", TUN)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        ("ipsecsa: error: --tun and --local go together (the TUN device and the address the "
         "gateway's UDP socket binds)")]


@pytest.mark.parametrize("transport", ["udp", "raw"])
def test_serve_tun_takes_the_gateway_options(tmp_path: Path, transport: str) -> None:
    """``serve --tun`` takes the options of ``ipsecsa gateway`` (declared once for both):
    raw ESP, the TUN MTU, one thread, no UDP offload, no keepalive, an explicit peer. With
    --http as well, the gateway still binds the UDP port it was given (the HTTP listener's
    port once took its place)."""
    keys: dict = {}
    encap = transport == "udp"
    spi_ab, spi_ba = 0x5E5E0021 + (not encap), 0x5E5E0031 + (not encap)
    a_sas = [sa(spi_ab, "outbound", WIRE4[0], WIRE4[1], [NET4[0]], [NET4[1]], "aes-gcm-128", keys,
                encap=encap),
             sa(spi_ba, "inbound", WIRE4[1], WIRE4[0], [NET4[1]], [NET4[0]], "aes-gcm-128", keys,
                encap=encap)]
    b_sas = [sa(spi_ba, "outbound", WIRE4[1], WIRE4[0], [NET4[1]], [NET4[0]], "aes-gcm-128", keys,
                encap=encap),
             sa(spi_ab, "inbound", WIRE4[0], WIRE4[1], [NET4[0]], [NET4[1]], "aes-gcm-128", keys,
                encap=encap)]
    wire = Wire.create("o" if encap else "r")
    service = gateway = None
    try:
        service = _serve_with(tmp_path, wire, "--http", "127.0.0.1:0", "--transport", transport,
                              "--mtu", "1280", "--threads", "1", "--no-offload",
                              "--keepalive", "0", "--peer", WIRE4[1])
        wait_for_link(wire.a, TUN, service, timeout=30)
        if encap:
            wait_for_udp(wire.a, 4500)
        assert "mtu 1280 " in wire.a.run("ip", "link", "show", TUN).stdout
        configure_site(wire.a, 0)
        gateway = start_gateway(wire.b, write_sa_file(tmp_path / "b.json", b_sas), WIRE4[1],
                                "--transport", transport, log=tmp_path / "b.log")
        wait_for_link(wire.b, TUN, gateway)
        configure_site(wire.b, 1)
        deadline = time.monotonic() + 30
        while not (tmp_path / "ipsecsa.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        _cli(tmp_path, "sa", "create", "--sa-file",
             str(write_sa_file(tmp_path / "a.json", a_sas)))
        assert _ping(wire.a, SITE4[0], SITE4[1]) == 3
        assert _ping(wire.b, SITE4[1], SITE4[0], count=2) == 2
        assert stop(service, timeout=15) == 0, (tmp_path / "serve.log").read_text()
        log = (tmp_path / "serve.log").read_text()
        assert f"transport={transport}" in log and "threads=1" in log and "tun_mtu=1280" in log
    finally:
        _end(wire, service, gateway)


def test_serve_refuses_a_peer_of_another_family(tmp_path: Path) -> None:
    res = _serve_refused(tmp_path, "--tun", TUN, "--local", "192.0.2.1", "--peer", "2001:db8::1")
    assert res.returncode == 2
    assert "--peer 2001:db8::1 and --local 192.0.2.1 are of different families" in res.stderr


MOVED, MOVED_PORT = "192.0.2.4", 4501


def test_peer_of_a_context_that_moves_is_followed(tmp_path: Path) -> None:
    """NAT roaming over the engine: B comes back at a new address and port (its sequence numbers
    continued, as behind a NAT that rebinds); the service's gateway answers it there, though
    the context still names the old address."""
    keys: dict = {}
    spi_ab, spi_ba = 0x5E5E0011, 0x5E5E0012
    a_sas = [sa(spi_ab, "outbound", WIRE4[0], WIRE4[1], [NET4[0]], [NET4[1]], "aes-gcm-128", keys),
             sa(spi_ba, "inbound", WIRE4[1], WIRE4[0], [NET4[1]], [NET4[0]], "aes-gcm-128", keys)]
    b_sas = [sa(spi_ba, "outbound", WIRE4[1], WIRE4[0], [NET4[1]], [NET4[0]], "aes-gcm-128", keys),
             sa(spi_ab, "inbound", WIRE4[0], WIRE4[1], [NET4[0]], [NET4[1]], "aes-gcm-128", keys)]
    wire = Wire.create("w")
    service = gateway = None
    try:
        wire.b.run("ip", "addr", "add", f"{MOVED}/24", "dev", wire.ifb)
        service = _serve_with(tmp_path, wire)
        wait_for_link(wire.a, TUN, service, timeout=30)
        wait_for_udp(wire.a, 4500)
        configure_site(wire.a, 0)
        b_stats = tmp_path / "b.stats.json"
        gateway = start_gateway(wire.b, write_sa_file(tmp_path / "b.json", b_sas), WIRE4[1],
                                stats=b_stats, log=tmp_path / "b.log")
        wait_for_link(wire.b, TUN, gateway)
        configure_site(wire.b, 1)
        while not (tmp_path / "ipsecsa.sock").exists():
            time.sleep(0.05)
        ctx = json.loads(_cli(tmp_path, "sa", "create", "--sa-file",
                              str(write_sa_file(tmp_path / "a.json", a_sas)), "--json").stdout)
        assert _ping(wire.b, SITE4[1], SITE4[0]) == 3

        assert stop(gateway) == 0
        seqs = {int(s["spi"], 16): s["seq"] for s in json.loads(b_stats.read_text())["sas"]}
        for s in b_sas:
            s["seq"] = seqs[s["spi"]]
            if s["direction"] == "outbound":
                s["src"], s["encapsulation"]["sport"] = MOVED, MOVED_PORT
            else:
                s["dst"], s["encapsulation"]["dport"] = MOVED, MOVED_PORT
        gateway = start_gateway(wire.b, write_sa_file(tmp_path / "b2.json", b_sas), MOVED,
                                "--port", str(MOVED_PORT), log=tmp_path / "b2.log")
        wait_for_link(wire.b, TUN, gateway)
        configure_site(wire.b, 1)
        time.sleep(1.5)  # the service's gateway learns new contexts' SPIs once a second

        assert _ping(wire.b, SITE4[1], SITE4[0]) == 3
        assert _ping(wire.a, SITE4[0], SITE4[1]) == 3
        shown = json.loads(_cli(tmp_path, "sa", "show", str(ctx["id"]), "--json").stdout)
        assert shown["remote"] == WIRE4[1]  # the context is unchanged; the gateway followed

        assert stop(service, timeout=15) == 0
        log = (tmp_path / "serve.log").read_text()
        assert "peer_moved=1" in log, log
    finally:
        _end(wire, service, gateway)
