"""``ipsecsa --version`` says whether the native ESP fast path is on and, when it is off, why
(the same facts as ``ipsecsa.info()``), run as a real subprocess in each situation: the
extension present, ``IPSECSA_PURE_PYTHON=1``, and the extension missing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.cli.helpers import ipsecsa

LINE = "native ESP fast path:"


def _fast_path_line(out: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(LINE)]
    assert len(lines) == 1, out
    return lines[0]


def test_version_says_on_with_the_libcrypto(monkeypatch):
    if importlib.util.find_spec("ipsecsa._fastesp") is None:
        if os.environ.get("IPSECSA_REQUIRE_NATIVE") == "1":
            pytest.fail("the native extension was not built (IPSECSA_REQUIRE_NATIVE=1)")
        pytest.skip("the native extension is not built here")
    monkeypatch.delenv("IPSECSA_PURE_PYTHON", raising=False)
    out = ipsecsa("--version").stdout
    line = _fast_path_line(out)
    assert line.startswith(f"{LINE} on (OpenSSL "), line
    assert "why_off" not in out and "native: " not in out


def test_version_with_pure_python_forced_says_off_and_why(monkeypatch):
    monkeypatch.setenv("IPSECSA_PURE_PYTHON", "1")
    line = _fast_path_line(ipsecsa("--version").stdout)
    assert line == f"{LINE} off (IPSECSA_PURE_PYTHON=1 is set); pure-Python data path"


def test_version_without_the_extension_says_off_and_why():
    # The extension made unimportable in the child (None in sys.modules makes the import fail
    # as a missing build would); the command must still run, on the pure-Python path.
    env = {k: v for k, v in os.environ.items() if k != "IPSECSA_PURE_PYTHON"}
    code = ("import sys; sys.modules['ipsecsa._fastesp'] = None; "
            "from ipsecsa.cli.main import main; main(['--version'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    line = _fast_path_line(proc.stdout)
    assert line.startswith(f"{LINE} off (the native extension ipsecsa._fastesp is not "
                           "available ("), line
    assert line.endswith("; pure-Python data path")
    # ... and the package said so once, as a warning, when it was imported.
    assert proc.stderr.count("native ESP fast path off") == 1, proc.stderr
