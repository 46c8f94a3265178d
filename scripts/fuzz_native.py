"""Bounded fuzz of the native ESP fast path: mutated packets into ``unprotect`` and ``protect``.

Run by ``scripts/sanitize.sh`` against the extension built with AddressSanitizer and
UndefinedBehaviorSanitizer (and ``PYTHONMALLOC=malloc``, so every bytes object has ASan red
zones): any read outside a packet, whatever its length fields claim, aborts the run.

For SAs of every algorithm the native engine implements (transport and tunnel, IPv4 and IPv6,
UDP encapsulation on and off, ESN on and off) it feeds, in batches of 64:

* valid protected packets with random mutations: bit flips, random bytes, truncation, bytes
  appended, and lies in the length fields (IPv4 total length and IHL, IPv6 payload length, UDP
  length) -- these mostly stop at the header checks or the ICV;
* packets whose ICV is valid but whose plaintext is random (sealed with the SA's own transform,
  random pad length and next header, random or truncated inner packets) -- these reach the
  padding, inner-packet and ECN checks behind the ICV;
* random and mutated inner packets into ``protect``.

Every call must return one Result per packet; the script checks that and counts verdicts.
Usage: ``python scripts/fuzz_native.py [--packets N] [--seed S]`` (default 1,000,000).
"""

from __future__ import annotations

import argparse
import logging
import random
import struct
import sys
import time
from collections import Counter

from ipsecsa import SecurityAssociation
from ipsecsa.datapath import native
from ipsecsa.datapath.result import Result

ALGS = [("aes-gcm-16", 20, None, 0), ("aes-gcm-8", 36, None, 0), ("aes-gcm-12", 28, None, 0),
        ("chacha20-poly1305", 36, None, 0), ("null-aes-gmac", 20, None, 0),
        ("aes-cbc", 16, "hmac-sha1-96", 20), ("aes-cbc", 32, "hmac-sha256-128", 32),
        ("aes-cbc", 24, "hmac-sha384-192", 48), ("aes-cbc", 32, "hmac-sha512-256", 64)]
ADDR = {4: ("192.0.2.1", "198.51.100.1"), 6: ("2001:db8::1", "2001:db8::2")}
BATCH = 64


def inner(rnd: random.Random, version: int) -> bytes:
    body = rnd.randbytes(rnd.randrange(0, 200))
    if version == 4:
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, rnd.randrange(256), 20 + len(body), 1,
                                  0, 64, rnd.choice([6, 17, 1, 59]), 0, bytes([10, 0, 0, 1]),
                                  bytes([10, 0, 0, 2])))
        return bytes(h) + body
    return struct.pack("!IHBB16s16s", 6 << 28 | rnd.randrange(1 << 28), len(body),
                       rnd.choice([6, 17, 58, 59, 60]), 64, bytes(16), bytes(15) + b"\x01") + body


def make_sas(rnd: random.Random) -> list[tuple[SecurityAssociation, SecurityAssociation, dict]]:
    out = []
    for enc, klen, integ, ilen in ALGS:
        for mode in ("transport", "tunnel"):
            for fam in (4, 6):
                for encap in (False, True):
                    esn = rnd.random() < 0.5
                    d: dict = {"spi": rnd.randrange(256, 1 << 32), "protocol": "esp",
                               "mode": mode, "src": ADDR[fam][0], "dst": ADDR[fam][1],
                               "esn": esn, "seq": rnd.choice([0, 2**32 - 50]) if esn else 0,
                               "replay_window": rnd.choice([0, 64, 4096]),
                               "encryption": {"algorithm": enc,
                                              "key": rnd.randbytes(klen).hex()}}
                    if integ:
                        d["integrity"] = {"algorithm": integ, "key": rnd.randbytes(ilen).hex()}
                    if encap:
                        d["encapsulation"] = {"type": "udp", "sport": 4500, "dport": 4500}
                    o = SecurityAssociation.from_dict(dict(d, direction="outbound"), native=True)
                    i = SecurityAssociation.from_dict(dict(d, direction="inbound"), native=True)
                    out.append((o, i, d))
    return out


def lie_about_lengths(rnd: random.Random, b: bytearray) -> None:
    if not b:
        return
    if b[0] >> 4 == 4 and len(b) >= 20:
        what = rnd.randrange(3)
        if what == 0:
            struct.pack_into("!H", b, 2, rnd.randrange(65536))
        elif what == 1:
            b[0] = 0x40 | rnd.randrange(16)
        else:  # the UDP length of an encapsulated packet
            ihl = (b[0] & 15) * 4
            if len(b) >= ihl + 8:
                struct.pack_into("!H", b, ihl + 4, rnd.randrange(65536))
    elif b[0] >> 4 == 6 and len(b) >= 40:
        if rnd.random() < 0.5:
            struct.pack_into("!H", b, 4, rnd.randrange(65536))
        elif len(b) >= 48:
            struct.pack_into("!H", b, 44, rnd.randrange(65536))


