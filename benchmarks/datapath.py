"""Data-path throughput: ipsecsa protect/unprotect against raw cryptography and scapy.

A benchmark, not a test: run it as a script. For each algorithm and payload size it measures,
in the same run and on the same payloads,

* ``raw``: the bare ``cryptography`` call an ESP implementation cannot avoid (one AEAD
  encrypt/decrypt; for CBC+HMAC one CBC encryptor plus one HMAC) — the ceiling;
* ``ipsecsa``: ``SecurityAssociation.protect`` / ``unprotect`` (one packet per call) and the
  batch forms;
* ``scapy``: ``scapy.layers.ipsec.SecurityAssociation.encrypt`` / ``decrypt`` (if installed).

It prints packets/s and the ratios ipsecsa/raw and ipsecsa/scapy. Single core, single thread.
Usage: ``python benchmarks/datapath.py [--quick] [--mode tunnel|transport] [--markdown]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from hmac import compare_digest as hmac_compare

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import ipsecsa
from ipsecsa.packet.ipv4 import build_ipv4_header
from ipsecsa.packet.udp import build_udp

SIZES = (64, 512, 1400)

ALGORITHMS = {
    "aes-gcm-128": {"encryption": ("aes-gcm-16", 20), "integrity": None,
                    "scapy": ("AES-GCM", None)},
    "aes-cbc+hmac-sha256": {"encryption": ("aes-cbc", 16),
                            "integrity": ("hmac-sha256-128", 32),
                            "scapy": ("AES-CBC", "SHA2-256-128")},
    "chacha20-poly1305": {"encryption": ("chacha20-poly1305", 36), "integrity": None,
                          "scapy": ("CHACHA20-POLY1305", None)},
}


def _rate(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Best-of-``repeat`` calls per second for ``n`` calls of ``fn`` (best filters noise from
    the other core's work; the median is printed by --verbose)."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
    return best


def _rate_stream(make_sa: Callable[[], object], packets: list[bytes], repeat: int,
                 batch: bool = False) -> float:
    """Best-of-``repeat`` packets/s of ``unprotect`` over a stream of distinct packets in
    sequence order, each run on a fresh inbound SA with anti-replay on (as in real traffic)."""
    best = 0.0
    for _ in range(repeat):
        sa = make_sa()
        fn = sa.unprotect_batch if batch else sa.unprotect
        t0 = time.perf_counter()
        if batch:
            for i in range(0, len(packets), 64):
                fn(packets[i:i + 64])
        else:
            for p in packets:
                fn(p)
        dt = time.perf_counter() - t0
        best = max(best, len(packets) / dt)
    return best


def _packet(payload_len: int) -> bytes:
    """An inner IPv4/UDP packet whose UDP payload is ``payload_len`` bytes."""
    udp = build_udp(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1234, 5678,
                    os.urandom(payload_len))
    hdr = build_ipv4_header(tos=0, total_length=20 + len(udp), ident=7, flags=0, frag_offset=0,
                            ttl=64, protocol=17, src=bytes([10, 0, 0, 1]),
                            dst=bytes([10, 0, 0, 2]))
    return hdr + udp


def _raw_calls(name: str, keys: dict, data: bytes) -> tuple[Callable[[], object],
                                                            Callable[[], object]]:
    """The irreducible cryptography work per packet, as a user of the library would write it."""
    aad = os.urandom(8)
    if name == "aes-gcm-128" or name == "chacha20-poly1305":
        key = keys["enc"][:-4]
        aead = AESGCM(key) if name == "aes-gcm-128" else ChaCha20Poly1305(key)
        nonce = os.urandom(12)
        ct = aead.encrypt(nonce, data, aad)
        return (lambda: aead.encrypt(nonce, data, aad), lambda: aead.decrypt(nonce, ct, aad))
    aes = algorithms.AES(keys["enc"])
    mac = hmac.HMAC(keys["int"], hashes.SHA256())
    iv = os.urandom(16)
    padded = data + bytes(-len(data) % 16)

    def enc() -> bytes:
        e = Cipher(aes, modes.CBC(iv)).encryptor()
        ct = e.update(padded) + e.finalize()
        h = mac.copy()
        h.update(ct)
        return ct + h.finalize()[:16]

    blob = enc()

    def dec() -> bytes:
        h = mac.copy()
        h.update(blob[:-16])
        if not hmac_compare(h.finalize()[:16], blob[-16:]):
            raise ValueError("bad ICV")
        d = Cipher(aes, modes.CBC(iv)).decryptor()
        return d.update(blob[:-16]) + d.finalize()

    return enc, dec


def _sa_pair(name: str, mode: str, keys: dict) -> tuple[ipsecsa.SecurityAssociation,
                                                        ipsecsa.SecurityAssociation]:
    spec = ALGORITHMS[name]
    base = {"spi": 0xC0001000, "protocol": "esp", "mode": mode,
            "src": "10.0.0.1" if mode == "transport" else "192.0.2.1",
            "dst": "10.0.0.2" if mode == "transport" else "192.0.2.2",
            "encryption": {"algorithm": spec["encryption"][0], "key": keys["enc"].hex()}}
    if spec["integrity"]:
        base["integrity"] = {"algorithm": spec["integrity"][0], "key": keys["int"].hex()}
    out = ipsecsa.SecurityAssociation.from_dict(dict(base, direction="outbound"))
    inn = ipsecsa.SecurityAssociation.from_dict(dict(base, direction="inbound"))
    return out, inn


def _scapy_pair(name: str, mode: str, keys: dict):
    try:
        from scapy.layers.inet import IP
        from scapy.layers.ipsec import ESP
        from scapy.layers.ipsec import SecurityAssociation as ScapySA
    except ImportError:
        return None
    crypt, auth = ALGORITHMS[name]["scapy"]
    kwargs = {"crypt_algo": crypt, "crypt_key": keys["enc"]}
    if auth:
        kwargs.update(auth_algo=auth, auth_key=keys["int"])
    if mode == "tunnel":
        kwargs["tunnel_header"] = IP(src="192.0.2.1", dst="192.0.2.2")
    sa = ScapySA(ESP, spi=0xC0001000, **kwargs)
    return sa, IP


def run(quick: bool, mode: str, markdown: bool) -> list[dict]:
    n = 2000 if quick else 20000
    repeat = 3 if quick else 5
    rows = []
    for name, spec in ALGORITHMS.items():
        keys = {"enc": os.urandom(spec["encryption"][1]),
                "int": os.urandom(spec["integrity"][1]) if spec["integrity"] else b""}
        out, inn = _sa_pair(name, mode, keys)
        scapy = _scapy_pair(name, mode, keys)
        for size in SIZES:
            pkt = _packet(size - 28) if size > 28 else _packet(0)
            prot = out.protect(pkt).packet
            assert inn.unprotect(prot).packet == pkt
            raw_enc, raw_dec = _raw_calls(name, keys, pkt)
            row = {"algorithm": name, "size": size, "mode": mode}
            row["raw_protect"] = _rate(raw_enc, n, repeat)
            row["raw_unprotect"] = _rate(raw_dec, n, repeat)
            row["protect"] = _rate(lambda out=out, pkt=pkt: out.protect(pkt), n, repeat)
            batch = [pkt] * 64
            row["protect_batch"] = 64 * _rate(lambda out=out, b=batch: out.protect_batch(b), n // 64,
                                              repeat)
            # Inbound: a stream of distinct packets (sequence numbers 1..n) through a fresh SA
            # with the default anti-replay window, so check+commit do their real work.
            fresh_out = _sa_pair(name, mode, keys)[0]
            stream = [fresh_out.protect(pkt).packet for _ in range(n)]

            def fresh_in(name=name, keys=keys):
                return _sa_pair(name, mode, keys)[1]

            row["unprotect"] = _rate_stream(fresh_in, stream, repeat)
            row["unprotect_batch"] = _rate_stream(fresh_in, stream, repeat, batch=True)
            if scapy is not None:
                ssa, IP = scapy
                sp = IP(pkt)
                enc = ssa.encrypt(sp)
                sn = max(200, n // 20)
                row["scapy_protect"] = _rate(
                    lambda ssa=ssa, IP=IP, pkt=pkt: bytes(ssa.encrypt(IP(pkt))), sn, repeat)
                row["scapy_unprotect"] = _rate(
                    lambda ssa=ssa, IP=IP, enc=enc: bytes(ssa.decrypt(IP(bytes(enc)))), sn,
                    repeat)
            rows.append(row)
            _print_row(row, markdown)
    return rows


def _print_row(r: dict, markdown: bool) -> None:
    def k(x: float) -> str:
        return f"{x / 1000:.0f}k"

    sp = r.get("scapy_protect")
    su = r.get("scapy_unprotect")
    cells = [r["algorithm"], str(r["size"]),
             k(r["raw_protect"]), k(r["protect"]), k(r["protect_batch"]),
             f"{r['protect'] / r['raw_protect']:.2f}",
             f"{r['protect'] / sp:.0f}x" if sp else "-",
             k(r["raw_unprotect"]), k(r["unprotect"]), k(r["unprotect_batch"]),
             f"{r['unprotect'] / r['raw_unprotect']:.2f}",
             f"{r['unprotect'] / su:.0f}x" if su else "-"]
    if markdown:
        print("| " + " | ".join(cells) + " |")
    else:
        print("  ".join(f"{c:>10}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    print(f"# {platform.python_implementation()} {platform.python_version()} on "
          f"{platform.machine()}, {os.cpu_count()} cpus; cryptography "
          f"{__import__('cryptography').__version__}; mode={args.mode}; pkt/s, best of runs")
    head = ["algorithm", "bytes", "raw enc", "protect", "batch", "prot/raw", "vs scapy",
            "raw dec", "unprotect", "batch", "unprot/raw", "vs scapy"]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print("  ".join(f"{c:>10}" for c in head))
    rows = run(args.quick, args.mode, args.markdown)
    gcm = [r for r in rows if r["algorithm"] == "aes-gcm-128" and r["size"] in (64, 1400)]
    worst = min(min(r["protect"] / r["raw_protect"], r["unprotect"] / r["raw_unprotect"])
                for r in gcm)
    print(f"# AES-GCM worst ratio to raw cryptography at 64/1400 bytes: {worst:.2f} "
          f"(target 0.60); median over all rows "
          f"{statistics.median(r['protect'] / r['raw_protect'] for r in rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
