"""Two network namespaces joined by a veth pair, and ipsecsa gateways running in them.

Test support only. Everything uses documentation address ranges: the veth carries 192.0.2.0/24
and 2001:db8:0:1::/64 (the "wire"); the site behind gateway A is 198.51.100.0/24 and
2001:db8:a::/48, the site behind gateway B 203.0.113.0/24 and 2001:db8:b::/48.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WIRE4 = ("192.0.2.1", "192.0.2.2")
WIRE6 = ("2001:db8:0:1::1", "2001:db8:0:1::2")
SITE4 = ("198.51.100.1", "203.0.113.1")
SITE6 = ("2001:db8:a::1", "2001:db8:b::1")
NET4 = ("198.51.100.0/24", "203.0.113.0/24")
NET6 = ("2001:db8:a::/48", "2001:db8:b::/48")
TUN = "ipsa0"

#: Keys of the algorithms the tests run, by name: (encryption, enc key bytes, integrity, int key).
SUITES = {
    "aes-gcm-128": ("aes-gcm-16", 20, None, 0),
    "aes-256-cbc+hmac-sha256": ("aes-cbc", 32, "hmac-sha256-128", 32),
    "chacha20-poly1305": ("chacha20-poly1305", 36, None, 0),
}


def skip_reason() -> str | None:
    """Why the namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for network namespaces and TUN devices"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun on this machine"
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is not installed"
    probe = subprocess.run(["ip", "netns", "add", f"ipsaprobe{os.getpid()}"],
                           check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"ipsaprobe{os.getpid()}"], check=False,
                   capture_output=True)
    return None


def sh(*cmd: str, check: bool = True, timeout: float = 60, **kw: object
       ) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), check=False, capture_output=True, text=True,  # type: ignore[call-overload]
                         timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}"
                             f" {res.stdout.strip()}")
    return res


@dataclass
class Netns:
    name: str

    def cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        return sh(*self.cmd(*cmd), check=check, timeout=timeout)

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*cmd), **kw)  # type: ignore[call-overload]


@dataclass
class Wire:
    """Two namespaces ``a`` and ``b`` and a veth between them, addressed v4 and v6."""

    a: Netns
    b: Netns
    ifa: str = "veth-a"
    ifb: str = "veth-b"

    @classmethod
    def create(cls, tag: str = "") -> Wire:
        base = f"ipsa{os.getpid()}{tag}"
        a, b = Netns(base + "a"), Netns(base + "b")
        for ns in (a, b):
            sh("ip", "netns", "add", ns.name)
            ns.run("ip", "link", "set", "lo", "up")
        w = cls(a, b)
        sh("ip", "link", "add", w.ifa, "netns", a.name, "type", "veth", "peer", "name", w.ifb,
           "netns", b.name)
        for ns, ifname, v4, v6 in ((a, w.ifa, WIRE4[0], WIRE6[0]), (b, w.ifb, WIRE4[1], WIRE6[1])):
            ns.run("ip", "addr", "add", f"{v4}/24", "dev", ifname)
            ns.run("ip", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            ns.run("ip", "link", "set", ifname, "up")
        return w

    def destroy(self) -> None:
        for ns in (self.a, self.b):
            sh("ip", "netns", "pids", ns.name, check=False)
            pids = sh("ip", "netns", "pids", ns.name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns.name, check=False)


def sa(spi: int, direction: str, src: str, dst: str, sel_src: list[str], sel_dst: list[str],
       suite: str, keys: dict[int, tuple[str, str | None]], port: int = 4500,
       encap: bool = True, seq: int = 0) -> dict:
    enc, enc_len, integ, int_len = SUITES[suite]
    if spi not in keys:
        keys[spi] = (secrets.token_hex(enc_len), secrets.token_hex(int_len) if integ else None)
    ek, ik = keys[spi]
    obj: dict = {
        "spi": spi, "protocol": "esp", "mode": "tunnel", "direction": direction,
        "src": src, "dst": dst, "encryption": {"algorithm": enc, "key": ek},
        "selectors": [{"src": s, "dst": d} for s, d in zip(sel_src, sel_dst, strict=True)],
        "seq": seq,
    }
    if integ:
        obj["integrity"] = {"algorithm": integ, "key": ik}
    if encap:
        obj["encapsulation"] = {"type": "udp", "sport": port, "dport": port}
    return obj


@dataclass
class SaPair:
    """The SAs of one tunnel generation: A->B (``spi_ab``) and B->A (``spi_ba``)."""

    spi_ab: int
    spi_ba: int
    suite: str = "aes-gcm-128"
    outer6: bool = False
    encap: bool = True
    keys: dict = field(default_factory=dict)

    def _w(self) -> tuple[str, str]:
        return WIRE6 if self.outer6 else WIRE4

    def a_side(self, outbound: bool = True, inbound: bool = True) -> list[dict]:
        wa, wb = self._w()
        out = []
        if outbound:
            out.append(sa(self.spi_ab, "outbound", wa, wb, [NET4[0], NET6[0]], [NET4[1], NET6[1]],
                          self.suite, self.keys, encap=self.encap))
        if inbound:
            out.append(sa(self.spi_ba, "inbound", wb, wa, [NET4[1], NET6[1]], [NET4[0], NET6[0]],
                          self.suite, self.keys, encap=self.encap))
        return out

    def b_side(self, outbound: bool = True, inbound: bool = True) -> list[dict]:
        wa, wb = self._w()
        out = []
        if outbound:
            out.append(sa(self.spi_ba, "outbound", wb, wa, [NET4[1], NET6[1]], [NET4[0], NET6[0]],
                          self.suite, self.keys, encap=self.encap))
        if inbound:
            out.append(sa(self.spi_ab, "inbound", wa, wb, [NET4[0], NET6[0]], [NET4[1], NET6[1]],
                          self.suite, self.keys, encap=self.encap))
        return out


def write_sa_file(path: Path, sas: list[dict]) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"sas": sas}, f)
    return path


