"""The service demonstration (``scripts/demo.sh``, the README's first command).

It runs what a newcomer would type: ``ipsecsa serve`` in a temporary directory, then, through
the API (``ipsecsa.client``, and the ``ipsecsa`` command for the listing), two SA-context pairs
(host A with host B over AES-GCM, host A with host C over ChaCha20-Poly1305; each pair is the
two hosts' contexts, both kept by this one service), packets sent both ways through each pair,
the counters, and the service stopped with SIGTERM. Everything is real: a server process, its
Unix socket, its token, its SQLite database.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ipsecsa.client import Client

A, B, C = "192.0.2.1", "198.51.100.2", "203.0.113.3"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _udp(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0, allowed over IPv4)."""
    udp = struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    total = sum(struct.unpack("!10H", header))
    checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    return header[:10] + struct.pack("!H", checksum) + header[12:] + udp


def _sa(spi: int, src: str, dst: str, algorithm: str, key_bytes: int) -> dict[str, Any]:
    return {"spi": spi, "protocol": "esp", "src": src, "dst": dst,
            "encryption": {"algorithm": algorithm, "key": secrets.token_hex(key_bytes)}}


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="ipsecsa-demo-"))
    db, sock = root / "state" / "ipsecsa.db", root / "ipsecsa.sock"
    token_file = root / "state" / "admin.token"
    _say(f"ipsecsa serve --db {db} --socket {sock}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPSECSA_")}
    log = root / "serve.log"
    print(f"(its structured log lines go to {log})")
    with log.open("ab") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "ipsecsa", "serve", "--db", str(db),
                                   "--socket", str(sock)], env=env, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        while not (sock.exists() and token_file.exists()):
            if server.poll() is not None or time.monotonic() > deadline:
                print("the service did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(f"administrator token written to {token_file} (mode "
              f"{oct(token_file.stat().st_mode & 0o777)})")
        with Client(socket=str(sock), token_file=str(token_file)) as service:
            pairs = []
            for peer, algorithm, key_bytes, base in ((B, "aes-gcm-16", 20, 0xC0000100),
                                                     (C, "chacha20-poly1305", 36, 0xC0000200)):
                a_to_peer = _sa(base + 1, A, peer, algorithm, key_bytes)
                peer_to_a = _sa(base + 2, peer, A, algorithm, key_bytes)
                _say(f"POST /v1/contexts: the SA-context pair {A} <-> {peer} ({algorithm})")
                on_a = service.create_context(outbound=a_to_peer, inbound=peer_to_a)
                on_peer = service.create_context(outbound=peer_to_a, inbound=a_to_peer)
                print(f"context {on_a.id} on {A}: {on_a.state}, in 0x{on_a.inbound_spi:08x} "
                      f"out 0x{on_a.outbound_spi:08x}")
                print(f"context {on_peer.id} on {peer}: {on_peer.state}, in "
                      f"0x{on_peer.inbound_spi:08x} out 0x{on_peer.outbound_spi:08x}")
                pairs.append((peer, on_a, on_peer))

            for peer, _, _ in pairs:
                _say(f"POST /v1/packets: 3 packets {A} -> {peer} and 2 back, through ESP")
                there = [_udp(A, peer, f"hello {peer} #{i}".encode()) for i in range(3)]
                back = [_udp(peer, A, f"hello {A} #{i}".encode()) for i in range(2)]
                wire = service.send("outbound", there + back)
                for clear, sent in zip(there + back, wire, strict=True):
                    assert sent.packet is not None and sent.packet[9] == 50  # ESP
                    src = ipaddress.IPv4Address(clear[12:16])
                    print(f"  {src} sends {len(clear)} bytes -> ESP packet of "
                          f"{len(sent.packet)} bytes, SPI 0x{sent.packet[20:24].hex()}")
                got = service.send("inbound", [w.packet for w in wire if w.packet])
                assert [g.packet for g in got] == there + back
                print(f"  all {len(got)} decrypted and delivered unchanged")

            _say("ipsecsa sa list  (the counters)")
            subprocess.run([sys.executable, "-m", "ipsecsa", "sa", "list", "--socket",
                            str(sock), "--token-file", str(token_file)], env=env, check=True)
            metrics = [line for line in service.metrics().splitlines()
                       if line.startswith("ipsecsa_sa_packets_total")]
            _say("GET /metrics  (packets per SA)")
            print("\n".join(metrics))
    finally:
        _say("kill -TERM (the service stops cleanly)")
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        status = server.wait(30)
        print(f"ipsecsa serve exited with status {status}; state kept in {db}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
