"""Benchmark of the SA database (``ipsecsa.sad``): lookup rates against the number of installed
SAs, and memory per installed SA.

Usage: ``python benchmarks/sad.py [--quick] [--lookups N] [--repeats R] [--seed S]
[--baseline git:REV | PATH] [--memory-sas N]``

Rates, at 10, 1,000, 100,000 and 1,000,000 installed entries (``--quick``: up to 100,000):

* ``lookup``   ``Classifier.lookup`` of the database's outbound classifier, on pre-unpacked
  5-tuples: hits uniform over all filters, "hot" hits aimed at 1,000 filters, misses;
* ``classify`` ``SaDatabase.classify(packet)``: the same uniform hits as 24-byte IPv4 packets
  (header + ports), parsing included;
* ``in-look``  ``SaDatabase.lookup_inbound(spi, protocol, dst)``: hits uniform over the installed
  inbound SAs, and misses (SPIs nobody installed);
* ``inbound``  ``SaDatabase.inbound(packet)`` of a 60-byte ESP packet hitting a uniform random
  SA, up to the SA's ``unprotect`` (a stand-in that returns a fixed result: the crypto is not
  the database's cost);
* with ``--baseline``: the same ``lookup`` series on another classifier implementation (e.g.
  ``git:34b3960``, the classifier before the value-in-table rewrite) holding the same filters,
  measured in the same slices, for before/after comparisons under equal machine load.

Each size is measured in alternating slices of 5,000 calls against the 10-entry setup, and each
rate is the best slice over ``--repeats`` passes (best-of filters out moments where other
processes took the CPU); ``÷10`` is rate at the size / rate at 10 measured alongside it.
The target is ÷10 >= 0.5 at 1,000,000 ("within 2x").

Outbound filter distribution (IPv4; addresses random inside 10.0.0.0/8; "host" = /32), 9 shapes:

* 50 % host -> host, any protocol and ports (transport-mode SA pairs)
* 10 % host -> host, TCP, dport one of 22, 443, 445, 3389
*  5 % host -> host, UDP, sport = dport = 5060
* 10 % /24 -> /24, any (site-to-site tunnels)
*  5 % /16 -> /24, any
*  5 % /24 -> host, TCP
*  5 % /8 -> /16, any
*  5 % host -> any (destination wildcard)
*  5 % any -> /24, TCP dport 443

The first nine filters of every size take one shape each, so every size has the same 9 shapes
and a miss probes 9 tables at every size: the ratio isolates the effect of the number of filters
(table sizes, cache and TLB misses) from that of the number of shapes. Hits: a shape is picked
with the weights above, then a random installed filter of it, and a packet built inside it
(unmasked address bits random; protocol/ports those of the filter, or random where it has
wildcards); the answer may be a more specific filter. Hot hits aim at a slice of ~1,000 filters.
Misses: addresses in 198.18.0.0/15, which no filter covers.

Inbound SA distribution: SPIs uniform random (256 .. 2^32-1, distinct), 90 % IPv4 destinations
(random in 10/8) and 10 % IPv6 (random in 2001:db8::/32), 90 % ESP and 10 % AH.

**Stand-ins**: for the rate measurements the installed values are lightweight stand-in SAs
(``_StandIn``: SPI, protocol, direction, addresses; ``unprotect`` returns a fixed result) in
one-SA bundles at every size, because building 1,000,000 real SAs takes minutes and gigabytes.
The database code paths are the real ones.

Memory per SA: tracemalloc around (a) building ``--memory-sas`` real ``SecurityAssociation``
objects with ``from_dict`` (inbound AES-GCM-16 ESP, transport, one selector) and (b) installing
them into a database (inbound index, bundle, bookkeeping), and (c) installing as many outbound
ones (classifier filter, bundle, bookkeeping); divided by N. The SA objects' own size is the
data path's business; the database's overhead is (b) and (c).
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import platform
import random
import struct
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ipsecsa.datapath.result import delivered
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.sad import Bundle, Filter, SaDatabase

TCP, UDP = 6, 17
BASE = 10 << 24  # 10.0.0.0/8
MISS_BASE = (198 << 24) | (18 << 16)  # 198.18.0.0/15 (RFC 2544 benchmarking range)
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))
CHUNK = 5_000  # calls per timed slice
HOT = 1_000  # filters with traffic in the "hot" series
_ALL_SIZES = [10, 1_000, 100_000, 1_000_000]


# ----------------------------------------------------------------------------- stand-in SAs
class _Cfg:
    __slots__ = ("dst", "encapsulation", "selectors", "src")

    def __init__(self, src: Any, dst: Any) -> None:
        self.src, self.dst, self.encapsulation, self.selectors = src, dst, None, ()


_RESULT = delivered(b"\x45" + bytes(39))


class _StandIn:
    """Just what the database reads of an SA; ``unprotect`` returns a fixed result."""

    __slots__ = ("PROTOCOL", "config", "direction", "mode", "spi")

    def __init__(self, spi: int, protocol: str, direction: str, src: Any, dst: Any) -> None:
        self.spi, self.PROTOCOL, self.direction, self.mode = spi, protocol, direction, "transport"
        self.config = _Cfg(src, dst)

    def unprotect(self, packet: bytes, now: float | None = None) -> Any:
        return _RESULT


_OUT_ADDR = ipaddress.IPv4Address("192.0.2.1")


# ----------------------------------------------------------------------------- outbound filters
def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def _in10(rnd: random.Random, plen: int) -> tuple[int, int]:
    m = _mask(plen)
    return (BASE | rnd.getrandbits(24)) & m, m


def _host(rnd: random.Random) -> tuple[int, int]:
    return BASE | rnd.getrandbits(24), 0xFFFFFFFF


def _fields(rnd: random.Random, shape: int) -> tuple[int, ...]:
    """The raw NDIS fields (version, src, src mask, dst, dst mask, protocol, sport, dport)."""
    if shape == 0:
        return (4, *_host(rnd), *_host(rnd), 0, 0, 0)
    if shape == 1:
        return (4, *_host(rnd), *_host(rnd), TCP, 0, rnd.choice((22, 443, 445, 3389)))
    if shape == 2:
        return (4, *_host(rnd), *_host(rnd), UDP, 5060, 5060)
    if shape == 3:
        return (4, *_in10(rnd, 24), *_in10(rnd, 24), 0, 0, 0)
    if shape == 4:
        return (4, *_in10(rnd, 16), *_in10(rnd, 24), 0, 0, 0)
    if shape == 5:
        return (4, *_in10(rnd, 24), *_host(rnd), TCP, 0, 0)
    if shape == 6:
        return (4, *_in10(rnd, 8), *_in10(rnd, 16), 0, 0, 0)
    if shape == 7:
        return (4, *_host(rnd), 0, 0, 0, 0, 0)
    return (4, 0, 0, *_in10(rnd, 24), TCP, 0, 443)


SHAPES = list(range(9))
WEIGHTS = [50, 10, 5, 10, 5, 5, 5, 5, 5]
Packet5 = tuple[int, int, int, int, int]


def _hit(rnd: random.Random, f: Filter) -> Packet5:
    sm, dm = f.effective_src_mask, f.effective_dst_mask
    src = (f.src & sm) | (rnd.getrandbits(32) & ~sm & 0xFFFFFFFF)
    dst = (f.dst & dm) | (rnd.getrandbits(32) & ~dm & 0xFFFFFFFF)
    return (src, dst, f.protocol or rnd.choice((TCP, UDP)), f.sport or rnd.randrange(1024, 65536),
            f.dport or rnd.choice((80, 443, 53, 4500)))


def _miss(rnd: random.Random) -> Packet5:
    return (MISS_BASE | rnd.getrandbits(17), MISS_BASE | rnd.getrandbits(17),
            rnd.choice((TCP, UDP)), rnd.randrange(1024, 65536), rnd.choice((80, 443, 53)))


_V4HDR = struct.Struct("!BBHHHBBH4s4sHH")


def _v4_packet(p: Packet5) -> bytes:
    s, d, proto, sp, dp = p
    return _V4HDR.pack(0x45, 0, 24, 0, 0, 64, proto, 0, s.to_bytes(4, "big"),
                       d.to_bytes(4, "big"), sp, dp)


# ----------------------------------------------------------------------------- inbound SAs
def _inbound_sas(rnd: random.Random, n: int) -> list[_StandIn]:
    spis = set()
    while len(spis) < n:
        spis.add(rnd.randrange(256, 1 << 32))
    out = []
    for spi in spis:
        if rnd.random() < 0.9:
            dst: Any = ipaddress.IPv4Address(BASE | rnd.getrandbits(24))
            src: Any = _OUT_ADDR
        else:
            dst = ipaddress.IPv6Address(V6_BASE | rnd.getrandbits(96))
            src = ipaddress.IPv6Address(V6_BASE | 1)
        out.append(_StandIn(spi, "esp" if rnd.random() < 0.9 else "ah", "inbound", src, dst))
    rnd.shuffle(out)
    return out


def _esp_packet(sa: _StandIn) -> bytes:
    """A 60-byte IPv4 (or 80-byte IPv6) packet carrying the SA's ESP or AH header."""
    body = bytearray(40)
    if sa.PROTOCOL == "esp":
        body[0:4] = sa.spi.to_bytes(4, "big")
        proto = 50
    else:
        body[0:2] = b"\x04\x04"
        body[4:8] = sa.spi.to_bytes(4, "big")
        proto = 51
    dst = sa.config.dst.packed
    if len(dst) == 4:
        return _V4HDR.pack(0x45, 0, 60, 0, 0, 64, proto, 0, bytes(4), dst, 0, 0)[:20] + body
    return (struct.pack("!IHBB", 6 << 28, 40, proto, 64) + bytes(16) + dst + bytes(body))


