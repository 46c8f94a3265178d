"""TCP transfer endpoints for the namespace tests: run inside a namespace, print JSON results.

    tcpxfer.py serve HOST PORT (recv | send NBYTES SEED)   one connection, then exit
    tcpxfer.py connect HOST PORT (recv | send NBYTES SEED)
    tcpxfer.py udp-echo HOST PORT COUNT      echo COUNT datagrams back, then exit
    tcpxfer.py udp-ping HOST PORT COUNT      send COUNT datagrams, print how many came back intact

The sender streams NBYTES pseudo-random bytes (SHA-256 counter mode of SEED, so both ends can be
checked without storing the data); both ends print {"bytes": n, "sha256": hex}.
"""

import hashlib
import json
import socket
import sys

CHUNK = 65536


def stream(nbytes: int, seed: str):
    counter = 0
    left = nbytes
    while left > 0:
        block = b"".join(hashlib.sha256(f"{seed}:{counter}:{i}".encode()).digest()
                         for i in range(CHUNK // 32))
        counter += 1
        yield block[:left]
        left -= len(block)


def work(conn: socket.socket, args: list[str]) -> dict:
    h = hashlib.sha256()
    total = 0
    if args[0] == "recv":
        while True:
            data = conn.recv(CHUNK)
            if not data:
                break
            h.update(data)
            total += len(data)
    else:
        for block in stream(int(args[1]), args[2]):
            conn.sendall(block)
            h.update(block)
            total += len(block)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the receiver to close: everything arrived
    return {"bytes": total, "sha256": h.hexdigest()}


def udp(role: str, host: str, port: int, count: int, family: int) -> None:
    s = socket.socket(family, socket.SOCK_DGRAM)
    if role == "udp-echo":
        s.bind((host, port))
        print("listening", flush=True)
        s.settimeout(60)
        for _ in range(count):
            data, addr = s.recvfrom(65535)
            s.sendto(data, addr)
        print(json.dumps({"echoed": count}), flush=True)
        return
    s.settimeout(2)
    ok = 0
    for i in range(count):
        msg = hashlib.sha256(str(i).encode()).digest() * (1 + i % 40)  # 32..1280 bytes
        s.sendto(msg, (host, port))
        try:
            data, _ = s.recvfrom(65535)
        except TimeoutError:
            continue
        ok += data == msg
    print(json.dumps({"sent": count, "echoed_intact": ok}), flush=True)


def main() -> None:
    role, host, port, *rest = sys.argv[1:]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if role.startswith("udp-"):
        udp(role, host, int(port), int(rest[0]), family)
        return
    if role == "serve":
        srv = socket.socket(family, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, int(port)))
        srv.listen(1)
        print("listening", flush=True)
        srv.settimeout(60)
        conn, _ = srv.accept()
    else:
        conn = socket.create_connection((host, int(port)), timeout=60)
    conn.settimeout(120)
    result = work(conn, rest)
    conn.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