#: The command as users run it (``ipsecsa gateway``; ``python -m ipsecsa.gateway`` is the same
#: command without the root group, tested in test_command.py).
GATEWAY = [sys.executable, "-m", "ipsecsa", "gateway"]


def start_gateway(ns: Netns, sa_file: Path, local: str, *extra: str, tun: str = TUN,
                  stats: Path | None = None, log: Path | None = None) -> subprocess.Popen:
    args = [*GATEWAY, "--tun", tun, "--sa-file", str(sa_file), "--local", local, "-v", *extra]
    if stats is not None:
        args += ["--stats-json", str(stats)]
    if log is None:
        return ns.popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "w") as err:  # the child keeps its own descriptor
        return ns.popen(*args, stdout=subprocess.DEVNULL, stderr=err)


def wait_for_link(ns: Netns, name: str, proc: subprocess.Popen | None = None,
                  timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.run("ip", "link", "show", name, check=False).returncode == 0:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode} before creating {name}")
        time.sleep(0.05)
    raise AssertionError(f"{name} did not appear in {ns.name} within {timeout} s")


def wait_for_udp(ns: Netns, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f":{port} " in ns.run("ss", "-Hlun", check=False).stdout:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing bound UDP port {port} in {ns.name}")


def configure_site(ns: Netns, side: int, tun: str = TUN) -> None:
    """Address the TUN of side 0 (A) or 1 (B) and route the other site into it."""
    other = 1 - side
    ns.run("ip", "addr", "add", f"{SITE4[side]}/32", "dev", tun)
    ns.run("ip", "addr", "add", f"{SITE6[side]}/128", "dev", tun, "nodad")
    ns.run("ip", "link", "set", tun, "up")
    ns.run("ip", "route", "add", NET4[other], "dev", tun, "src", SITE4[side])
    ns.run("ip", "-6", "route", "add", NET6[other], "dev", tun, "src", SITE6[side])


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=timeout)


XFER = str(Path(__file__).with_name("tcpxfer.py"))


def tcp_transfer(server: Netns, server_addr: str, client: Netns, *, nbytes: int,
                 upload: bool = True, port: int = 5201, seed: str = "ipsecsa",
                 timeout: float = 120) -> tuple[dict, dict]:
    """A TCP transfer of ``nbytes`` from ``client`` to ``server`` (``upload``) or back; returns
    the sender's and the receiver's {"bytes", "sha256"}."""
    srv_role = ["recv"] if upload else ["send", str(nbytes), seed]
    cli_role = ["send", str(nbytes), seed] if upload else ["recv"]
    srv = server.popen(sys.executable, XFER, "serve", server_addr, str(port), *srv_role,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline()
        assert line.strip() == "listening", f"server did not start: {line} {srv.stderr.read()}"
        cli = client.run(sys.executable, XFER, "connect", server_addr, str(port), *cli_role,
                         timeout=timeout)
        out, err = srv.communicate(timeout=timeout)
        assert srv.returncode == 0, err
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.communicate()
    cres, sres = json.loads(cli.stdout), json.loads(out)
    return (cres, sres) if upload else (sres, cres)