# ----------------------------------------------------------------------------- setups
@dataclass
class Setup:
    size: int
    sad: SaDatabase
    base_cls: Any  # the --baseline classifier, or None
    hits: list[Packet5]
    hot: list[Packet5]
    misses: list[Packet5]
    hit_pkts: list[bytes]
    in_hits: list[tuple[int, int, bytes]]
    in_misses: list[tuple[int, int, bytes]]
    in_pkts: list[bytes]
    bytes_per_filter: float | None
    build_s: float
    extra: dict[str, float] = field(default_factory=dict)


def build(size: int, n_lookups: int, seed: int, baseline: ModuleType | None,
          measure_memory: bool) -> Setup:
    t_start = time.perf_counter()
    rnd = random.Random(seed * 1_000_003 + size)
    shapes = SHAPES[:size] + rnd.choices(SHAPES, WEIGHTS, k=max(0, size - len(SHAPES)))
    by_shape: list[list[Filter]] = [[] for _ in SHAPES]
    raw = []
    for s in shapes:
        fields_ = _fields(rnd, s)
        by_shape[s].append(Filter(*fields_))
        raw.append(fields_)
    filters = [f for fs in by_shape for f in fs]
    rnd.shuffle(filters)
    sad = SaDatabase()
    gc.collect()
    gc.disable()  # a million adds trigger many useless collections
    try:
        if measure_memory:
            tracemalloc.start()
            m0 = tracemalloc.get_traced_memory()[0]
        add_out = sad._outbound.add
        bundle = Bundle((_StandIn(0x1000, "esp", "outbound", _OUT_ADDR, _OUT_ADDR),))
        for f in filters:
            add_out(f, bundle)
        bpf = None
        if measure_memory:
            bpf = (tracemalloc.get_traced_memory()[0] - m0) / size
            tracemalloc.stop()
        # Outbound SAD entries: one stand-in bundle per filter through add_outbound would double
        # the memory; the classifier above is the one SaDatabase.classify uses.
        base_cls = None
        if baseline is not None:
            base_cls = baseline.Classifier()
            badd, BF = base_cls.add, baseline.Filter
            for f in filters:
                badd(BF(f.version, f.src, f.src_mask, f.dst, f.dst_mask, f.protocol, f.sport,
                        f.dport), bundle)
        ins = _inbound_sas(rnd, size)
        add_in = sad.add_inbound
        for sa in ins:
            add_in((sa,))
    finally:
        gc.enable()
    del filters, raw
    aims = rnd.choices(by_shape, WEIGHTS, k=n_lookups)
    hits = [_hit(rnd, rnd.choice(fs)) for fs in aims]
    hot_by_shape = {id(fs): fs[:max(1, len(fs) * HOT // size)] for fs in by_shape}
    hot = [_hit(rnd, rnd.choice(hot_by_shape[id(fs)])) for fs in aims]
    misses = [_miss(rnd) for _ in range(n_lookups)]
    hit_pkts = [_v4_packet(p) for p in hits]
    pick = [rnd.choice(ins) for _ in range(n_lookups)]
    in_hits = [(sa.spi, 50 if sa.PROTOCOL == "esp" else 51, sa.config.dst.packed) for sa in pick]
    in_misses = [(rnd.randrange(1 << 32) | 1 << 31, p, d) for _, p, d in in_hits]
    in_pkts = [_esp_packet(sa) for sa in pick]
    del ins, pick
    setup = Setup(size, sad, base_cls, hits, hot, misses, hit_pkts, in_hits, in_misses, in_pkts,
                  bpf, time.perf_counter() - t_start)
    _check(setup)
    return setup


def _check(s: Setup) -> None:
    lk = s.sad._outbound.lookup
    for p in s.hits[:2000]:
        assert lk(4, *p) is not None
    for p in s.hot[:2000]:
        assert lk(4, *p) is not None
    for p in s.misses[:2000]:
        assert lk(4, *p) is None
    for pkt in s.hit_pkts[:2000]:
        assert s.sad.classify(pkt) is not None
    for k in s.in_hits[:2000]:
        assert s.sad.lookup_inbound(*k) is not None
    for k in s.in_misses[:2000]:
        assert s.sad.lookup_inbound(*k) is None
    for pkt in s.in_pkts[:2000]:
        assert s.sad.inbound(pkt) is _RESULT
    if s.base_cls is not None:
        for p in s.hits[:2000]:
            assert s.base_cls.lookup(4, *p) is lk(4, *p)


# ----------------------------------------------------------------------------- timing
def _t_lookup(s: Setup, data: list[Packet5], baseline: bool = False) -> float:
    lookup = (s.base_cls if baseline else s.sad._outbound).lookup
    t0 = time.perf_counter()
    for a, b, c, d, e in data:
        lookup(4, a, b, c, d, e)
    return time.perf_counter() - t0


def _t_classify(s: Setup, data: list[bytes]) -> float:
    classify = s.sad.classify
    t0 = time.perf_counter()
    for p in data:
        classify(p)
    return time.perf_counter() - t0


def _t_in_lookup(s: Setup, data: list[tuple[int, int, bytes]]) -> float:
    lookup = s.sad.lookup_inbound
    t0 = time.perf_counter()
    for a, b, c in data:
        lookup(a, b, c)
    return time.perf_counter() - t0


def _t_inbound(s: Setup, data: list[bytes]) -> float:
    inbound = s.sad.inbound
    t0 = time.perf_counter()
    for p in data:
        inbound(p)
    return time.perf_counter() - t0


# name -> (timer, data attribute, extra args)
SERIES: dict[str, tuple[Any, str, tuple[Any, ...]]] = {
    "lookup hit": (_t_lookup, "hits", ()),
    "lookup hot": (_t_lookup, "hot", ()),
    "lookup miss": (_t_lookup, "misses", ()),
    "classify hit": (_t_classify, "hit_pkts", ()),
    "in-look hit": (_t_in_lookup, "in_hits", ()),
    "in-look miss": (_t_in_lookup, "in_misses", ()),
    "inbound hit": (_t_inbound, "in_pkts", ()),
}
BASELINE_SERIES: dict[str, tuple[Any, str, tuple[Any, ...]]] = {
    "BASELINE lookup hit": (_t_lookup, "hits", (True,)),
    "BASELINE lookup hot": (_t_lookup, "hot", (True,)),
    "BASELINE lookup miss": (_t_lookup, "misses", (True,)),
}


def measure(setup: Setup, base: Setup, repeats: int,
            series: dict[str, tuple[Any, str, tuple[Any, ...]]]) -> dict[str, tuple[float, float]]:
    """name -> (rate at this size, rate of the 10-entry setup measured alongside)."""
    best = {k: [float("inf"), float("inf")] for k in series}
    gc.collect()
    gc.disable()  # the collector's pauses are not the database's cost
    try:
        for _ in range(repeats):
            for name, (fn, attr, extra) in series.items():
                b, p = getattr(base, attr), getattr(setup, attr)
                for i in range(0, min(len(b), len(p)), CHUNK):
                    best[name][1] = min(best[name][1], fn(base, b[i:i + CHUNK], *extra))
                    best[name][0] = min(best[name][0], fn(setup, p[i:i + CHUNK], *extra))
    finally:
        gc.enable()
    return {k: (CHUNK / v[0], CHUNK / v[1]) for k, v in best.items()}


# ----------------------------------------------------------------------------- memory per SA
def _sa_dict(i: int, direction: str) -> dict[str, Any]:
    rnd = random.Random(i)
    return {
        "spi": 0x1000 + i, "protocol": "esp", "mode": "transport", "direction": direction,
        "src": "192.0.2.1" if direction == "outbound" else str(ipaddress.IPv4Address(BASE | i)),
        "dst": str(ipaddress.IPv4Address(BASE | i)) if direction == "outbound" else "192.0.2.1",
        "encryption": {"algorithm": "aes-gcm-16", "key": rnd.randbytes(20).hex()},
        "selectors": [{"protocol": 6}],
    }


def memory_per_sa(n: int) -> dict[str, float]:
    gc.collect()
    dicts_in = [_sa_dict(i, "inbound") for i in range(n)]
    dicts_out = [_sa_dict(i, "outbound") for i in range(n)]
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    sas_in = [SecurityAssociation.from_dict(d) for d in dicts_in]
    m1 = tracemalloc.get_traced_memory()[0]
    sad = SaDatabase()
    for sa in sas_in:
        sad.add_inbound(sa)
    m2 = tracemalloc.get_traced_memory()[0]
    sas_out = [SecurityAssociation.from_dict(d) for d in dicts_out]
    m3 = tracemalloc.get_traced_memory()[0]
    for sa in sas_out:
        sad.add_outbound(sa)
    m4 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(sad) == 2 * n
    return {"sa_in": (m1 - m0) / n, "sad_in": (m2 - m1) / n, "sa_out": (m3 - m2) / n,
            "sad_out": (m4 - m3) / n}


# ----------------------------------------------------------------------------- main
def _load_baseline(spec: str) -> ModuleType:
    """A classifier module from ``git:REV`` (this repository's committed file) or a path."""
    if spec.startswith("git:"):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        source = subprocess.run(["git", "-C", root, "show",
                                 f"{spec[4:]}:src/ipsecsa/sad/classifier.py"],
                                check=True, capture_output=True, text=True).stdout
    else:
        with open(spec, encoding="utf-8") as fh:
            source = fh.read()
    mod = ModuleType("sad_baseline_classifier")
    mod.__file__ = spec
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(source, spec, "exec"), mod.__dict__)  # noqa: S102 - a benchmark's own input
    return mod


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes 10, 1e3, 1e5; fewer lookups")
    ap.add_argument("--lookups", type=int, default=None,
                    help="distinct packets per series (default 100,000; quick 30,000)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="passes per rate, best slice kept (default 4; quick 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sizes", type=str, default=None, help="comma-separated sizes (10 first)")
    ap.add_argument("--baseline", default=None,
                    help="also time this classifier: git:REV or a path to a classifier.py")
    ap.add_argument("--memory-sas", type=int, default=10_000,
                    help="real SAs built for the memory measurement (0: skip)")
    args = ap.parse_args(argv)
    sizes = ([int(x) for x in args.sizes.split(",")] if args.sizes
             else _ALL_SIZES[:3] if args.quick else _ALL_SIZES)
    if sizes[0] != 10:
        sizes.insert(0, 10)
    lookups = args.lookups or (30_000 if args.quick else 100_000)
    repeats = args.repeats or (2 if args.quick else 4)
    baseline = _load_baseline(args.baseline) if args.baseline else None
    series = dict(SERIES)
    if baseline is not None:
        series.update(BASELINE_SERIES)
    print(f"{_machine()}; {lookups:,} distinct lookups per series, {repeats} passes, best "
          f"{CHUNK:,}-call slice, alternating with the 10-entry setup", flush=True)
    t0 = time.perf_counter()
    base = build(10, lookups, args.seed, baseline, True)
    ratios: dict[str, float] = {}
    width = max(len(k) for k in series)
    for size in sizes:
        setup = base if size == 10 else build(size, lookups, args.seed, baseline,
                                               size <= 100_000)
        r = measure(setup, base, repeats, series)
        bpf = "-" if setup.bytes_per_filter is None else f"{setup.bytes_per_filter:.0f}"
        print(f"\n{size:,} outbound filters ({setup.sad._outbound.shape_count} shapes) and "
              f"{size:,} inbound SAs; built in {setup.build_s:.1f} s; classifier "
              f"{bpf} B/filter", flush=True)
        print(f"  {'series':<{width}} {'calls/s':>11} {'µs':>6} {'@10 calls/s':>12} {'÷10':>5}")
        for name, (rate, rate10) in r.items():
            ratios[name] = rate / rate10
            print(f"  {name:<{width}} {rate:>11,.0f} {1e6 / rate:>6.2f} {rate10:>12,.0f} "
                  f"{rate / rate10:>5.2f}", flush=True)
        if setup is not base:
            del setup
            gc.collect()
    print(f"\nratio rate@{sizes[-1]:,} / rate@10 (target >= 0.5):")
    for name, ratio in ratios.items():
        print(f"  {name:<{width}} {ratio:.2f}{'' if ratio >= 0.5 else '  BELOW TARGET'}")
    if args.memory_sas:
        m = memory_per_sa(args.memory_sas)
        print(f"\nmemory per SA (tracemalloc, {args.memory_sas:,} real AES-GCM-16 ESP SAs):")
        print(f"  inbound:  SA object {m['sa_in']:,.0f} B + database {m['sad_in']:,.0f} B "
              f"= {m['sa_in'] + m['sad_in']:,.0f} B")
        print(f"  outbound: SA object {m['sa_out']:,.0f} B + database {m['sad_out']:,.0f} B "
              f"= {m['sa_out'] + m['sad_out']:,.0f} B   (target < 2,048 B per installed SA)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
