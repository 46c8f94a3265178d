"""Live interop with strongSwan: ipsecsa takes over one end of a CHILD_SA that two charons
negotiated, and traffic keeps flowing with the other charon's userspace ESP (libipsec).

Left (namespace A, 192.0.2.1, site 198.51.100.1) and right (namespace B, 192.0.2.2, site
203.0.113.1) run Debian's charon with the ``kernel-libipsec`` plugin (this kernel has no XFRM
ESP) and negotiate an IKEv2 CHILD_SA with the ESP proposal under test, ESP in UDP (``encap``),
over IPv4 and (AES-GCM-128) over IPv6 outer addresses (2001:db8:0:1::1 and ::2).
After ping works through both charons, the right charon's CHILD_SA keys, SPIs and traffic
selectors are read from its log (``chd`` level 4), its packet counters from ``swanctl --list-sas``
(so that ipsecsa continues the sequence numbers); the right charon is killed with SIGKILL (no
DELETE reaches the left) and ``ipsecsa gateway`` starts in its place with that SA file. ping, UDP
and TCP both ways must then work against the left charon, which never noticed.

Needs root, /dev/net/tun and strongSwan (scripts/test.sh installs it when root); skipped with the
reason otherwise.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import netns
from .netns import (
    NET4,
    SITE4,
    WIRE4,
    WIRE6,
    Wire,
    start_gateway,
    stop,
    tcp_transfer,
    wait_for_link,
    wait_for_udp,
    write_sa_file,
)
from .strongswan import (
    ESP_PROPOSALS,
    charon_sa_file_entries,
    child_keys_from_log,
    kill_hard,
    sa_counts,
    start_charon,
    wait_established,
)
from .strongswan import skip_reason as strongswan_missing

REASON = netns.skip_reason() or strongswan_missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _ping(ns: netns.Netns, count: int = 3) -> int:
    res = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", "-I", SITE4[0], SITE4[1],
                 check=False, timeout=30)
    m = re.search(r"(\d+) received", res.stdout)
    return int(m.group(1)) if m else 0


def _udp_echo(server: netns.Netns, client: netns.Netns, count: int = 50) -> dict:
    srv = server.popen(sys.executable, netns.XFER, "udp-echo", SITE4[1], "7777", str(count),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
        res = client.run(sys.executable, netns.XFER, "udp-ping", SITE4[1], "7777", str(count),
                         timeout=120)
        return json.loads(res.stdout)
    finally:
        srv.kill()
        srv.communicate()


@pytest.mark.parametrize(("suite", "outer"), [(s, 4) for s in ESP_PROPOSALS]
                         + [("aes-gcm-128", 6)])
def test_ipsecsa_takes_over_a_strongswan_child_sa(tmp_path: Path, suite: str,
                                                  outer: int) -> None:
    # outer 6: the charons and the gateway speak ESP in UDP over IPv6 (the sites stay IPv4).
    wire_addr = WIRE6 if outer == 6 else WIRE4
    wire = Wire.create("s")
    gw: subprocess.Popen | None = None
    left = right = None
    try:
        wire.a.run("ip", "addr", "add", f"{SITE4[0]}/32", "dev", "lo")
        wire.b.run("ip", "addr", "add", f"{SITE4[1]}/32", "dev", "lo")
        esp = ESP_PROPOSALS[suite]
        left = start_charon(wire.a, tmp_path / "left", local=wire_addr[0], remote=wire_addr[1],
                            local_id="left", remote_id="right", local_ts=NET4[0],
                            remote_ts=NET4[1], esp=esp)
        right = start_charon(wire.b, tmp_path / "right", local=wire_addr[1], remote=wire_addr[0],
                             local_id="right", remote_id="left", local_ts=NET4[1],
                             remote_ts=NET4[0], esp=esp)
        left.swanctl("--initiate", "--child", "net", "--timeout", "20")
        wait_established(right)
        assert _ping(wire.a) == 3, "no traffic between the two charons"

        child = child_keys_from_log(right.log.read_text())
        assert (child.local_ts, child.remote_ts) == (NET4[1], NET4[0])
        packets_in, packets_out = sa_counts(right)
        assert packets_in >= 3 and packets_out >= 3
        kill_hard(right)  # no DELETE: the left charon keeps its CHILD_SA

        sa_file = write_sa_file(tmp_path / "right.json", charon_sa_file_entries(
            child, suite=suite, local=wire_addr[1], remote=wire_addr[0], initiator=False,
            seq_out=packets_out, seq_in=packets_in))
        gw = start_gateway(wire.b, sa_file, wire_addr[1], stats=tmp_path / "stats.json",
                           log=tmp_path / "gw.log")
        wait_for_link(wire.b, "ipsa0", gw)
        wait_for_udp(wire.b, 4500)
        wire.b.run("ip", "link", "set", "ipsa0", "up")
        wire.b.run("ip", "route", "add", NET4[0], "dev", "ipsa0", "src", SITE4[1])

        # ping from the left site, answered through ipsecsa
        assert _ping(wire.a, 5) == 5
        # UDP of 32..1280 bytes, echoed both ways through the tunnel
        udp = _udp_echo(wire.b, wire.a)
        assert udp["echoed_intact"] == udp["sent"]
        # TCP both ways, checked by SHA-256
        sent, got = tcp_transfer(wire.b, SITE4[1], wire.a, nbytes=2 << 20)
        assert sent == got and got["bytes"] == 2 << 20
        sent, got = tcp_transfer(wire.b, SITE4[1], wire.a, nbytes=2 << 20, upload=False)
        assert sent == got and got["bytes"] == 2 << 20

        # The left charon still has the original CHILD_SA and counted our packets as good.
        listing = left.swanctl("--list-sas", "--raw").stdout
        assert f"spi-in={child.spi_out:08x}" in listing
        left_in, _left_out = sa_counts(left)
        assert left_in > packets_out + 1000
    finally:
        code = stop(gw) if gw is not None else 0
        for charon in (left, right):
            if charon is not None and charon.proc.poll() is None:
                charon.proc.kill()
                charon.proc.wait()
        wire.destroy()
    assert code == 0, (tmp_path / "gw.log").read_text()
    stats = json.loads((tmp_path / "stats.json").read_text())
    sas = {s["direction"]: s for s in stats["sas"]}
    assert sas["outbound"]["seq"] == packets_out + sas["outbound"]["packets"]
    assert sas["inbound"]["packets"] > 1000
    for s in sas.values():
        assert not {"icv_failure", "replay", "bad_padding"} & set(s["drops"]), s
