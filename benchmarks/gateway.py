"""Gateway benchmark: TCP throughput and ping latency through the tunnel between two namespaces.

These paths are measured in one run, on the same veth between the same two namespaces:

* **bare**: the veth itself (no tunnel) — the ceiling;
* **ipsecsa**: two ``ipsecsa gateway`` processes (ESP in UDP, the ESP algorithm of ``--suite``);
* **ipsecsa serve --tun**: side A is the service with its gateway over the engine (the context
  created through the CLI), side B a plain gateway;
* **libipsec**: two strongSwan charons with the ``kernel-libipsec`` plugin (strongSwan's own
  userspace ESP, in UDP) negotiating the same ESP algorithm — the reference to beat.

Throughput is iperf3 (one TCP flow, then four, ``--seconds`` each); latency is ping's average
round trip over ``--pings`` pings 10 ms apart, minus the bare veth's. Ratios are printed against
libipsec measured in the same run. Because a shared machine's load moves throughput a lot, the
CPU time the two tunnel processes spend per gigabyte carried (user + system, from
``/proc/PID/stat``, during the one-flow run) is printed too: it does not depend on how much CPU
the neighbours leave over. Needs root, iperf3, ping and, for the reference, strongSwan;
run it as ``sudo .venv/bin/python benchmarks/gateway.py [--markdown]``.

The helpers that build namespaces, gateways and charons are the test suite's
(``tests/gateway/netns.py``, ``tests/gateway/strongswan.py``), so the benchmark runs exactly what the
tests check.
"""

from __future__ import annotations

import argparse
import functools
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

