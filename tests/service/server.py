"""A real ``python -m ipsecsa serve`` process for the service tests: a temp directory, a Unix
socket, a free TCP port, the admin token the first start wrote; stopped with real signals."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ipsecsa.client import Client

A, B = "192.0.2.1", "198.51.100.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One service process. ``start()`` waits until it answers on both listeners."""

    def __init__(self, root: Path, tcp: bool = True) -> None:
        self.root = root
        self.db = root / "state" / "ipsecsa.db"
        self.socket = root / "ipsecsa.sock"
        self.token_file = root / "state" / "admin.token"
        self.port = free_port() if tcp else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        args = [sys.executable, "-m", "ipsecsa", "serve", "--db", str(self.db),
                "--socket", str(self.socket)]
        if self.port is not None:
            args += ["--http", f"127.0.0.1:{self.port}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPSECSA_")}
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("ab"), env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            if self.socket.exists():
                with contextlib.suppress(Exception), self.client() as c:
                    if c.health():
                        return self
            time.sleep(0.05)
        raise RuntimeError("serve did not come up in 30 s")

    @property
    def admin_token(self) -> str:
        return self.token_file.read_text().strip()

    def client(self, token: str | None = None, tcp: bool = False) -> Client:
        tok = token if token is not None else (
            self.admin_token if self.token_file.exists() else "none")
        if tcp:
            return Client(self.url, token=tok)
        return Client(socket=str(self.socket), token=tok)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPSECSA_")}
        env.update(extra)
        return env


def esp(spi: int, src: str, dst: str, key: str, **extra: Any) -> dict[str, Any]:
    """An ESP SA with AES-128-GCM-16 (20 bytes: key and salt)."""
    return {"spi": spi, "protocol": "esp", "src": src, "dst": dst,
            "encryption": {"algorithm": "aes-gcm-16", "key": key * 20}, **extra}


def pair(n: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """A's outbound and B's... the two SAs between A and B, SPIs from ``n``."""
    return (esp(0xC0000100 + 2 * n, A, B, "01"), esp(0xC0000101 + 2 * n, B, A, "02"))


def udp_packet(src: str, dst: str, payload: bytes = b"hello over IPsec") -> bytes:
    udp = struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    total = sum(struct.unpack("!10H", header))
    checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    return header[:10] + struct.pack("!H", checksum) + header[12:] + udp
