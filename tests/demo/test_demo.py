"""The README's main job runs end to end in a real subprocess, says what it injects, and checks
that every injected packet was dropped for its reason (exit status 1 when not)."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from ipsecsa import demo


@pytest.mark.parametrize("packets", [2, 60, 1200])
def test_demo_runs_and_every_pair_round_trips(packets: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "ipsecsa.demo", "--packets", str(packets)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"ipsecsa data-path demo: {packets} packets per SA")
    assert out.count(f"{packets}/{packets} delivered intact; checks OK") == 4
    assert "FAILED" not in out and out.rstrip().endswith("all checks held")
    # The counts agree with the header: each side of each SA carried exactly --packets.
    assert len(re.findall(rf"outbound packets={packets} ", out)) == 4
    assert len(re.findall(rf"inbound  packets={packets} ", out)) == 4
    # It says what it injects, and each injection shows up under its drop reason.
    assert out.count("injected: a tampered copy") == 4 and out.count("injected: a replay of the packet before last") == 4
    assert out.count("drops: icv_failure=1, replay=1 (expected: icv_failure=1, replay=1)") == 3
    assert "drops: selector_mismatch=1 (expected: selector_mismatch=1)" in out
    assert ("drops: icv_failure=1, replay=1, natt_keepalive=1 "
            "(expected: icv_failure=1, replay=1, natt_keepalive=1)") in out


def test_demo_fails_when_an_injected_packet_is_not_dropped(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The checks can fail: expecting drops that nothing caused gives exit status 1."""
    real = demo._inject

    def expect_without_injecting(a, b, cfg, wire, now):  # type: ignore[no-untyped-def]
        said, out_drops, in_drops = real(a, b, cfg, wire, now)
        in_drops[demo.DropReason.BAD_PADDING] = 1  # a drop that never happens
        return said, out_drops, in_drops

    monkeypatch.setattr(demo, "_inject", expect_without_injecting)
    buf = io.StringIO()
    assert demo.run(4, buf) == 1
    assert buf.getvalue().count("FAILED: receiver drops as expected") == 4
    assert "4 SA(s) FAILED their checks" in buf.getvalue()


def test_demo_refuses_a_nonsense_argument() -> None:
    proc = subprocess.run([sys.executable, "-m", "ipsecsa.demo", "--packets", "1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--packets" in proc.stderr
