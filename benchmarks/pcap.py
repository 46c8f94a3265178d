"""Benchmark: ``ipsecsa pcap unprotect`` on a 1,000,000-packet capture, and the capture reader
against dpkt.

Run: ``python benchmarks/pcap.py [--packets 1000000] [--dir /tmp]`` (the captures are generated
in ``--dir``, never in the repository, and deleted afterwards unless ``--keep``).

It prints, all measured in the same run on the same machine:

1. **Reader**: seconds to read every record of the capture with our ``PcapReader`` and with
   dpkt's ``pcap.Reader`` (records only, and records with the IP packet located inside the
   Ethernet frame: ours by offset, dpkt by its ``ethernet.Ethernet`` parse), and the ratio.
2. **Coverage**: captures both readers should handle (nanosecond pcap, big-endian pcap, pcapng
   with interface options and nanosecond resolution, pcapng with several sections, big-endian
   pcapng): packets each reader returns, or its error.
3. **Unprotect**: packets/s of the whole command (``python -m ipsecsa pcap unprotect``, a
   subprocess: start-up, read, match, decrypt, write, fsync) and of its function
   ``unprotect_capture`` alone, against the data path's own ``unprotect`` rate on the same
   (all) packets in memory (a subprocess), both with the native fast path (issue 16)
   and with ``IPSECSA_PURE_PYTHON=1`` (which also turns off the tool's C record loops,
   ``ipsecsa._capio``). The reference is the data path's best rate: the larger of packet-by-
   packet ``unprotect`` and ``unprotect_batch``; target ratio >= 0.5 against it.
4. **Memory**: peak RSS of the command on the full capture and on a tenth of it (target: flat,
   independent of the file size), from ``wait4`` of each subprocess.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import struct
import subprocess
import sys
import tempfile
import time

from ipsecsa import SecurityAssociation
from ipsecsa.config import parse_sa
from ipsecsa.io import pcapbatch
from ipsecsa.io.pcap import PcapReader

SA = {"spi": "0xc0000101", "protocol": "esp", "mode": "tunnel", "src": "192.0.2.1",
      "dst": "198.51.100.1", "encryption": {"algorithm": "aes-gcm-16", "key": "5a" * 20}}
ETH = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
INNER_PAYLOAD = 64  # bytes of UDP payload per inner packet (a small-packet workload)


def _inner(i: int) -> bytes:
    from ipsecsa.packet.ipv4 import build_ipv4_header
    from ipsecsa.packet.udp import build_udp

    src, dst = bytes((10, 1, 0, 1)), bytes((10, 2, (i >> 8) & 255, i & 255))
    udp = build_udp(src, dst, 1000 + i % 1000, 53, bytes(INNER_PAYLOAD))
    return build_ipv4_header(tos=0, total_length=20 + len(udp), ident=i & 0xFFFF, flags=0,
                             frag_offset=0, ttl=64, protocol=17, src=src, dst=dst) + udp


def generate(path: str, packets: int) -> list[bytes]:
    """Write ``packets`` ESP packets (Ethernet, µs pcap); return a sample of the IP packets."""
    cfg = parse_sa(SA)
    sa = SecurityAssociation.from_config(dataclasses.replace(cfg, direction="outbound"))
    protect = sa.protect
    rec = struct.Struct("<IIII")
    sample: list[bytes] = []
    t0 = 1_700_000_000
    with open(path, "wb", buffering=1 << 20) as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        inner = [_inner(i) for i in range(4096)]
        for i in range(packets):
            ip = protect(inner[i & 4095]).packet
            if not sample:
                sample.append(ip)
            frame = ETH + ip
            f.write(rec.pack(t0 + i // 1_000_000, i % 1_000_000, len(frame), len(frame)) + frame)
    return sample


def bench_readers(path: str) -> None:
    import dpkt

    def ours_records() -> int:
        with PcapReader(path) as r:
            return sum(1 for _ in r.frames())

    def dpkt_records() -> int:
        with open(path, "rb") as f:
            return sum(1 for _ in dpkt.pcap.Reader(f))

    def dpkt_ip() -> int:
        n = 0
        with open(path, "rb") as f:
            for _ts, buf in dpkt.pcap.Reader(f):
                ip = dpkt.ethernet.Ethernet(buf).data
                n += isinstance(ip, dpkt.ip.IP)
        return n

    def ours_ip() -> int:
        with PcapReader(path) as r:
            return sum(1 for _ in r)

    def ours_batches() -> int:
        # What pcap unprotect reads through: records a chunk at a time, the IP packets of ESP
        # records located (ipsecsa._capio's loop, or its Python reference when pure).
        with PcapReader(path) as r:
            return sum(len(b) for b in r.batches())  # type: ignore[arg-type]

    print("\n1. Reader (seconds to read every record; lower is better)")
    results = {}
    for name, fn in (("ours: records", ours_records), ("dpkt: records", dpkt_records),
                     ("ours: records + IP located", ours_ip),
                     ("dpkt: records + Ethernet/IP parsed", dpkt_ip),
                     (f"ours: batches ({'C' if pcapbatch.native() else 'Python'}), ESP located",
                      ours_batches)):
        t = time.perf_counter()
        n = fn()
        results[name] = time.perf_counter() - t
        print(f"   {name:38s} {results[name]:7.2f} s  ({n} packets, "
              f"{n / results[name] / 1e3:7.0f} k/s)")
    print(f"   ratio dpkt/ours, records:        {results['dpkt: records'] / results['ours: records']:.2f}")
    print(f"   ratio dpkt/ours, with IP:        "
          f"{results['dpkt: records + Ethernet/IP parsed'] / results['ours: records + IP located']:.2f}")


# ---------------------------------------------------------------------------- coverage
def _shb(order: str = "<") -> bytes:
    body = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    return _block(0x0A0D0D0A, body, order)


def _block(kind: int, body: bytes, order: str = "<") -> bytes:
    body += bytes(-len(body) & 3)
    total = len(body) + 12
    return struct.pack(order + "II", kind, total) + body + struct.pack(order + "I", total)


def _idb(order: str = "<", tsresol: int | None = None, name: bytes = b"eth0") -> bytes:
    opts = struct.pack(order + "HH", 2, len(name)) + name + bytes(-len(name) & 3)
    if tsresol is not None:
        opts += struct.pack(order + "HHB3x", 9, 1, tsresol)
    opts += struct.pack(order + "HH", 0, 0)
    return _block(1, struct.pack(order + "HHI", 1, 0, 0) + opts, order)


def _epb(frame: bytes, order: str = "<", if_id: int = 0, ts: int = 1) -> bytes:
    return _block(6, struct.pack(order + "IIIII", if_id, ts >> 32, ts & 0xFFFFFFFF,
                                 len(frame), len(frame)) + frame, order)


def coverage_files(frame: bytes) -> dict[str, bytes]:
    def pcap(order: str, magic: int) -> bytes:
        return (struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
                + b"".join(struct.pack(order + "IIII", 1, i, len(frame), len(frame)) + frame
                           for i in range(3)))

    return {
        "pcap, nanosecond": pcap("<", 0xA1B23C4D),
        "pcap, big-endian": pcap(">", 0xA1B2C3D4),
        "pcapng, options + ns resolution": _shb() + _idb(tsresol=9) + _epb(frame) * 3,
        "pcapng, two sections": (_shb() + _idb() + _epb(frame) * 2
                                 + _shb() + _idb(tsresol=9) + _epb(frame)),
        "pcapng, two interfaces": _shb() + _idb() + _idb(name=b"eth1") + _epb(frame)
                                  + _epb(frame, if_id=1) + _epb(frame),
        "pcapng, big-endian": _shb(">") + _idb(">") + _epb(frame, ">") * 3,
    }


def bench_coverage(frame: bytes) -> None:
    import dpkt

    print("\n2. Coverage (packets read, of 3; or the reader's error)")
    for name, data in coverage_files(frame).items():
        try:
            with PcapReader(io.BytesIO(data)) as r:
                ours = str(sum(1 for _ in r))
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            ours = f"error: {exc}"
        try:
            reader = (dpkt.pcapng.Reader if name.startswith("pcapng") else dpkt.pcap.Reader)
            theirs = str(sum(1 for _ in reader(io.BytesIO(data))))
        except Exception as exc:  # noqa: BLE001
            theirs = f"error: {type(exc).__name__}: {exc}"
        print(f"   {name:34s} ours {ours:10s} dpkt {theirs}")


# ---------------------------------------------------------------------------- command
def _env(pure: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("IPSECSA_PURE_PYTHON", None)
    if pure:
        env["IPSECSA_PURE_PYTHON"] = "1"
    return env


def _run_command(sa_file: str, src: str, dst: str, pure: bool = False) -> tuple[float, int, dict]:
    import json

    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ipsecsa", "pcap", "unprotect", "-s", sa_file,
                             src, dst, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(pure))
    out = proc.stdout.read() if proc.stdout else b""
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"unprotect failed: {proc.stderr.read() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss, json.loads(out)


def bench_datapath(path: str, pure: bool) -> tuple[float, float, float]:
    """In one subprocess (so that IPSECSA_PURE_PYTHON takes effect): the data path's unprotect
    rates on every packet of the capture, held in memory (packet by packet, and
    ``unprotect_batch`` in batches of :data:`REFERENCE_BATCH`), and the rate of the tool's own
    function ``unprotect_capture`` on the file (the command without the interpreter's start-up
    and the imports)."""
    proc = subprocess.run([sys.executable, __file__, "--reference", path], capture_output=True,
                          text=True, env=_env(pure), check=True)
    one, batch, tool = proc.stdout.split()
    return float(one), float(batch), float(tool)


#: Packets per ``unprotect_batch`` call in the reference (the tool's runs are about one read
#: chunk, a few thousand small packets).
REFERENCE_BATCH = 4096


def _reference(path: str) -> None:
    from ipsecsa.config.files import load_sa_file
    from ipsecsa.tools.pcapops import unprotect_capture

    with PcapReader(path) as r:
        sample = [p.ip for p in r]
    one = _unprotect_rate(sample, batch=False)
    batch = _unprotect_rate(sample, batch=True)
    del sample
    sa_file = os.path.join(os.path.dirname(path), "sa.json")
    configs = load_sa_file(sa_file)
    out = os.path.join(os.path.dirname(path), "out-inprocess.pcap")
    t = time.perf_counter()
    summary = unprotect_capture(path, out, configs)
    tool = summary.transformed / (time.perf_counter() - t)
    os.unlink(out)
    print(one, batch, tool)


def _unprotect_rate(sample: list[bytes], *, batch: bool) -> float:
    cfg = parse_sa(SA)
    sa = SecurityAssociation.from_config(dataclasses.replace(cfg, direction="inbound",
                                                             replay_window=0))
    t = time.perf_counter()
    if batch:
        unprotect_batch = sa.unprotect_batch
        for i in range(0, len(sample), REFERENCE_BATCH):
            unprotect_batch(sample[i:i + REFERENCE_BATCH])
    else:
        unprotect = sa.unprotect
        for ip in sample:
            unprotect(ip)
    return len(sample) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (reference, command) per path; the best of each counts")
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference:
        _reference(args.reference)
        return 0
    work = tempfile.mkdtemp(prefix="ipsecsa-bench-", dir=args.dir)
    big, small = os.path.join(work, "esp-big.pcap"), os.path.join(work, "esp-small.pcap")
    sa_file = os.path.join(work, "sa.json")
    with open(sa_file, "w") as f:
        import json

        json.dump({"sas": [SA]}, f)
    try:
        print(f"generating {args.packets} ESP packets (AES-GCM-16 tunnel, "
              f"{20 + 8 + INNER_PAYLOAD}-byte inner packets) in {work} ...")
        t = time.perf_counter()
        sample = generate(big, args.packets)
        generate(small, max(1, args.packets // 10))
        print(f"   {time.perf_counter() - t:.1f} s, {os.path.getsize(big) / 1e6:.0f} MB")
        bench_readers(big)
        bench_coverage(ETH + sample[0])
        print(f"\n3. Unprotect (packets/s; higher is better; best of {args.rounds} rounds, the "
              "reference and the command alternating)")
        rss_big = 0
        for label, pure in (("native fast path", False), ("IPSECSA_PURE_PYTHON=1", True)):
            one = batch = tool = rate = elapsed = 0.0
            for _ in range(args.rounds):
                r_one, r_batch, r_tool = bench_datapath(big, pure)
                one, batch, tool = max(one, r_one), max(batch, r_batch), max(tool, r_tool)
                r_elapsed, rss, summary = _run_command(sa_file, big,
                                                       os.path.join(work, "out.pcap"), pure)
                assert summary["transformed"] == args.packets, summary
                if args.packets / r_elapsed > rate:
                    rate, elapsed = args.packets / r_elapsed, r_elapsed
                rss_big = rss_big or rss
            best = max(one, batch)
            print(f"   {label}:")
            print(f"     data path unprotect, one by one:     {one / 1e3:8.1f} k/s")
            print(f"     data path unprotect_batch({REFERENCE_BATCH}):   {batch / 1e3:8.1f} k/s")
            print(f"     ipsecsa pcap unprotect (whole):      {rate / 1e3:8.1f} k/s  "
                  f"({elapsed:.2f} s incl. start-up)")
            print(f"     unprotect_capture (no start-up):     {tool / 1e3:8.1f} k/s")
            print(f"     ratio command/data path, best:      {rate / best:.2f}   (target >= 0.5)")
            print(f"     ratio no start-up/data path, best:   {tool / best:.2f}")
            print(f"     ratio command/data path, one by one: {rate / one:.2f}")
        _e, rss_small, _s = _run_command(sa_file, small, os.path.join(work, "out-small.pcap"))
        print("\n4. Peak memory of the command (RSS, from wait4)")
        print(f"   {args.packets // 10:>9} packets: {rss_small / 1024:7.1f} MiB")
        print(f"   {args.packets:>9} packets: {rss_big / 1024:7.1f} MiB   "
              f"(ratio {rss_big / rss_small:.2f}; flat = 1.0)")
    finally:
        if not args.keep:
            for name in os.listdir(work):
                os.unlink(os.path.join(work, name))
            os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