def mutate(rnd: random.Random, p: bytes) -> bytes:
    b = bytearray(p)
    for _ in range(rnd.randrange(1, 4)):
        op = rnd.randrange(6)
        if op == 0 and b:
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op == 2:
            del b[rnd.randrange(len(b) + 1):]
        elif op == 3:
            b += rnd.randbytes(rnd.randrange(1, 40))
        else:
            lie_about_lengths(rnd, b)
    return bytes(b)


def sealed_garbage(rnd: random.Random, o: SecurityAssociation) -> bytes:
    """A packet whose ICV verifies but whose plaintext is random: protect a real packet, then
    replace the ESP body by a random plaintext sealed with the SA's own transform."""
    wire = o.protect(inner(rnd, 4 if o.mode == "tunnel" else (6 if o._v6 else 4))).packet
    if wire is None:
        return b""
    t = o.transform
    off = (40 if o._v6 else 20) + (8 if o._encap is not None else 0)
    esp_hdr = wire[off:off + 8]
    seq = o.seq
    n = rnd.randrange(0, 120)
    block = max(t.block_size, 4)
    n += -(n + 2) % block if rnd.random() < 0.9 else 0
    plain = rnd.randbytes(n) + bytes([rnd.randrange(256), rnd.choice([4, 41, 6, 17, 59, 60, 0])])
    if rnd.random() < 0.5 and o.mode == "tunnel":
        plain = inner(rnd, rnd.choice([4, 6]))
        pad = -(len(plain) + 2) % block
        plain += bytes(range(1, pad + 1)) + bytes([pad, 4 if plain[0] >> 4 == 4 else 41])
    if len(plain) % block:
        return wire  # the transform would refuse it; keep the valid packet instead
    iv, body = t.seal(esp_hdr, seq, plain)
    b = bytearray(wire[:off] + esp_hdr + iv + body)
    if o._v6:
        struct.pack_into("!H", b, 4, len(b) - 40)
    else:
        struct.pack_into("!H", b, 2, len(b))
        struct.pack_into("!H", b, 10, 0)
        s = sum(struct.unpack("!10H", bytes(b[:20])))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        struct.pack_into("!H", b, 10, ~s & 0xFFFF)
    if o._encap is not None:
        ulen_off = (40 if o._v6 else 20) + 4
        struct.pack_into("!H", b, ulen_off, len(b) - ulen_off + 4)
        if o._v6:  # the IPv6 UDP checksum is mandatory; leave it wrong half the time
            from ipsecsa.packet.udp import udp_checksum
            u = (40, len(b))
            struct.pack_into("!H", b, 46, 0)
            if rnd.random() < 0.5:
                struct.pack_into("!H", b, 46, udp_checksum(bytes(b[8:24]), bytes(b[24:40]),
                                                           bytes(b[u[0]:u[1]])))
    return bytes(b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args(argv)
    if not native.available():
        print(f"native fast path off: {native.why_off()}", file=sys.stderr)
        return 2
    logging.disable(logging.WARNING)  # the legacy-algorithm notes of 72 SAs are not findings
    rnd = random.Random(args.seed)
    sas = make_sas(rnd)
    verdicts: Counter = Counter()
    done = 0
    t0 = time.monotonic()
    while done < args.packets:
        o, i, _ = rnd.choice(sas)
        kind = rnd.random()
        if kind < 0.15:  # protect: random and mutated inner packets
            batch = [mutate(rnd, inner(rnd, rnd.choice([4, 6]))) if rnd.random() < 0.7
                     else rnd.randbytes(rnd.randrange(60)) for _ in range(BATCH)]
            res = o.protect_batch(batch)
        else:
            if kind < 0.35:
                batch = [sealed_garbage(rnd, o) for _ in range(BATCH // 4)]
            else:
                good = o.protect_batch([inner(rnd, 4 if o.mode == "tunnel" else
                                              (6 if o._v6 else 4)) for _ in range(8)])
                pkts = [r.packet for r in good if r.packet is not None] or [b""]
                batch = [mutate(rnd, rnd.choice(pkts)) for _ in range(BATCH)]
            res = i.unprotect_batch(batch)
            if rnd.random() < 0.02:  # single-packet entry points too
                res += [i.unprotect(p) for p in batch[:4]]
                batch = batch + batch[:4]
        if len(res) != len(batch) or not all(type(r) is Result for r in res):
            print("FAIL: a batch did not return one Result per packet", file=sys.stderr)
            return 1
        verdicts.update("delivered" if r.drop is None else r.drop.value for r in res)
        done += len(batch)
    dt = time.monotonic() - t0
    print(f"fuzz: {done:,} mutated packets through {len(sas)} native SAs in {dt:.0f} s, "
          f"no finding; verdicts: " + ", ".join(f"{k} {v:,}" for k, v in verdicts.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
