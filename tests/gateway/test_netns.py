"""Two ipsecsa gateways in two network namespaces carry real traffic between two sites.

Each namespace gets a veth end (the "wire", 192.0.2.0/24 and 2001:db8:0:1::/64) and a gateway
process (``python -m ipsecsa.gateway``, the command's contract) with the mirror image of the other's
SA file; the sites behind them are addresses on the TUNs (198.51.100.0/24 and 2001:db8:a::/48
behind A, 203.0.113.0/24 and 2001:db8:b::/48 behind B). The kernel's own ping and TCP are the
traffic; tcpdump captures the wire and tshark (an implementation nobody here wrote) decrypts it
with the SA keys, proving that what crosses is ESP in UDP and only that.

Needs root, /dev/net/tun and iproute2 (CI runs as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsecsa.config import parse_sa
from ipsecsa.io.wireshark import esp_sa_lines, tshark_preferences

from .netns import (
    SITE4,
    SITE6,
    TUN,
    WIRE4,
    WIRE6,
    SaPair,
    Wire,
    configure_site,
    sh,
    skip_reason,
    start_gateway,
    stop,
    tcp_transfer,
    wait_for_link,
    write_sa_file,
)

REASON = skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

MB = 1 << 20


@dataclass
class Tunnel:
    wire: Wire
    pair: SaPair
    procs: list[subprocess.Popen]
    dir: Path

    def stats(self, side: int) -> dict:
        """Ask gateway ``side`` for its counters (SIGUSR1) and read the JSON it writes."""
        path = self.dir / f"{'ab'[side]}.stats.json"

        def version() -> tuple[int, int]:
            # Each write is a new file renamed into place: a new inode, even when two writes
            # fall into one tick of the file system's coarse clock (the same mtime).
            st = path.stat()
            return st.st_ino, st.st_mtime_ns

        before = version() if path.exists() else (0, 0)
        self.procs[side].send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if path.exists() and version() != before:
                try:
                    return json.loads(path.read_text())
                except json.JSONDecodeError:
                    pass  # caught between write and rename? (write is atomic; retry anyway)
            time.sleep(0.05)
        raise AssertionError("no statistics written after SIGUSR1")

    def log(self, side: int) -> str:
        return (self.dir / f"{'ab'[side]}.log").read_text()


def start_tunnel(tmp: Path, pair: SaPair, tag: str, *extra: str) -> Tunnel:
    wire = Wire.create(tag)
    procs: list[subprocess.Popen] = []
    try:
        locals_ = WIRE6 if pair.outer6 else WIRE4
        files = (write_sa_file(tmp / "a.json", pair.a_side()),
                 write_sa_file(tmp / "b.json", pair.b_side()))
        for side, ns in enumerate((wire.a, wire.b)):
            procs.append(start_gateway(ns, files[side], locals_[side], *extra,
                                       stats=tmp / f"{'ab'[side]}.stats.json",
                                       log=tmp / f"{'ab'[side]}.log"))
        for side, ns in enumerate((wire.a, wire.b)):
            wait_for_link(ns, TUN, procs[side])
            configure_site(ns, side)
    except BaseException:
        for p in procs:
            p.kill()
        wire.destroy()
        raise
    return Tunnel(wire, pair, procs, tmp)


def end_tunnel(t: Tunnel) -> list[int]:
    try:
        return [stop(p) for p in t.procs]
    finally:
        for p in t.procs:
            if p.poll() is None:
                p.kill()
        t.wire.destroy()


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnel]:
    # --no-offload: tcpdump on the veth sees what the gateway hands the kernel, and with UDP
    # segmentation offload that is trains of datagrams the kernel cuts up only later. --threads 1
    # keeps the one-thread loop covered. The other tunnels of this file (rekey, IPv6 outer, raw)
    # and the strongSwan interop run with the defaults: offload, three threads.
    t = start_tunnel(tmp_path_factory.mktemp("gw"), SaPair(0x0A0B0001, 0x0B0A0001), "m",
                     "--no-offload", "--threads", "1")
    yield t
    codes = end_tunnel(t)
    assert codes == [0, 0], (codes, t.log(0), t.log(1))


def ping(t: Tunnel, side: int, dst: str, *args: str, count: int = 3) -> subprocess.CompletedProcess:
    ns = t.wire.a if side == 0 else t.wire.b
    return ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", *args, dst, check=False,
                  timeout=30)


def received(res: subprocess.CompletedProcess) -> int:
    m = re.search(r"(\d+) received", res.stdout)
    return int(m.group(1)) if m else 0


def test_ping_both_ways_ipv4_and_ipv6(tunnel: Tunnel) -> None:
    assert received(ping(tunnel, 0, SITE4[1], "-I", SITE4[0])) == 3
    assert received(ping(tunnel, 1, SITE4[0], "-I", SITE4[1])) == 3
    assert received(ping(tunnel, 0, SITE6[1], "-I", SITE6[0])) == 3
    assert received(ping(tunnel, 1, SITE6[0], "-I", SITE6[1])) == 3


@pytest.mark.parametrize("size", [1400, 1500, 3000, 9000])
def test_ping_sizes_that_need_fragmentation(tunnel: Tunnel, size: int) -> None:
    # Larger than the TUN's MTU: the host fragments the inner packet, each fragment is an ESP
    # packet of its own, and the far host reassembles what the far gateway writes to its TUN.
    assert received(ping(tunnel, 0, SITE4[1], "-s", str(size), "-I", SITE4[0], count=2)) == 2
    assert received(ping(tunnel, 1, SITE4[0], "-s", str(size), "-I", SITE4[1], count=2)) == 2
    assert received(ping(tunnel, 0, SITE6[1], "-s", str(size), "-I", SITE6[0], count=2)) == 2


def test_tun_mtu_leaves_room_for_esp_overhead(tunnel: Tunnel) -> None:
    out = tunnel.wire.a.run("ip", "link", "show", TUN).stdout
    mtu = int(re.search(r"mtu (\d+)", out).group(1))  # type: ignore[union-attr]
    # veth MTU 1500 - IPv4 20 - UDP 8 - ESP 8 - IV 8 - ICV 16 = 1440, less the 2-byte trailer
    # rounded to the 4-byte alignment: the largest inner packet that fits is 1438.
    assert mtu == 1438


def test_df_packet_too_big_gets_icmp_frag_needed(tunnel: Tunnel) -> None:
    ns = tunnel.wire.a
    ns.run("ip", "link", "set", TUN, "mtu", "1500")  # the administrator raises it
    try:
        time.sleep(2.5)  # the gateway reads the MTU back every 2 s
        res = ping(tunnel, 0, SITE4[1], "-M", "do", "-s", "1472", "-I", SITE4[0], count=2)
        assert "mtu = 1438" in res.stdout + res.stderr, res.stdout + res.stderr
        # Without DF the same size goes through: the outer packet is fragmented on the wire.
        assert received(ping(tunnel, 0, SITE4[1], "-M", "dont", "-s", "1472", "-I", SITE4[0],
                             count=2)) == 2
        stats = tunnel.stats(0)
        assert stats["gateway"]["icmp_tx"] >= 1
        assert stats["gateway"]["tun_mtu"] == 1500
        assert stats["drops"]["too_big"] >= 1
    finally:
        ns.run("ip", "link", "set", TUN, "mtu", "1438")
        ns.run("ip", "route", "flush", "cache", check=False)


def _capture(ns: Wire, iface: str, path: Path) -> subprocess.Popen:
    tool = shutil.which("tcpdump")
    if tool is None:
        pytest.skip("tcpdump is not installed (scripts/test.sh installs it)")
    proc = ns.a.popen(tool, "-i", iface, "-U", "-s", "0", "-w", str(path),
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    seen = b""
    while time.monotonic() < deadline and b"listening" not in seen:
        try:
            seen += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.05)
    return proc


def test_tcp_transfer_both_ways_only_esp_in_udp_on_the_wire(tunnel: Tunnel) -> None:
    cap = tunnel.dir / "wire.pcap"
    dump = _capture(tunnel.wire, tunnel.wire.ifa, cap)
    try:
        sent, got = tcp_transfer(tunnel.wire.b, SITE4[1], tunnel.wire.a, nbytes=4 * MB)
        assert sent == got and got["bytes"] == 4 * MB
        sent, got = tcp_transfer(tunnel.wire.b, SITE4[1], tunnel.wire.a, nbytes=4 * MB,
                                 upload=False)
        assert sent == got and got["bytes"] == 4 * MB
        sent, got = tcp_transfer(tunnel.wire.a, SITE6[0], tunnel.wire.b, nbytes=2 * MB, port=5202)
        assert sent == got and got["bytes"] == 2 * MB
    finally:
        time.sleep(0.2)
        dump.send_signal(signal.SIGINT)
        dump.communicate(timeout=10)
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed: cannot check the capture")
    sas = [parse_sa(s) for s in tunnel.pair.a_side() + tunnel.pair.b_side()]
    prefs: list[str] = []
    for line in esp_sa_lines([s for s in sas if s.direction == "outbound"]):
        prefs += ["-o", f"uat:esp_sa:{line}"]
    out = sh(tshark, "-n", "-r", str(cap), *tshark_preferences(), *prefs, "-T", "fields",
             "-e", "frame.protocols", "-e", "esp.icv_good", "-e", "esp.icv_bad",
             timeout=120).stdout
    kinds: dict[str, int] = {}
    good = bad = 0
    for row in out.splitlines():
        protos, icv_good, icv_bad = (row.split("\t") + ["", ""])[:3]
        kinds[protos] = kinds.get(protos, 0) + 1
        good += icv_good in ("1", "True")
        bad += icv_bad in ("1", "True")
    allowed = ("eth:ethertype:arp", "eth:ethertype:ipv6:icmpv6",
               "eth:ethertype:ip:udp:udpencap:esp",
               "eth:ethertype:ip:data")  # data: a non-final fragment of a large ESP-in-UDP packet
    strays = {k: n for k, n in kinds.items() if not k.startswith(allowed)}
    assert not strays, f"not ESP in UDP on the wire: {strays}"
    # Decrypted by tshark with the SA keys: the TCP transfer is inside, in both directions.
    inner_tcp = sum(n for k, n in kinds.items() if ":esp:ip:tcp" in k or ":esp:ipv6:tcp" in k)
    assert inner_tcp > 2000, kinds
    assert bad == 0 and good > 2000, (good, bad)
    fragments = sum(n for k, n in kinds.items() if k.startswith("eth:ethertype:ip:data"))
    # Non-final fragments carry no IPsec header to check, but must be UDP (protocol 17).
    if fragments:
        protos = sh(tshark, "-n", "-r", str(cap), "-Y", "ip.flags.mf == 1", "-T", "fields",
                    "-e", "ip.proto").stdout.split()
        assert set(protos) == {"17"}


def test_counters_show_the_traffic_and_no_errors(tunnel: Tunnel) -> None:
    for side in (0, 1):
        st = tunnel.stats(side)
        g = st["gateway"]
        assert g["tun_rx"] > 1000 and g["net_rx"] > 1000 and g["send_errors"] == 0
        by_dir = {s["direction"]: s for s in st["sas"] if s["installed"]}
        assert by_dir["outbound"]["packets"] > 1000 and by_dir["inbound"]["packets"] > 1000
        assert by_dir["outbound"]["seq"] == by_dir["outbound"]["packets"]
        for s in st["sas"]:
            assert not {"icv_failure", "replay", "bad_spi"} & set(s["drops"]), s
        assert "key" not in json.dumps(st)


def test_ipv6_outer(tmp_path: Path) -> None:
    # --threads 2 (the TUN written by the receiving thread) keeps that mode covered.
    t = start_tunnel(tmp_path, SaPair(0x0A0B0601, 0x0B0A0601, outer6=True,
                                      suite="chacha20-poly1305"), "6", "--threads", "2")
    try:
        assert received(ping(t, 0, SITE4[1], "-I", SITE4[0])) == 3
        assert received(ping(t, 1, SITE6[0], "-s", "3000", "-I", SITE6[1], count=2)) == 2
        sent, got = tcp_transfer(t.wire.b, SITE6[1], t.wire.a, nbytes=MB)
        assert sent == got
    finally:
        assert end_tunnel(t) == [0, 0], (t.log(0), t.log(1))


def test_raw_esp_transport(tmp_path: Path) -> None:
    t = start_tunnel(tmp_path, SaPair(0x0A0B0701, 0x0B0A0701, encap=False,
                                      suite="aes-256-cbc+hmac-sha256"), "r",
                     "--transport", "raw")
    try:
        assert received(ping(t, 0, SITE4[1], "-I", SITE4[0])) == 3
        assert received(ping(t, 1, SITE6[0], "-s", "2000", "-I", SITE6[1], count=2)) == 2
        sent, got = tcp_transfer(t.wire.a, SITE4[0], t.wire.b, nbytes=MB, upload=False)
        assert sent == got
    finally:
        assert end_tunnel(t) == [0, 0], (t.log(0), t.log(1))


def _reload_both(t: Tunnel, a_sas: list[dict], b_sas: list[dict], step: int) -> None:
    """Rewrite both SA files and SIGHUP both gateways; wait until each has reloaded."""
    write_sa_file(t.dir / "a.json", a_sas)
    write_sa_file(t.dir / "b.json", b_sas)
    for p in t.procs:
        p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    for side in (0, 1):
        while t.log(side).count("SA file reloaded") < step:
            assert time.monotonic() < deadline, t.log(side)
            time.sleep(0.01)


def test_rekey_under_traffic(tmp_path: Path) -> None:
    old, new = SaPair(0x0A0B0101, 0x0B0A0101), SaPair(0x0A0B0102, 0x0B0A0102)
    t = start_tunnel(tmp_path, old, "k")
    results: list = []
    try:
        xfer = threading.Thread(target=lambda: results.append(tcp_transfer(
            t.wire.b, SITE4[1], t.wire.a, nbytes=24 * MB)))
        xfer.start()
        deadline = time.monotonic() + 10
        while t.stats(0)["sas"][0]["packets"] + t.stats(0)["sas"][1]["packets"] < 500:
            assert time.monotonic() < deadline, "the transfer did not start"
        # Make before break: (1) new inbound SAs on both sides, (2) outbound switches to the new
        # SAs, (3) the old inbound SAs go once nothing can be in flight on them.
        _reload_both(t, old.a_side() + new.a_side(outbound=False),
                     old.b_side() + new.b_side(outbound=False), 1)
        _reload_both(t, new.a_side() + old.a_side(outbound=False),
                     new.b_side() + old.b_side(outbound=False), 2)
        time.sleep(0.2)
        _reload_both(t, new.a_side(), new.b_side(), 3)
        xfer.join(timeout=120)
        assert not xfer.is_alive()
        sent, got = results[0]
        assert sent == got and got["bytes"] == 24 * MB
        stats = [t.stats(side) for side in (0, 1)]
    finally:
        codes = end_tunnel(t)
    assert codes == [0, 0]
    for side, st in enumerate(stats):
        by_spi = {int(s["spi"], 16): s for s in st["sas"]}
        out_old, out_new = (old.spi_ab, new.spi_ab) if side == 0 else (old.spi_ba, new.spi_ba)
        in_old, in_new = (old.spi_ba, new.spi_ba) if side == 0 else (old.spi_ab, new.spi_ab)
        # The switch shows in the counters: both generations carried the transfer.
        for spi in (out_old, out_new, in_old, in_new):
            assert by_spi[spi]["packets"] > 100, (spi, by_spi)
        assert not by_spi[out_old]["installed"] and by_spi[out_new]["installed"]
        assert not by_spi[in_old]["installed"] and by_spi[in_new]["installed"]
        for s in st["sas"]:
            assert not {"icv_failure", "replay", "bad_spi"} & set(s["drops"]), s
        assert "bad_spi" not in st["drops"], st["drops"]
        assert "reloaded: 1 added, 2 kept, 0 removed" in t.log(side)
        assert "reloaded: 1 added, 2 kept, 1 removed" in t.log(side)
        assert "reloaded: 0 added, 2 kept, 1 removed" in t.log(side)
