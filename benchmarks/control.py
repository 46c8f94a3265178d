"""Benchmark of the SA-context API (``ipsecsa.wfp``): control-plane life cycles and the cost the
engine adds to the data path.

Usage: ``python benchmarks/control.py [--seconds S] [--packets N] [--size BYTES]``

* **Life cycles per second**: one SA-context life as a keying module runs it (reference C.1):
  an inbound and an outbound IPsec filter, IPsecSaContextCreate1, GetSpi1, AddInbound1 and
  AddOutbound1 with an AES-128-GCM SA each, IPsecSaContextDeleteById0, both filters deleted.
  From one caller, and from 4 threads with a session each (the engine serialises calls through
  its transaction lock; the threads show what that costs under contention). Each caller runs
  its lives with one peer (the same filter conditions every time, as rekeys of one tunnel
  would: the engine reuses the compilation of conditions it has seen), and the single caller
  also with a new peer every life (4,096 peers in turn, more than the engine keeps compiled:
  every filter is compiled anew, as for a gateway keying many peers).
* **Packets**: ``bfe.outbound(packet)`` on an established context (with the native extension,
  the engine's route table: a cached flow is sent without Python) against the bare data path's
  ``SecurityAssociation.protect`` on an SA with the same algorithm and key, in the same run:
  alternating slices, best slice of each (other processes on the machine take the CPU at
  random; the best slice is the least disturbed). Target: the engine adds < 25 %, i.e.
  engine rate / protect rate >= 0.8.
"""

from __future__ import annotations

import argparse
import functools
import gc
import ipaddress
import os
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ipsecsa import wfp
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.wfp.persist import SEQ_BLOCK, SEQ_BLOCK_MAX

A, B = "192.0.2.1", "198.51.100.2"


@functools.cache
def v4(text: str) -> int:
    """An address as WFP structures hold it. Cached: a keying module has its peers' addresses
    in binary form (from its sockets), so parsing their text is no part of a life cycle."""
    return int(ipaddress.IPv4Address(text))


def conditions(local: str, remote: str) -> list[wfp.FWPM_FILTER_CONDITION0]:
    return [wfp.FWPM_FILTER_CONDITION0(
        fieldKey=key, matchType=wfp.FWP_MATCH_EQUAL,
        conditionValue=wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=v4(addr)))
        for key, addr in ((wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS, local),
                          (wfp.FWPM_CONDITION_IP_REMOTE_ADDRESS, remote))]


def ipsec_filter(inbound: bool, conds: list[wfp.FWPM_FILTER_CONDITION0]) -> wfp.FWPM_FILTER0:
    return wfp.FWPM_FILTER0(
        displayData=wfp.FWPM_DISPLAY_DATA0(name="bench"),
        layerKey=wfp.FWPM_LAYER_INBOUND_TRANSPORT_V4 if inbound
        else wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4, filterCondition=conds,
        action=wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_CALLOUT_TERMINATING,
                                calloutKey=wfp.FWPM_CALLOUT_IPSEC_INBOUND_TRANSPORT_V4 if inbound
                                else wfp.FWPM_CALLOUT_IPSEC_OUTBOUND_TRANSPORT_V4))


def traffic(local: str, remote: str, fid: int) -> wfp.IPSEC_TRAFFIC1:
    return wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_V4, localV4Address=v4(local),
                              remoteV4Address=v4(remote),
                              trafficType=wfp.IPSEC_TRAFFIC_TYPE_TRANSPORT, ipsecFilterId=fid)


