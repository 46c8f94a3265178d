"""Helpers for the command-line tests: run the real ``ipsecsa`` command, write captures.

The captures are written here byte by byte (pcap and pcapng framing from the public format
specifications, draft-ietf-opsawg-pcap / -pcapng), not with the reader under test's own writer,
so that the tools are checked against files they did not produce.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("IPSECSA_DEBUG", None)
    env["COLUMNS"] = "200"
    return env


def ipsecsa(*args: str, stdin: str | None = None, check: bool = True) -> Run:
    """Run ``python -m ipsecsa ARGS`` as a real subprocess."""
    cmd = [sys.executable, "-m", "ipsecsa", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=300,
                          env=_env(), check=False)
    run = Run(list(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"ipsecsa {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr}")
    return run


def ipsecsa_many(arg_lists: Sequence[Sequence[str]]) -> list[Run]:
    """Run several commands concurrently (the machine has more than one core)."""
    procs = [(list(a), subprocess.Popen([sys.executable, "-m", "ipsecsa", *a],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=_env()))
             for a in arg_lists]
    runs = []
    for args, p in procs:
        out, err = p.communicate(timeout=300)
        runs.append(Run(args, p.returncode, out, err))
    return runs


def write_pcap(path, linktype: int, records: Sequence[tuple[int, bytes]], *,
               nanosecond: bool = False, big_endian: bool = False) -> None:
    """A classic pcap file; ``records`` are (timestamp in ticks, frame)."""
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    frac = 10**9 if nanosecond else 10**6
    with open(path, "wb") as f:
        f.write(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
        f.writelines(struct.pack(order + "IIII", ticks // frac, ticks % frac, len(frame),
                                len(frame)) + frame for ticks, frame in records)


def _block(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) & 3)
    total = len(body) + 12
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) & 3)


def write_pcapng(path, interfaces: Sequence[tuple[int, int | None, str]],
                 records: Sequence[tuple[int, int, bytes]]) -> None:
    """A pcapng file with one section; ``interfaces`` are (linktype, if_tsresol or None,
    if_name), ``records`` (interface id, timestamp in that interface's ticks, frame)."""
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for linktype, tsresol, name in interfaces:
        opts = _opt(2, name.encode())
        if tsresol is not None:
            opts += _opt(9, bytes((tsresol,)))
        out += _block(1, struct.pack("<HHI", linktype, 0, 0) + opts + _opt(0, b""))
    for if_id, ticks, frame in records:
        out += _block(6, struct.pack("<IIIII", if_id, ticks >> 32, ticks & 0xFFFFFFFF,
                                     len(frame), len(frame)) + frame)
    with open(path, "wb") as f:
        f.write(out)


def ether(payload: bytes, ethertype: int, vlan: int | None = None) -> bytes:
    head = bytes.fromhex("020000000002020000000001")
    if vlan is not None:
        head += struct.pack("!HH", 0x8100, vlan)
    return head + struct.pack("!H", ethertype) + payload


def sll2(payload: bytes, ethertype: int) -> bytes:
    """Linux cooked v2 header (protocol, reserved, ifindex, hatype, pkttype, addrlen, addr)."""
    return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, bytes(8)) + payload
