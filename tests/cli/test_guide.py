"""docs/guide.md runs as written: its ``sh`` blocks, in order, in an empty directory."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.cli.helpers import ROOT

GUIDE = os.path.join(ROOT, "docs", "guide.md")


@pytest.mark.skipif(shutil.which("tshark") is None,
                    reason="the guide opens a capture with tshark (scripts/test.sh installs it)")
def test_guide_examples_run_as_written(tmp_path):
    with open(GUIDE) as f:
        blocks = re.findall(r"```sh\n(.*?)```", f.read(), re.DOTALL)
    assert len(blocks) >= 8
    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "20 unprotected" in out and "20 decrypted" in out
    assert "0xc0000101\t1\t" in out  # tshark: ICV good
    counts = _failure_counts(out)
    assert counts[("0xc0000101", "ICV_FAILURE", "icv-length")] == 10
    # 0xc0000202 has the right integrity key and the wrong encryption key: each packet verifies,
    # then decrypts to garbage whose padding is almost always wrong; with a pad-length byte of
    # 0 (1 in 256: pcap protect draws fresh IVs each run) the garbage passes the padding check
    # and fails later under another reason. The hint is the same whatever the reason.
    assert sum(n for (spi, _, hint), n in counts.items()
               if spi == "0xc0000202" and hint == "direction") == 10
    assert counts[("0xc0000202", "BAD_PADDING", "direction")] >= 8
    assert "wrote 2 SAs to from-kernel.json" in out
    assert "tcpdump decrypts CBC ciphers only" in out


def _failure_counts(out: str) -> dict[tuple[str, str, str], int]:
    """The guide prints ``Counter({(spi, reason, hint): n, ...})``: read it back."""
    line = next(ln for ln in out.splitlines() if ln.startswith("Counter({"))
    return dict(ast.literal_eval(line[len("Counter("):-1]))
