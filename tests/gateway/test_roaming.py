"""NAT roaming with real processes: gateway A comes back at a new address and port, and gateway B
follows it from A's first authenticated packet (RFC 3948 / RFC 7296 §2.23: the peer's address is
updated from an authenticated packet beyond the anti-replay window's edge).

Two namespaces and a veth (see :mod:`.netns`). A starts on 192.0.2.1:4500 and carries pings; A is
stopped (its ``--stats-json`` holds the sequence numbers reached) and started again on a second
address, 192.0.2.3, and port 4501, with the same SAs continuing their sequence numbers — what B
sees when a NAT in front of A rebinds its mapping. B's SA file still names 192.0.2.1:4500; the
ping from A's site only gets its reply if B follows A. Needs root (skipped with the reason).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .netns import (
    SITE4,
    TUN,
    WIRE4,
    SaPair,
    Wire,
    configure_site,
    skip_reason,
    start_gateway,
    stop,
    wait_for_link,
    write_sa_file,
)

REASON = skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

MOVED = "192.0.2.3"
MOVED_PORT = 4501


def _ping(ns: object, src: str, dst: str, count: int = 3) -> int:
    res = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", "-I", src, dst,  # type: ignore[attr-defined]
                 check=False, timeout=30)
    m = re.search(r"(\d+) received", res.stdout)
    return int(m.group(1)) if m else 0


def _moved_a_side(pair: SaPair, seqs: dict[int, int]) -> list[dict]:
    """A's SAs after the move: its address and port changed, sequence numbers continued."""
    sas = pair.a_side()
    for s in sas:
        s["seq"] = seqs[s["spi"]]
        if s["direction"] == "outbound":
            s["src"] = MOVED
            s["encapsulation"]["sport"] = MOVED_PORT
        else:
            s["dst"] = MOVED
            s["encapsulation"]["dport"] = MOVED_PORT
    return sas


def test_peer_that_moves_is_followed(tmp_path: Path) -> None:
    pair = SaPair(0x0A0B0901, 0x0B0A0901)
    wire = Wire.create("n")
    procs: list[subprocess.Popen] = []
    try:
        wire.a.run("ip", "addr", "add", f"{MOVED}/24", "dev", wire.ifa)
        a_stats, b_stats = tmp_path / "a.stats.json", tmp_path / "b.stats.json"
        procs.append(start_gateway(wire.a, write_sa_file(tmp_path / "a.json", pair.a_side()),
                                   WIRE4[0], stats=a_stats, log=tmp_path / "a.log"))
        procs.append(start_gateway(wire.b, write_sa_file(tmp_path / "b.json", pair.b_side()),
                                   WIRE4[1], stats=b_stats, log=tmp_path / "b.log"))
        for side, ns in enumerate((wire.a, wire.b)):
            wait_for_link(ns, TUN, procs[side])
            configure_site(ns, side)
        assert _ping(wire.a, SITE4[0], SITE4[1]) == 3

        assert stop(procs[0]) == 0
        seqs = {int(s["spi"], 16): s["seq"] for s in json.loads(a_stats.read_text())["sas"]}
        assert seqs[pair.spi_ab] >= 3 and seqs[pair.spi_ba] >= 3
        procs[0] = start_gateway(
            wire.a, write_sa_file(tmp_path / "a2.json", _moved_a_side(pair, seqs)), MOVED,
            "--port", str(MOVED_PORT), stats=a_stats, log=tmp_path / "a2.log")
        wait_for_link(wire.a, TUN, procs[0])
        configure_site(wire.a, 0)

        # B learns A's new address and port from A's first packet, and answers there.
        assert _ping(wire.a, SITE4[0], SITE4[1]) == 3
        assert _ping(wire.b, SITE4[1], SITE4[0]) == 3
        assert stop(procs[1]) == 0
        b = json.loads(b_stats.read_text())
        assert b["gateway"]["peer_moved"] == 1
        log = (tmp_path / "b.log").read_text()
        assert f"-> {MOVED} port {MOVED_PORT}" in log, log
        assert stop(procs[0]) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        wire.destroy()
