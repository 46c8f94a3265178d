"""Bounded fuzz of the capture tools' C record loops (``ipsecsa._capio``) against their Python
references (``ipsecsa.io.pcapbatch.scan_py``/``assemble_py``).

Run by ``scripts/sanitize.sh`` against the extension built with AddressSanitizer and
UndefinedBehaviorSanitizer (and ``PYTHONMALLOC=malloc``, so every bytes object has ASan red
zones): a read outside the chunk, whatever a record's lengths claim, aborts the run.

Chunks are classic pcap files of every link type ``scan`` unwraps, made of real ESP packets
(IPv4 and IPv6, sealed by our data path) framed in Ethernet (with VLAN tags), Linux SLL/SLL2 or
raw, then damaged: bit flips and random bytes anywhere (link header, IP header, record header),
lies in the record's captured and original lengths, in the IPv4 total length and header length
and the IPv6 payload length, frames cut short, and the file cut anywhere. For each chunk the C
and Python ``scan`` must give the same answer, and for every run of fast records so must
``assemble`` (with results that replace, drop or shrink the packets), the same ValueError
included. Usage: ``python scripts/fuzz_capio.py [--records N] [--seed S]`` (default 300,000).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time

from ipsecsa import SecurityAssociation
from ipsecsa.io import pcapbatch

LINKS = (1, 101, 113, 228, 229, 276)


def _packets() -> list[bytes]:
    out = []
    for src, dst in (("192.0.2.1", "198.51.100.1"), ("2001:db8::1", "2001:db8::2")):
        sa = SecurityAssociation.from_dict({
            "spi": 0x1000 + len(out), "protocol": "esp", "mode": "tunnel",
            "direction": "outbound", "src": src, "dst": dst,
            "encryption": {"algorithm": "aes-gcm-16", "key": "11" * 20}})
        for size in (0, 1, 40, 300):
            inner = (bytes.fromhex("4500") + (20 + size).to_bytes(2, "big") + bytes(5)
                     + b"\x11" + bytes(2) + bytes((10, 0, 0, 1, 10, 0, 0, 2)) + bytes(size))
            out.append(sa.protect(inner).packet)
    return out


def _frame(rng: random.Random, linktype: int, ip: bytes) -> bytes:
    et = b"\x86\xdd" if ip[0] >> 4 == 6 else b"\x08\x00"
    if linktype == 1:
        tags = b"".join(rng.choice((b"\x81\x00", b"\x88\xa8", b"\x91\x00")) + b"\x00\x64"
                        for _ in range(rng.choice((0, 0, 1, 2))))
        return bytes(12) + tags + et + ip
    if linktype == 113:
        return bytes(14) + et + ip
    if linktype == 276:
        return et + bytes(18) + ip
    return ip


def _damage(rng: random.Random, frame: bytearray, ip_at: int) -> None:
    what = rng.randrange(8)
    if what == 0 and frame:
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
    elif what == 1 and frame:
        frame[rng.randrange(len(frame))] = rng.randrange(256)
    elif what == 2 and len(frame) > ip_at + 4:  # IPv4 total length / IPv6 payload length lies
        at = ip_at + (2 if frame[ip_at] >> 4 == 4 else 4)
        frame[at:at + 2] = rng.choice((0, 1, 19, 20, 28, 40, 0xFFFF,
                                       rng.randrange(65536))).to_bytes(2, "big")
    elif what == 3 and len(frame) > ip_at:  # IPv4 header length
        frame[ip_at] = (frame[ip_at] & 0xF0) | rng.randrange(16)
    elif what == 4:
        del frame[rng.randrange(len(frame) + 1):]


def _chunk(rng: random.Random, packets: list[bytes], n: int) -> tuple[bytes, bool, int, int]:
    linktype = rng.choice(LINKS)
    big = rng.random() < 0.3
    order = ">" if big else "<"
    out = [struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for _ in range(n):
        ip = rng.choice(packets)
        frame = bytearray(_frame(rng, linktype, ip))
        if rng.random() < 0.7:
            _damage(rng, frame, len(frame) - len(ip))
        caplen = len(frame)
        origlen = caplen
        lie = rng.random()
        if lie < 0.05:
            caplen = rng.choice((caplen + 1, caplen + 1000, 0xFFFFFFFF, 262145))
        elif lie < 0.15:
            origlen = rng.choice((0, caplen - 1 if caplen else 0, caplen + 10, 0xFFFFFFFF))
        out.append(struct.pack(order + "IIII", rng.randrange(2**32), rng.randrange(2**32),
                               caplen, origlen) + frame)
    data = b"".join(out)
    if rng.random() < 0.2:
        data = data[:rng.randrange(24, len(data) + 1)]
    return data, big, linktype, n


def _check_assemble(rng: random.Random, data: bytes, big: bool, linktype: int,
                    scanned: tuple) -> None:
    from ipsecsa import _capio

    _end, _status, meta, ips, runs = scanned
    for first, count, key, ip_first in runs:
        if key is None:
            continue
        results = []
        for k in range(count):
            pkt = ips[ip_first + k]
            choice = rng.randrange(4)
            results.append((None if choice == 0 else pkt[:rng.randrange(len(pkt) + 1)]
                            if choice == 1 else bytes(rng.randrange(70000))[:1]
                            if choice == 2 else pkt[::-1], None))
        frac = rng.choice((10**6, 10**9, 1))
        only = rng.random() < 0.5
        res = results if rng.random() < 0.8 else None
        args = (data, meta, first, count, res, only, big, frac, linktype)
        try:
            c: object = _capio.assemble(*args)
        except ValueError as exc:
            c = ("ValueError", str(exc))
        try:
            py: object = pcapbatch.assemble_py(*args)
        except ValueError as exc:
            py = ("ValueError", str(exc))
        if (type(c) is tuple and c and c[0] == "ValueError") != \
                (type(py) is tuple and py and py[0] == "ValueError"):
            raise SystemExit(f"assemble differs: C {c!r:.200} Python {py!r:.200}")
        if not (type(c) is tuple and c and c[0] == "ValueError") and c != py:
            raise SystemExit("assemble differs on a run of fast records")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        from ipsecsa import _capio
    except ImportError:
        print("fuzz_capio: ipsecsa._capio is not built; nothing to fuzz", file=sys.stderr)
        return 1
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    packets = _packets()
    done = chunks = fast = 0
    t0 = time.perf_counter()
    while done < args.records:
        data, big, linktype, n = _chunk(rng, packets, rng.randint(1, 64))
        c = _capio.scan(data, 24, big, linktype)
        if c != pcapbatch.scan_py(data, 24, big, linktype):
            raise SystemExit(f"scan differs (seed {seed}, chunk {chunks})")
        fast += len(c[3])
        _check_assemble(rng, data, big, linktype, c)
        done += n
        chunks += 1
    print(f"fuzz_capio: {done:,} records in {chunks:,} chunks ({fast:,} fast) through scan and "
          f"assemble, C equal to Python, seed {seed}, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