def gcm_bundle(spi: int, key: bytes) -> wfp.IPSEC_SA_BUNDLE1:
    info = wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
        saCipherInformation=wfp.IPSEC_SA_CIPHER_INFORMATION0(
            cipherTransform=wfp.IPSEC_CIPHER_TRANSFORM0(
                cipherTransformId=wfp.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128),
            cipherKey=wfp.FWP_BYTE_BLOB(data=key)),
        saAuthInformation=wfp.IPSEC_SA_AUTH_INFORMATION0(
            authTransform=wfp.IPSEC_AUTH_TRANSFORM0(
                authTransformId=wfp.IPSEC_AUTH_TRANSFORM_ID_GCM_AES_128)))
    return wfp.IPSEC_SA_BUNDLE1(saList=[wfp.IPSEC_SA0(
        spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
        espAuthAndCipherInformation=info)], ipVersion=wfp.FWP_IP_VERSION_V4)


def check(status: int) -> None:
    if status != wfp.ERROR_SUCCESS:
        raise SystemExit(f"unexpected status 0x{status:08X}")


def life_cycle(bfe: wfp.Engine, h: int, remote: str, key: bytes) -> None:
    conds = conditions(A, remote)
    st, fin = bfe.FwpmFilterAdd0(h, ipsec_filter(True, conds), None)
    check(st)
    st, fout = bfe.FwpmFilterAdd0(h, ipsec_filter(False, conds), None)
    check(st)
    st, _, ctx = bfe.IPsecSaContextCreate1(h, traffic(A, remote, fout), None)
    check(st)
    st, spi = bfe.IPsecSaContextGetSpi1(h, ctx, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(A, remote, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
    check(st)
    check(bfe.IPsecSaContextAddInbound1(h, ctx, gcm_bundle(spi, key)))
    check(bfe.IPsecSaContextAddOutbound1(h, ctx, gcm_bundle(0xC0FFEE01, key)))
    check(bfe.IPsecSaContextDeleteById0(h, ctx))
    check(bfe.FwpmFilterDeleteById0(h, fout))
    check(bfe.FwpmFilterDeleteById0(h, fin))


#: The remote addresses a caller cycles through when each life has a new peer.
PEERS = [str(ipaddress.IPv4Address("10.128.0.1") + n) for n in range(4096)]


def cycles(threads: int, seconds: float, database: Path | None = None,
           new_peers: bool = False) -> float:
    bfe = wfp.Engine(database=database)
    key = os.urandom(20)
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        _, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
        remote = f"198.51.{100 + i}.2"
        n = 0
        while time.perf_counter() < stop:
            if new_peers:
                remote = PEERS[n % len(PEERS)]
                n += 1
            life_cycle(bfe, h, remote, key)
            done[i] += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    bfe.close()
    return sum(done) / elapsed


def api_cycles(seconds: float, database: Path | None = None) -> float:
    """The same life as :func:`life_cycle` through the Pythonic API: ``create_context`` from
    two SA descriptions (filters found or made, Create, SetSpi, AddInbound, AddOutbound) and
    ``delete`` (context and filters)."""
    from ipsecsa import api

    key = os.urandom(20).hex()

    def desc(spi: int, src: str, dst: str) -> dict[str, object]:
        return {"spi": spi, "protocol": "esp", "mode": "transport", "src": src, "dst": dst,
                "encryption": {"algorithm": "aes-gcm-16", "key": key}}

    out, inb = desc(0xC0FFEE01, A, B), desc(0xC0FFEE02, B, A)
    with api.Engine(database) as engine:
        done, stop = 0, time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < stop:
            engine.delete(engine.create_context(outbound=out, inbound=inb).id)
            done += 1
        return done / (time.perf_counter() - start)


def reopen(n: int, workdir: Path) -> tuple[float, float, float, float, float]:
    """(seconds to write n established contexts, seconds to reopen them, bytes of memory per
    reopened context by tracemalloc, then the first packet and the second packet sent to each of
    up to 1,000 reopened contexts, seconds per packet: the first builds the context's outbound
    SA, which a reopen leaves for its first use)."""
    import tracemalloc

    db = workdir / "reopen.db"
    bfe = wfp.Engine(database=db)
    _, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
    key = os.urandom(20)
    t = time.perf_counter()
    for i in range(n):
        remote = str(ipaddress.IPv4Address("10.0.0.0") + i + 1)
        conds = conditions(A, remote)
        _, fin = bfe.FwpmFilterAdd0(h, ipsec_filter(True, conds), None)
        _, fout = bfe.FwpmFilterAdd0(h, ipsec_filter(False, conds), None)
        _, _, ctx = bfe.IPsecSaContextCreate1(h, traffic(A, remote, fout), None)
        _, spi = bfe.IPsecSaContextGetSpi1(h, ctx, wfp.IPSEC_GETSPI1(
            inboundIpsecTraffic=traffic(A, remote, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
        check(bfe.IPsecSaContextAddInbound1(h, ctx, gcm_bundle(spi, key)))
        check(bfe.IPsecSaContextAddOutbound1(h, ctx, gcm_bundle(0xC0000000 + i, key)))
    write = time.perf_counter() - t
    bfe.close()
    del bfe  # as a restarted process would, reopen without the writer's objects around
    gc.collect()
    t = time.perf_counter()
    again = wfp.Engine(database=db)
    load = time.perf_counter() - t
    assert len(again._contexts) == n
    probes = [udp_packet(64, str(ipaddress.IPv4Address("10.0.0.0") + i + 1))
              for i in range(min(n, 1000))]
    sends = []
    for _ in range(2):  # first packets (the SA is built), then second packets
        t = time.perf_counter()
        for probe in probes:
            assert again.outbound(probe).drop is None
        sends.append((time.perf_counter() - t) / len(probes))
    again.close()
    del again
    gc.collect()
    # Memory in a second reopen: tracing allocations slows the load several times over.
    tracemalloc.start()
    again = wfp.Engine(database=db)
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    again.close()
    return write, load, mem / n, sends[0], sends[1]


def reads_after_reopen(db: Path) -> dict[str, float]:
    """Seconds of the reads a dashboard makes right after a reopen of ``db``: the first and the
    second IPsecGetStatistics1, then a full ``api.Engine.contexts()`` listing; and after another
    reopen the listing first (nothing read yet) and again. A reopened context's SAs are not
    built: these read them from their stored form (``ipsecsa.wfp.stored``), once. The
    reference (``build_all``): building every context's SAs after a third reopen, which is
    what the first of those reads did before. Each reopen in a process of its own, as a
    restarted service would (a process that already held an engine has a larger heap, which
    makes the collector's passes slower)."""
    import json
    import subprocess

    out: dict[str, float] = {}
    for scenario in ("statistics", "contexts", "build_all"):
        run = subprocess.run([sys.executable, __file__, "--reads-child", scenario, str(db)],
                             check=True, capture_output=True, text=True)
        out.update(json.loads(run.stdout.splitlines()[-1]))
    return out


def _reads_child(scenario: str, db: Path) -> dict[str, float]:
    """One scenario of :func:`reads_after_reopen`, in this (fresh) process."""
    from ipsecsa import api

    out: dict[str, float] = {}
    t = time.perf_counter()
    engine = api.Engine(database=db)
    out[f"reopen_{scenario}"] = time.perf_counter() - t
    if scenario == "build_all":
        t = time.perf_counter()
        for ctx in engine.wfp._contexts.values():
            ctx.inbound_bundle, ctx.outbound_bundle  # noqa: B018 - builds them
        out["build_all"] = time.perf_counter() - t
        engine.close()
        return out
    with engine.session() as s:
        if scenario == "statistics":
            for name in ("stats1", "stats2"):
                t = time.perf_counter()
                check(engine.wfp.IPsecGetStatistics1(s.handle)[0])
                out[name] = time.perf_counter() - t
        for name in (f"list1_after_{scenario}", f"list2_after_{scenario}"):
            t = time.perf_counter()
            out["contexts"] = len(engine.contexts())
            out[name] = time.perf_counter() - t
    engine.close()
    return out


def reservation_cost(n: int, size: int, workdir: Path) -> tuple[float, float]:
    """bfe.outbound's rate on an in-memory engine and on a durable one (sequence numbers
    reserved in synced blocks), best slices, same run."""
    rates = []
    for database in (None, workdir / "seq.db"):
        rates.append(outbound_rate(n, size, database))
    return rates[0], rates[1]


def outbound_rate(n: int, size: int, database: Path | None, slices: int = 25) -> float:
    key = os.urandom(20)
    bfe = wfp.Engine(database=database)
    _, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
    conds = conditions(A, B)
    _, fin = bfe.FwpmFilterAdd0(h, ipsec_filter(True, conds), None)
    _, fout = bfe.FwpmFilterAdd0(h, ipsec_filter(False, conds), None)
    _, _, ctx = bfe.IPsecSaContextCreate1(h, traffic(A, B, fout), None)
    _, spi = bfe.IPsecSaContextGetSpi1(h, ctx, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(A, B, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
    check(bfe.IPsecSaContextAddInbound1(h, ctx, gcm_bundle(spi, key)))
    check(bfe.IPsecSaContextAddOutbound1(h, ctx, gcm_bundle(0xC0FFEE01, key)))
    pkt = udp_packet(size)
    per = max(1, n // slices)
    best = 0.0
    for _ in range(slices):
        t = time.perf_counter()
        for _ in range(per):
            bfe.outbound(pkt)
        best = max(best, per / (time.perf_counter() - t))
    bfe.close()
    return best


def udp_packet(size: int, dst: str = B) -> bytes:
    payload = bytes(size - 28)
    udp = struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      ipaddress.IPv4Address(A).packed, ipaddress.IPv4Address(dst).packed)
    s = sum(struct.unpack("!10H", hdr))
    s = ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF
    return hdr[:10] + struct.pack("!H", s) + hdr[12:] + udp


def packets(n: int, size: int, slices: int = 25) -> dict[str, float]:
    key = os.urandom(20)
    bfe = wfp.Engine()
    _, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
    conds = conditions(A, B)
    _, fin = bfe.FwpmFilterAdd0(h, ipsec_filter(True, conds), None)
    _, fout = bfe.FwpmFilterAdd0(h, ipsec_filter(False, conds), None)
    _, _, ctx = bfe.IPsecSaContextCreate1(h, traffic(A, B, fout), None)
    _, spi = bfe.IPsecSaContextGetSpi1(h, ctx, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(A, B, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
    check(bfe.IPsecSaContextAddInbound1(h, ctx, gcm_bundle(spi, key)))
    check(bfe.IPsecSaContextAddOutbound1(h, ctx, gcm_bundle(0xC0FFEE01, key)))
    sa = SecurityAssociation.from_dict({
        "spi": 0xC0FFEE02, "protocol": "esp", "direction": "outbound", "src": A, "dst": B,
        "encryption": {"algorithm": "aes-gcm-16", "key": key.hex()}})
    pkt = udp_packet(size)
    assert bfe.outbound(pkt).drop is None
    assert bfe.outbound_batch([pkt])[0].drop is None
    per = max(BATCH, n // slices // BATCH * BATCH)
    batch = [pkt] * BATCH
    best = {"engine": 0.0, "protect": 0.0, "engine_batch": 0.0, "protect_batch": 0.0}

    def singles(fn: Any) -> None:
        for _ in range(per):
            fn(pkt)

    def batches(fn: Any) -> None:
        for _ in range(per // BATCH):
            fn(batch)

    for _ in range(slices):
        for name, run, fn in (("protect", singles, sa.protect), ("engine", singles, bfe.outbound),
                              ("protect_batch", batches, sa.protect_batch),
                              ("engine_batch", batches, bfe.outbound_batch)):
            t = time.perf_counter()
            run(fn)
            rate = per / (time.perf_counter() - t)
            best[name] = max(best[name], rate)
    bfe.close()
    return best


#: Packets per batch call in the batch rows (as the gateway and the issue's targets use).
BATCH = 64


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--reads-child"]:  # one scenario of reads_after_reopen
        import json

        print(json.dumps(_reads_child(args_in[1], Path(args_in[2]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--packets", type=int, default=140_000)
    ap.add_argument("--size", type=int, default=64, help="IP packet size in bytes")
    ap.add_argument("--reopen", type=int, default=100_000,
                    help="contexts in the reopen measurement (0: skip it)")
    args = ap.parse_args(argv)
    import tempfile
    print(f"# ipsecsa benchmarks/control.py  python {sys.version.split()[0]}  "
          f"cores {os.cpu_count()}")
    print("\nSA-context life cycles (2 filters, Create, GetSpi, AddInbound, AddOutbound, "
          "DeleteById, 2 filter deletes)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"{'callers':>8} {'in memory':>10} {'durable':>10}")
        for threads, label, new_peers in ((1, "1", False), (1, "1 new", True),
                                          (4, "4", False)):
            mem = cycles(threads, args.seconds, new_peers=new_peers)
            dur = cycles(threads, args.seconds, work / f"cycles{label}.db", new_peers)
            what = "a new peer every life" if new_peers else "one peer"
            print(f"{label:>8} {mem:>10,.0f} {dur:>10,.0f}   ({what}; target durable, 1 caller: "
                  f">= 2,000/s)")
        print(f"{'api':>8} {api_cycles(args.seconds):>10,.0f} "
              f"{api_cycles(args.seconds, work / 'api.db'):>10,.0f}   (ipsecsa.api: "
              "create_context + delete, 1 caller)")
        inmem, durable = reservation_cost(args.packets, args.size, work)
        print(f"\nbfe.outbound, durable engine (sequence numbers reserved in synced blocks of "
              f"{SEQ_BLOCK:,} growing to {SEQ_BLOCK_MAX:,}):\n  in memory {inmem:,.0f}/s  "
              f"durable {durable:,.0f}/s  cost "
              f"{1 - durable / inmem:+.1%}  (target < 5 %)")
        if args.reopen:
            write, load, per, first, second = reopen(args.reopen, work)
            print(f"\nreopen: {args.reopen:,} established contexts written in {write:.1f} s, "
                  f"reopened in {load:.2f} s = {load / args.reopen * 1e6:,.0f} us per context "
                  f"(100,000: {load / args.reopen * 1e5:.1f} s; target < 10 s), {per:,.0f} B of "
                  f"Python memory per context\n  after the reopen, bfe.outbound: first packet "
                  f"to a context {first * 1e6:,.0f} us (builds its outbound SA), the second "
                  f"{second * 1e6:,.1f} us")
            r = reads_after_reopen(work / "reopen.db")
            print(f"  reads after the reopen ({r['contexts']:,.0f} contexts, SAs read as "
                  f"stored): IPsecGetStatistics1 first {r['stats1']:.2f} s, second "
                  f"{r['stats2']:.2f} s; api contexts() {r['list1_after_statistics']:.2f} s "
                  f"after them, {r['list1_after_contexts']:.2f} s as the first read, "
                  f"{r['list2_after_contexts']:.2f} s the second\n  (reference, same run: "
                  f"building every context's SAs, what the first of them did before, "
                  f"{r['build_all']:.2f} s: the first statistics now take "
                  f"{r['stats1'] / r['build_all']:.0%} of that)")
    print(f"\nbfe.outbound vs SecurityAssociation.protect, ESP AES-128-GCM, transport, "
          f"{args.size}-byte packets")
    for size in sorted({args.size, 1400}):
        r = packets(args.packets, size)
        for eng, raw, what in ((r["engine"], r["protect"], "one by one"),
                               (r["engine_batch"], r["protect_batch"], f"batches of {BATCH}")):
            print(f"{size:>5} B  {what:<15} engine {eng:>10,.0f}/s  protect {raw:>10,.0f}/s  "
                  f"ratio {eng / raw:.2f}  (engine adds {raw / eng - 1:+.0%}; target < +25 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
