"""Data-path throughput: the native fast path and the Python path against their ceilings.

A benchmark, not a test: run it as a script. For each algorithm and packet size it measures,
in the same run and on the same payloads,

* ``C loop``: the ceiling for per-packet AEAD here -- exactly the EVP calls one ESP packet needs
  (new IV, AAD, payload, final, tag) in a C loop with the key set once
  (``benchmarks/evp_ceiling.c``, compiled by this script against the system libcrypto);
* ``raw``: the bare ``cryptography`` call an ESP implementation in Python cannot avoid (one
  AEAD encrypt/decrypt; for CBC+HMAC one CBC encryptor plus one HMAC);
* ``python``: ``SecurityAssociation.protect`` / ``unprotect`` on the pure-Python path
  (``native=False``), one packet per call;
* ``native``: the same calls on the native fast path (``ipsecsa._fastesp``), one packet per
  call and ``protect_batch``/``unprotect_batch`` of 64;
* ``scapy``: ``scapy.layers.ipsec.SecurityAssociation.encrypt`` / ``decrypt`` (if installed);
* ``openssl speed -evp`` (informational: OpenSSL 3.0's ``speed`` re-keys on every operation);
* two threads protecting (and unprotecting) batches on two SAs against one thread.

It prints packets per CPU-second of this process (CPU time, not wall time: the machine is
shared, and time spent descheduled must not count) and the ratios native batch / C loop. Single
thread unless stated; the two-thread rows are wall-clock throughput and need two idle cores.
Usage: ``python benchmarks/datapath.py [--quick] [--mode tunnel|transport] [--markdown]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from hmac import compare_digest as hmac_compare

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import ipsecsa
from ipsecsa.datapath import native
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
    """Best-of-``repeat`` calls per CPU second for ``n`` calls of ``fn``. CPU time of this
    process, not wall time: the machine is shared, and time spent descheduled while other
    processes run must not count (the C loop measures the same way)."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        dt = time.process_time() - t0
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
        t0 = time.process_time()
        if batch:
            for i in range(0, len(packets), 64):
                fn(packets[i:i + 64])
        else:
            for p in packets:
                fn(p)
        dt = time.process_time() - t0
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


def _sa_pair(name: str, mode: str, keys: dict, use_native: bool = False
             ) -> tuple[ipsecsa.SecurityAssociation, ipsecsa.SecurityAssociation]:
    spec = ALGORITHMS[name]
    base = {"spi": 0xC0001000, "protocol": "esp", "mode": mode,
            "src": "10.0.0.1" if mode == "transport" else "192.0.2.1",
            "dst": "10.0.0.2" if mode == "transport" else "192.0.2.2",
            "encryption": {"algorithm": spec["encryption"][0], "key": keys["enc"].hex()}}
    if spec["integrity"]:
        base["integrity"] = {"algorithm": spec["integrity"][0], "key": keys["int"].hex()}
    out = ipsecsa.SecurityAssociation.from_dict(dict(base, direction="outbound"),
                                                native=use_native)
    inn = ipsecsa.SecurityAssociation.from_dict(dict(base, direction="inbound"),
                                                native=use_native)
    return out, inn


# ------------------------------------------------------------------------ the C-loop ceiling
_EVP_NAMES = {"aes-gcm-128": "aes-128-gcm", "chacha20-poly1305": "chacha20-poly1305"}


