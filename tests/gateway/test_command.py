"""The ``ipsecsa gateway`` command line contract, run as a real process.

Failures are one line on stderr and a distinct exit status (2 arguments, 3 SA file, 4 TUN or
socket); SIGTERM and SIGINT end it with status 0 within 5 seconds, the TUN removed; SIGHUP
re-reads the SA file. The processes run in a network namespace of their own so that their TUN
devices and ports never meet anything else on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import (
    GATEWAY,
    TUN,
    WIRE4,
    Netns,
    SaPair,
    sh,
    skip_reason,
    wait_for_link,
    wait_for_udp,
    write_sa_file,
)

NEEDS_NETNS = skip_reason()


#: ``python -m ipsecsa.gateway``: the command alone, without the ``ipsecsa`` group.
STANDALONE = [sys.executable, "-m", "ipsecsa.gateway"]
ENTRIES = pytest.mark.parametrize("entry", [GATEWAY, STANDALONE], ids=["ipsecsa", "module"])


def run(*args: str, ns: Netns | None = None, timeout: float = 30,
        entry: list[str] = GATEWAY) -> subprocess.CompletedProcess:
    cmd = [*entry, *args]
    return sh(*(ns.cmd(*cmd) if ns else cmd), check=False, timeout=timeout)


def one_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("ipsecsa gateway: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("args", [
    [],
    ["--tun", "x", "--sa-file", "f.json"],
    ["--tun", "x", "--sa-file", "f.json", "--local", "not-an-ip"],
    ["--tun", "x" * 16, "--sa-file", "f.json", "--local", "192.0.2.1"],
    ["--tun", "x", "--sa-file", "f.json", "--local", "192.0.2.1", "--port", "0"],
    ["--tun", "x", "--sa-file", "f.json", "--local", "192.0.2.1", "--transport", "tcp"],
    ["--tun", "x", "--sa-file", "f.json", "--local", "192.0.2.1", "--peer", "2001:db8::1"],
    ["--tun", "x", "--sa-file", "f.json", "--local", "192.0.2.1", "--bogus"],
])
@ENTRIES
def test_wrong_arguments_one_line_exit_2(args: list[str], entry: list[str]) -> None:
    res = run(*args, entry=entry)
    assert res.returncode == 2
    one_line(res)


@ENTRIES
def test_help_exits_0(entry: list[str]) -> None:
    res = run("--help", entry=entry)
    assert res.returncode == 0 and "--sa-file" in res.stdout


@pytest.mark.parametrize(("content", "words"), [
    (None, "No such file"),
    ("{not json", "invalid JSON"),
    ('{"sas": [{"spi": 1}]}', "sas[0]"),
    ('{"sas": []}', "no outbound SA"),
])
@ENTRIES
def test_unusable_sa_file_one_line_exit_3(tmp_path: Path, content: str | None, words: str,
                                          entry: list[str]) -> None:
    f = tmp_path / "sa.json"
    if content is not None:
        f.write_text(content)
    res = run("--tun", "ipsatest0", "--sa-file", str(f), "--local", WIRE4[0], entry=entry)
    assert res.returncode == 3
    assert words in one_line(res)
    assert not os.path.exists("/sys/class/net/ipsatest0")  # nothing created


def test_sa_file_error_names_the_sa_and_field_without_keys(tmp_path: Path) -> None:
    sas = SaPair(0x1001, 0x2001).a_side()
    sas[1]["dst"] = "192.0.2.200"
    f = write_sa_file(tmp_path / "sa.json", sas)
    res = run("--tun", "ipsatest0", "--sa-file", str(f), "--local", WIRE4[0])
    assert res.returncode == 3
    line = one_line(res)
    assert "sas[1].dst" in line and "0x00002001" in line
    for s in sas:
        assert s["encryption"]["key"] not in res.stderr


@pytest.fixture
def ns() -> Iterator[Netns]:
    if NEEDS_NETNS is not None:
        pytest.skip(NEEDS_NETNS)
    n = Netns(f"ipsa{os.getpid()}c")
    sh("ip", "netns", "add", n.name)
    try:
        n.run("ip", "link", "set", "lo", "up")
        n.run("ip", "link", "add", "wire0", "type", "veth", "peer", "name", "wire1")
        n.run("ip", "addr", "add", f"{WIRE4[0]}/24", "dev", "wire0")
        n.run("ip", "link", "set", "wire0", "up")
        n.run("ip", "link", "set", "wire1", "up")
        yield n
    finally:
        for pid in sh("ip", "netns", "pids", n.name, check=False).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", n.name, check=False)


def _start(ns: Netns, tmp: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    f = write_sa_file(tmp / "sa.json", SaPair(0x1001, 0x2001).a_side())
    stats = tmp / "stats.json"
    proc = ns.popen(*GATEWAY, "--tun", TUN, "--sa-file", str(f), "--local", WIRE4[0],
                    "--stats-json", str(stats), *extra, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    wait_for_link(ns, TUN, proc, timeout=5)
    assert time.monotonic() - t0 < 5
    wait_for_udp(ns, 4500)
    return proc, stats


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_within_5_s_and_removes_the_tun(ns: Netns, tmp_path: Path, sig: int
                                                       ) -> None:
    proc, stats = _start(ns, tmp_path)
    t0 = time.monotonic()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert time.monotonic() - t0 < 5
    assert ns.run("ip", "link", "show", TUN, check=False).returncode != 0
    assert "SA 0x00001001 outbound" in err  # the counters at exit
    data = json.loads(stats.read_text())
    assert data["gateway"]["tun"] == TUN and oct(stats.stat().st_mode & 0o777) == "0o600"


def test_sigusr1_prints_counters_and_sighup_reloads(ns: Netns, tmp_path: Path) -> None:
    proc, stats = _start(ns, tmp_path, "-v")
    try:
        new = SaPair(0x1002, 0x2002)
        write_sa_file(tmp_path / "sa.json", new.a_side())
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        data = json.loads(stats.read_text())
        live = sorted(s["spi"] for s in data["sas"] if s["installed"])
        gone = sorted(s["spi"] for s in data["sas"] if not s["installed"])
        assert live == ["0x00001002", "0x00002002"] and gone == ["0x00001001", "0x00002001"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=5)
    assert "2 added, 0 kept, 2 removed" in err


def test_name_taken_exit_4(ns: Netns, tmp_path: Path) -> None:
    f = write_sa_file(tmp_path / "sa.json", SaPair(0x1001, 0x2001).a_side())
    res = run("--tun", "wire1", "--sa-file", str(f), "--local", WIRE4[0], ns=ns)
    assert res.returncode == 4
    assert "already exists" in one_line(res)


def test_address_not_local_exit_4_and_no_tun_left(ns: Netns, tmp_path: Path) -> None:
    sas = SaPair(0x1001, 0x2001).a_side()
    for s in sas:  # a consistent file for an address this namespace does not have
        s["src" if s["direction"] == "outbound" else "dst"] = "192.0.2.50"
    f = write_sa_file(tmp_path / "sa.json", sas)
    res = run("--tun", TUN, "--sa-file", str(f), "--local", "192.0.2.50", ns=ns)
    assert res.returncode == 4
    assert "cannot bind UDP 192.0.2.50:4500" in one_line(res)
    assert ns.run("ip", "link", "show", TUN, check=False).returncode != 0


def test_no_permission_for_the_tun_exit_4(ns: Netns, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    f = write_sa_file(tmp_path / "sa.json", SaPair(0x1001, 0x2001).a_side())
    cmd = ns.cmd("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable,
                 "-m", "ipsecsa.gateway", "--tun", TUN, "--sa-file", str(f), "--local", WIRE4[0])
    res = sh(*cmd, check=False)
    assert res.returncode == 4
    assert "Operation not permitted" in one_line(res)
