"""The README's main job runs end to end in a real subprocess and every SA pair round-trips."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("packets", [2, 60, 1200])
def test_demo_runs_and_every_pair_round_trips(packets: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "ipsecsa.demo", "--packets", str(packets)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("delivered intact OK") == 4
    assert "FAILED" not in proc.stdout
    # The injected faults show up under their drop reasons.
    for reason in ("icv_failure", "replay", "selector_mismatch", "natt_keepalive"):
        assert f"{reason}=" in proc.stdout


def test_demo_refuses_a_nonsense_argument() -> None:
    proc = subprocess.run([sys.executable, "-m", "ipsecsa.demo", "--packets", "1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--packets" in proc.stderr
