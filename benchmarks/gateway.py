"""Gateway benchmark: TCP throughput and ping latency through the tunnel between two namespaces.

Three paths are measured in one run, on the same veth between the same two namespaces:

* **bare**: the veth itself (no tunnel) — the ceiling;
* **ipsecsa**: two ``ipsecsa gateway`` processes (ESP in UDP, the ESP algorithm of ``--suite``);
* **libipsec**: two strongSwan charons with the ``kernel-libipsec`` plugin (strongSwan's own
  userspace ESP, in UDP) negotiating the same ESP algorithm — the reference to beat.

Throughput is iperf3 (one TCP flow, then four, ``--seconds`` each); latency is ping's average
round trip over ``--pings`` pings 10 ms apart, minus the bare veth's. Ratios are printed against
libipsec measured in the same run. Needs root, iperf3, ping and, for the reference, strongSwan;
run it as ``sudo .venv/bin/python benchmarks/gateway.py [--markdown]``.

The helpers that build namespaces, gateways and charons are the test suite's
(``tests/gateway/netns.py``, ``tests/gateway/strongswan.py``), so the benchmark runs exactly what the
tests check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway import netns  # noqa: E402
from tests.gateway import strongswan as sw  # noqa: E402


def iperf(client: netns.Netns, server: netns.Netns, dst: str, src: str | None, *, flows: int,
          seconds: float) -> float:
    """Bits per second received by the iperf3 server (sum over ``flows`` TCP flows)."""
    srv = server.popen("iperf3", "-s", "-1", "-B", dst, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        args = ["iperf3", "-c", dst, "-J", "-t", str(seconds), "-P", str(flows)]
        if src is not None:
            args += ["-B", src]
        res = client.run(*args, timeout=seconds + 60)
        data = json.loads(res.stdout)
        return float(data["end"]["sum_received"]["bits_per_second"])
    finally:
        srv.kill()
        srv.wait()


def ping_rtt(client: netns.Netns, dst: str, src: str | None, count: int) -> float:
    """Average round trip in microseconds."""
    args = ["ping", "-q", "-c", str(count), "-i", "0.01", "-s", "56"]
    if src is not None:
        args += ["-I", src]
    out = client.run(*args, dst, timeout=count + 30).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    if m is None:
        raise RuntimeError(f"ping failed: {out}")
    return float(m.group(1)) * 1000


def measure(wire: netns.Wire, dst: str, src: str | None, args: argparse.Namespace
            ) -> dict[str, float]:
    return {
        "1 flow": iperf(wire.a, wire.b, dst, src, flows=1, seconds=args.seconds),
        "4 flows": iperf(wire.a, wire.b, dst, src, flows=4, seconds=args.seconds),
        "rtt": ping_rtt(wire.a, dst, src, args.pings),
    }


def run_ipsecsa(wire: netns.Wire, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    pair = netns.SaPair(0x0A0B0001, 0x0B0A0001, suite=args.suite)
    files = (netns.write_sa_file(tmp / "a.json", pair.a_side()),
             netns.write_sa_file(tmp / "b.json", pair.b_side()))
    procs = [netns.start_gateway(ns, files[i], netns.WIRE4[i], log=tmp / f"gw{i}.log")
             for i, ns in enumerate((wire.a, wire.b))]
    try:
        for i, ns in enumerate((wire.a, wire.b)):
            netns.wait_for_link(ns, netns.TUN, procs[i])
            netns.configure_site(ns, i)
        return measure(wire, netns.SITE4[1], netns.SITE4[0], args)
    finally:
        for p in procs:
            netns.stop(p)


def run_libipsec(wire: netns.Wire, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    esp = sw.ESP_PROPOSALS[args.suite]
    charons = []
    try:
        for i, ns in enumerate((wire.a, wire.b)):
            ns.run("ip", "addr", "add", f"{netns.SITE4[i]}/32", "dev", "lo")
            charons.append(sw.start_charon(
                ns, tmp / f"charon{i}", local=netns.WIRE4[i], remote=netns.WIRE4[1 - i],
                local_id=("left", "right")[i], remote_id=("right", "left")[i],
                local_ts=netns.NET4[i], remote_ts=netns.NET4[1 - i], esp=esp))
        charons[0].swanctl("--initiate", "--child", "net", "--timeout", "20")
        sw.wait_established(charons[1])
        return measure(wire, netns.SITE4[1], netns.SITE4[0], args)
    finally:
        for c in charons:
            c.proc.kill()
            c.proc.wait()


def fmt_rate(bps: float) -> str:
    return f"{bps / 1e6:,.0f} Mbit/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=list(netns.SUITES), default="aes-gcm-128")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pings", type=int, default=200)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    reason = netns.skip_reason()
    if reason is None and shutil.which("iperf3") is None:
        reason = "iperf3 is not installed (apt-get install iperf3)"
    if reason is not None:
        sys.exit(f"cannot run: {reason}")
    have_sw = sw.skip_reason() is None
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name, fn in (("bare veth", None), ("ipsecsa", run_ipsecsa),
                         ("strongSwan libipsec", run_libipsec if have_sw else None)):
            if fn is None and name != "bare veth":
                print(f"skipping {name}: {sw.skip_reason()}", file=sys.stderr)
                continue
            wire = netns.Wire.create("bench")
            try:
                (tmp / name.replace(" ", "_")).mkdir()
                if fn is None:
                    results[name] = measure(wire, netns.WIRE4[1], None, args)
                else:
                    results[name] = fn(wire, tmp / name.replace(" ", "_"), args)
            finally:
                wire.destroy()
            print(f"{name}: {fmt_rate(results[name]['1 flow'])} (1 flow), "
                  f"{fmt_rate(results[name]['4 flows'])} (4 flows), "
                  f"rtt {results[name]['rtt']:.0f} us", file=sys.stderr)
    ref = results.get("strongSwan libipsec")
    bare = results["bare veth"]
    cpu = platform.processor() or platform.machine()
    print(f"\nsuite {args.suite}; {os.cpu_count()} CPUs ({cpu}); iperf3 {args.seconds:g} s per "
          f"row; {args.pings} pings\n")
    header = ("| path | 1 TCP flow | 4 TCP flows | ping RTT | added RTT | "
              "1 flow vs libipsec | 4 flows vs libipsec |")
    print(header if args.markdown else header.replace("|", " "))
    if args.markdown:
        print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = [name, fmt_rate(r["1 flow"]), fmt_rate(r["4 flows"]), f"{r['rtt']:.0f} us",
                 f"{r['rtt'] - bare['rtt']:+.0f} us" if name != "bare veth" else "-",
                 f"{r['1 flow'] / ref['1 flow']:.2f}x" if ref and name != "bare veth" else "-",
                 f"{r['4 flows'] / ref['4 flows']:.2f}x" if ref and name != "bare veth" else "-"]
        print(("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(cells))


if __name__ == "__main__":
    main()