def _build_ceiling() -> str | None:
    """Compile evp_ceiling.c against the system libcrypto; the binary's path or None."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evp_ceiling.c")
    exe = os.path.join(tempfile.mkdtemp(prefix="ipsecsa-bench-"), "evp_ceiling")
    done = subprocess.run([cc, "-O2", "-o", exe, src, "-lcrypto"], capture_output=True,
                          check=False)
    return exe if done.returncode == 0 else None


def _ceiling(exe: str | None, name: str, enc: bool, size: int, n: int, repeat: int
             ) -> float | None:
    if exe is None or name not in _EVP_NAMES:
        return None
    out = subprocess.run([exe, _EVP_NAMES[name], "enc" if enc else "dec", str(size), str(n),
                          str(repeat)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def _openssl_speed(name: str, size: int) -> float | None:
    """``openssl speed -evp`` in packets/s of ``size`` bytes (informational)."""
    if name not in _EVP_NAMES or shutil.which("openssl") is None:
        return None
    out = subprocess.run(["openssl", "speed", "-evp", _EVP_NAMES[name], "-bytes", str(size),
                          "-seconds", "1"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"([0-9.]+)k\s*$", out.strip())
    return float(m.group(1)) * 1000 / size if m else None


def _esp_plaintext_len(size: int, mode: str) -> int:
    """Bytes the AEAD processes for a ``size``-byte inner packet (payload, padding, trailer)."""
    body = size if mode == "tunnel" else size - 20
    return body + 2 + (-(body + 2) % 4)


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
    exe = _build_ceiling()
    rows = []
    for name, spec in ALGORITHMS.items():
        keys = {"enc": os.urandom(spec["encryption"][1]),
                "int": os.urandom(spec["integrity"][1]) if spec["integrity"] else b""}
        py_out, _ = _sa_pair(name, mode, keys)
        nat_out, _ = _sa_pair(name, mode, keys, True)
        scapy = _scapy_pair(name, mode, keys)
        for size in SIZES:
            pkt = _packet(size - 28) if size > 28 else _packet(0)
            raw_enc, raw_dec = _raw_calls(name, keys, pkt)
            ptlen = _esp_plaintext_len(size, mode)
            row = {"algorithm": name, "size": size, "mode": mode}
            row["ceiling_protect"] = _ceiling(exe, name, True, ptlen, n * 5, repeat)
            row["ceiling_unprotect"] = _ceiling(exe, name, False, ptlen, n * 5, repeat)
            row["raw_protect"] = _rate(raw_enc, n, repeat)
            row["raw_unprotect"] = _rate(raw_dec, n, repeat)
            row["py_protect"] = _rate(lambda sa=py_out, pkt=pkt: sa.protect(pkt), n, repeat)
            row["protect"] = _rate(lambda sa=nat_out, pkt=pkt: sa.protect(pkt), n, repeat)
            batch = [pkt] * 64
            row["protect_batch"] = 64 * _rate(
                lambda sa=nat_out, b=batch: sa.protect_batch(b), n // 64 * 4, repeat)
            # Inbound: a stream of distinct packets (sequence numbers 1..n) through a fresh SA
            # with the default anti-replay window, so check+commit do their real work.
            fresh_out = _sa_pair(name, mode, keys)[0]
            stream = [fresh_out.protect(pkt).packet for _ in range(n * 4)]

            def fresh_in(name=name, keys=keys, use_native=False):
                return _sa_pair(name, mode, keys, use_native)[1]

            assert fresh_in(use_native=True).unprotect(stream[0]).packet == pkt
            row["py_unprotect"] = _rate_stream(fresh_in, stream[:n], repeat)
            row["unprotect"] = _rate_stream(lambda: fresh_in(use_native=True), stream, repeat)
            row["unprotect_batch"] = _rate_stream(lambda: fresh_in(use_native=True), stream,
                                                  repeat, batch=True)
            if scapy is not None:
                ssa, IP = scapy
                enc = ssa.encrypt(IP(pkt))
                sn = max(200, n // 20)
                row["scapy_protect"] = _rate(
                    lambda ssa=ssa, IP=IP, pkt=pkt: bytes(ssa.encrypt(IP(pkt))), sn, repeat)
                row["scapy_unprotect"] = _rate(
                    lambda ssa=ssa, IP=IP, enc=enc: bytes(ssa.decrypt(IP(bytes(enc)))), sn,
                    repeat)
            rows.append(row)
            _print_row(row, markdown)
    return rows


def threads(mode: str, quick: bool) -> dict[str, float]:
    """AES-GCM-128, 1400 bytes: packets/s of protect_batch/unprotect_batch of 64 on one SA in
    one thread, and on two SAs in two threads (the GIL released around the crypto). Wall
    clock: it needs two idle cores.

    Protect runs for a fixed time. Unprotect runs each thread over a fixed stream (its SA's
    packets in order, replayed through several fresh inbound SAs built beforehand, since a
    window accepts each number once) and is timed until the last thread is done: a stream
    that runs dry before a fixed sleep ends would count the idle rest as work."""
    seconds = 1.0 if quick else 3.0
    passes = 2 if quick else 6
    keys = {"enc": os.urandom(20), "int": b""}
    pkt = _packet(1400 - 28)
    batch = [pkt] * 64
    out: dict[str, float] = {}
    for k in (1, 2):
        sas = [_sa_pair("aes-gcm-128", mode, keys, True) for _ in range(k)]
        counts = [0] * k
        stop = threading.Event()

        def protect(j: int, sas=sas, counts=counts, stop=stop) -> None:
            o = sas[j][0]
            while not stop.is_set():
                o.protect_batch(batch)
                counts[j] += 64

        ts = [threading.Thread(target=protect, args=(j,)) for j in range(k)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in ts:
            t.join()
        out[f"protect_{k}"] = sum(counts) / (time.perf_counter() - t0)
    for k in (1, 2):
        pairs = [_sa_pair("aes-gcm-128", mode, keys, True) for _ in range(k)]
        streams = [[r.packet for r in o.protect_batch([pkt] * 20000)] for o, _ in pairs]
        inbound = [[_sa_pair("aes-gcm-128", mode, keys, True)[1] for _ in range(passes)]
                   for _ in range(k)]

        def unprotect(j: int, streams=streams, inbound=inbound) -> None:
            s = streams[j]
            for sa in inbound[j]:
                for i in range(0, len(s), 64):
                    sa.unprotect_batch(s[i:i + 64])

        ts = [threading.Thread(target=unprotect, args=(j,)) for j in range(k)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - t0
        delivered = sum(sa.packets for sas_j in inbound for sa in sas_j)
        assert delivered == k * passes * 20000, "every packet must be delivered"
        out[f"unprotect_{k}"] = delivered / elapsed
    return out


def _print_row(r: dict, markdown: bool) -> None:
    def k(x: float | None) -> str:
        return "-" if x is None else f"{x / 1000:.0f}k"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if not a or not b else f"{a / b:.2f}"

    sp, su = r.get("scapy_protect"), r.get("scapy_unprotect")
    cells = [r["algorithm"], str(r["size"]),
             k(r["ceiling_protect"]), k(r["raw_protect"]), k(r["py_protect"]), k(r["protect"]),
             k(r["protect_batch"]), ratio(r["protect_batch"], r["ceiling_protect"]),
             f"{r['protect_batch'] / sp:.0f}x" if sp else "-",
             k(r["ceiling_unprotect"]), k(r["raw_unprotect"]), k(r["py_unprotect"]),
             k(r["unprotect"]), k(r["unprotect_batch"]),
             ratio(r["unprotect_batch"], r["ceiling_unprotect"]),
             f"{r['unprotect_batch'] / su:.0f}x" if su else "-"]
    if markdown:
        print("| " + " | ".join(cells) + " |", flush=True)
    else:
        print("  ".join(f"{c:>9}" for c in cells), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    if not native.available():
        print(f"native fast path off: {native.why_off()}", file=sys.stderr)
        return 2
    print(f"# {platform.python_implementation()} {platform.python_version()} on "
          f"{platform.machine()}, {os.cpu_count()} cpus; cryptography "
          f"{__import__('cryptography').__version__}; {ipsecsa.info()['openssl']}; "
          f"mode={args.mode}; pkt/s, best of runs")
    head = ["algorithm", "bytes", "C loop enc", "raw enc", "python", "native", "batch",
            "batch/C", "vs scapy", "C loop dec", "raw dec", "python", "native", "batch",
            "batch/C", "vs scapy"]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print("  ".join(f"{c:>9}" for c in head))
    rows = run(args.quick, args.mode, args.markdown)
    for r in rows:
        if r["size"] in (64, 1400) and r["algorithm"] in _EVP_NAMES:
            sp = _openssl_speed(r["algorithm"], r["size"])
            if sp:
                print(f"# openssl speed -evp {_EVP_NAMES[r['algorithm']]} {r['size']} bytes: "
                      f"{sp / 1000:.0f}k pkt/s; native batch protect / that = "
                      f"{r['protect_batch'] / sp:.2f}")
    worst = min(min(r["protect_batch"] / r["ceiling_protect"],
                    r["unprotect_batch"] / r["ceiling_unprotect"])
                for r in rows if r["size"] in (64, 1400) and r["ceiling_protect"])
    print(f"# AEAD worst ratio native batch / C loop at 64 and 1400 bytes: {worst:.2f} "
          "(target 0.75)")
    t = threads(args.mode, args.quick)
    print(f"# two threads on two SAs (aes-gcm-128, 1400 B, batches of 64): protect "
          f"{t['protect_2'] / 1000:.0f}k vs one thread {t['protect_1'] / 1000:.0f}k = "
          f"{t['protect_2'] / t['protect_1']:.2f}x; unprotect {t['unprotect_2'] / 1000:.0f}k vs "
          f"{t['unprotect_1'] / 1000:.0f}k = {t['unprotect_2'] / t['unprotect_1']:.2f}x "
          "(target 1.6x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