from tests.gateway import netns
from tests.gateway import strongswan as sw


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def iperf(client: netns.Netns, server: netns.Netns, dst: str, src: str | None, *, flows: int,
          seconds: float, pids: list[int] | None = None, cpu: dict | None = None) -> float:
    """Bits per second received by the iperf3 server (sum over ``flows`` TCP flows); with
    ``pids``, the CPU seconds they used per gigabyte received go into ``cpu["per_gb"]``."""
    srv = server.popen("iperf3", "-s", "-1", "-B", dst, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        args = ["iperf3", "-c", dst, "-J", "-t", str(seconds), "-P", str(flows)]
        if src is not None:
            args += ["-B", src]
        before = cpu_seconds(pids) if pids else 0.0
        res = client.run(*args, timeout=seconds + 60)
        data = json.loads(res.stdout)
        if pids and cpu is not None:
            gbytes = data["end"]["sum_received"]["bytes"] / 1e9
            cpu["per_gb"] = (cpu_seconds(pids) - before) / gbytes
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


def measure(wire: netns.Wire, dst: str, src: str | None, args: argparse.Namespace,
            pids: list[int] | None = None) -> dict[str, float]:
    cpu: dict[str, float] = {}
    one = iperf(wire.a, wire.b, dst, src, flows=1, seconds=args.seconds, pids=pids, cpu=cpu)
    return {
        "1 flow": one,
        "4 flows": iperf(wire.a, wire.b, dst, src, flows=4, seconds=args.seconds),
        "rtt": ping_rtt(wire.a, dst, src, args.pings),
        "cpu_per_gb": cpu.get("per_gb", 0.0),
    }


def run_ipsecsa(wire: netns.Wire, tmp: Path, args: argparse.Namespace,
                extra: tuple[str, ...] = ()) -> dict[str, float]:
    pair = netns.SaPair(0x0A0B0001, 0x0B0A0001, suite=args.suite)
    files = (netns.write_sa_file(tmp / "a.json", pair.a_side()),
             netns.write_sa_file(tmp / "b.json", pair.b_side()))
    procs = [netns.start_gateway(ns, files[i], netns.WIRE4[i], *extra, log=tmp / f"gw{i}.log")
             for i, ns in enumerate((wire.a, wire.b))]
    try:
        for i, ns in enumerate((wire.a, wire.b)):
            netns.wait_for_link(ns, netns.TUN, procs[i])
            netns.configure_site(ns, i)
        return measure(wire, netns.SITE4[1], netns.SITE4[0], args, [p.pid for p in procs])
    finally:
        for p in procs:
            netns.stop(p)


def run_serve(wire: netns.Wire, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """Side A is ``ipsecsa serve --tun`` (the gateway over the service's engine), its context
    created with ``ipsecsa sa create`` against the service's socket; side B a plain gateway."""
    keys: dict = {}
    n4, w4 = netns.NET4, netns.WIRE4
    a = [netns.sa(0x0A0B0001, "outbound", w4[0], w4[1], [n4[0]], [n4[1]], args.suite, keys),
         netns.sa(0x0B0A0001, "inbound", w4[1], w4[0], [n4[1]], [n4[0]], args.suite, keys)]
    b = [netns.sa(0x0B0A0001, "outbound", w4[1], w4[0], [n4[1]], [n4[0]], args.suite, keys),
         netns.sa(0x0A0B0001, "inbound", w4[0], w4[1], [n4[0]], [n4[1]], args.suite, keys)]
    a_file, b_file = netns.write_sa_file(tmp / "a.json", a), netns.write_sa_file(tmp / "b.json", b)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPSECSA_")}
    conn = ["--socket", str(tmp / "s.sock"), "--token-file", str(tmp / "admin.token")]
    with open(tmp / "serve.log", "w") as err:
        serve = subprocess.Popen(wire.a.cmd(sys.executable, "-m", "ipsecsa", "serve", "--db",
                                            str(tmp / "db"), *conn, "--tun", netns.TUN,
                                            "--local", w4[0]),
                                 stdout=subprocess.DEVNULL, stderr=err, env=env)
    procs = [serve]
    try:
        netns.wait_for_link(wire.a, netns.TUN, serve, timeout=30)
        netns.wait_for_udp(wire.a, 4500)
        netns.configure_site(wire.a, 0)
        procs.append(netns.start_gateway(wire.b, b_file, w4[1], log=tmp / "gw1.log"))
        netns.wait_for_link(wire.b, netns.TUN, procs[1])
        netns.configure_site(wire.b, 1)
        subprocess.run([sys.executable, "-m", "ipsecsa", "sa", "create", "--sa-file",
                        str(a_file), *conn], check=True, env=env, capture_output=True,
                       timeout=60)
        return measure(wire, netns.SITE4[1], netns.SITE4[0], args, [p.pid for p in procs])
    finally:
        for p in procs:
            netns.stop(p, timeout=15)


def run_baseline(wire: netns.Wire, tmp: Path, args: argparse.Namespace, *,
                 src: str) -> dict[str, float]:
    """:func:`run_ipsecsa` with the gateways of another checkout (its ``src/`` first on
    PYTHONPATH of the gateway processes)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(Path(src).resolve())
    try:
        return run_ipsecsa(wire, tmp, args)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


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
        return measure(wire, netns.SITE4[1], netns.SITE4[0], args,
                       [c.proc.pid for c in charons])
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
    ap.add_argument("--rows",
                    default="bare,ipsecsa,threads2,serve,no-offload,threads1,libipsec",
                    help="which rows, comma-separated (bare, ipsecsa, threads2, serve, "
                         "no-offload, threads1, libipsec); bare is always measured (the "
                         "ceiling)")
    ap.add_argument("--baseline", metavar="SRC", action="append", default=[],
                    help="also measure the gateway of another checkout's src/ directory (for "
                         "example the commit before a change, built), as the row "
                         "'ipsecsa @SRC', in the same run; repeatable")
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
        no_offload = functools.partial(run_ipsecsa, extra=("--no-offload",))
        single = functools.partial(run_ipsecsa, extra=("--threads", "1"))
        rows = set(args.rows.split(","))
        plan = [("bare veth", None)]
        if "ipsecsa" in rows:
            plan.append(("ipsecsa", run_ipsecsa))
        plan += [(f"ipsecsa @{src}", functools.partial(run_baseline, src=src))
                 for src in args.baseline]
        if "threads2" in rows:
            plan.append(("ipsecsa --threads 2", functools.partial(run_ipsecsa,
                                                                  extra=("--threads", "2"))))
        if "serve" in rows:
            plan.append(("ipsecsa serve --tun", run_serve))
        if "no-offload" in rows:
            plan.append(("ipsecsa --no-offload", no_offload))
        if "threads1" in rows:
            plan.append(("ipsecsa --threads 1", single))

        if "libipsec" in rows:
            plan.append(("strongSwan libipsec", run_libipsec if have_sw else None))
        for name, fn in plan:
            if fn is None and name != "bare veth":
                print(f"skipping {name}: {sw.skip_reason()}", file=sys.stderr)
                continue
            wire = netns.Wire.create("bench")
            try:
                where = tmp / re.sub(r"[^A-Za-z0-9]+", "_", name)
                where.mkdir()
                if fn is None:
                    results[name] = measure(wire, netns.WIRE4[1], None, args)
                else:
                    results[name] = fn(wire, where, args)
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
              "1 flow vs libipsec | 4 flows vs libipsec | CPU s per GB | CPU vs libipsec |")
    print(header if args.markdown else header.replace("|", " "))
    if args.markdown:
        print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = [name, fmt_rate(r["1 flow"]), fmt_rate(r["4 flows"]), f"{r['rtt']:.0f} us",
                 f"{r['rtt'] - bare['rtt']:+.0f} us" if name != "bare veth" else "-",
                 f"{r['1 flow'] / ref['1 flow']:.2f}x" if ref and name != "bare veth" else "-",
                 f"{r['4 flows'] / ref['4 flows']:.2f}x" if ref and name != "bare veth" else "-",
                 f"{r['cpu_per_gb']:.1f}" if name != "bare veth" else "-",
                 f"{r['cpu_per_gb'] / ref['cpu_per_gb']:.2f}x"
                 if ref and ref["cpu_per_gb"] and name != "bare veth" else "-"]
        print(("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(cells))


if __name__ == "__main__":
    main()
